//! What travels over HTTP: request bodies and responses, with their OpenAPI schemas.
//!
//! Stored documents (`messaging::model`) never go out as they are: these views choose what a
//! client may see (no password or code hashes, no other users' phone numbers) and put every time
//! in milliseconds since the epoch, as on the WebSocket.

use messaging::model::{
    Agent, DeviceToken, LastMessage, Media, PushPlatform, RefreshToken, StoredMessage, User,
};
use messaging::protocol::{MessageBody, OutgoingToDevice, ToDeviceItem};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Milliseconds since the epoch of a BSON date.
pub(crate) fn ms(t: mongodb::bson::DateTime) -> i64 {
    t.timestamp_millis()
}

/// The snake_case wire name of a serde enum value.
pub(crate) fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Sequence numbers: whole JSON numbers from 0 to 2^63-1 (as the stored numbers are), a whole
/// number written `5.0` included (JSON Schema's `integer` allows it).
pub(crate) fn sequence_numbers<'de, D>(deserializer: D) -> Result<Vec<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::Error as _;
    Vec::<serde_json::Number>::deserialize(deserializer)?
        .iter()
        .map(|n| {
            n.as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < i64::MAX as f64)
                        .map(|f| f as u64)
                })
                .filter(|v| *v <= i64::MAX as u64)
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "sequence {n} is not a whole number from 0 to 2^63-1"
                    ))
                })
        })
        .collect()
}

// ---- errors ----

/// Every error answer: the one body of all HTTP functions.
pub use messaging::http::{ErrorBody, ErrorDetail};

// ---- queries ----

/// Which conversations the list shows by their archived flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArchivedFilter {
    /// Only conversations that are not archived.
    False,
    /// Only archived conversations.
    True,
    /// Both.
    Any,
}

/// Filters and page of the conversation list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationListQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
    /// `false` (default without `q`): hide archived; `true`: only archived; `any` (default with
    /// `q`): both.
    #[param(inline)]
    pub archived: Option<ArchivedFilter>,
    /// Search text (case-insensitive) in titles, group names and descriptions, and participant
    /// and agent names.
    pub q: Option<String>,
}

/// A range and page of history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Lowest sequence number (inclusive); the page starts here.
    #[param(minimum = 0)]
    pub from: Option<i64>,
    /// Highest sequence number (inclusive); without `from` the page ends here. Below `from`:
    /// an empty page.
    #[param(minimum = 0)]
    pub to: Option<i64>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
}

/// Which agents the registry lists by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatusFilter {
    /// Every agent (default).
    Any,
    /// Agents whose last heartbeat is recent.
    Online,
}

/// Filters and page of the agent registry.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentListQuery {
    /// Case-insensitive text in the name, a capability or a category.
    pub q: Option<String>,
    /// Exact capability.
    pub capability: Option<String>,
    /// Exact category or tag.
    pub category: Option<String>,
    /// `online` for online agents only; `any` (default).
    #[param(inline)]
    pub status: Option<AgentStatusFilter>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
}

/// A query parameter that was given a value (an empty `?q=` counts as not given).
pub(crate) fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

// ---- what request fields may be ----
//
// Request bodies are checked against these schemas before a handler runs
// (`messaging::http::schema`), so each rule here is the server's rule, published.

/// A user id (as `messaging::ids`), for `schema_with`.
fn user_id_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(messaging::ids::MAX_ID_CHARS))
        .pattern(Some(messaging::ids::PATTERN))
        .description(Some("A user id"))
        .build()
}

/// A list of user ids, for `schema_with`.
fn user_ids_schema(min: usize, max: usize) -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(user_id_schema())
        .min_items(Some(min))
        .max_items(Some(max))
        .build()
}

/// Capabilities, categories or examples of an agent: at most 50 of at most 200 characters.
fn labels_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .max_length(Some(200)),
        )
        .max_items(Some(50))
        .build()
}

fn participants_schema() -> utoipa::openapi::schema::Array {
    user_ids_schema(1, messaging::model::MAX_GROUP_PARTICIPANTS - 1)
}

fn added_participants_schema() -> utoipa::openapi::schema::Array {
    user_ids_schema(1, messaging::model::MAX_GROUP_PARTICIPANTS - 1)
}

