//! The domain model: what is stored in MongoDB and what travels in CloudEvents.
//!
//! Documents use BSON dates for every time field that an index expires on (`created_at`,
//! `expires_at`), because TTL indexes only act on dates. Times that go on the wire are milliseconds
//! since the epoch, as in the seeds. Sequence numbers are `u64` in Rust and stored as BSON int64.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

use crate::protocol::{DeliveredMessage, MessageBody, MessageStatus, MessageType, PresenceStatus};

/// Largest number of participants in a group conversation.
pub const MAX_GROUP_PARTICIPANTS: usize = 100;

/// A person using the product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Stable id (UUID).
    pub user_id: String,
    /// E.164 phone number, unique when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Email address, unique when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Creation time.
    pub created_at: DateTime,
    /// Last time the user's last connection closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime>,
    /// Last known online state.
    #[serde(default)]
    pub status: PresenceStatus,
}

/// Shape of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Two users.
    Direct,
    /// Up to [`MAX_GROUP_PARTICIPANTS`] users.
    Group,
    /// A user and an agent.
    Agent,
}

/// Role of a participant in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May add and remove participants.
    Admin,
    /// Ordinary participant.
    #[default]
    Member,
}

/// A conversation: 1:1, group, or with an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Stable id (UUID).
    pub conversation_id: String,
    /// 1:1, group, or agent.
    pub kind: ConversationKind,
    /// Every participant's id, agents included (an agent's id is its agent id).
    pub participants: Vec<String>,
    /// Admins of a group (subset of participants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// The agent of an agent conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// For agent conversations without a fixed agent: the capability an agent must have to be
    /// routed the user's messages (else the default agent answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_capability: Option<String>,
    /// Group name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Group description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time.
    pub created_at: DateTime,
    /// Time of the last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_at: Option<DateTime>,
    /// Highest sequence number stored in this conversation (maintained by the store function).
    #[serde(default)]
    pub last_sequence_number: u64,
    /// Preview metadata of the last message (never its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<LastMessage>,
    /// Per participant: highest sequence number read. Unread = `last_sequence_number` - this.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub read_up_to: std::collections::BTreeMap<String, u64>,
}

/// Preview metadata of a conversation's last message: who, when, what kind; no content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastMessage {
    /// The message.
    pub message_id: String,
    /// Its position.
    pub sequence_number: u64,
    /// Its author.
    pub sender_id: String,
    /// Its kind.
    pub message_type: MessageType,
    /// Its server time.
    pub at: DateTime,
}

impl Conversation {
    /// A conversation of `kind` between `participants`, created now: no admins, no agent, no
    /// name, nothing sent yet. Set the rest with struct update syntax.
    pub fn new(
        conversation_id: impl Into<String>,
        kind: ConversationKind,
        participants: Vec<String>,
    ) -> Self {
        Self {
            conversation_id: conversation_id.into(),
            kind,
            participants,
            admins: Vec::new(),
            agent_id: None,
            agent_capability: None,
            name: None,
            description: None,
            created_at: DateTime::now(),
            last_message_at: None,
            last_sequence_number: 0,
            last_message: None,
            read_up_to: Default::default(),
        }
    }

