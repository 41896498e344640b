//! Durable state in MongoDB, the single source of truth: collections, indexes, and the operations
//! on them.
//!
//! # Sending a message: three round trips, no transaction
//!
//! [`Store::insert_message`] makes the durable-ACK and exactly-once guarantees true with three
//! round trips on the happy path:
//!
//! 1. **claim** the sender-scoped idempotency key: `insert_one` into `idempotency_keys` (unique `_id`),
//!    reserving a message id and recording the request's fingerprint and a short lease;
//! 2. **allocate** the sequence number: `find_one_and_update` with `$inc` and `upsert` on the
//!    conversation's counter in `sequence_numbers`;
//! 3. **insert** the message into `messages` (unique `message_id`, `idempotency_key` and
//!    `{conversation_id, sequence_number}`).
//!
//! Only the claimer allocates, so concurrent retries never burn sequence numbers: a retry whose
//! claim fails reads the claim (fingerprint mismatch: `idempotency_conflict`), then the message;
//! while the claimer is still inside its lease the retry waits for the message to appear and
//! returns it. A claimer that died after step 1 is taken over once its lease runs out (a
//! compare-and-set on the lease), reusing the reserved message id. The one window this design
//! leaves is a crash between steps 2 and 3: that sequence number is then never used, and
//! retransmit answers report it as missing instead of leaving clients waiting.
//!
//! Keys are scoped by sender (`{sender_id}/{key}`): one user can never learn about, or collide
//! with, another user's message by guessing their key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    Agent, Conversation, DeadLetter, IdempotencyRecord, LastMessage, NewMessage, SequenceCounter,
    StoredMessage, User,
};
use crate::protocol::MessageStatus;

/// Collection names and the indexes on them: the one place that knows the schema.
pub mod collections {
    /// Users (`users`).
    pub const USERS: &str = "users";
    /// Conversations (`conversations`).
    pub const CONVERSATIONS: &str = "conversations";
    /// Messages (`messages`).
    pub const MESSAGES: &str = "messages";
    /// Claimed idempotency keys (`idempotency_keys`).
    pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
    /// Per-conversation sequence counters (`sequence_numbers`).
    pub const SEQUENCE_NUMBERS: &str = "sequence_numbers";
    /// Media metadata (`media`).
    pub const MEDIA: &str = "media";
    /// Dead letters (`dead_letters`).
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// Agent registry (`agents`).
    pub const AGENTS: &str = "agents";
}

/// Claimed idempotency keys expire after 24 hours (seeds).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default message retention (seeds: 90 days); `MESSAGE_RETENTION_DAYS` overrides it.
pub const DEFAULT_MESSAGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Dead letters are kept this long.
pub const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a claimer of an idempotency key is presumed alive.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// Name of the TTL index on `messages.created_at` (changed in place when retention changes).
pub const MESSAGE_TTL_INDEX: &str = "created_at_ttl";

/// Result of an idempotent insert.
#[derive(Debug, Clone, PartialEq)]
pub struct Inserted {
    /// The stored message (the original one on a repeated key).
    pub message: StoredMessage,
    /// True when the key had been used before and nothing new was stored.
    pub duplicate: bool,
}