/// A phone number or an email address: exactly one of the two.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ContactInput {
    /// By phone.
    Phone {
        /// E.164 phone number: `+`, then 7 to 15 digits, e.g. `+14155550123`.
        #[schema(pattern = r"^\+[1-9][0-9]{6,14}$")]
        phone: String,
    },
    /// By email.
    Email {
        /// Email address.
        #[schema(
            pattern = r"^[^@\s\x22]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
            max_length = 254
        )]
        email: String,
    },
}

impl ContactInput {
    /// The phone number, if given.
    pub fn phone(&self) -> Option<&str> {
        match self {
            Self::Phone { phone } => Some(phone),
            Self::Email { .. } => None,
        }
    }

    /// The email address, if given.
    pub fn email(&self) -> Option<&str> {
        match self {
            Self::Email { email } => Some(email),
            Self::Phone { .. } => None,
        }
    }
}

// ---- accounts ----

/// Registration: a phone number (E.164) or an email address, a display name, optionally a
/// password. A verification code goes to the phone or email.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// The phone number or email address the code goes to.
    #[serde(flatten)]
    pub contact: ContactInput,
    /// Display name.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Optional password, for signing in without a code.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
}

/// A phone number or an email address.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContactRequest {
    /// The phone number or email address.
    #[serde(flatten)]
    pub contact: ContactInput,
}

/// Entering a verification code (registration, code sign-in or recovery).
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// The phone number or email address the code went to.
    #[serde(flatten)]
    pub contact: ContactInput,
    /// The six-digit code.
    #[schema(pattern = r"^[0-9]{6}$")]
    pub code: String,
    /// Device to bind the session to (carried in the access token).
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_:-]{1,128}$")]
    pub device_id: Option<String>,
    /// Recovery only: a new password to set.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: Option<String>,
}

/// Sign-in: with a password, or without one to receive a code.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// The account's phone number or email address.
    #[serde(flatten)]
    pub contact: ContactInput,
    /// The password; without it a sign-in code is sent.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub password: Option<String>,
    /// Device to bind the session to.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_:-]{1,128}$")]
    pub device_id: Option<String>,
}

/// Exchanging a refresh token for a new pair.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token (used once: the answer carries its successor).
    pub refresh_token: String,
}

/// Signing out.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LogoutRequest {
    /// The session's refresh token.
    pub refresh_token: String,
    /// Also end every other session of the account.
    #[serde(default)]
    pub everywhere: bool,
}

/// A code was sent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodeSent {
    /// `sms` or `email`.
    pub channel: String,
    /// Where it went, partly masked.
    pub destination: String,
    /// What entering it will do: `register`, `login` or `recover`.
    pub purpose: String,
    /// Seconds until the code expires.
    pub expires_in: u64,
    /// Seconds until another code may be requested.
    pub resend_after: u64,
}

/// A new session: a short-lived access token and a refresh token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    /// JWT for `Authorization: Bearer` and the WebSocket `?token=`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque; exchange it at `/v1/auth/refresh` (once).
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
    /// The signed-in user.
    pub user: Profile,
}

/// The signed-in user's own profile.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    /// Stable id.
    pub user_id: String,
    /// Verified phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Verified email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last time the user went offline (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

impl From<&User> for Profile {
    fn from(u: &User) -> Self {
        Self {
            user_id: u.user_id.clone(),
            phone: u.phone.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            avatar_url: u.avatar_url.clone(),
            created_at: ms(u.created_at),
            last_seen: u.last_seen.map(ms),
        }
    }
}

/// What others see of a user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublicProfile {
    /// Stable id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl From<&User> for PublicProfile {
    fn from(u: &User) -> Self {
        Self {
            user_id: u.user_id.clone(),
            name: u.name.clone(),
            avatar_url: u.avatar_url.clone(),
        }
    }
}

/// Profile changes; absent fields stay, `avatar_url: null` removes the avatar.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_properties = 1)]
pub struct UpdateProfileRequest {
    /// New display name.
    #[serde(default)]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    /// New avatar URL (http or https), or null to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable, max_length = 2048, pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$")]
    pub avatar_url: Option<Option<String>>,
}

// ---- conversations ----

