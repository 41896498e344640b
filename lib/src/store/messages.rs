//! Messages: stored exactly once with a dense sequence number, read back by range or id,
//! receipts, and the outbox of after-commit work.
//!
//! # Sending: two round trips, no lock, no hole
//!
//! [`MessageStore::insert_message`] makes the durable-ACK, exactly-once and dense-order
//! guarantees true without a counter, a claim or a transaction:
//!
//! 1. **read** the conversation's highest sequence number `n` (the newest message, through the
//!    unique `{conversation_id, sequence_number}` index; only when the conversation has no message
//!    left, its `last_sequence_number`, so numbers never restart after retention expired
//!    everything);
//! 2. **insert** the message with `n + 1`. The unique indexes decide: `{conversation_id,
//!    sequence_number}` lets exactly one message take `n + 1`, `idempotency_key` (scoped by sender)
//!    lets exactly one message exist per key.
//!
//! A duplicate-key error on the sequence index means another sender took `n + 1`: we go again
//! from step 1 (the key index still stops a second message on the next insert). On any other
//! duplicate-key error the message with our key is looked up (one more round trip): found, it
//! is the answer to a retry (or an `idempotency_conflict` when the request differs); not found,
//! we go again from step 1. So the ack path costs 2 MongoDB round trips (1 when this process
//! stored the conversation's last message, step 1 remembered, or when the caller passes a recent
//! number, [`NewMessage::last_sequence_hint`]: the hint every inserter keeps in Redis, which makes
//! one round trip the rule whichever process or Lambda sandbox sends), 3 for a retried send, 2
//! more per lost race (a stale floor).
//!
//! Why there is never a hole, whatever crashes: a number exists only as a stored message, and a
//! message is only ever inserted with (an existing message's number) + 1, so the numbers of a
//! conversation are always 1..=n (messages deleted since, by retention or a conversation
//! delete, are reported `missing` by retransmit). Why one message never gets two numbers: only
//! one insert per key can succeed, so a slow or stalled database makes a retry wait or fail,
//! never allocate again. Nothing holds a lock, so a sender that dies mid-send blocks no one.
//!
//! # The outbox
//!
//! A message is inserted with `fanout_due_at` (a little after now): the after-commit work (fan-out
//! to devices, push notifications) it still needs, in the same write as the message itself. The
//! store function clears it when that work is done ([`MessageStore::fanout_done`]); a sweeper
//! re-publishes what is overdue ([`MessageStore::overdue_fanouts`]). So an acknowledged message
//! reaches everyone even if every process dies right after the ack.

use async_trait::async_trait;

use super::*;

/// Default of `StoreOptions::fanout_grace`: how long after its insert a message's fan-out counts
/// as overdue for the sweeper. Far longer than the normal path takes (milliseconds), short
/// enough that a lost event costs seconds.
pub const FANOUT_GRACE: Duration = Duration::from_secs(10);

/// Where a message stands, without its content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageState {
    /// Server id.
    pub message_id: String,
    /// Its number in the conversation.
    pub sequence_number: u64,
    /// Who sent it.
    pub sender_id: String,
    /// Its delivery state across all its recipients.
    #[serde(default)]
    pub status: MessageStatus,
}

/// Most messages [`MessageStore::unread_between`] looks at.
pub const RECEIPTS_SCAN_LIMIT: i64 = 2000;

