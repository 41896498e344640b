//! The WebSocket wire protocol: every frame a client sends and every frame the server sends.
//!
//! Frames are JSON objects tagged on `type` (snake_case), exactly as in the seeds' "WebSocket Message
//! Schemas". Client and server frames are two enums because the same tag can carry different shapes
//! in each direction (`message` from a client is a send request; from the server it is a delivered
//! message). Fields this project adds to the seeds are optional, so every seed example still parses.
//!
//! `content` is opaque end-to-end-encrypted text: the server stores and forwards it, never reads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest frame API Gateway accepts or sends on a WebSocket connection (128 KB).
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

/// Kind of a message. `content` means different things per kind, but it is always opaque.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    Default,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Plain text.
    #[default]
    Text,
    /// Image; `media_url` names the media id.
    Image,
    /// Video; `media_url` names the media id.
    Video,
    /// Audio file; `media_url` names the media id.
    Audio,
    /// Voice note; `media_url` names the media id.
    Voice,
    /// Document (PDF, office files); `media_url` names the media id.
    Document,
    /// A location; the coordinates travel in `location`.
    Location,
    /// An emoji reaction to `reply_to_message_id`.
    Reaction,
    /// Written by the server (group changes); never sent by clients.
    System,
}

impl MessageType {
    /// Whether this kind refers to an uploaded media object.
    pub fn is_media(self) -> bool {
        matches!(
            self,
            Self::Image | Self::Video | Self::Audio | Self::Voice | Self::Document
        )
    }
}

/// Delivery state of a message. It only ever moves forward: sent, delivered, read.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Durably stored with its sequence number.
    #[default]
    Sent,
    /// Reached at least one device of the recipient.
    Delivered,
    /// Opened by the recipient.
    Read,
}

/// Typing indicator state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    /// The user started typing.
    Start,
    /// The user stopped typing.
    Stop,
}

/// Online state of a user.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one live connection.
    Online,
    /// No live connection.
    #[default]
    Offline,
}

/// Coordinates of a `location` message. Sent in the clear only when the client chooses to; most
/// clients put the location inside the encrypted `content` and leave this out.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct Location {
    /// Degrees, -90..=90.
    pub latitude: f64,
    /// Degrees, -180..=180.
    pub longitude: f64,
    /// Optional place name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where a forwarded message came from.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct ForwardedFrom {
    /// The original message.
    pub message_id: String,
    /// The conversation it was in.
    pub conversation_id: String,
}

/// `auth` payload (seeds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuthPayload {
    /// The user the client claims to be; must match the token's subject when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// A JWT issued by the api function.
    pub auth_token: String,
    /// Identifies the device for multi-device delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `ios`, `android` or `web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Client version, for diagnostics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

/// What a message says: the body every form of a message shares (the `message` frame a client
/// sends, the stored document, the `messaging.message.received` event, the `message` frame and
/// the HTTP history a client receives). Flattened into each, so a field added here appears in
/// all of them.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct MessageBody {
    /// Opaque, end-to-end encrypted (`system` messages: JSON written by the server).
    pub content: String,
    /// Message kind; `text` when absent (the seeds' `messages` example leaves it out). Always
    /// present in what the server sends.
    #[serde(rename = "type", alias = "message_type", default)]
    pub message_type: MessageType,
    /// Media id for media kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    /// The message this one answers or reacts to (same conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_message_id: Option<String>,
    /// Where a forwarded message came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_from: Option<ForwardedFrom>,
    /// Coordinates of a `location` message, when not inside `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl MessageBody {
    /// A text message saying `content`.
    pub fn text(content: impl Into<String>) -> Self {
        Self::of(MessageType::Text, content)
    }

    /// A message of `message_type` saying `content`, with nothing else.
    pub fn of(message_type: MessageType, content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            message_type,
            media_url: None,
            reply_to_message_id: None,
            forwarded_from: None,
            location: None,
        }
    }
}