/// The durable-state port.
#[async_trait]
pub trait Store: Send + Sync {
    /// Allocates the next sequence number of a conversation (1, 2, 3, ... without gaps).
    async fn next_sequence(&self, conversation_id: &str) -> Result<u64>;
    /// Stores a message exactly once per `(sender, idempotency_key)`; see the module docs.
    async fn insert_message(&self, message: NewMessage) -> Result<Inserted>;
    /// Messages of a conversation with `from <= sequence_number <= to`, ascending, at most `limit`.
    async fn messages_in_range(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// One message by id.
    async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>>;
    /// Messages by id (any order; missing ids are skipped).
    async fn messages_by_ids(&self, message_ids: &[String]) -> Result<Vec<StoredMessage>>;
    /// Moves messages' status forward (never backwards); returns how many changed.
    async fn advance_status(&self, message_ids: &[String], status: MessageStatus) -> Result<u64>;
    /// Stores a new conversation.
    async fn insert_conversation(&self, conversation: &Conversation) -> Result<()>;
    /// One conversation by id.
    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>>;
    /// Stores a new user (`conflict` when the phone or email is taken).
    async fn insert_user(&self, user: &User) -> Result<()>;
    /// One user by id.
    async fn user(&self, user_id: &str) -> Result<Option<User>>;
    /// Records a user's last-seen time and offline status.
    async fn set_last_seen(&self, user_id: &str, at: DateTime) -> Result<()>;
    /// Stores a dead letter.
    async fn insert_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()>;
    /// Updates a conversation after a message was stored: highest sequence number, last-message
    /// preview (only if this message is the newest), and the sender's read marker. Idempotent and
    /// order-independent, so redelivered or reordered events change nothing.
    async fn record_message(&self, last: &LastMessage, conversation_id: &str) -> Result<()>;
    /// Records that `user_id` received (or read) messages; returns the messages as updated.
    /// The sender's own messages are ignored.
    async fn record_receipts(
        &self,
        message_ids: &[String],
        user_id: &str,
        status: MessageStatus,
    ) -> Result<Vec<StoredMessage>>;
    /// Moves a participant's read marker forward to `sequence_number` (never backwards).
    async fn advance_read_marker(
        &self,
        conversation_id: &str,
        user_id: &str,
        sequence_number: u64,
    ) -> Result<()>;
    /// Whether two users (or a user and an agent) share a conversation.
    async fn share_conversation(&self, a: &str, b: &str) -> Result<bool>;
    /// One agent of the registry.
    async fn agent(&self, agent_id: &str) -> Result<Option<Agent>>;
    /// Creates or replaces an agent of the registry.
    async fn upsert_agent(&self, agent: &Agent) -> Result<()>;
    /// Records an agent's heartbeat.
    async fn touch_agent(&self, agent_id: &str, at: DateTime) -> Result<()>;
    /// The most recently seen agent with `capability` whose heartbeat is not older than
    /// `online_since`.
    async fn agent_with_capability(
        &self,
        capability: &str,
        online_since: DateTime,
    ) -> Result<Option<Agent>>;
}

/// Options of the MongoDB adapter.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Message retention (TTL on `messages.created_at`).
    pub message_retention: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            message_retention: DEFAULT_MESSAGE_RETENTION,
        }
    }
}

/// The MongoDB adapter.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    options: StoreOptions,
    round_trips: Arc<AtomicU64>,
}

impl MongoStore {
    /// Connects to `uri` and uses database `db_name`. Does not create indexes: call
    /// [`MongoStore::ensure_indexes`] once at start.
    pub async fn connect(uri: &str, db_name: &str, options: StoreOptions) -> Result<Self> {
        let client = mongodb::Client::with_uri_str(uri).await?;
        Ok(Self {
            db: client.database(db_name),
            options,
            round_trips: Arc::default(),
        })
    }