    /// Checks the shape rules: at least two distinct participants, groups at most
    /// [`MAX_GROUP_PARTICIPANTS`], admins and agent among the participants, no `.` or `$` in ids
    /// (they become field names of `read_up_to`).
    pub fn validate(&self) -> crate::Result<()> {
        let mut unique: Vec<&str> = self.participants.iter().map(String::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != self.participants.len() {
            return Err(crate::Error::invalid("participants must be distinct"));
        }
        // An agent conversation without a fixed agent is the user alone; the agent is routed.
        let routed = self.kind == ConversationKind::Agent && self.agent_id.is_none();
        if routed && unique.len() != 1 {
            return Err(crate::Error::invalid(
                "an agent conversation without a fixed agent has the user as its only participant",
            ));
        }
        if !routed && unique.len() < 2 {
            return Err(crate::Error::invalid(
                "a conversation needs at least two participants",
            ));
        }
        if self.kind == ConversationKind::Group && unique.len() > MAX_GROUP_PARTICIPANTS {
            return Err(crate::Error::invalid(format!(
                "a group has at most {MAX_GROUP_PARTICIPANTS} participants ({} given)",
                unique.len()
            )));
        }
        if self.kind != ConversationKind::Group && !routed && unique.len() != 2 {
            return Err(crate::Error::invalid(
                "1:1 and agent conversations have two participants",
            ));
        }
        if let Some(agent) = &self.agent_id
            && !self.has_participant(agent)
        {
            return Err(crate::Error::invalid("the agent must be a participant"));
        }
        if self.admins.iter().any(|a| !self.has_participant(a)) {
            return Err(crate::Error::invalid("admins must be participants"));
        }
        if unique
            .iter()
            .any(|p| p.is_empty() || p.contains('.') || p.starts_with('$'))
        {
            return Err(crate::Error::invalid(
                "participant ids must be non-empty, without `.` or a leading `$`",
            ));
        }
        Ok(())
    }

    /// Messages `user_id` has not read yet.
    pub fn unread_for(&self, user_id: &str) -> u64 {
        self.last_sequence_number
            .saturating_sub(self.read_up_to.get(user_id).copied().unwrap_or(0))
    }

    /// Whether `id` takes part in this conversation.
    pub fn has_participant(&self, id: &str) -> bool {
        self.participants.iter().any(|p| p == id)
    }

    /// Everyone but `sender`.
    pub fn recipients_of<'a>(&'a self, sender: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.participants
            .iter()
            .map(String::as_str)
            .filter(move |p| *p != sender)
    }
}

/// A message as stored in MongoDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Server-assigned id (UUID v7: time-ordered).
    pub message_id: String,
    /// The sender-scoped idempotency key (`{sender_id}/{client key}`), unique.
    pub idempotency_key: String,
    /// SHA-256 of the request's content and routing fields, to tell a retry from a conflicting reuse.
    pub fingerprint: String,
    /// Conversation.
    pub conversation_id: String,
    /// Position in the conversation, dense from 1.
    pub sequence_number: u64,
    /// Author.
    pub sender_id: String,
    /// Receiver in 1:1 conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<String>,
    /// What it says.
    #[serde(flatten)]
    pub body: MessageBody,
    /// Client clock at send time, milliseconds.
    pub client_timestamp: i64,
    /// Server time of acceptance.
    pub timestamp: DateTime,
    /// Delivery state (aggregate over recipients).
    pub status: MessageStatus,
    /// Recipients whose device acknowledged the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered_to: Vec<String>,
    /// Recipients who read the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_by: Vec<String>,
    /// Insertion time; the retention TTL index expires on it.
    pub created_at: DateTime,
    /// The outbox: when the after-commit work (fan-out, notifications) still to be done for this
    /// message is overdue; absent once it is done (see `store::messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout_due_at: Option<DateTime>,
}

impl StoredMessage {
    /// The message as delivered to clients.
    pub fn to_delivered(&self) -> DeliveredMessage {
        DeliveredMessage {
            message_id: self.message_id.clone(),
            sequence_number: self.sequence_number,
            sender_id: Some(self.sender_id.clone()),
            receiver_id: self.receiver_id.clone(),
            conversation_id: Some(self.conversation_id.clone()),
            body: self.body.clone(),
            timestamp: self.timestamp.timestamp_millis(),
            status: Some(self.status),
        }
    }
}