/// The payload of a client's `message` frame: what to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutgoingMessage {
    /// Conversation to send to.
    pub conversation_id: String,
    /// The other party of a 1:1 conversation; informational, membership decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<String>,
    /// What it says.
    #[serde(flatten)]
    pub body: MessageBody,
    /// Client clock, milliseconds since the epoch.
    pub timestamp: i64,
}

/// A message as delivered to clients (`message` from the server, items of `messages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeliveredMessage {
    /// Server-assigned id.
    pub message_id: String,
    /// Position in the conversation, dense from 1.
    pub sequence_number: u64,
    /// Author (user id or agent id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    /// Receiver in 1:1 conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<String>,
    /// Conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// What it says.
    #[serde(flatten)]
    pub body: MessageBody,
    /// Server time of acceptance, milliseconds since the epoch.
    pub timestamp: i64,
    /// Delivery state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MessageStatus>,
}

/// `auth_success` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuthSuccessPayload {
    /// The authenticated user (so a client knows which messages are its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Identifies this connection's session (the connection id).
    pub session_id: String,
    /// Server clock, milliseconds since the epoch.
    pub server_time: i64,
    /// Messages waiting for this user.
    pub unread_count: u64,
}

/// `message_ack` payload: the message is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageAckPayload {
    /// Server-assigned id.
    pub message_id: String,
    /// Position in the conversation.
    pub sequence_number: u64,
    /// Always `sent` in an ack.
    pub status: MessageStatus,
    /// Server time of acceptance.
    pub timestamp: i64,
}

/// `messages` payload: a batch of stored messages in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessagesPayload {
    /// Conversation the batch belongs to.
    pub conversation_id: String,
    /// Messages in ascending sequence order.
    pub messages: Vec<DeliveredMessage>,
    /// True when more frames follow for the same request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_more: bool,
    /// Sequence numbers in the requested range that will never exist (a sender crashed between
    /// allocating and storing), so the client stops asking for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<u64>,
}

/// `migration` payload: this connection is about to end; open a new one, then close this one.
///
/// Sent by a gateway replica that is shutting down (rolling update, scale-down) and, on AWS, by
/// the connections sweep to connections nearing API Gateway's 2-hour limit. A client that opens
/// the new connection (same device, `sync` from what it has) before closing this one loses
/// nothing: both receive while they overlap, and sequence numbers drop repeats. Whatever is
/// still open at `deadline` is closed by the server with 1001.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MigrationPayload {
    /// Where to reconnect (`wss://...`, without a token). Behind a load balancer it is the
    /// public address; otherwise another live replica.
    pub new_endpoint: String,
    /// A fresh access token to present there, when the server issues one; absent means
    /// "reconnect with the token you have" (this server never sends one: only the api function
    /// holds the signing key, so a client whose token expired refreshes it first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Why the connection ends.
    #[serde(default)]
    pub reason: MigrationReason,
    /// When the server closes this connection (milliseconds since the epoch).
    #[serde(default)]
    pub deadline: i64,
}

/// Why a connection is being migrated.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MigrationReason {
    /// The replica holding the connection is shutting down.
    #[default]
    Shutdown,
    /// The connection is reaching its maximum lifetime (API Gateway: 2 hours).
    Lifetime,
}

/// The state of an agent run: the A2A task states a person needs to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, not started.
    Queued,
    /// Working (a step label and a percent may say on what).
    Working,
    /// Waiting for the user to answer a question (the run's `reason`).
    InputRequired,
    /// Done: the answer is stored as a message (`message_id`, `sequence_number`).
    Completed,
    /// Ended without an answer (`reason` says why).
    Failed,
    /// Stopped by a participant (`cancel`); nothing more of it arrives.
    Cancelled,
}