/// Messages: stored exactly once with their sequence number, read back by range or id, receipts,
/// the outbox.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Stores a message exactly once per `(sender, idempotency_key)` with the conversation's next
    /// sequence number, and its fan-out in the outbox; see the module docs.
    async fn insert_message(&self, message: NewMessage) -> Result<Inserted>;
    /// The highest sequence number stored in a conversation (0 when none ever was).
    async fn last_sequence(&self, conversation_id: &str) -> Result<u64>;
    /// Messages of a conversation with `from <= sequence_number <= to`, ascending, at most `limit`.
    async fn messages_in_range(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// Messages after a floor in each of several conversations: for every `(conversation, floor)`
    /// the messages with a sequence number above `floor`, ordered by conversation then sequence
    /// number, at most `limit` in all. One round trip, whatever the number of conversations.
    async fn messages_after(
        &self,
        floors: &[(String, u64)],
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// The messages of a conversation with `from <= sequence_number <= to` not read by
    /// everyone yet (the newest [`RECEIPTS_SCAN_LIMIT`] of a longer range), without their
    /// content: what a group's coalesced receipts concern.
    async fn unread_between(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<MessageState>>;
    /// One message by id.
    async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>>;
    /// Messages by id (any order; missing ids are skipped).
    async fn messages_by_ids(&self, message_ids: &[String]) -> Result<Vec<StoredMessage>>;
    /// Moves messages' status forward (never backwards); returns how many changed.
    async fn advance_status(&self, message_ids: &[String], status: MessageStatus) -> Result<u64>;
    /// Records that `user_id` received (or read) messages of direct and agent conversations,
    /// where that user is the only recipient, so the message's status moves with the receipt
    /// in the same write (never backwards). Returns the messages as updated: with one id, only
    /// if this receipt moved it (a repeated receipt, or a late `delivered` after `read`, returns
    /// nothing to tell); with several, all of them. The sender's own messages are ignored, and
    /// with `conversation_id` so are messages of any other conversation. (Group messages keep
    /// no per-member lists: see `crate::group_receipts`.)
    async fn record_receipts(
        &self,
        message_ids: &[String],
        conversation_id: Option<&str>,
        user_id: &str,
        status: MessageStatus,
    ) -> Result<Vec<StoredMessage>>;
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
    /// Up to `limit` messages whose fan-out was due at or before `now` and is not done, oldest
    /// first; each is given a new due time (three fan-out graces later) so that concurrent
    /// sweepers and the next sweeps leave it alone while it is being retried.
    async fn overdue_fanouts(&self, now: DateTime, limit: usize) -> Result<Vec<StoredMessage>>;
    /// The ids of up to `limit` messages still in the outbox whose fan-out was due at or before
    /// `now`, oldest first, without taking them (the sweep first clears those whose fan-out is
    /// known to be done, see `crate::outbox`).
    async fn overdue_fanout_ids(&self, now: DateTime, limit: usize) -> Result<Vec<String>>;
    /// The after-commit work of a message is done: take it out of the outbox (idempotent).
    async fn fanout_done(&self, message_id: &str) -> Result<()>;
    /// [`MessageStore::fanout_done`] for many messages in one write; returns how many left the
    /// outbox.
    async fn fanouts_done(&self, message_ids: &[String]) -> Result<u64>;
}

/// A move of messages' status to `status` (not `Sent`): the stored value, and the values it
/// may replace (strictly earlier ones: a status never goes backwards).
fn status_move(status: MessageStatus) -> (&'static str, &'static [&'static str]) {
    match status {
        MessageStatus::Sent => ("sent", &[]),
        MessageStatus::Delivered => ("delivered", &["sent"]),
        MessageStatus::Read => ("read", &["sent", "delivered"]),
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn insert_message(&self, new: NewMessage) -> Result<Inserted> {
        let key = scoped_key(&new.sender_id, &new.idempotency_key);
        let fingerprint = fingerprint(&new);
        let message_id = uuid::Uuid::now_v7().to_string();
        self.deadline(async move {
            // Sends to one conversation from this process go one at a time: they would only
            // race each other for the same number. Across processes the unique index decides.
            let mut turn = self.senders.turn(&new.conversation_id).await;
            let mut hint = new.last_sequence_hint;
            let mut attempt: u32 = 0;
            loop {
                // The number this process stored last, or the caller's hint (noted by whichever
                // process stored last), is the next one's floor, unless someone stored since (the
                // insert then collides and the floor is read). Only recent ones: retention may
                // since have removed messages above them, and an insert above an expired number
                // would not collide. Both are numbers stored: the higher is the likelier last.
                let remembered = turn
                    .take()
                    .filter(|(_, at)| at.elapsed() < FLOOR_TRUSTED_FOR)
                    .map(|(last, _)| last);
                let last = match remembered.max(hint.take()) {
                    Some(last) => last,
                    None => self.last_sequence(&new.conversation_id).await?,
                };
                let now = DateTime::now();
                let message = StoredMessage {
                    message_id: message_id.clone(),
                    idempotency_key: key.clone(),
                    fingerprint: fingerprint.clone(),
                    conversation_id: new.conversation_id.clone(),
                    sequence_number: last + 1,
                    sender_id: new.sender_id.clone(),
                    receiver_id: new.receiver_id.clone(),
                    body: new.body.clone(),
                    client_timestamp: new.client_timestamp,
                    timestamp: now,
                    status: MessageStatus::Sent,
                    delivered_to: Vec::new(),
                    read_by: Vec::new(),
                    created_at: now,
                    fanout_due_at: Some(after(self.options.fanout_grace)),
                };
                let number_taken = match self.messages().insert_one(&message).await {
                    Ok(_) => {
                        *turn = Some((message.sequence_number, std::time::Instant::now()));
                        return Ok(Inserted {
                            message,
                            duplicate: false,
                        });
                    }
                    // Someone else took `last + 1` (this process's floor was stale): no need
                    // to look for our key now, the next insert meets it if it is there.
                    Err(e) if duplicate_index(&e) == Some(schema::CONVERSATION_SEQUENCE_INDEX) => {
                        true
                    }
                    Err(e) if is_duplicate_key(&e) => false,
                    Err(e) => return Err(e.into()),
                };
                // Our key already stored (a retry), or someone else took `last + 1`.
                if !number_taken && let Some(existing) = self.message_by_key(&key).await? {
                    if existing.fingerprint != fingerprint {
                        return Err(Error::client(
                            ErrorCode::IdempotencyConflict,
                            "idempotency_key was already used for a different message",
                        ));
                    }
                    return Ok(Inserted {
                        message: existing,
                        duplicate: true,
                    });
                }
                // Lost the race for the number: try the next one. Many senders racing in one
                // conversation spread out a little instead of colliding again at once.
                attempt += 1;
                if attempt > 2 {
                    let jitter = rand_below(1 + attempt.min(20) as u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
            }
        })
        .await
    }

    async fn last_sequence(&self, conversation_id: &str) -> Result<u64> {
        self.deadline(async move {
            let newest = self.newest_sequence(conversation_id).await?;
            if let Some(n) = newest {
                return Ok(n);
            }
            // No message (a new conversation, or retention expired them all): the number the
            // conversation had reached, so numbering never starts over.
            let floor = self
                .conversation_docs()
                .find_one(doc! {"conversation_id": conversation_id})
                .projection(doc! {"last_sequence_number": 1})
                .await?
                .and_then(|d| bson_u64(&d, "last_sequence_number"))
                .unwrap_or(0);
            Ok(floor)
        })
        .await
    }

    async fn messages_in_range(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            let cursor = self
                .messages()
                .find(doc! {
                    "conversation_id": conversation_id,
                    "sequence_number": {"$gte": seq(from), "$lte": seq(to)},
                })
                .sort(doc! {"sequence_number": 1})
                .limit(limit as i64)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn unread_between(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<MessageState>> {
        self.deadline(async move {
            let cursor = self
                .messages()
                .clone_with_type::<MessageState>()
                .find(doc! {
                    "conversation_id": conversation_id,
                    "sequence_number": {"$gte": seq(from), "$lte": seq(to)},
                    "status": {"$ne": "read"},
                })
                .projection(doc! {"message_id": 1, "sequence_number": 1, "sender_id": 1, "status": 1, "_id": 0})
                .sort(doc! {"sequence_number": -1})
                .limit(RECEIPTS_SCAN_LIMIT)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>> {
        self.deadline(async move {
            Ok(self
                .messages()
                .find_one(doc! {"message_id": message_id})
                .await?)
        })
        .await
    }

    async fn messages_by_ids(&self, message_ids: &[String]) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            if message_ids.is_empty() {
                return Ok(Vec::new());
            }
            let cursor = self
                .messages()
                .find(doc! {"message_id": {"$in": message_ids}})
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn advance_status(&self, message_ids: &[String], status: MessageStatus) -> Result<u64> {
        self.deadline(async move {
            if message_ids.is_empty() || status == MessageStatus::Sent {
                return Ok(0);
            }
            let (status, earlier) = status_move(status);
            let result = self
                .messages()
                .update_many(
                    doc! {"message_id": {"$in": message_ids}, "status": {"$in": earlier}},
                    doc! {"$set": {"status": status}},
                )
                .await?;
            Ok(result.modified_count)
        })
        .await
    }

    async fn record_receipts(
        &self,
        message_ids: &[String],
        conversation_id: Option<&str>,
        user_id: &str,
        status: MessageStatus,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            if message_ids.is_empty() || status == MessageStatus::Sent {
                return Ok(Vec::new());
            }
            // Reading implies receiving; the only recipient's receipt is the message's status.
            let receipt = match status {
                MessageStatus::Read => doc! {"delivered_to": user_id, "read_by": user_id},
                _ => doc! {"delivered_to": user_id},
            };
            let (new_status, earlier) = status_move(status);
            let update = doc! {"$addToSet": receipt, "$set": {"status": new_status}};
            if let [message_id] = message_ids {
                // The common case (one delivery ack): update and read back in one round trip.
                let mut filter = doc! {
                    "message_id": message_id,
                    "sender_id": {"$ne": user_id},
                    "status": {"$in": earlier},
                };
                if let Some(conversation_id) = conversation_id {
                    filter.insert("conversation_id", conversation_id);
                }
                let updated = self
                    .messages()
                    .find_one_and_update(filter, update)
                    .return_document(ReturnDocument::After)
                    .await?;
                return Ok(updated.into_iter().collect());
            }
            let mut filter = doc! {
                "message_id": {"$in": message_ids},
                "sender_id": {"$ne": user_id},
                "status": {"$in": earlier},
            };
            if let Some(conversation_id) = conversation_id {
                filter.insert("conversation_id", conversation_id);
            }
            self.messages().update_many(filter, update).await?;
            let mut updated = self.messages_by_ids(message_ids).await?;
            updated.retain(|m| conversation_id.is_none_or(|c| m.conversation_id == c));
            Ok(updated)
        })
        .await
    }

    async fn messages_page(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            let cursor = self
                .messages()
                .find(doc! {
                    "conversation_id": conversation_id,
                    "sequence_number": {"$gte": seq(from), "$lte": seq(to)},
                })
                .sort(doc! {"sequence_number": if newest_first { -1 } else { 1 }})
                .limit(limit as i64)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn messages_after(
        &self,
        floors: &[(String, u64)],
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            if floors.is_empty() || limit == 0 {
                return Ok(Vec::new());
            }
            let clauses: Vec<Document> = floors
                .iter()
                .map(|(conversation_id, floor)| {
                    doc! {
                        "conversation_id": conversation_id,
                        "sequence_number": {"$gt": seq(*floor)},
                    }
                })
                .collect();
            let cursor = self
                .messages()
                .find(doc! {"$or": clauses})
                .sort(doc! {"conversation_id": 1, "sequence_number": 1})
                .limit(limit as i64)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn overdue_fanouts(&self, now: DateTime, limit: usize) -> Result<Vec<StoredMessage>> {
        let retry_at = DateTime::from_millis(
            now.timestamp_millis() + 3 * self.options.fanout_grace.as_millis() as i64,
        );
        self.deadline(async move {
            let due: Vec<StoredMessage> = self
                .messages()
                .find(doc! {"fanout_due_at": {"$lte": now}})
                .sort(doc! {"fanout_due_at": 1})
                .limit(limit as i64)
                .await?
                .try_collect()
                .await?;
            let mut taken = Vec::with_capacity(due.len());
            for mut message in due {
                // Compare-and-set on the due time: of two sweepers, one takes the message.
                let moved = self
                    .messages()
                    .update_one(
                        doc! {"message_id": &message.message_id, "fanout_due_at": message.fanout_due_at},
                        doc! {"$set": {"fanout_due_at": retry_at}},
                    )
                    .await?;
                if moved.modified_count == 1 {
                    message.fanout_due_at = Some(retry_at);
                    taken.push(message);
                }
            }
            Ok(taken)
        })
        .await
    }

    async fn overdue_fanout_ids(&self, now: DateTime, limit: usize) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Id {
            message_id: String,
        }
        self.deadline(async move {
            let ids: Vec<Id> = self
                .messages()
                .clone_with_type::<Id>()
                .find(doc! {"fanout_due_at": {"$lte": now}})
                .sort(doc! {"fanout_due_at": 1})
                .projection(doc! {"message_id": 1, "_id": 0})
                .limit(limit as i64)
                .await?
                .try_collect()
                .await?;
            Ok(ids.into_iter().map(|id| id.message_id).collect())
        })
        .await
    }

    async fn fanout_done(&self, message_id: &str) -> Result<()> {
        self.fanouts_done(std::slice::from_ref(&message_id.to_string()))
            .await
            .map(|_| ())
    }

    async fn fanouts_done(&self, message_ids: &[String]) -> Result<u64> {
        if message_ids.is_empty() {
            return Ok(0);
        }
        self.deadline(async move {
            let cleared = self
                .messages()
                .update_many(
                    doc! {"message_id": {"$in": message_ids}, "fanout_due_at": {"$exists": true}},
                    doc! {"$unset": {"fanout_due_at": ""}},
                )
                .await?;
            Ok(cleared.modified_count)
        })
        .await
    }
}

impl MongoStore {
    async fn message_by_key(&self, scoped_key: &str) -> Result<Option<StoredMessage>> {
        Ok(self
            .messages()
            .find_one(doc! {"idempotency_key": scoped_key})
            .await?)
    }

    async fn newest_sequence(&self, conversation_id: &str) -> Result<Option<u64>> {
        Ok(self
            .db
            .collection::<Document>(collections::MESSAGES)
            .find_one(doc! {"conversation_id": conversation_id})
            .sort(doc! {"sequence_number": -1})
            .projection(doc! {"sequence_number": 1})
            .await?
            .and_then(|d| bson_u64(&d, "sequence_number")))
    }
}

/// One queue per conversation of the sends this process is making (see
/// [`MessageStore::insert_message`]), holding the number this process stored there last: the
/// next send's floor without reading it (a hint: a send that collides reads the real one).
#[derive(Default)]
pub struct SendQueues {
    queues: std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<RememberedFloor>>>>,
}

/// The number a process stored last in a conversation, and when.
pub type RememberedFloor = Option<(u64, std::time::Instant)>;

/// How long a remembered number is used without reading: far below any message retention
/// (a day at least), so no message above it can have expired meanwhile.
const FLOOR_TRUSTED_FOR: Duration = Duration::from_secs(60);

/// Most conversations whose last number [`SendQueues`] remembers; past it, the idle ones are
/// forgotten (their next send reads the number).
const SEND_QUEUES_REMEMBERED: usize = 1024;

impl SendQueues {
    /// Waits for this process's turn to send to `conversation_id`; the turn ends when the
    /// returned guard is dropped. The guard holds the last number this process stored there
    /// and when (`None`: unknown); set it to what the turn stored.
    pub async fn turn(
        &self,
        conversation_id: &str,
    ) -> tokio::sync::OwnedMutexGuard<RememberedFloor> {
        let queue = {
            let mut queues = self.queues.lock().expect("send queues");
            if queues.len() >= SEND_QUEUES_REMEMBERED && !queues.contains_key(conversation_id) {
                queues.retain(|_, q| std::sync::Arc::strong_count(q) > 1);
            }
            queues
                .entry(conversation_id.to_string())
                .or_default()
                .clone()
        };
        queue.lock_owned().await
    }
}

/// A sequence number as stored (BSON int64). Numbers past `i64::MAX` cannot exist; a bound past
/// it means "all of them", never a negative number that would match everything or nothing.
pub fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An unsigned number field of a raw document (int32 or int64).
fn bson_u64(document: &Document, field: &str) -> Option<u64> {
    match document.get(field)? {
        mongodb::bson::Bson::Int64(n) => u64::try_from(*n).ok(),
        mongodb::bson::Bson::Int32(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // No need for a random-number generator to spread a few milliseconds.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n.max(1)
}

/// SHA-256 over every field that makes a send what it is, so a retry can be told from a reuse of
/// the key for something else.
pub fn fingerprint(m: &NewMessage) -> String {
    let mut h = Sha256::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let forwarded = m
        .body
        .forwarded_from
        .as_ref()
        .map(|f| format!("{}/{}", f.conversation_id, f.message_id))
        .unwrap_or_default();
    let location = m
        .body
        .location
        .as_ref()
        .map(|l| format!("{},{}", l.latitude, l.longitude))
        .unwrap_or_default();
    for part in [
        m.conversation_id.as_str(),
        m.sender_id.as_str(),
        &opt(&m.receiver_id),
        &format!("{:?}", m.body.message_type),
        m.body.content.as_str(),
        &opt(&m.body.media_url),
        &opt(&m.body.reply_to_message_id),
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