/// A message to store: everything but what the store assigns (id, sequence number, times).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Client's idempotency key, as sent (the store scopes it by sender).
    pub idempotency_key: String,
    /// Conversation.
    pub conversation_id: String,
    /// Author.
    pub sender_id: String,
    /// Receiver in 1:1 conversations.
    pub receiver_id: Option<String>,
    /// What it says.
    pub body: MessageBody,
    /// Client clock, milliseconds.
    pub client_timestamp: i64,
    /// A sequence number recently stored in the conversation, when the caller knows one (the
    /// last-number hint its inserters keep in Redis, see `keys::Keys::sequence_hint`): the insert
    /// starts above it
    /// instead of reading the newest message. Never part of the message: too low only costs a
    /// retry, and it must never be above a number stored within the hint's lifetime.
    pub last_sequence_hint: Option<u64>,
}

/// Life-cycle of an uploaded media object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaState {
    /// Upload URL handed out, object not confirmed.
    Pending,
    /// Object confirmed (size and type checked).
    Ready,
    /// Object failed the checks and was deleted.
    Rejected,
}

/// Metadata of an uploaded media object (collection `media`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Media {
    /// Stable id; what `media_url` in messages refers to.
    pub media_id: String,
    /// Conversation it was uploaded for.
    pub conversation_id: String,
    /// Uploader.
    pub uploader_id: String,
    /// Bucket.
    pub bucket: String,
    /// Object key, namespaced by conversation.
    pub object_key: String,
    /// Declared MIME type.
    pub content_type: String,
    /// Declared size in bytes.
    pub size_bytes: u64,
    /// Whether the client encrypted the bytes (then no server-side thumbnail).
    #[serde(default)]
    pub encrypted: bool,
    /// Object key of the preview thumbnail, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_key: Option<String>,
    /// Life-cycle state.
    pub state: MediaState,
    /// Creation time.
    pub created_at: DateTime,
}

/// An event or operation that failed for good (collection `dead_letters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Stable id.
    pub dead_letter_id: String,
    /// Where it came from (function or broker trigger).
    pub source: String,
    /// Event type or operation name.
    pub kind: String,
    /// The event or request, as JSON (message content stays encrypted).
    pub payload: serde_json::Value,
    /// Last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Creation time.
    pub created_at: DateTime,
    /// The TTL index removes the entry at this time.
    pub expires_at: DateTime,
}

/// An AI agent users can chat with (collection `agents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Stable id, also the CloudEvent `agentid` extension value.
    pub agent_id: String,
    /// Display name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Capabilities, for search.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Categories and tags, for browsing.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Example prompts.
    #[serde(default)]
    pub examples: Vec<String>,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// HTTP endpoint the broker delivers to, when the agent is external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Last heartbeat from the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<DateTime>,
    /// Creation time.
    pub created_at: DateTime,
}

/// CloudEvent types this system publishes and consumes.
pub mod event_types {
    /// A message was durably stored; store fans it out, agents answer it.
    pub const MESSAGE_RECEIVED: &str = "messaging.message.received";
    /// An agent answers a message.
    pub const AGENT_RESPONSE: &str = "agent.response";
    /// An agent reports progress (typing, a run's state, step and percent).
    pub const AGENT_PROGRESS: &str = "agent.progress";
    /// A piece of an agent's answer as it is generated.
    pub const AGENT_DELTA: &str = "agent.delta";
    /// A participant stopped an agent's run (to the agent, by its `agentid`).
    pub const AGENT_CANCEL: &str = "agent.cancel";
    /// A recipient had no live connection: push notify.
    pub const NOTIFICATION: &str = "messaging.notification";
    /// A user went online or offline.
    pub const PRESENCE_CHANGED: &str = "presence.changed";
    /// CloudEvent extension attribute naming the agent a message is for (Trigger filter).
    pub const AGENT_ID_EXTENSION: &str = "agentid";
}