impl RunState {
    /// Whether the run is over: nothing changes it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The wire name (`working`, `input_required`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Working => "working",
            Self::InputRequired => "input_required",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Working,
            Self::InputRequired,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// What an agent says about its run besides the state (in `agent.progress`, and passed on in
/// `agent_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunDetail {
    /// What it is doing (a tool's name, a phase), at most 200 characters; kept until changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub step: Option<String>,
    /// How far along, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub percent: Option<u8>,
    /// The question (`input_required`) or the reason (`failed`), at most 2000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2000))]
    pub reason: Option<String>,
}

/// `agent_run` payload: where an agent's run on a conversation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentRunPayload {
    /// Conversation.
    pub conversation_id: String,
    /// The run (chosen by the agent; by convention the id of the message it answers).
    pub run_id: String,
    /// The agent.
    pub agent_id: String,
    /// State.
    pub state: RunState,
    /// What the agent said about it.
    #[serde(flatten)]
    pub detail: RunDetail,
    /// The agent has said nothing for longer than the progress interval (30 s by default):
    /// show the run as silent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stalled: bool,
    /// The stored answer (`completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Its sequence number (`completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    /// Server time of this state, milliseconds. Frames of one run may arrive out of order: a
    /// device ignores one older than the state it shows.
    pub updated_at: i64,
}

/// `message_delta` payload: a piece of an agent's answer as it is generated.
///
/// A device appends `text` when `from_index` is the `to_index` it has (0 at the start); a frame
/// with `snapshot` replaces what it has when it reaches further (the whole text so far, for a
/// device that connected mid-stream); a frame whose `to_index` is not past what it has is a
/// repeat, ignored; a frame whose `from_index` is past what it has waits for the frames before
/// it (frames of a run may arrive out of order), and after a second without them the device
/// sends `sync` and gets a snapshot. The run's final message (`agent_run` `completed`)
/// replaces the streamed text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageDeltaPayload {
    /// Conversation.
    pub conversation_id: String,
    /// The run.
    pub run_id: String,
    /// The agent.
    pub agent_id: String,
    /// Index of the first delta in `text` (0: the start of the answer).
    pub from_index: u32,
    /// Index after the last delta in `text`: the next frame starts there.
    pub to_index: u32,
    /// The text of deltas `from_index..to_index`: from an encrypted agent, their Megolm
    /// envelopes one after another (JSON objects back to back), each opened on its own.
    pub text: String,
    /// `text` is the whole answer so far (replace, do not append).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

/// Receipt sent to the original sender when recipients got or read messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReadReceiptPayload {
    /// Messages concerned.
    pub message_ids: Vec<String>,
    /// Who read them.
    pub read_by: String,
    /// When, milliseconds since the epoch.
    pub timestamp: i64,
}

/// How far one member of a conversation has got: the highest sequence number their devices
/// acknowledged (`delivered`) or they read (`read`). Devices acknowledge every message they
/// receive and fetch gaps, so everything at or below `up_to` concerns them too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MemberMark {
    /// The member.
    pub user_id: String,
    /// Highest sequence number concerned.
    pub up_to: u64,
}

/// Group receipts, coalesced: what members received and read in one conversation during the
/// last interval (at most one frame per conversation and [`RECEIPTS_INTERVAL_MS`], to each
/// sender of the messages concerned). A message of this sender with sequence number `s` is
/// delivered to (read by) each member listed with `up_to >= s`. The sender's own marks are left
/// out. Direct and agent conversations keep the per-message `delivery_ack` and `read_receipt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReceiptsPayload {
    /// Conversation.
    pub conversation_id: String,
    /// Members whose devices acknowledged messages, and up to where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<MemberMark>,
    /// Members who read messages, and up to where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<MemberMark>,
    /// When the frame was made, milliseconds since the epoch.
    pub timestamp: i64,
}

/// The longest a group receipt waits before it is sent to the senders in a [`ServerFrame::Receipts`]
/// frame: the first receipt after a quiet interval goes at once, the ones that follow within
/// this interval go together when it ends.
pub const RECEIPTS_INTERVAL_MS: u64 = 500;

