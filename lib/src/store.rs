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
//! 2. **allocate** the sequence number: `find_one_and_update` with `$inc` on the conversation's
//!    counter in `sequence_numbers` (created with a plain insert of 0 on a conversation's first
//!    message, which costs two more round trips once);
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
use crate::model::MediaState;
use crate::model::{
    Agent, Conversation, DeadLetter, IdempotencyRecord, LastMessage, NewMessage, SequenceCounter,
    StoredMessage, User,
};
use crate::model::{
    AgentQuery, ConversationKind, Credentials, DeviceToken, Erasure, Media, MemberConversation,
    MemberState, MemberStateUpdate, RefreshToken, RefreshUse, UserData, VerificationCode,
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
    /// Password hashes, apart from profiles (`credentials`).
    pub const CREDENTIALS: &str = "credentials";
    /// Pending verification codes, hashed (`verification_codes`).
    pub const VERIFICATION_CODES: &str = "verification_codes";
    /// Refresh tokens, hashed, with their families (`refresh_tokens`).
    pub const REFRESH_TOKENS: &str = "refresh_tokens";
    /// Push device tokens (`devices`).
    pub const DEVICES: &str = "devices";
    /// Codes recorded by the local code sender instead of being sent (`code_outbox`, local use).
    pub const CODE_OUTBOX: &str = "code_outbox";
}

