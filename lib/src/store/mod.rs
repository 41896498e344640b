//! Durable state in MongoDB, the single source of truth.
//!
//! One narrow port per concept, so a function depends on what it uses, and one adapter,
//! [`MongoStore`], that implements them all:
//!
//! | module | port | collections |
//! |---|---|---|
//! | [`messages`] | [`MessageStore`] | `messages` (with the outbox) |
//! | [`conversations`] | [`ConversationStore`] | `conversations` |
//! | [`accounts`] | [`AccountStore`] | `users`, `credentials`, `verification_codes`, `refresh_tokens` |
//! | [`agents`] | [`AgentStore`] | `agents` |
//! | [`devices`] | [`DeviceStore`] | `devices` |
//! | [`media`] | [`MediaStore`] | `media` |
//! | [`gdpr`] | [`GdprStore`] | all of the above, for one user |
//! | [`dead_letters`] | [`DeadLetterStore`] | `dead_letters` |
//! | [`deliveries`] | [`DeliveryStore`] | `device_cursors` |
//! | [`device_keys`] | [`KeyDirectoryStore`] | `device_keys`, `one_time_keys` |
//! | [`to_device`] | [`ToDeviceStore`] | `to_device` |
//!
//! [`schema`] names every collection and creates the indexes. [`Store`] is all the ports at once,
//! what the shared [`crate::context::Context`] carries.
//!
//! Every operation has a deadline ([`StoreOptions::operation_timeout`]): a stalled server gives
//! `unavailable` in bounded time instead of silence. Round trips are counted in one place, the
//! driver's command events ([`MongoStore::round_trips`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};
use crate::model::MediaState;
use crate::model::{Agent, Conversation, DeadLetter, LastMessage, NewMessage, StoredMessage, User};
use crate::model::{
    AgentQuery, ConversationKind, Credentials, DeviceToken, Erasure, Media, MemberConversation,
    MemberState, MemberStateUpdate, RefreshToken, RefreshUse, UserData, VerificationCode,
};
use crate::protocol::MessageStatus;

/// Default message retention (seeds: 90 days); `MESSAGE_RETENTION_DAYS` overrides it.
pub const DEFAULT_MESSAGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Dead letters are kept this long.
pub const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
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

pub mod accounts;
pub mod agents;
pub mod conversations;
pub mod dead_letters;
pub mod deliveries;
pub mod device_keys;
pub mod devices;
pub mod gdpr;
pub mod media;
pub mod messages;
pub mod schema;
pub mod to_device;

pub use accounts::AccountStore;
pub use agents::AgentStore;
pub use conversations::ConversationStore;
pub use dead_letters::DeadLetterStore;
pub use deliveries::DeliveryStore;
pub use device_keys::{ClaimedKey, KeyDirectoryStore, Published};
pub use devices::DeviceStore;
pub use gdpr::GdprStore;
pub use media::MediaStore;
pub use messages::{MessageStore, fingerprint, scoped_key};
pub use schema::{SCHEMA_VERSION, SchemaState, collections};
pub use to_device::ToDeviceStore;

/// Every durable-state port at once: what the shared context carries. Each function may ask for
/// a narrower port (`&dyn MessageStore`); a `&dyn Store` converts to any of them.
pub trait Store:
    MessageStore
    + ConversationStore
    + AccountStore
    + AgentStore
    + DeviceStore
    + MediaStore
    + GdprStore
    + DeadLetterStore
    + DeliveryStore
    + KeyDirectoryStore
    + ToDeviceStore
{
}

impl<T> Store for T where
    T: MessageStore
        + ConversationStore
        + AccountStore
        + AgentStore
        + DeviceStore
        + MediaStore
        + GdprStore
        + DeadLetterStore
        + DeliveryStore
        + KeyDirectoryStore
        + ToDeviceStore
{
}