/// Delivery receipt sent to the original sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeliveryReceiptPayload {
    /// Messages concerned.
    pub message_ids: Vec<String>,
    /// Who received them.
    pub delivered_to: String,
    /// When, milliseconds since the epoch.
    pub timestamp: i64,
}

/// `typing` payload as forwarded to other participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TypingPayload {
    /// Conversation.
    pub conversation_id: String,
    /// Who is typing.
    pub user_id: String,
    /// Start or stop.
    pub state: TypingState,
}

/// `presence` payload: a user's online state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PresencePayload {
    /// Whose presence.
    pub user_id: String,
    /// Online or offline.
    pub status: PresenceStatus,
    /// Last activity, milliseconds since the epoch, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// One `to_device` message a client sends: ciphertext for one device of a user the sender
/// shares a conversation with (or of the sender's own user).
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct OutgoingToDevice {
    /// The sender's id for it (a UUID): sending it again is idempotent.
    #[schemars(length(min = 1, max = 128))]
    #[schema(min_length = 1, max_length = 128)]
    pub message_id: String,
    /// Receiving user.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$"
    )]
    pub user_id: String,
    /// Receiving device (one that published keys).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s$.\x00-\x1f\x7f-\x9f][^.\x00-\x1f\x7f-\x9f]*$"
    )]
    pub device_id: String,
    /// An Olm envelope (`crate::e2ee::OlmEnvelope`) as JSON text.
    #[schema(min_length = 1)]
    pub content: String,
}

/// A `to_device` message as delivered to its device.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct ToDeviceItem {
    /// Position in the device's queue (increasing; acknowledge it with `to_device_ack`).
    pub sequence: u64,
    /// The sender's id for it.
    pub message_id: String,
    /// Sending user.
    pub sender_id: String,
    /// Sending device.
    pub sender_device_id: String,
    /// The Olm envelope as sent.
    pub content: String,
    /// Server time of acceptance, milliseconds since the epoch.
    pub timestamp: i64,
}

/// `to_device` payload: messages for this device, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToDevicePayload {
    /// The messages.
    pub messages: Vec<ToDeviceItem>,
}

/// `device_list` payload: a user's devices (and so their keys) changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceListPayload {
    /// Whose devices: fetch `GET /v1/users/{user_id}/keys` again.
    pub user_id: String,
    /// Server time of the change, milliseconds since the epoch.
    pub timestamp: i64,
}