/// Starts (or returns) the 1:1 conversation with a user, or the conversation with an agent.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateConversationRequest {
    /// Who the conversation is with.
    #[serde(flatten)]
    pub with: Peer,
}

/// The other party of a 1:1 or agent conversation: exactly one of a user id, a phone number,
/// an email address or an agent id.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Peer {
    /// A user by id.
    User {
        /// The other user's id.
        #[schema(schema_with = user_id_schema)]
        user_id: String,
    },
    /// A user by phone number or email address.
    Contact(ContactInput),
    /// An agent.
    Agent {
        /// The agent's id.
        #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
        agent_id: String,
    },
}

/// Pin, unpin, archive, unarchive (for the caller only).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_properties = 1)]
pub struct UpdateConversationRequest {
    /// Show it first.
    #[serde(default)]
    #[schema(nullable = false)]
    pub pinned: Option<bool>,
    /// Hide it from the default list.
    #[serde(default)]
    #[schema(nullable = false)]
    pub archived: Option<bool>,
}

/// Preview of the last message: who, when, what kind; never its content.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LastMessageView {
    /// The message.
    pub message_id: String,
    /// Its position.
    pub sequence_number: u64,
    /// Its author (`system` for server messages).
    pub sender_id: String,
    /// Its kind (`text`, `image`, ..., `system`).
    pub message_type: String,
    /// Server time (ms).
    pub at: i64,
}

impl From<&LastMessage> for LastMessageView {
    fn from(m: &LastMessage) -> Self {
        Self {
            message_id: m.message_id.clone(),
            sequence_number: m.sequence_number,
            sender_id: m.sender_id.clone(),
            message_type: wire_name(&m.message_type),
            at: ms(m.at),
        }
    }
}

/// One conversation as the caller sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationView {
    /// Stable id.
    pub conversation_id: String,
    /// `direct`, `group` or `agent`.
    pub kind: String,
    /// What to show: the group's name, the other user's or the agent's name.
    pub title: String,
    /// Picture to show (other user's or agent's avatar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Participant ids (users and agents).
    pub participants: Vec<String>,
    /// Group admins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// The agent of an agent conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Group description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last activity (ms): the last message, else creation.
    pub last_activity_at: i64,
    /// Highest sequence number stored.
    pub last_sequence_number: u64,
    /// Preview of the last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<LastMessageView>,
    /// Messages the caller has not read.
    pub unread_count: u64,
    /// Pinned by the caller.
    pub pinned: bool,
    /// Archived by the caller.
    pub archived: bool,
    /// Messages up to this sequence number were deleted by the caller.
    pub cleared_up_to: u64,
    /// Whether its messages are end-to-end encrypted: always between people; with an agent only
    /// when the agent holds device keys (else the agent's operator can read what is sent, and
    /// clients should say so, as messaging apps do for business accounts).
    pub end_to_end_encrypted: bool,
}

/// A page of the caller's conversations: pinned first, then by last activity.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationPage {
    /// The conversations.
    pub conversations: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Unread messages over every conversation matching the filters.
    pub total_unread: u64,
}

/// A stored message as clients receive it (content stays encrypted).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    /// Server id.
    pub message_id: String,
    /// Conversation.
    pub conversation_id: String,
    /// Position in the conversation.
    pub sequence_number: u64,
    /// Author.
    pub sender_id: String,
    /// Receiver in 1:1 conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<String>,
    /// What it says (content stays encrypted).
    #[serde(flatten)]
    pub body: MessageBody,
    /// Client clock at send time (ms).
    pub client_timestamp: i64,
    /// Server time (ms).
    pub timestamp: i64,
    /// `sent`, `delivered` or `read`.
    pub status: String,
}

impl From<&StoredMessage> for MessageView {
    fn from(m: &StoredMessage) -> Self {
        Self {
            message_id: m.message_id.clone(),
            conversation_id: m.conversation_id.clone(),
            sequence_number: m.sequence_number,
            sender_id: m.sender_id.clone(),
            receiver_id: m.receiver_id.clone(),
            body: m.body.clone(),
            client_timestamp: m.client_timestamp,
            timestamp: ms(m.timestamp),
            status: wire_name(&m.status),
        }
    }
}