/// Data of `messaging.message.received`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageReceived {
    /// Server id.
    pub message_id: String,
    /// Sender-scoped idempotency key.
    pub idempotency_key: String,
    /// Conversation.
    pub conversation_id: String,
    /// Author.
    pub sender_id: String,
    /// Receiver in 1:1 conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<String>,
    /// Position in the conversation.
    pub sequence_number: u64,
    /// What it says (agents hold keys to their own conversations).
    #[serde(flatten)]
    pub body: MessageBody,
    /// Server time of acceptance, milliseconds.
    pub timestamp: i64,
    /// The connection the message was sent on, as a digest (`telemetry::hashed_id`, never the
    /// id itself): its `message_ack` carried the message to that connection already, so the
    /// fan-out does not post it back there. Absent when no connection sent it (system and
    /// agent messages, the outbox sweep's re-publication): then every connection gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_on: Option<String>,
}

impl MessageReceived {
    /// The event data for a stored message, sent on the connection `sent_on` (digest) if any.
    pub fn from_stored(message: &StoredMessage, sent_on: Option<String>) -> Self {
        Self {
            message_id: message.message_id.clone(),
            idempotency_key: message.idempotency_key.clone(),
            conversation_id: message.conversation_id.clone(),
            sender_id: message.sender_id.clone(),
            receiver_id: message.receiver_id.clone(),
            sequence_number: message.sequence_number,
            body: message.body.clone(),
            timestamp: message.timestamp.timestamp_millis(),
            sent_on,
        }
    }
}

/// Data of `agent.response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentResponse {
    /// Agent-generated key; a redelivered response is stored once.
    pub idempotency_key: String,
    /// Conversation.
    pub conversation_id: String,
    /// The user being answered.
    pub user_id: String,
    /// The answering agent.
    pub agent_id: String,
    /// The answer: plaintext from an agent without keys, a Megolm envelope from an encrypted
    /// agent (as a person's message content).
    pub response: String,
    /// The message answered, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// Kind of the answer (text unless told).
    #[serde(default)]
    pub message_type: MessageType,
    /// Agent clock, milliseconds.
    pub timestamp: i64,
    /// The run this answer ends (`completed`), when it was streamed or reported; its deltas
    /// are superseded by this full answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Kind of agent progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// The agent is composing (shown as typing).
    Typing,
    /// The agent stopped composing.
    Idle,
}

/// Data of `agent.progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentProgress {
    /// Conversation.
    pub conversation_id: String,
    /// The user being answered.
    pub user_id: String,
    /// The agent.
    pub agent_id: String,
    /// What the agent is doing.
    pub kind: ProgressKind,
    /// Agent clock, milliseconds. Events may arrive in any order: a run's progress older than
    /// the last one applied to it is dropped, so keep it increasing within a run.
    pub timestamp: i64,
    /// The run this progress is about; with it, the devices get an `agent_run` frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The run's state (`queued`, `working`, `input_required`, or `failed` to end it without
    /// an answer; `completed` comes with `agent.response`). Default `working`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::protocol::RunState>,
    /// Its step, percent, question or reason.
    #[serde(flatten)]
    pub detail: crate::protocol::RunDetail,
}

/// Data of `agent.delta`: a piece of an answer. Deltas of a run are numbered from 0; each
/// (run, index) counts once, and the devices get them in index order whatever order they
/// arrive in (a missing index is waited for `DELTA_GAP_WAIT_MS`, 1 s by default, then
/// skipped). The run's `agent.response` (with `run_id`) stores the full answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentDelta {
    /// The run (by convention the id of the message answered).
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// Conversation.
    pub conversation_id: String,
    /// The user being answered.
    pub user_id: String,
    /// The agent.
    pub agent_id: String,
    /// Position of this piece in the answer, from 0.
    pub index: u32,
    /// The piece: plaintext from an agent without keys; from an encrypted agent, one Megolm
    /// envelope per piece (devices open the pieces of a `message_delta` one after another).
    pub text: String,
    /// Agent clock, milliseconds.
    pub timestamp: i64,
}

/// Data of `agent.cancel`: a participant stopped a run. Sent to the run's agent (extension
/// `agentid`); whatever the agent sends for the run afterwards is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentCancel {
    /// The run.
    pub run_id: String,
    /// Conversation.
    pub conversation_id: String,
    /// The agent.
    pub agent_id: String,
    /// Who stopped it.
    pub cancelled_by: String,
    /// Server time, milliseconds.
    pub timestamp: i64,
}