/// Options of the MongoDB adapter.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Message retention (TTL on `messages.created_at`).
    pub message_retention: Duration,
    /// Longest any one operation may take before it fails with `unavailable` (a stalled or
    /// unreachable server). Bulk operations on one user's data (GDPR) get ten times this.
    pub operation_timeout: Duration,
    /// How long after its insert a message's fan-out counts as overdue for the outbox sweeper.
    pub fanout_grace: Duration,
    /// Most unacknowledged `to_device` messages one device's queue holds.
    pub max_queued_to_device: u64,
}

/// Default [`StoreOptions::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            message_retention: DEFAULT_MESSAGE_RETENTION,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            fanout_grace: messages::FANOUT_GRACE,
            max_queued_to_device: to_device::MAX_QUEUED_TO_DEVICE,
        }
    }
}

/// The MongoDB adapter.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    options: StoreOptions,
    round_trips: Arc<AtomicU64>,
    senders: Arc<messages::SendQueues>,
    /// Set by [`MongoStore::check_schema_at_start`]: every operation waits for the schema
    /// check to have passed once.
    schema_gate: Option<Arc<tokio::sync::OnceCell<()>>>,
}

impl MongoStore {
    /// Connects to `uri` and uses database `db_name`. Does not create indexes: that is
    /// [`MongoStore::migrate`], a deploy-time step; a function calls
    /// [`MongoStore::check_schema_at_start`].
    pub async fn connect(uri: &str, db_name: &str, options: StoreOptions) -> Result<Self> {
        let mut client_options = mongodb::options::ClientOptions::parse(uri).await?;
        // A server that cannot be reached is found out within the operation deadline.
        client_options
            .server_selection_timeout
            .get_or_insert(options.operation_timeout);
        client_options
            .connect_timeout
            .get_or_insert(options.operation_timeout);
        // Every command is one round trip on a connection checked out of the pool for it: count
        // and time them here from checkout to check-in, for benchmarks and `crate::metrics`.
        // (Command monitoring would say the same but turns every command and reply into a
        // `Document` to report it: 6 % of the stack's CPU in the 1:1 benchmark.)
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        let checked_out = std::sync::Mutex::new(HashMap::new());
        client_options.cmap_event_handler = Some(mongodb::event::EventHandler::callback(
            move |event: mongodb::event::cmap::CmapEvent| {
                use mongodb::event::cmap::CmapEvent;
                match event {
                    CmapEvent::ConnectionCheckedOut(e) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        checked_out
                            .lock()
                            .expect("never poisoned")
                            .insert((e.address, e.connection_id), std::time::Instant::now());
                    }
                    CmapEvent::ConnectionCheckedIn(e) => {
                        let since = checked_out
                            .lock()
                            .expect("never poisoned")
                            .remove(&(e.address, e.connection_id));
                        if let Some(since) = since {
                            crate::metrics::record(crate::metrics::Stage::Mongo, since.elapsed());
                        }
                    }
                    // A connection that failed while checked out is closed, not checked in.
                    CmapEvent::ConnectionClosed(e) => {
                        checked_out
                            .lock()
                            .expect("never poisoned")
                            .remove(&(e.address, e.connection_id));
                    }
                    _ => {}
                }
            },
        ));
        let client = mongodb::Client::with_options(client_options)?;
        Ok(Self {
            db: client.database(db_name),
            options,
            round_trips,
            senders: Arc::default(),
            schema_gate: None,
        })
    }

    /// What a function does as it starts: the schema check ([`MongoStore::check_schema`], one
    /// read) starts now, in the background, and every operation of the returned store waits
    /// until it has passed. A start does not wait for MongoDB's handshakes (most of a cold
    /// start against a local server, tens of milliseconds against a remote one): the first
    /// event that needs MongoDB waits for them instead, and one that does not (a heartbeat)
    /// does not. On a database not migrated for this build every operation fails with the
    /// check's reason (what to run), and passes once the migration has run; the failure is
    /// also logged at once. Must be called within a tokio runtime.
    pub fn check_schema_at_start(mut self) -> Self {
        self.schema_gate = Some(Arc::default());
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.schema_checked().await {
                tracing::error!(error = %e, "the database cannot be used yet");
            }
        });
        self
    }

    /// Waits for the schema check to have passed (at once when it has, or without a gate).
    async fn schema_checked(&self) -> Result<()> {
        match &self.schema_gate {
            // Only a pass is kept: a failure (not migrated yet, unreachable) is checked again
            // by the next operation.
            Some(gate) => gate
                .get_or_try_init(|| self.check_schema())
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// The database handle, for tests and diagnostics.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Round trips made so far (for benchmarks).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Runs one operation within [`StoreOptions::operation_timeout`]; past it, `unavailable`.
    async fn deadline<T>(&self, operation: impl Future<Output = Result<T>>) -> Result<T> {
        self.checked_within(self.options.operation_timeout, operation)
            .await
    }

    /// [`MongoStore::deadline`] for bulk operations on one user's data (export, erasure).
    async fn deadline_long<T>(&self, operation: impl Future<Output = Result<T>>) -> Result<T> {
        self.checked_within(self.options.operation_timeout * 10, operation)
            .await
    }

    /// Runs `operation` once the schema check has passed, both within `limit`.
    async fn checked_within<T>(
        &self,
        limit: Duration,
        operation: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        within(limit, async {
            self.schema_checked().await?;
            operation.await
        })
        .await
    }

    fn messages(&self) -> Collection<StoredMessage> {
        self.db.collection(collections::MESSAGES)
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

async fn within<T>(limit: Duration, operation: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result,
        Err(_) => Err(Error::timeout("mongodb", limit)),
    }
}

/// Server error code of a command or write failure.
fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    server_failure(e).map(|(code, _)| code)
}

/// Code and message of a command or write failure (an insert of many: its first).
fn server_failure(e: &mongodb::error::Error) -> Option<(i32, &str)> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some((c.code, c.message.as_str())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some((w.code, w.message.as_str())),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()?
            .first()
            .map(|w| (w.code, w.message.as_str())),
        _ => None,
    }
}