    /// The database handle, for tests and diagnostics.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Round trips made so far (for benchmarks).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn rt(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn messages(&self) -> Collection<StoredMessage> {
        self.db.collection(collections::MESSAGES)
    }

    fn claims(&self) -> Collection<IdempotencyRecord> {
        self.db.collection(collections::IDEMPOTENCY_KEYS)
    }

    fn counters(&self) -> Collection<SequenceCounter> {
        self.db.collection(collections::SEQUENCE_NUMBERS)
    }

    fn conversations(&self) -> Collection<Conversation> {
        self.db.collection(collections::CONVERSATIONS)
    }

    fn users(&self) -> Collection<User> {
        self.db.collection(collections::USERS)
    }

    /// Creates every collection's indexes; safe to run at every start and concurrently. When the
    /// message retention changed, the TTL index is updated in place (`collMod`).
    pub async fn ensure_indexes(&self) -> Result<()> {
        let unique = |name: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_string())
                .build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
        let ttl = |name: &str, after: Duration| {
            IndexOptions::builder()
                .name(name.to_string())
                .expire_after(after)
                .build()
        };
        // Unique only where the field is a string: most users have a phone or an email, not both.
        let unique_when_present = |name: &str, field: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_string())
                .partial_filter_expression(doc! { field: { "$type": "string" } })
                .build()
        };
        let plan: Vec<(&str, Vec<IndexModel>)> = vec![
            (
                collections::MESSAGES,
                vec![
                    index(doc! {"message_id": 1}, unique("message_id_unique")),
                    index(
                        doc! {"idempotency_key": 1},
                        unique("idempotency_key_unique"),
                    ),
                    index(
                        doc! {"conversation_id": 1, "sequence_number": 1},
                        unique("conversation_sequence_unique"),
                    ),
                    index(
                        doc! {"conversation_id": 1, "timestamp": -1},
                        named("conversation_timestamp"),
                    ),
                ],
            ),
            (
                collections::IDEMPOTENCY_KEYS,
                vec![index(
                    doc! {"created_at": 1},
                    ttl("created_at_ttl", IDEMPOTENCY_TTL),
                )],
            ),
            (
                collections::USERS,
                vec![
                    index(doc! {"user_id": 1}, unique("user_id_unique")),
                    index(
                        doc! {"phone": 1},
                        unique_when_present("phone_unique", "phone"),
                    ),
                    index(
                        doc! {"email": 1},
                        unique_when_present("email_unique", "email"),
                    ),
                ],
            ),
            (
                collections::CONVERSATIONS,
                vec![
                    index(
                        doc! {"conversation_id": 1},
                        unique("conversation_id_unique"),
                    ),
                    index(doc! {"participants": 1}, named("participants")),
                ],
            ),
            (
                collections::MEDIA,
                vec![
                    index(doc! {"media_id": 1}, unique("media_id_unique")),
                    index(doc! {"conversation_id": 1}, named("conversation")),
                ],
            ),
            (
                collections::DEAD_LETTERS,
                vec![
                    index(doc! {"dead_letter_id": 1}, unique("dead_letter_id_unique")),
                    index(doc! {"created_at": -1}, named("created_at_desc")),
                    index(
                        doc! {"expires_at": 1},
                        ttl("expires_at_ttl", Duration::ZERO),
                    ),
                ],
            ),
            (
                collections::AGENTS,
                vec![index(doc! {"agent_id": 1}, unique("agent_id_unique"))],
            ),
        ];
        for (collection, indexes) in plan {
            self.rt();
            self.db
                .collection::<Document>(collection)
                .create_indexes(indexes)
                .await?;
        }
        self.ensure_message_ttl().await
    }

    async fn ensure_message_ttl(&self) -> Result<()> {
        let seconds = self.options.message_retention.as_secs() as i64;
        let model = index(
            doc! {"created_at": 1},
            IndexOptions::builder()
                .name(MESSAGE_TTL_INDEX.to_string())
                .expire_after(self.options.message_retention)
                .build(),
        );
        self.rt();
        match self.messages().create_index(model).await {
            Ok(_) => Ok(()),
            // 85 IndexOptionsConflict / 86 IndexKeySpecsConflict: the index exists with another
            // expiry. Change it in place rather than failing the deployment.
            Err(e) if matches!(command_code(&e), Some(85) | Some(86)) => {
                self.rt();
                self.db
                    .run_command(doc! {
                        "collMod": collections::MESSAGES,
                        "index": { "name": MESSAGE_TTL_INDEX, "expireAfterSeconds": seconds },
                    })
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn claim(&self, record: &IdempotencyRecord) -> Result<bool> {
        self.rt();
        match self.claims().insert_one(record).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn message_by_key(&self, scoped_key: &str) -> Result<Option<StoredMessage>> {
        self.rt();
        Ok(self
            .messages()
            .find_one(doc! {"idempotency_key": scoped_key})
            .await?)
    }

    /// Steps 2 and 3 for the owner of a claim.
    async fn allocate_and_insert(
        &self,
        new: &NewMessage,
        scoped_key: &str,
        fingerprint: &str,
        message_id: &str,
    ) -> Result<Inserted> {
        let sequence_number = self.next_sequence(&new.conversation_id).await?;
        let now = DateTime::now();
        let message = StoredMessage {
            message_id: message_id.to_string(),
            idempotency_key: scoped_key.to_string(),
            fingerprint: fingerprint.to_string(),
            conversation_id: new.conversation_id.clone(),
            sequence_number,
            sender_id: new.sender_id.clone(),
            receiver_id: new.receiver_id.clone(),
            message_type: new.message_type,
            content: new.content.clone(),
            media_url: new.media_url.clone(),
            reply_to_message_id: new.reply_to_message_id.clone(),
            forwarded_from: new.forwarded_from.clone(),
            location: new.location.clone(),
            client_timestamp: new.client_timestamp,
            timestamp: now,
            status: MessageStatus::Sent,
            delivered_to: Vec::new(),
            read_by: Vec::new(),
            created_at: now,
        };
        self.rt();
        match self.messages().insert_one(&message).await {
            Ok(_) => Ok(Inserted {
                message,
                duplicate: false,
            }),
            // Someone who took over our claim got there first: theirs is the message.
            Err(e) if is_duplicate_key(&e) => match self.message_by_key(scoped_key).await? {
                Some(message) => Ok(Inserted {
                    message,
                    duplicate: true,
                }),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }
}

fn index(keys: Document, options: IndexOptions) -> IndexModel {
    IndexModel::builder().keys(keys).options(options).build()
}

/// Server error code of a command or write failure.
fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errs| errs.first().map(|w| w.code)),
        _ => None,
    }
}

/// Whether `e` is a unique-index violation (E11000).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    command_code(e) == Some(11000)
}

/// SHA-256 over every field that makes a send what it is, so a retry can be told from a reuse of
/// the key for something else.
pub fn fingerprint(m: &NewMessage) -> String {
    let mut h = Sha256::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let forwarded = m
        .forwarded_from
        .as_ref()
        .map(|f| format!("{}/{}", f.conversation_id, f.message_id))
        .unwrap_or_default();
    let location = m
        .location
        .as_ref()
        .map(|l| format!("{},{}", l.latitude, l.longitude))
        .unwrap_or_default();
    for part in [
        m.conversation_id.as_str(),
        m.sender_id.as_str(),
        &opt(&m.receiver_id),
        &format!("{:?}", m.message_type),
        m.content.as_str(),
        &opt(&m.media_url),
        &opt(&m.reply_to_message_id),
        &forwarded,
        &location,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The stored form of a client key: scoped by sender.
pub fn scoped_key(sender_id: &str, key: &str) -> String {
    format!("{sender_id}/{key}")
}

fn after(d: Duration) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() + d.as_millis() as i64)
}

#[async_trait]
impl Store for MongoStore {
    async fn next_sequence(&self, conversation_id: &str) -> Result<u64> {
        // Two first-ever allocations racing on a new counter can both try to insert it; the loser
        // gets E11000 and simply retries as an update.
        for attempt in 0..3 {
            self.rt();
            let result = self
                .counters()
                .find_one_and_update(
                    doc! {"_id": conversation_id},
                    doc! {
                        "$inc": {"last_sequence_number": 1_i64},
                        "$set": {"updated_at": DateTime::now()},
                    },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match result {
                Ok(Some(counter)) => return Ok(counter.last_sequence_number),
                Ok(None) => {
                    return Err(Error::dependency(
                        "mongodb",
                        "upsert returned no counter document",
                    ));
                }
                Err(e) if is_duplicate_key(&e) && attempt < 2 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    async fn insert_message(&self, new: NewMessage) -> Result<Inserted> {
        let key = scoped_key(&new.sender_id, &new.idempotency_key);
        let fingerprint = fingerprint(&new);
        let mut backoff = Duration::from_millis(5);
        let deadline = tokio::time::Instant::now() + CLAIM_LEASE * 2;
        loop {
            let record = IdempotencyRecord {
                key: key.clone(),
                message_id: uuid::Uuid::now_v7().to_string(),
                fingerprint: fingerprint.clone(),
                conversation_id: new.conversation_id.clone(),
                lease_until: after(CLAIM_LEASE),
                created_at: DateTime::now(),
            };
            if self.claim(&record).await? {
                return self
                    .allocate_and_insert(&new, &key, &fingerprint, &record.message_id)
                    .await;
            }
            self.rt();
            let Some(existing) = self.claims().find_one(doc! {"_id": &key}).await? else {
                // Expired between our insert and our read: claim again.
                continue;
            };
            if existing.fingerprint != fingerprint {
                return Err(Error::client(
                    ErrorCode::IdempotencyConflict,
                    "idempotency_key was already used for a different message",
                ));
            }
            if let Some(message) = self.message_by_key(&key).await? {
                return Ok(Inserted {
                    message,
                    duplicate: true,
                });
            }
            if existing.lease_until <= DateTime::now() {
                // The claimer died before storing the message: take its claim over, atomically,
                // so that only one retry does.
                self.rt();
                let taken = self
                    .claims()
                    .update_one(
                        doc! {"_id": &key, "lease_until": existing.lease_until},
                        doc! {"$set": {"lease_until": after(CLAIM_LEASE)}},
                    )
                    .await?;
                if taken.modified_count == 1 {
                    return self
                        .allocate_and_insert(&new, &key, &fingerprint, &existing.message_id)
                        .await;
                }
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::dependency(
                    "mongodb",
                    "timed out waiting for a concurrent send with the same idempotency key",
                ));
            }
            // The claimer is alive and about to store the message: wait for it.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    async fn messages_in_range(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.rt();
        let cursor = self
            .messages()
            .find(doc! {
                "conversation_id": conversation_id,
                "sequence_number": {"$gte": from as i64, "$lte": to as i64},
            })
            .sort(doc! {"sequence_number": 1})
            .limit(limit as i64)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>> {
        self.rt();
        Ok(self
            .messages()
            .find_one(doc! {"message_id": message_id})
            .await?)
    }

    async fn messages_by_ids(&self, message_ids: &[String]) -> Result<Vec<StoredMessage>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.rt();
        let cursor = self
            .messages()
            .find(doc! {"message_id": {"$in": message_ids}})
            .await?;
        Ok(cursor.try_collect().await?)
    }

    async fn advance_status(&self, message_ids: &[String], status: MessageStatus) -> Result<u64> {
        if message_ids.is_empty() || status == MessageStatus::Sent {
            return Ok(0);
        }
        // Only statuses strictly before the new one may change: never backwards.
        let earlier: Vec<&str> = match status {
            MessageStatus::Delivered => vec!["sent"],
            MessageStatus::Read => vec!["sent", "delivered"],
            MessageStatus::Sent => vec![],
        };
        let status_str = match status {
            MessageStatus::Delivered => "delivered",
            _ => "read",
        };
        self.rt();
        let result = self
            .messages()
            .update_many(
                doc! {"message_id": {"$in": message_ids}, "status": {"$in": earlier}},
                doc! {"$set": {"status": status_str}},
            )
            .await?;
        Ok(result.modified_count)
    }

    async fn insert_conversation(&self, conversation: &Conversation) -> Result<()> {
        conversation.validate()?;
        self.rt();
        match self.conversations().insert_one(conversation).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(Error::client(
                ErrorCode::Conflict,
                "conversation already exists",
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>> {
        self.rt();
        Ok(self
            .conversations()
            .find_one(doc! {"conversation_id": conversation_id})
            .await?)
    }

    async fn insert_user(&self, user: &User) -> Result<()> {
        self.rt();
        match self.users().insert_one(user).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(Error::client(
                ErrorCode::Conflict,
                "a user with this phone number or email already exists",
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn user(&self, user_id: &str) -> Result<Option<User>> {
        self.rt();
        Ok(self.users().find_one(doc! {"user_id": user_id}).await?)
    }

    async fn set_last_seen(&self, user_id: &str, at: DateTime) -> Result<()> {
        self.rt();
        self.users()
            .update_one(
                doc! {"user_id": user_id},
                doc! {"$set": {"last_seen": at, "status": "offline"}},
            )
            .await?;
        Ok(())
    }

    async fn insert_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()> {
        self.rt();
        self.db
            .collection::<DeadLetter>(collections::DEAD_LETTERS)
            .insert_one(dead_letter)
            .await?;
        Ok(())
    }

    async fn record_message(&self, last: &LastMessage, conversation_id: &str) -> Result<()> {
        let seq = last.sequence_number as i64;
        let sender_marker = format!("read_up_to.{}", last.sender_id);
        let preview = mongodb::bson::to_bson(last).map_err(|e| Error::dependency("bson", e))?;
        // An aggregation-pipeline update would do this in one round trip, but not every
        // MongoDB-wire server supports it; two plain updates are idempotent as well.
        self.rt();
        self.conversations()
            .update_one(
                doc! {"conversation_id": conversation_id, "last_sequence_number": {"$lt": seq}},
                doc! {"$set": {
                    "last_sequence_number": seq,
                    "last_message": preview,
                    "last_message_at": last.at,
                }},
            )
            .await?;
        self.rt();
        self.conversations()
            .update_one(
                doc! {"conversation_id": conversation_id},
                doc! {"$max": {sender_marker: seq}},
            )
            .await?;
        Ok(())
    }

    async fn record_receipts(
        &self,
        message_ids: &[String],
        user_id: &str,
        status: MessageStatus,
    ) -> Result<Vec<StoredMessage>> {
        if message_ids.is_empty() || status == MessageStatus::Sent {
            return Ok(Vec::new());
        }
        // Reading implies receiving.
        let update = match status {
            MessageStatus::Read => {
                doc! {"$addToSet": {"delivered_to": user_id, "read_by": user_id}}
            }
            _ => doc! {"$addToSet": {"delivered_to": user_id}},
        };
        self.rt();
        self.messages()
            .update_many(
                doc! {"message_id": {"$in": message_ids}, "sender_id": {"$ne": user_id}},
                update,
            )
            .await?;
        self.messages_by_ids(message_ids).await
    }

    async fn advance_read_marker(
        &self,
        conversation_id: &str,
        user_id: &str,
        sequence_number: u64,
    ) -> Result<()> {
        self.rt();
        self.conversations()
            .update_one(
                doc! {"conversation_id": conversation_id},
                doc! {"$max": {format!("read_up_to.{user_id}"): sequence_number as i64}},
            )
            .await?;
        Ok(())
    }

    async fn share_conversation(&self, a: &str, b: &str) -> Result<bool> {
        self.rt();
        let found = self
            .conversations()
            .find_one(doc! {"participants": {"$all": [a, b]}})
            .projection(doc! {"_id": 1})
            .await?;
        Ok(found.is_some())
    }

    async fn agent(&self, agent_id: &str) -> Result<Option<Agent>> {
        self.rt();
        Ok(self
            .db
            .collection::<Agent>(collections::AGENTS)
            .find_one(doc! {"agent_id": agent_id})
            .await?)
    }

    async fn upsert_agent(&self, agent: &Agent) -> Result<()> {
        self.rt();
        self.db
            .collection::<Agent>(collections::AGENTS)
            .replace_one(doc! {"agent_id": &agent.agent_id}, agent)
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn agent_with_capability(
        &self,
        capability: &str,
        online_since: DateTime,
    ) -> Result<Option<Agent>> {
        self.rt();
        Ok(self
            .db
            .collection::<Agent>(collections::AGENTS)
            .find_one(doc! {
                "capabilities": capability,
                "last_heartbeat_at": {"$gte": online_since},
            })
            .sort(doc! {"last_heartbeat_at": -1})
            .await?)
    }

    async fn touch_agent(&self, agent_id: &str, at: DateTime) -> Result<()> {
        self.rt();
        self.db
            .collection::<Agent>(collections::AGENTS)
            .update_one(
                doc! {"agent_id": agent_id},
                doc! {"$set": {"last_heartbeat_at": at}},
            )
            .await?;
        Ok(())
    }
}

impl DeadLetter {
    /// A dead letter kept for [`DEAD_LETTER_RETENTION`].
    pub fn new(
        source: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
        error: impl Into<String>,
        attempts: u32,
    ) -> Self {
        Self {
            dead_letter_id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            kind: kind.into(),
            payload,
            error: error.into(),
            attempts,
            created_at: DateTime::now(),
            expires_at: after(DEAD_LETTER_RETENTION),
        }
    }
}