/// A page of history, ascending by sequence number.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// Conversation.
    pub conversation_id: String,
    /// The messages, ascending (missing sequence numbers were never stored or have expired).
    pub messages: Vec<MessageView>,
    /// Pass as `to` for the previous (older) page; absent when this page reaches the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_to: Option<u64>,
    /// Pass as `from` for the next (newer) page; absent when nothing newer was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer_from: Option<u64>,
    /// Lowest sequence number the caller may read (after a delete for them).
    pub first_available: u64,
}

// ---- groups ----

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateGroupRequest {
    /// Name.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Description.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// Other members' user ids (all must exist; with the creator at most 100).
    #[serde(default)]
    #[schema(schema_with = participants_schema)]
    pub participants: Vec<String>,
}

/// Group info changes (admins only); `description: null` removes it.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(min_properties = 1)]
pub struct UpdateGroupRequest {
    /// New name.
    #[serde(default)]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    /// New description, or null to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable, max_length = 1000)]
    pub description: Option<Option<String>>,
}

/// Users to add (admins only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddParticipantsRequest {
    /// User ids (all must exist).
    #[schema(schema_with = added_participants_schema)]
    pub user_ids: Vec<String>,
}

/// A member to make admin.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PromoteRequest {
    /// The member's user id.
    #[schema(schema_with = user_id_schema)]
    pub user_id: String,
}

/// A member of a group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantView {
    /// User id.
    pub user_id: String,
    /// Display name (absent for deleted accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// `admin` or `member`.
    pub role: String,
}

/// A group and its members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    /// The conversation id of the group.
    pub conversation_id: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Members in joining order, with their roles.
    pub participants: Vec<ParticipantView>,
    /// The caller's role.
    pub your_role: String,
}

/// Members of a group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantList {
    /// Members in joining order.
    pub participants: Vec<ParticipantView>,
}

// ---- agents ----

/// A new agent of the registry (operators only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateAgentRequest {
    /// Id: 1 to 64 of `a-z`, `0-9`, `_`, `-`, starting with a letter or digit (`system`, `me`,
    /// `operator` and `deleted-user…` are taken: 409).
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub agent_id: String,
    /// Display name.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// What it does.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    /// Capabilities, for search and routing.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub capabilities: Vec<String>,
    /// Categories and tags.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub categories: Vec<String>,
    /// Example prompts.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub examples: Vec<String>,
    /// Avatar URL.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$")]
    pub avatar_url: Option<String>,
    /// HTTP endpoint the broker delivers its messages to (subscription).
    #[serde(default)]
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$")]
    pub endpoint: Option<String>,
}

/// Agent changes (operators only); absent fields stay, null removes optional ones.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateAgentRequest {
    /// Display name.
    #[serde(default)]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    /// What it does.
    #[serde(default)]
    #[schema(nullable = false, max_length = 2000)]
    pub description: Option<String>,
    /// Capabilities.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub capabilities: Option<Vec<String>>,
    /// Categories and tags.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub categories: Option<Vec<String>>,
    /// Example prompts.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub examples: Option<Vec<String>>,
    /// Avatar URL, or null to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable, max_length = 2048, pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$")]
    pub avatar_url: Option<Option<String>>,
    /// Endpoint, or null to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable, max_length = 2048, pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$")]
    pub endpoint: Option<Option<String>>,
}

/// An agent of the registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// Id (also its participant id in conversations).
    pub agent_id: String,
    /// Display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Categories and tags.
    pub categories: Vec<String>,
    /// Example prompts.
    pub examples: Vec<String>,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Delivery endpoint (shown to operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `online` when it sent a heartbeat recently enough, else `offline`.
    pub status: String,
    /// Last heartbeat (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<i64>,
    /// Registration time (ms).
    pub created_at: i64,
}

impl AgentView {
    /// The view of `agent`; online when its last heartbeat is at or after `online_since_ms`.
    pub(crate) fn of(agent: &Agent, online_since_ms: i64, operator: bool) -> Self {
        let last = agent.last_heartbeat_at.map(ms);
        Self {
            agent_id: agent.agent_id.clone(),
            name: agent.name.clone(),
            description: agent.description.clone(),
            capabilities: agent.capabilities.clone(),
            categories: agent.categories.clone(),
            examples: agent.examples.clone(),
            avatar_url: agent.avatar_url.clone(),
            endpoint: if operator {
                agent.endpoint.clone()
            } else {
                None
            },
            status: if last.is_some_and(|l| l >= online_since_ms) {
                "online".into()
            } else {
                "offline".into()
            },
            last_heartbeat_at: last,
            created_at: ms(agent.created_at),
        }
    }
}