/// `one_time_keys_low` payload: this device's published one-time keys are running out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeysLowPayload {
    /// The device (this connection's).
    pub device_id: String,
    /// One-time keys left; at 0 claims get the fallback key. Upload more with
    /// `PUT /v1/keys/{device_id}`.
    pub remaining: u64,
}

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate this connection (when the token was not given on connect) and get pending messages.
    Auth {
        /// Credentials and device.
        payload: AuthPayload,
    },
    /// Send a message.
    Message {
        /// Client's own id for the message, echoed in the ack.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
        /// Client-generated UUID; a retry with the same key gets the same answer.
        #[schemars(length(min = 1, max = 128))]
        idempotency_key: String,
        /// What to send.
        payload: OutgoingMessage,
    },
    /// The client received a message. Also sent for the client's own messages echoed from its
    /// other devices: the server then only records what this device has.
    DeliveryAck {
        /// Received message.
        message_id: String,
        /// Client clock.
        timestamp: i64,
        /// The message's conversation (optional; saves the server a lookup).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
        /// The message's sequence number (optional, with `conversation_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sequence_number: Option<u64>,
    },
    /// The user read messages.
    ReadReceipt {
        /// Read messages.
        #[schemars(length(min = 1, max = 500))]
        message_ids: Vec<String>,
        /// Client clock.
        timestamp: i64,
    },
    /// Keep-alive; refreshes connection and presence.
    Heartbeat {
        /// Client clock.
        timestamp: i64,
    },
    /// Ask again for a range of a conversation (gap detected).
    Retransmit {
        /// Conversation.
        conversation_id: String,
        /// First sequence number wanted.
        #[schemars(range(min = 1))]
        from_sequence: u64,
        /// Last sequence number wanted (inclusive; at most 1000 numbers per request by default).
        #[schemars(range(min = 1))]
        to_sequence: u64,
    },
    /// Typing indicator.
    Typing {
        /// Conversation.
        conversation_id: String,
        /// Start or stop.
        state: TypingState,
    },
    /// Catch up after reconnecting: everything after the given sequence number per conversation.
    Sync {
        /// `conversation_id -> last sequence number seen`.
        #[serde(default)]
        since: BTreeMap<String, u64>,
    },
    /// Ask for the presence of users one shares a conversation with.
    Presence {
        /// Users to look up.
        #[schemars(length(min = 1, max = 100))]
        user_ids: Vec<String>,
    },
    /// Stop an agent's run (any participant of its conversation): the agent gets
    /// `agent.cancel`, every device `agent_run` `cancelled`, and nothing more of the run arrives.
    Cancel {
        /// The run's conversation.
        conversation_id: String,
        /// The run (from `agent_run` or `message_delta`).
        #[schemars(length(min = 1, max = 128))]
        run_id: String,
    },
    /// Key material for other devices (end-to-end encryption): stored until each device
    /// acknowledges it, delivered in order, answered with `to_device_sent`.
    ToDevice {
        /// The messages (each to one device).
        #[schemars(length(min = 1, max = 100))]
        messages: Vec<OutgoingToDevice>,
    },
    /// This device has the `to_device` messages with these sequence numbers: they are deleted.
    ToDeviceAck {
        /// Sequence numbers received.
        #[schemars(length(min = 1, max = 1000))]
        sequences: Vec<u64>,
    },
}

impl ClientFrame {
    /// Every client frame's `type`: one WebSocket route each (the local stack's, the SAM
    /// template's, checked against the published document).
    pub const KINDS: [&'static str; 12] = [
        "auth",
        "message",
        "delivery_ack",
        "read_receipt",
        "heartbeat",
        "retransmit",
        "typing",
        "sync",
        "presence",
        "cancel",
        "to_device",
        "to_device_ack",
    ];

    /// The `type` tag of this frame, for logs and error frames.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::Message { .. } => "message",
            Self::DeliveryAck { .. } => "delivery_ack",
            Self::ReadReceipt { .. } => "read_receipt",
            Self::Heartbeat { .. } => "heartbeat",
            Self::Retransmit { .. } => "retransmit",
            Self::Typing { .. } => "typing",
            Self::Sync { .. } => "sync",
            Self::Presence { .. } => "presence",
            Self::Cancel { .. } => "cancel",
            Self::ToDevice { .. } => "to_device",
            Self::ToDeviceAck { .. } => "to_device_ack",
        }
    }
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication accepted.
    AuthSuccess {
        /// Session details.
        payload: AuthSuccessPayload,
    },
    /// Authentication refused.
    AuthError {
        /// Human-readable reason.
        error: String,
        /// Machine-readable reason.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
    },
    /// A message for this user.
    Message {
        /// The message.
        payload: DeliveredMessage,
    },
    /// The sent message is durably stored.
    MessageAck {
        /// Echo of the client's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
        /// Server id, sequence number, status.
        payload: MessageAckPayload,
    },
    /// Messages the sender sent were delivered.
    DeliveryAck {
        /// Which and to whom.
        payload: DeliveryReceiptPayload,
    },
    /// Messages the sender sent were read.
    ReadReceipt {
        /// Which and by whom.
        payload: ReadReceiptPayload,
    },
    /// Group members received or read messages (coalesced, see [`ReceiptsPayload`]).
    Receipts {
        /// Who, where, up to which sequence number.
        payload: ReceiptsPayload,
    },
    /// Answer to `heartbeat`.
    HeartbeatAck {
        /// Server clock, milliseconds since the epoch.
        server_time: i64,
    },
    /// A batch of messages (retransmit, sync).
    Messages {
        /// The batch.
        payload: MessagesPayload,
    },
    /// Reconnect elsewhere.
    Migration {
        /// Where.
        payload: MigrationPayload,
    },
    /// Someone is typing.
    Typing {
        /// Who, where.
        payload: TypingPayload,
    },
    /// Someone's online state.
    Presence {
        /// Whose, which.
        payload: PresencePayload,
    },
    /// An agent run's state changed (queued, working on a step, waiting for input, done,
    /// failed, cancelled, silent).
    AgentRun {
        /// The run.
        payload: AgentRunPayload,
    },
    /// A piece of an agent's answer as it is generated (see [`MessageDeltaPayload`]).
    MessageDelta {
        /// The piece.
        payload: MessageDeltaPayload,
    },
    /// Key material from other devices (see [`ToDevicePayload`]).
    ToDevice {
        /// The messages.
        payload: ToDevicePayload,
    },
    /// Answer to `to_device`: every message is stored for its device.
    ToDeviceSent {
        /// The `message_id`s stored (all of the request's).
        message_ids: Vec<String>,
    },
    /// A user one shares a conversation with has a new or removed device.
    DeviceList {
        /// Whose.
        payload: DeviceListPayload,
    },
    /// This device should publish more one-time keys.
    OneTimeKeysLow {
        /// How many are left.
        payload: KeysLowPayload,
    },
    /// A request failed; nothing was changed unless the code says so.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation (never contains message content).
        message: String,
        /// `client_message_id` of the failed send, when there was one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
        /// Seconds to wait before retrying (rate limits).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