/// Data of `messaging.notification`: no content, ever (it is end-to-end encrypted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Notification {
    /// Who to notify.
    pub user_id: String,
    /// Conversation with news.
    pub conversation_id: String,
    /// The new message.
    pub message_id: String,
    /// Its sender.
    pub sender_id: String,
    /// Sender's display name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// Kind of the message (for "sent a photo").
    pub message_type: MessageType,
    /// Total unread for the badge.
    pub badge: u64,
}

/// Data of `presence.changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PresenceChanged {
    /// Whose presence.
    pub user_id: String,
    /// New state.
    pub status: PresenceStatus,
    /// Last activity, milliseconds.
    pub last_seen: i64,
}

// ---- The HTTP API (functions/api): accounts, tokens, devices, per-user conversation state ----

/// How a verification code reaches its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeChannel {
    /// Text message to an E.164 phone number.
    Sms,
    /// Email.
    Email,
}

/// What a verification code proves when it is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodePurpose {
    /// Creates the account (the phone or email becomes its verified channel).
    Register,
    /// Signs in without a password.
    Login,
    /// Recovers the account through its verified channel (revokes every session).
    Recover,
}

/// A pending verification code (collection `verification_codes`): at most one per destination.
/// The code itself is never stored, only its argon2id hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationCode {
    /// The destination, `phone:+E164` or `email:address`.
    #[serde(rename = "_id")]
    pub destination: String,
    /// Channel the code went out on.
    pub channel: CodeChannel,
    /// What the code is for.
    pub purpose: CodePurpose,
    /// PHC string of the code's argon2id hash.
    pub code_hash: String,
    /// Wrong entries so far.
    pub attempts: u32,
    /// Codes sent in the current throttle window.
    pub sends: u32,
    /// Start of the current throttle window.
    pub window_started_at: DateTime,
    /// Last time a code went out.
    pub last_sent_at: DateTime,
    /// The code is refused after this time.
    pub expires_at: DateTime,
    /// The TTL index removes the record (and its throttle state) at this time.
    pub purge_at: DateTime,
    /// The existing account, for login and recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Display name of the account to create (registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Argon2id hash of the password chosen at registration, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

/// A user's password (collection `credentials`), kept apart from the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// The user.
    #[serde(rename = "_id")]
    pub user_id: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Last change.
    pub updated_at: DateTime,
}

/// One refresh token (collection `refresh_tokens`), stored as the SHA-256 of the opaque token.
/// Tokens of one sign-in form a family: each use rotates to a new token of the family, and a
/// second use of a token revokes the whole family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// Hex SHA-256 of the token.
    #[serde(rename = "_id")]
    pub token_hash: String,
    /// The sign-in this token descends from.
    pub family_id: String,
    /// Owner.
    pub user_id: String,
    /// Device the sign-in was made on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Issue time.
    pub created_at: DateTime,
    /// Refused after this time; the TTL index removes it then.
    pub expires_at: DateTime,
    /// When it was exchanged for its successor (a second use is a reuse).
    #[serde(default)]
    pub used_at: Option<DateTime>,
    /// When its family was revoked (logout, reuse, recovery, account deletion).
    #[serde(default)]
    pub revoked_at: Option<DateTime>,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshUse {
    /// The token was valid and is now used: issue its successor.
    Rotated(RefreshToken),
    /// The token had been used before: a copy is in someone else's hands.
    Reused(RefreshToken),
    /// The token's family was revoked.
    Revoked(RefreshToken),
    /// The token expired.
    Expired(RefreshToken),
    /// No such token.
    Unknown,
}

/// Push service of a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushPlatform {
    /// Firebase Cloud Messaging.
    Fcm,
    /// Apple Push Notification service.
    Apns,
    /// Web Push (RFC 8030): the token is the browser's subscription
    /// ([`crate::web_push::Subscription`], as JSON).
    Web,
}