/// A page of agents, by id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentPage {
    /// The agents.
    pub agents: Vec<AgentView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

// ---- devices ----

/// Push service.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Firebase Cloud Messaging.
    Fcm,
    /// Apple Push Notification service.
    Apns,
    /// Web Push: the token is the browser's `PushSubscription` as JSON.
    Web,
}

impl From<Platform> for PushPlatform {
    fn from(p: Platform) -> Self {
        match p {
            Platform::Fcm => Self::Fcm,
            Platform::Apns => Self::Apns,
            Platform::Web => Self::Web,
        }
    }
}

/// A device's push token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeviceRequest {
    /// `fcm`, `apns` or `web`.
    pub platform: Platform,
    /// The FCM registration token, the APNs device token, or (`web`) the browser's
    /// `PushSubscription` as JSON (`{"endpoint", "keys": {"p256dh", "auth"}}`, no spaces).
    #[schema(min_length = 1, max_length = 4096, pattern = r"^\S+$")]
    pub token: String,
}

/// A registered device.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Device id.
    pub device_id: String,
    /// `fcm`, `apns` or `web`.
    pub platform: String,
    /// The push token.
    pub token: String,
    /// First registration (ms).
    pub created_at: i64,
    /// Last registration (ms).
    pub updated_at: i64,
}

impl From<&DeviceToken> for DeviceView {
    fn from(d: &DeviceToken) -> Self {
        Self {
            device_id: d.device_id.clone(),
            platform: wire_name(&d.platform),
            token: d.token.clone(),
            created_at: ms(d.created_at),
            updated_at: ms(d.updated_at),
        }
    }
}

/// The caller's devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    /// Devices by id.
    pub devices: Vec<DeviceView>,
}

// ---- GDPR export ----

/// One sign-in session (refresh-token family member), without the token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// The sign-in it belongs to.
    pub family_id: String,
    /// Device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Issue time (ms).
    pub created_at: i64,
    /// Expiry (ms).
    pub expires_at: i64,
    /// When it was rotated (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<i64>,
    /// When it was revoked (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

impl From<&RefreshToken> for SessionView {
    fn from(t: &RefreshToken) -> Self {
        Self {
            family_id: t.family_id.clone(),
            device_id: t.device_id.clone(),
            created_at: ms(t.created_at),
            expires_at: ms(t.expires_at),
            used_at: t.used_at.map(ms),
            revoked_at: t.revoked_at.map(ms),
        }
    }
}

/// A media object the user uploaded, as stored (metadata with its object key; the bytes are in
/// object storage): for the personal data export.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MediaRecord {
    /// Media id.
    pub media_id: String,
    /// Conversation.
    pub conversation_id: String,
    /// Object key.
    pub object_key: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Uploaded encrypted.
    pub encrypted: bool,
    /// `pending`, `ready` or `rejected`.
    pub state: String,
    /// Creation time (ms).
    pub created_at: i64,
}

impl From<&Media> for MediaRecord {
    fn from(m: &Media) -> Self {
        Self {
            media_id: m.media_id.clone(),
            conversation_id: m.conversation_id.clone(),
            object_key: m.object_key.clone(),
            content_type: m.content_type.clone(),
            size_bytes: m.size_bytes,
            encrypted: m.encrypted,
            state: wire_name(&m.state),
            created_at: ms(m.created_at),
        }
    }
}

/// A conversation in the export: metadata, the user's role, read marker and own state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportConversation {
    /// Conversation id.
    pub conversation_id: String,
    /// `direct`, `group` or `agent`.
    pub kind: String,
    /// Participant ids.
    pub participants: Vec<String>,
    /// `admin` or `member`.
    pub role: String,
    /// Group name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Group description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Highest sequence number the user read.
    pub read_up_to: u64,
    /// Pinned.
    pub pinned: bool,
    /// Archived.
    pub archived: bool,
    /// Deleted for the user.
    pub deleted: bool,
    /// Messages up to this sequence number deleted for the user.
    pub cleared_up_to: u64,
}