/// Whether `e` is a unique-index violation (E11000).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    command_code(e) == Some(11000)
}

/// The unique index a duplicate-key error (E11000) names, when it names one: the server's
/// message reads `E11000 duplicate key error collection: <ns> index: <name> dup key: ...`.
pub fn duplicate_index(e: &mongodb::error::Error) -> Option<&str> {
    match server_failure(e)? {
        (11000, message) => index_named(message),
        _ => None,
    }
}

/// The index an E11000 message names (`... index: <name> dup key: ...`); anything else is
/// `None`, and so is an older server's `index: <db>.<collection>.$<name>` for our names (the
/// caller then treats the error as any duplicate key).
fn index_named(message: &str) -> Option<&str> {
    message.split(" index: ").nth(1)?.split_whitespace().next()
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

fn after(d: Duration) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() + d.as_millis() as i64)
}

impl MongoStore {
    fn media_records(&self) -> Collection<Media> {
        self.db.collection(collections::MEDIA)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_index_of_a_duplicate_key_message_is_read_from_mongodbs_own_words() {
        let modern = "E11000 duplicate key error collection: messaging.messages index: \
                      conversation_sequence_unique dup key: { conversation_id: \"c\", \
                      sequence_number: 5 }";
        assert_eq!(
            super::index_named(modern),
            Some(super::schema::CONVERSATION_SEQUENCE_INDEX)
        );
        // Servers before 3.4 named it with its namespace: not ours, so any duplicate key.
        let old = "E11000 duplicate key error index: \
                   messaging.messages.$conversation_sequence_unique dup key: { : \"c\", : 5 }";
        assert_ne!(
            super::index_named(old),
            Some(super::schema::CONVERSATION_SEQUENCE_INDEX)
        );
        assert_eq!(super::index_named("E11000 duplicate key error"), None);
    }
}