/// A device's push token (collection `devices`): one per (user, device); a token belongs to one
/// user at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceToken {
    /// Owner.
    pub user_id: String,
    /// The client's device id (as in JWTs and connections).
    pub device_id: String,
    /// Push service.
    pub platform: PushPlatform,
    /// The FCM registration token, APNs device token, or Web Push subscription (JSON).
    pub token: String,
    /// First registration.
    pub created_at: DateTime,
    /// Last registration.
    pub updated_at: DateTime,
}

/// One participant's own view of a conversation (`member_state.{user_id}` in the conversation
/// document): pinned, archived, deleted for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    /// Shown first in their list.
    #[serde(default)]
    pub pinned: bool,
    /// Hidden from their list unless asked.
    #[serde(default)]
    pub archived: bool,
    /// Deleted for them: hidden until a message newer than `cleared_up_to` arrives.
    #[serde(default)]
    pub deleted: bool,
    /// Messages up to this sequence number are gone for them (delete for me).
    #[serde(default)]
    pub cleared_up_to: u64,
}

impl MemberState {
    /// Whether the conversation shows in their list.
    pub fn visible(&self, conversation: &Conversation) -> bool {
        !self.deleted || conversation.last_sequence_number > self.cleared_up_to
    }

    /// Their unread count (messages they deleted do not count).
    pub fn unread(&self, conversation: &Conversation, user_id: &str) -> u64 {
        let read = conversation
            .read_up_to
            .get(user_id)
            .copied()
            .unwrap_or(0)
            .max(self.cleared_up_to);
        conversation.last_sequence_number.saturating_sub(read)
    }
}

/// A change of a participant's [`MemberState`]; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberStateUpdate {
    /// Pin or unpin.
    pub pinned: Option<bool>,
    /// Archive or unarchive.
    pub archived: Option<bool>,
    /// Delete for them, clearing history up to this sequence number (also unpins and unarchives).
    pub delete_up_to: Option<u64>,
    /// Show a deleted conversation again (its cleared history stays cleared).
    pub restore: bool,
}

/// A conversation with one participant's own state.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberConversation {
    /// The conversation.
    pub conversation: Conversation,
    /// The participant's state in it.
    pub state: MemberState,
}

/// Filters of an agent registry search; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentQuery {
    /// Case-insensitive substring of the name, a capability or a category.
    pub text: Option<String>,
    /// Exact capability.
    pub capability: Option<String>,
    /// Exact category or tag.
    pub category: Option<String>,
    /// Only agents with a heartbeat at or after this time.
    pub online_since: Option<DateTime>,
    /// Only agents whose id sorts after this one (pagination).
    pub after: Option<String>,
    /// Most agents returned.
    pub limit: usize,
}

/// Everything stored about one user (the GDPR export).
#[derive(Debug, Clone, PartialEq)]
pub struct UserData {
    /// The profile.
    pub user: User,
    /// Whether a password is set (its hash is never exported).
    pub has_password: bool,
    /// Refresh tokens (their hashes are never exported).
    pub sessions: Vec<RefreshToken>,
    /// Push device tokens.
    pub devices: Vec<DeviceToken>,
    /// Conversations they take part in, with their own state.
    pub conversations: Vec<MemberConversation>,
    /// Every message they sent.
    pub messages: Vec<StoredMessage>,
    /// Media they uploaded.
    pub media: Vec<Media>,
}

/// What erasing a user removed or anonymised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Agent conversations deleted with their messages.
    pub conversations_deleted: u64,
    /// Conversations kept for the others, the user replaced by the tombstone id.
    pub conversations_anonymised: u64,
    /// Messages they sent that stay in conversations, attributed to the tombstone id.
    pub messages_anonymised: u64,
    /// Messages deleted with their conversations.
    pub messages_deleted: u64,
}