impl ServerFrame {
    /// Serializes the frame to its JSON text.
    pub fn to_json(&self) -> String {
        // Serialization of these types cannot fail: no maps with non-string keys, no custom impls.
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// Why a client frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON at all.
    Malformed(String),
    /// JSON without a known `type`.
    UnknownType(String),
    /// A known `type` with missing or wrong fields.
    Invalid(String),
}

/// Parses a client frame, telling apart malformed JSON, unknown types and bad fields.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let kind = match value.get("type") {
        Some(serde_json::Value::String(kind)) => kind.clone(),
        Some(_) => return Err(FrameError::Invalid("`type` must be a string".into())),
        None => return Err(FrameError::Invalid("missing `type`".into())),
    };
    if !ClientFrame::KINDS.contains(&kind.as_str()) {
        return Err(FrameError::UnknownType(kind));
    }
    serde_json::from_value(value).map_err(|e| FrameError::Invalid(format!("{kind}: {e}")))
}

/// Stable, machine-readable error codes of `error` frames and HTTP error bodies.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    MalformedJson,
    /// The frame's `type` is not one the server knows.
    UnknownType,
    /// Fields are missing or invalid.
    InvalidRequest,
    /// The frame or content is over its size limit.
    PayloadTooLarge,
    /// No valid credentials on this connection yet.
    Unauthenticated,
    /// The token is malformed, badly signed, or for another audience/issuer.
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// Authenticated, but not allowed (e.g. not a participant).
    Forbidden,
    /// The thing does not exist (or the caller may not know it exists).
    NotFound,
    /// The idempotency key was used before with different content.
    IdempotencyConflict,
    /// A conflicting state (e.g. already exists).
    Conflict,
    /// Too many requests; see `retry_after`.
    RateLimited,
    /// A dependency is unavailable; retry later with the same idempotency key.
    Unavailable,
    /// An unexpected server failure; retry later with the same idempotency key.
    Internal,
    /// The declared media type is not one accepted here (e.g. a content type not allowed for
    /// the kind of upload).
    UnsupportedMediaType,
}

/// The wire name (`not_found`, `rate_limited`, ...), as clients and logs see it.
impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => f.write_str(&name),
            _ => write!(f, "{self:?}"),
        }
    }
}