/// Claimed idempotency keys expire after 24 hours (seeds).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default message retention (seeds: 90 days); `MESSAGE_RETENTION_DAYS` overrides it.
pub const DEFAULT_MESSAGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Dead letters are kept this long.
pub const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a claimer of an idempotency key is presumed alive.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);
/// Records of the local code sender are kept this long.
pub const CODE_OUTBOX_RETENTION: Duration = Duration::from_secs(24 * 3600);
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

    // ---- The HTTP API: accounts and tokens ----

    /// The user with this E.164 phone number.
    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>>;
    /// The user with this (normalised) email address.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Users by id (any order; unknown ids are skipped).
    async fn users_by_ids(&self, user_ids: &[String]) -> Result<Vec<User>>;
    /// Changes a profile's name and/or avatar (`Some(None)` removes the avatar); returns it as
    /// updated, `None` when the user does not exist.
    async fn update_profile(
        &self,
        user_id: &str,
        name: Option<&str>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<Option<User>>;
    /// A user's password hash, if they set a password.
    async fn password_hash(&self, user_id: &str) -> Result<Option<String>>;
    /// Sets a user's password hash.
    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()>;
    /// Creates or replaces the pending code of a destination.
    async fn put_verification_code(&self, code: &VerificationCode) -> Result<()>;
    /// The pending code of a destination.
    async fn verification_code(&self, destination: &str) -> Result<Option<VerificationCode>>;
    /// Counts one attempt at a destination's code, atomically, unless it expired or already had
    /// `max_attempts`; returns the record as it was before this attempt (`None`: no usable code).
    async fn count_code_attempt(
        &self,
        destination: &str,
        max_attempts: u32,
        now: DateTime,
    ) -> Result<Option<VerificationCode>>;
    /// Deletes a destination's code (only if its hash is still `code_hash`, when given); true when
    /// this call deleted it, so a code is used once.
    async fn delete_verification_code(
        &self,
        destination: &str,
        code_hash: Option<&str>,
    ) -> Result<bool>;
    /// Stores a new refresh token.
    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()>;
    /// One refresh token by hash.
    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>>;
    /// Presents a refresh token: marks it used, atomically, if it is valid; otherwise says why not.
    async fn use_refresh_token(&self, token_hash: &str, now: DateTime) -> Result<RefreshUse>;
    /// Revokes every token of a family; returns how many were live.
    async fn revoke_refresh_family(&self, family_id: &str, now: DateTime) -> Result<u64>;
    /// Revokes every refresh token of a user.
    async fn revoke_refresh_tokens_of(&self, user_id: &str, now: DateTime) -> Result<u64>;

    // ---- The HTTP API: conversations and groups ----

    /// Every conversation `user_id` takes part in, with their own state (any order).
    async fn conversations_of(&self, user_id: &str) -> Result<Vec<MemberConversation>>;
    /// One conversation with `user_id`'s own state, if they take part in it.
    async fn member_conversation(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberConversation>>;
    /// Stores a 1:1 or agent conversation unless one with the same `pair_key` exists; returns the
    /// stored one and whether this call created it.
    async fn insert_pair_conversation(
        &self,
        conversation: &Conversation,
        pair_key: &str,
    ) -> Result<(Conversation, bool)>;
    /// A two-party conversation of `kind` between `a` and `b`, however it was created.
    async fn conversation_between(
        &self,
        kind: ConversationKind,
        a: &str,
        b: &str,
    ) -> Result<Option<Conversation>>;
    /// Changes a participant's own state; false when they are not a participant.
    async fn update_member_state(
        &self,
        conversation_id: &str,
        user_id: &str,
        update: &MemberStateUpdate,
    ) -> Result<bool>;
    /// Highest sequence number handed out in a conversation (0 when none).
    async fn last_allocated_sequence(&self, conversation_id: &str) -> Result<u64>;
    /// Compare-and-set of a group's members: replaces participants and admins only if they are
    /// still exactly `expected_participants` and `expected_admins`; removed participants lose
    /// their read marker and state. False when someone changed them first.
    async fn replace_group_members(
        &self,
        conversation_id: &str,
        expected_participants: &[String],
        expected_admins: &[String],
        participants: &[String],
        admins: &[String],
    ) -> Result<bool>;
    /// Changes a group's name and/or description (`Some(None)` removes the description).
    async fn update_group_info(
        &self,
        conversation_id: &str,
        name: Option<&str>,
        description: Option<Option<&str>>,
    ) -> Result<bool>;
    /// Messages with `from <= sequence_number <= to`, at most `limit`: the lowest ones in
    /// ascending order, or with `newest_first` the highest ones in descending order.
    async fn messages_page(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<StoredMessage>>;
    /// Deletes a conversation with its messages, counter, claims and media records; returns how
    /// many messages went.
    async fn delete_conversation_data(&self, conversation_id: &str) -> Result<u64>;

    // ---- The HTTP API: agent registry and devices ----

    /// Adds an agent to the registry (`conflict` when the id is taken).
    async fn insert_agent(&self, agent: &Agent) -> Result<()>;
    /// Removes an agent from the registry; false when it was not there.
    async fn delete_agent(&self, agent_id: &str) -> Result<bool>;
    /// Agents matching every filter of `query`, by ascending id.
    async fn search_agents(&self, query: &AgentQuery) -> Result<Vec<Agent>>;
    /// Registers a device's push token (moving the token away from any other user or device).
    async fn upsert_device(&self, device: &DeviceToken) -> Result<()>;
    /// Unregisters a device; false when it was not registered.
    async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool>;
    /// A user's registered devices.
    async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceToken>>;

    // ---- The HTTP API: personal data (GDPR) ----

    /// Everything stored about a user, for the data export; `None` when the user does not exist.
    async fn user_data(&self, user_id: &str) -> Result<Option<UserData>>;
    /// Erases a user: profile, password, tokens, devices, codes and agent conversations are
    /// deleted; 1:1 conversations stay for the other person and messages they sent stay in
    /// conversations, both attributed to `tombstone` instead of the user (also in system
    /// messages); they leave every group; their receipts and read markers are removed.
    async fn erase_user(&self, user_id: &str, tombstone: &str) -> Result<Erasure>;

    // ---- Media (functions/presign) and push (functions/push) ----

    /// Records a new media upload (`conflict` when the media id is taken).
    async fn insert_media(&self, media: &Media) -> Result<()>;
    /// One media record by id.
    async fn media(&self, media_id: &str) -> Result<Option<Media>>;
    /// Moves a media record from state `from` to `to` (compare-and-set), setting its thumbnail
    /// key when one is given; returns the record as updated, `None` when it was not in `from`
    /// (someone else moved it first, or it does not exist).
    async fn transition_media(
        &self,
        media_id: &str,
        from: MediaState,
        to: MediaState,
        thumbnail_key: Option<&str>,
    ) -> Result<Option<Media>>;
    /// Removes the push token `token` of a user's device because the push service said it is
    /// no longer valid. Only that exact registration goes: false when the device registered
    /// another token meanwhile, or is gone.
    async fn delete_device_token(
        &self,
        user_id: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool>;
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
        let mut client_options = mongodb::options::ClientOptions::parse(uri).await?;
        // Every command is one round trip: time them all for `crate::metrics`.
        client_options.command_event_handler = Some(mongodb::event::EventHandler::callback(
            |event: mongodb::event::command::CommandEvent| {
                use mongodb::event::command::CommandEvent;
                match event {
                    CommandEvent::Succeeded(e) => {
                        crate::metrics::record(crate::metrics::Stage::Mongo, e.duration)
                    }
                    CommandEvent::Failed(e) => {
                        crate::metrics::record(crate::metrics::Stage::Mongo, e.duration)
                    }
                    _ => {}
                }
            },
        ));
        let client = mongodb::Client::with_options(client_options)?;
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

    fn conversation_docs(&self) -> Collection<Document> {
        self.db.collection(collections::CONVERSATIONS)
    }

    fn credentials(&self) -> Collection<Credentials> {
        self.db.collection(collections::CREDENTIALS)
    }

    fn codes(&self) -> Collection<VerificationCode> {
        self.db.collection(collections::VERIFICATION_CODES)
    }

    fn refresh_tokens(&self) -> Collection<RefreshToken> {
        self.db.collection(collections::REFRESH_TOKENS)
    }

    fn devices(&self) -> Collection<DeviceToken> {
        self.db.collection(collections::DEVICES)
    }

    fn agents(&self) -> Collection<Agent> {
        self.db.collection(collections::AGENTS)
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
                    // A user's own messages: data export and erasure.
                    index(doc! {"sender_id": 1}, named("sender")),
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
                    // One 1:1 or agent conversation per pair (set by the HTTP API).
                    index(
                        doc! {"pair_key": 1},
                        unique_when_present("pair_key_unique", "pair_key"),
                    ),
                ],
            ),
            (
                collections::MEDIA,
                vec![
                    index(doc! {"media_id": 1}, unique("media_id_unique")),
                    index(doc! {"conversation_id": 1}, named("conversation")),
                    index(doc! {"uploader_id": 1}, named("uploader")),
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
            (
                collections::VERIFICATION_CODES,
                vec![index(
                    doc! {"purge_at": 1},
                    ttl("purge_at_ttl", Duration::ZERO),
                )],
            ),
            (
                collections::REFRESH_TOKENS,
                vec![
                    index(doc! {"family_id": 1}, named("family")),
                    index(doc! {"user_id": 1}, named("user")),
                    index(
                        doc! {"expires_at": 1},
                        ttl("expires_at_ttl", Duration::ZERO),
                    ),
                ],
            ),
            (
                collections::DEVICES,
                vec![
                    index(
                        doc! {"user_id": 1, "device_id": 1},
                        unique("user_device_unique"),
                    ),
                    index(doc! {"token": 1}, unique("token_unique")),
                ],
            ),
            (
                collections::CODE_OUTBOX,
                vec![index(
                    doc! {"created_at": 1},
                    ttl("created_at_ttl", CODE_OUTBOX_RETENTION),
                )],
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

/// The update for a partial edit of `name` and a clearable `field`: `None` leaves a value as
/// it is, `Some(None)` removes `field`. Empty when nothing changes.
fn name_and_optional_field(
    name: Option<&str>,
    field: &str,
    value: Option<Option<&str>>,
) -> Document {
    let mut set = doc! {};
    let mut unset = doc! {};
    if let Some(name) = name {
        set.insert("name", name);
    }
    match value {
        Some(Some(v)) => {
            set.insert(field, v);
        }
        Some(None) => {
            unset.insert(field, "");
        }
        None => {}
    }
    let mut update = doc! {};
    if !set.is_empty() {
        update.insert("$set", set);
    }
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    update
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

/// `text` as a regular expression matching itself literally.
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A conversation document with `user_id`'s own state (`member_state.{user_id}`).
fn member_conversation_from(document: Document, user_id: &str) -> Result<MemberConversation> {
    let state = match document
        .get_document("member_state")
        .ok()
        .and_then(|m| m.get_document(user_id).ok())
    {
        Some(state) => mongodb::bson::from_document::<MemberState>(state.clone())
            .map_err(|e| Error::dependency("bson", e))?,
        None => MemberState::default(),
    };
    let conversation = mongodb::bson::from_document::<Conversation>(document)
        .map_err(|e| Error::dependency("bson", e))?;
    Ok(MemberConversation {
        conversation,
        state,
    })
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
        // `$inc` on an existing counter is atomic everywhere. Creating the counter with an
        // upsert is not safe under concurrency on every MongoDB-wire server (a losing upsert
        // may increment and still answer with no document, which would burn a number), so the
        // counter is created by a plain insert of 0 (a lost race is a harmless E11000) and then
        // incremented. One round trip per allocation; three for a conversation's first.
        for _ in 0..3 {
            self.rt();
            let counter = self
                .counters()
                .find_one_and_update(
                    doc! {"_id": conversation_id},
                    doc! {
                        "$inc": {"last_sequence_number": 1_i64},
                        "$set": {"updated_at": DateTime::now()},
                    },
                )
                .return_document(ReturnDocument::After)
                .await?;
            if let Some(counter) = counter {
                return Ok(counter.last_sequence_number);
            }
            self.rt();
            let created = self
                .counters()
                .insert_one(SequenceCounter {
                    conversation_id: conversation_id.to_string(),
                    last_sequence_number: 0,
                    updated_at: DateTime::now(),
                })
                .await;
            match created {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::dependency(
            "mongodb",
            "sequence counter could not be created",
        ))
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
        // Usually this message is the newest: preview, highest number and the sender's read
        // marker in one update. An older (reordered or redelivered) one only moves the marker.
        self.rt();
        let newest = self
            .conversations()
            .update_one(
                doc! {"conversation_id": conversation_id, "last_sequence_number": {"$lt": seq}},
                doc! {
                    "$set": {
                        "last_sequence_number": seq,
                        "last_message": preview,
                        "last_message_at": last.at,
                    },
                    "$max": {&sender_marker: seq},
                },
            )
            .await?;
        if newest.matched_count == 0 {
            self.rt();
            self.conversations()
                .update_one(
                    doc! {"conversation_id": conversation_id},
                    doc! {"$max": {sender_marker: seq}},
                )
                .await?;
        }
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
        if let [message_id] = message_ids {
            // The common case (one delivery ack): update and read back in one round trip.
            self.rt();
            let updated = self
                .messages()
                .find_one_and_update(
                    doc! {"message_id": message_id, "sender_id": {"$ne": user_id}},
                    update,
                )
                .return_document(ReturnDocument::After)
                .await?;
            return Ok(updated.into_iter().collect());
        }
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
            .db
            .collection::<Document>(collections::CONVERSATIONS)
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

    // ---- The HTTP API: accounts and tokens ----

    async fn user_by_phone(&self, phone: &str) -> Result<Option<User>> {
        self.rt();
        Ok(self.users().find_one(doc! {"phone": phone}).await?)
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        self.rt();
        Ok(self.users().find_one(doc! {"email": email}).await?)
    }

    async fn users_by_ids(&self, user_ids: &[String]) -> Result<Vec<User>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.rt();
        let cursor = self
            .users()
            .find(doc! {"user_id": {"$in": user_ids}})
            .await?;
        Ok(cursor.try_collect().await?)
    }

    async fn update_profile(
        &self,
        user_id: &str,
        name: Option<&str>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<Option<User>> {
        let update = name_and_optional_field(name, "avatar_url", avatar_url);
        if update.is_empty() {
            return self.user(user_id).await;
        }
        self.rt();
        Ok(self
            .users()
            .find_one_and_update(doc! {"user_id": user_id}, update)
            .return_document(ReturnDocument::After)
            .await?)
    }

    async fn password_hash(&self, user_id: &str) -> Result<Option<String>> {
        self.rt();
        Ok(self
            .credentials()
            .find_one(doc! {"_id": user_id})
            .await?
            .map(|c| c.password_hash))
    }

    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        self.rt();
        self.credentials()
            .replace_one(
                doc! {"_id": user_id},
                Credentials {
                    user_id: user_id.to_string(),
                    password_hash: password_hash.to_string(),
                    updated_at: DateTime::now(),
                },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn put_verification_code(&self, code: &VerificationCode) -> Result<()> {
        self.rt();
        self.codes()
            .replace_one(doc! {"_id": &code.destination}, code)
            .upsert(true)
            .await?;
        Ok(())
    }

    async fn verification_code(&self, destination: &str) -> Result<Option<VerificationCode>> {
        self.rt();
        Ok(self.codes().find_one(doc! {"_id": destination}).await?)
    }

    async fn count_code_attempt(
        &self,
        destination: &str,
        max_attempts: u32,
        now: DateTime,
    ) -> Result<Option<VerificationCode>> {
        self.rt();
        Ok(self
            .codes()
            .find_one_and_update(
                doc! {
                    "_id": destination,
                    "attempts": {"$lt": max_attempts as i64},
                    "expires_at": {"$gt": now},
                },
                doc! {"$inc": {"attempts": 1_i64}},
            )
            .return_document(ReturnDocument::Before)
            .await?)
    }

    async fn delete_verification_code(
        &self,
        destination: &str,
        code_hash: Option<&str>,
    ) -> Result<bool> {
        let mut filter = doc! {"_id": destination};
        if let Some(hash) = code_hash {
            filter.insert("code_hash", hash);
        }
        self.rt();
        Ok(self.codes().delete_one(filter).await?.deleted_count == 1)
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()> {
        self.rt();
        self.refresh_tokens().insert_one(token).await?;
        Ok(())
    }

    async fn refresh_token(&self, token_hash: &str) -> Result<Option<RefreshToken>> {
        self.rt();
        Ok(self
            .refresh_tokens()
            .find_one(doc! {"_id": token_hash})
            .await?)
    }

    async fn use_refresh_token(&self, token_hash: &str, now: DateTime) -> Result<RefreshUse> {
        self.rt();
        let taken = self
            .refresh_tokens()
            .find_one_and_update(
                doc! {
                    "_id": token_hash,
                    "used_at": null,
                    "revoked_at": null,
                    "expires_at": {"$gt": now},
                },
                doc! {"$set": {"used_at": now}},
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(token) = taken {
            return Ok(RefreshUse::Rotated(token));
        }
        Ok(match self.refresh_token(token_hash).await? {
            None => RefreshUse::Unknown,
            Some(t) if t.revoked_at.is_some() => RefreshUse::Revoked(t),
            Some(t) if t.used_at.is_some() => RefreshUse::Reused(t),
            Some(t) => RefreshUse::Expired(t),
        })
    }

    async fn revoke_refresh_family(&self, family_id: &str, now: DateTime) -> Result<u64> {
        self.rt();
        let result = self
            .refresh_tokens()
            .update_many(
                doc! {"family_id": family_id, "revoked_at": null},
                doc! {"$set": {"revoked_at": now}},
            )
            .await?;
        Ok(result.modified_count)
    }

    async fn revoke_refresh_tokens_of(&self, user_id: &str, now: DateTime) -> Result<u64> {
        self.rt();
        let result = self
            .refresh_tokens()
            .update_many(
                doc! {"user_id": user_id, "revoked_at": null},
                doc! {"$set": {"revoked_at": now}},
            )
            .await?;
        Ok(result.modified_count)
    }

    // ---- The HTTP API: conversations and groups ----

    async fn conversations_of(&self, user_id: &str) -> Result<Vec<MemberConversation>> {
        self.rt();
        let docs: Vec<Document> = self
            .conversation_docs()
            .find(doc! {"participants": user_id})
            .await?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| member_conversation_from(d, user_id))
            .collect()
    }

    async fn member_conversation(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberConversation>> {
        self.rt();
        let found = self
            .conversation_docs()
            .find_one(doc! {"conversation_id": conversation_id, "participants": user_id})
            .await?;
        found
            .map(|d| member_conversation_from(d, user_id))
            .transpose()
    }

    async fn insert_pair_conversation(
        &self,
        conversation: &Conversation,
        pair_key: &str,
    ) -> Result<(Conversation, bool)> {
        conversation.validate()?;
        let mut document =
            mongodb::bson::to_document(conversation).map_err(|e| Error::dependency("bson", e))?;
        document.insert("pair_key", pair_key);
        self.rt();
        match self.conversation_docs().insert_one(document).await {
            Ok(_) => Ok((conversation.clone(), true)),
            Err(e) if is_duplicate_key(&e) => {
                self.rt();
                let existing = self
                    .conversations()
                    .find_one(doc! {"pair_key": pair_key})
                    .await?
                    .ok_or_else(|| {
                        Error::client(ErrorCode::Conflict, "conversation already exists")
                    })?;
                Ok((existing, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn conversation_between(
        &self,
        kind: ConversationKind,
        a: &str,
        b: &str,
    ) -> Result<Option<Conversation>> {
        let kind = mongodb::bson::to_bson(&kind).map_err(|e| Error::dependency("bson", e))?;
        self.rt();
        let found: Vec<Conversation> = self
            .conversations()
            .find(doc! {"kind": kind, "participants": {"$all": [a, b]}})
            .await?
            .try_collect()
            .await?;
        Ok(found.into_iter().find(|c| c.participants.len() == 2))
    }

    async fn update_member_state(
        &self,
        conversation_id: &str,
        user_id: &str,
        update: &MemberStateUpdate,
    ) -> Result<bool> {
        let base = format!("member_state.{user_id}");
        let mut set = doc! {};
        let mut max = doc! {};
        if let Some(pinned) = update.pinned {
            set.insert(format!("{base}.pinned"), pinned);
        }
        if let Some(archived) = update.archived {
            set.insert(format!("{base}.archived"), archived);
        }
        if let Some(seq) = update.delete_up_to {
            set.insert(format!("{base}.deleted"), true);
            set.insert(format!("{base}.pinned"), false);
            set.insert(format!("{base}.archived"), false);
            max.insert(format!("{base}.cleared_up_to"), seq as i64);
        }
        if update.restore {
            set.insert(format!("{base}.deleted"), false);
        }
        let mut change = doc! {};
        if !set.is_empty() {
            change.insert("$set", set);
        }
        if !max.is_empty() {
            change.insert("$max", max);
        }
        let filter = doc! {"conversation_id": conversation_id, "participants": user_id};
        self.rt();
        if change.is_empty() {
            let found = self
                .conversation_docs()
                .find_one(filter)
                .projection(doc! {"_id": 1})
                .await?;
            return Ok(found.is_some());
        }
        Ok(self
            .conversation_docs()
            .update_one(filter, change)
            .await?
            .matched_count
            == 1)
    }

    async fn last_allocated_sequence(&self, conversation_id: &str) -> Result<u64> {
        self.rt();
        Ok(self
            .counters()
            .find_one(doc! {"_id": conversation_id})
            .await?
            .map(|c| c.last_sequence_number)
            .unwrap_or(0))
    }

    async fn replace_group_members(
        &self,
        conversation_id: &str,
        expected_participants: &[String],
        expected_admins: &[String],
        participants: &[String],
        admins: &[String],
    ) -> Result<bool> {
        let mut filter = doc! {
            "conversation_id": conversation_id,
            "kind": "group",
            "participants": expected_participants,
        };
        if expected_admins.is_empty() {
            filter.insert(
                "$or",
                vec![doc! {"admins": {"$exists": false}}, doc! {"admins": []}],
            );
        } else {
            filter.insert("admins", expected_admins);
        }
        let mut update = doc! {"$set": {"participants": participants, "admins": admins}};
        let mut unset = doc! {};
        for gone in expected_participants
            .iter()
            .filter(|p| !participants.contains(p))
        {
            unset.insert(format!("read_up_to.{gone}"), "");
            unset.insert(format!("member_state.{gone}"), "");
        }
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        self.rt();
        Ok(self
            .conversation_docs()
            .update_one(filter, update)
            .await?
            .matched_count
            == 1)
    }

    async fn update_group_info(
        &self,
        conversation_id: &str,
        name: Option<&str>,
        description: Option<Option<&str>>,
    ) -> Result<bool> {
        let update = name_and_optional_field(name, "description", description);
        let filter = doc! {"conversation_id": conversation_id, "kind": "group"};
        self.rt();
        if update.is_empty() {
            return Ok(self.conversation_docs().find_one(filter).await?.is_some());
        }
        Ok(self
            .conversation_docs()
            .update_one(filter, update)
            .await?
            .matched_count
            == 1)
    }

    async fn messages_page(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<StoredMessage>> {
        let to = to.min(i64::MAX as u64);
        self.rt();
        let cursor = self
            .messages()
            .find(doc! {
                "conversation_id": conversation_id,
                "sequence_number": {"$gte": from as i64, "$lte": to as i64},
            })
            .sort(doc! {"sequence_number": if newest_first { -1 } else { 1 }})
            .limit(limit as i64)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    async fn delete_conversation_data(&self, conversation_id: &str) -> Result<u64> {
        let by_conversation = doc! {"conversation_id": conversation_id};
        self.rt();
        let messages = self
            .messages()
            .delete_many(by_conversation.clone())
            .await?
            .deleted_count;
        self.rt();
        self.claims().delete_many(by_conversation.clone()).await?;
        self.rt();
        self.db
            .collection::<Document>(collections::MEDIA)
            .delete_many(by_conversation.clone())
            .await?;
        self.rt();
        self.counters()
            .delete_one(doc! {"_id": conversation_id})
            .await?;
        self.rt();
        self.conversation_docs().delete_one(by_conversation).await?;
        Ok(messages)
    }

    // ---- The HTTP API: agent registry and devices ----

    async fn insert_agent(&self, agent: &Agent) -> Result<()> {
        self.rt();
        match self.agents().insert_one(agent).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(Error::client(
                ErrorCode::Conflict,
                format!("agent {} already exists", agent.agent_id),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_agent(&self, agent_id: &str) -> Result<bool> {
        self.rt();
        Ok(self
            .agents()
            .delete_one(doc! {"agent_id": agent_id})
            .await?
            .deleted_count
            == 1)
    }

    async fn search_agents(&self, query: &AgentQuery) -> Result<Vec<Agent>> {
        let mut filter = doc! {};
        if let Some(text) = query.text.as_deref().filter(|t| !t.is_empty()) {
            let pattern = regex_escape(text);
            let like = |field: &str| doc! {field: {"$regex": &pattern, "$options": "i"}};
            filter.insert(
                "$or",
                vec![like("name"), like("capabilities"), like("categories")],
            );
        }
        if let Some(capability) = &query.capability {
            filter.insert("capabilities", capability);
        }
        if let Some(category) = &query.category {
            filter.insert("categories", category);
        }
        if let Some(since) = query.online_since {
            filter.insert("last_heartbeat_at", doc! {"$gte": since});
        }
        if let Some(after) = &query.after {
            filter.insert("agent_id", doc! {"$gt": after});
        }
        self.rt();
        let cursor = self
            .agents()
            .find(filter)
            .sort(doc! {"agent_id": 1})
            .limit(query.limit as i64)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    async fn upsert_device(&self, device: &DeviceToken) -> Result<()> {
        let platform =
            mongodb::bson::to_bson(&device.platform).map_err(|e| Error::dependency("bson", e))?;
        for attempt in 0..3 {
            // A token belongs to one user and device at a time: take it away from any other.
            self.rt();
            self.devices()
                .delete_many(doc! {
                    "token": &device.token,
                    "$or": [
                        {"user_id": {"$ne": &device.user_id}},
                        {"device_id": {"$ne": &device.device_id}},
                    ],
                })
                .await?;
            self.rt();
            let result = self
                .devices()
                .update_one(
                    doc! {"user_id": &device.user_id, "device_id": &device.device_id},
                    doc! {
                        "$set": {
                            "platform": platform.clone(),
                            "token": &device.token,
                            "updated_at": device.updated_at,
                        },
                        "$setOnInsert": {"created_at": device.created_at},
                    },
                )
                .upsert(true)
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if is_duplicate_key(&e) && attempt < 2 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool> {
        self.rt();
        Ok(self
            .devices()
            .delete_one(doc! {"user_id": user_id, "device_id": device_id})
            .await?
            .deleted_count
            == 1)
    }

    async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceToken>> {
        self.rt();
        let cursor = self
            .devices()
            .find(doc! {"user_id": user_id})
            .sort(doc! {"device_id": 1})
            .await?;
        Ok(cursor.try_collect().await?)
    }

    // ---- The HTTP API: personal data (GDPR) ----

    async fn user_data(&self, user_id: &str) -> Result<Option<UserData>> {
        let Some(user) = self.user(user_id).await? else {
            return Ok(None);
        };
        let has_password = self.password_hash(user_id).await?.is_some();
        self.rt();
        let sessions: Vec<RefreshToken> = self
            .refresh_tokens()
            .find(doc! {"user_id": user_id})
            .sort(doc! {"created_at": 1})
            .await?
            .try_collect()
            .await?;
        let devices = self.devices_of(user_id).await?;
        let conversations = self.conversations_of(user_id).await?;
        self.rt();
        let messages: Vec<StoredMessage> = self
            .messages()
            .find(doc! {"sender_id": user_id})
            .sort(doc! {"conversation_id": 1, "sequence_number": 1})
            .await?
            .try_collect()
            .await?;
        self.rt();
        let media: Vec<Media> = self
            .db
            .collection::<Media>(collections::MEDIA)
            .find(doc! {"uploader_id": user_id})
            .await?
            .try_collect()
            .await?;
        Ok(Some(UserData {
            user,
            has_password,
            sessions,
            devices,
            conversations,
            messages,
            media,
        }))
    }

    async fn erase_user(&self, user_id: &str, tombstone: &str) -> Result<Erasure> {
        let mut report = Erasure::default();
        let user = self.user(user_id).await?;
        let swap = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .map(|p| if p == user_id { tombstone } else { p.as_str() })
                .map(str::to_string)
                .collect()
        };
        for MemberConversation { conversation, .. } in self.conversations_of(user_id).await? {
            let id = conversation.conversation_id.as_str();
            let mut unset = doc! {
                format!("read_up_to.{user_id}"): "",
                format!("member_state.{user_id}"): "",
            };
            let set = match conversation.kind {
                ConversationKind::Agent => {
                    report.messages_deleted += self.delete_conversation_data(id).await?;
                    report.conversations_deleted += 1;
                    continue;
                }
                ConversationKind::Direct => {
                    unset.insert("pair_key", "");
                    report.conversations_anonymised += 1;
                    doc! {
                        "participants": swap(&conversation.participants),
                        "admins": swap(&conversation.admins),
                    }
                }
                ConversationKind::Group => {
                    let participants: Vec<String> = conversation
                        .participants
                        .iter()
                        .filter(|p| *p != user_id)
                        .cloned()
                        .collect();
                    let mut admins: Vec<String> = conversation
                        .admins
                        .iter()
                        .filter(|a| *a != user_id)
                        .cloned()
                        .collect();
                    if admins.is_empty()
                        && let Some(first) = participants.first()
                    {
                        admins.push(first.clone());
                    }
                    doc! {"participants": participants, "admins": admins}
                }
            };
            self.rt();
            self.conversation_docs()
                .update_one(
                    doc! {"conversation_id": id},
                    doc! {"$set": set, "$unset": unset},
                )
                .await?;
        }
        self.rt();
        self.conversation_docs()
            .update_many(
                doc! {"last_message.sender_id": user_id},
                doc! {"$set": {"last_message.sender_id": tombstone}},
            )
            .await?;

        // Messages they sent stay, attributed to the tombstone (keys re-scoped to it).
        self.rt();
        let sent: Vec<Document> = self
            .db
            .collection::<Document>(collections::MESSAGES)
            .find(doc! {"sender_id": user_id})
            .projection(doc! {"message_id": 1, "idempotency_key": 1})
            .await?
            .try_collect()
            .await?;
        let scope = format!("{user_id}/");
        for m in &sent {
            let message_id = m.get_str("message_id").unwrap_or_default();
            let key = m.get_str("idempotency_key").unwrap_or_default();
            let key = format!("{tombstone}/{}", key.strip_prefix(&scope).unwrap_or(key));
            self.rt();
            self.messages()
                .update_one(
                    doc! {"message_id": message_id},
                    doc! {"$set": {"sender_id": tombstone, "idempotency_key": key}},
                )
                .await?;
        }
        report.messages_anonymised = sent.len() as u64;
        self.rt();
        self.messages()
            .update_many(
                doc! {"receiver_id": user_id},
                doc! {"$set": {"receiver_id": tombstone}},
            )
            .await?;
        for field in ["delivered_to", "read_by"] {
            self.rt();
            self.messages()
                .update_many(doc! {field: user_id}, doc! {"$pull": {field: user_id}})
                .await?;
        }
        // System messages name users by id: name the tombstone instead.
        self.rt();
        let mentions: Vec<StoredMessage> = self
            .messages()
            .find(doc! {"type": "system", "content": {"$regex": regex_escape(user_id)}})
            .await?
            .try_collect()
            .await?;
        for m in mentions {
            self.rt();
            self.messages()
                .update_one(
                    doc! {"message_id": &m.message_id},
                    doc! {"$set": {"content": m.content.replace(user_id, tombstone)}},
                )
                .await?;
        }
        self.rt();
        self.db
            .collection::<Document>(collections::MEDIA)
            .update_many(
                doc! {"uploader_id": user_id},
                doc! {"$set": {"uploader_id": tombstone}},
            )
            .await?;
        self.rt();
        self.claims()
            .delete_many(doc! {"_id": {"$regex": format!("^{}", regex_escape(&scope))}})
            .await?;

        // Account records.
        let mut destinations = Vec::new();
        if let Some(user) = &user {
            if let Some(phone) = &user.phone {
                destinations.push(format!("phone:{phone}"));
            }
            if let Some(email) = &user.email {
                destinations.push(format!("email:{email}"));
            }
        }
        self.rt();
        self.codes()
            .delete_many(doc! {"$or": [
                {"_id": {"$in": &destinations}},
                {"user_id": user_id},
            ]})
            .await?;
        self.rt();
        self.db
            .collection::<Document>(collections::CODE_OUTBOX)
            .delete_many(doc! {"destination": {"$in": &destinations}})
            .await?;
        self.rt();
        self.credentials().delete_one(doc! {"_id": user_id}).await?;
        self.rt();
        self.refresh_tokens()
            .delete_many(doc! {"user_id": user_id})
            .await?;
        self.rt();
        self.devices()
            .delete_many(doc! {"user_id": user_id})
            .await?;
        self.rt();
        self.users().delete_one(doc! {"user_id": user_id}).await?;
        Ok(report)
    }

    // ---- Media (functions/presign) and push (functions/push) ----

    async fn insert_media(&self, media: &Media) -> Result<()> {
        self.rt();
        match self.media_records().insert_one(media).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(Error::client(
                ErrorCode::Conflict,
                format!("media {} already exists", media.media_id),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn media(&self, media_id: &str) -> Result<Option<Media>> {
        self.rt();
        Ok(self
            .media_records()
            .find_one(doc! {"media_id": media_id})
            .await?)
    }

    async fn transition_media(
        &self,
        media_id: &str,
        from: MediaState,
        to: MediaState,
        thumbnail_key: Option<&str>,
    ) -> Result<Option<Media>> {
        let state =
            |s: MediaState| mongodb::bson::to_bson(&s).map_err(|e| Error::dependency("bson", e));
        let mut set = doc! {"state": state(to)?};
        if let Some(key) = thumbnail_key {
            set.insert("thumbnail_key", key);
        }
        self.rt();
        Ok(self
            .media_records()
            .find_one_and_update(
                doc! {"media_id": media_id, "state": state(from)?},
                doc! {"$set": set},
            )
            .return_document(ReturnDocument::After)
            .await?)
    }

    async fn delete_device_token(
        &self,
        user_id: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool> {
        self.rt();
        Ok(self
            .devices()
            .delete_one(doc! {"user_id": user_id, "device_id": device_id, "token": token})
            .await?
            .deleted_count
            == 1)
    }
}

impl MongoStore {
    fn media_records(&self) -> Collection<Media> {
        self.db.collection(collections::MEDIA)
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