/// Everything stored about the caller, as one machine-readable document.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportArchive {
    /// `messaging-export/1`.
    pub format: String,
    /// Export time (ms).
    pub exported_at: i64,
    /// The profile.
    pub profile: Profile,
    /// Whether a password is set (the hash is not exported).
    pub has_password: bool,
    /// Sign-in sessions (tokens are not exported).
    pub sessions: Vec<SessionView>,
    /// Push devices.
    pub devices: Vec<DeviceView>,
    /// Conversations taken part in.
    pub conversations: Vec<ExportConversation>,
    /// Every message the user sent (content as stored: end-to-end encrypted).
    pub messages_sent: Vec<MessageView>,
    /// Media uploaded.
    pub media: Vec<MediaRecord>,
}

// ---- key directory (end-to-end encryption) ----

pub use messaging::e2ee::{DeviceKeys, IdentityKeys, SignedKey};

/// A device's keys to publish: its identity (once; the same again is accepted), and one-time
/// keys and a fallback key whenever it tops them up.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PublishKeysRequest {
    /// The device's identity keys.
    pub identity: IdentityKeys,
    /// Ed25519 signature by `identity.ed25519`, unpadded base64, over the UTF-8 text
    /// `msg-e2ee/device-keys/v1\n{user_id}\n{device_id}\n{curve25519}\n{ed25519}` (the
    /// caller's user id and the path's device id).
    #[schema(pattern = r"^[A-Za-z0-9+/]{86}$")]
    pub signature: String,
    /// New one-time keys, each signed by the device.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub one_time_keys: Vec<SignedKey>,
    /// A new fallback key, signed by the device.
    #[serde(default)]
    pub fallback_key: Option<SignedKey>,
}

/// What the directory holds for a device after an upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyCounts {
    /// One-time keys stored (at most 200).
    pub one_time_key_count: u64,
    /// Whether a fallback key is stored.
    pub has_fallback_key: bool,
}

/// A user's published devices.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserKeys {
    /// Whose.
    pub user_id: String,
    /// Every device that published keys, by device id.
    pub devices: Vec<DeviceKeys>,
}

/// One device of one user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct DeviceRef {
    /// The user.
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: String,
    /// The device.
    #[schema(min_length = 1, max_length = 128)]
    pub device_id: String,
}

/// Devices to claim a key of (one key each).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClaimRequest {
    /// The devices.
    #[schema(min_items = 1, max_items = 200)]
    pub devices: Vec<DeviceRef>,
}

/// A key handed out.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimedKeyView {
    /// Whose.
    pub user_id: String,
    /// Which device.
    pub device_id: String,
    /// The key, signed by the device (check it against the device's Ed25519 key).
    pub key: SignedKey,
    /// True when it is the device's fallback key (no one-time key was left).
    pub fallback: bool,
}

/// Keys handed out, one per device that had one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// The keys.
    pub keys: Vec<ClaimedKeyView>,
    /// Devices that published nothing to claim.
    pub missing: Vec<DeviceRef>,
}

/// `to_device` messages sent over HTTP (devices without a WebSocket: agents).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SendToDeviceRequest {
    /// The messages, each to one device of the caller's contacts or own user.
    #[schema(min_items = 1, max_items = 100)]
    pub messages: Vec<OutgoingToDevice>,
}

/// The `to_device` messages stored (and delivered to the devices' live connections).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ToDeviceSent {
    /// Their ids, as sent.
    pub message_ids: Vec<String>,
}

/// A device's `to_device` queue, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PendingToDevice {
    /// The messages (at most 1000): acknowledge them to read on.
    pub messages: Vec<ToDeviceItem>,
    /// More are queued behind these.
    pub has_more: bool,
}

/// `to_device` messages a device has kept: their content is deleted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AckToDeviceRequest {
    /// Sequence numbers, as delivered.
    #[serde(deserialize_with = "sequence_numbers")]
    #[schema(min_items = 1, max_items = 1000)]
    pub sequences: Vec<u64>,
}
