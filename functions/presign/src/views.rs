//! What travels over HTTP: request bodies and responses, with their OpenAPI schemas.
//!
//! Stored media records (`messaging::model::Media`) never go out as they are: the bucket and the
//! thumbnail key stay inside, times are milliseconds since the epoch, and presigned requests are
//! shown as method, URL, the headers to send and when they stop working.

use std::collections::BTreeMap;

use messaging::model::{Media, MediaState};
use messaging::objects::PresignedRequest;
use messaging::protocol::MessageType;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error answer: the one body of all HTTP functions.
pub use messaging::http::{ErrorBody, ErrorDetail};

/// The message type a media object is uploaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadType {
    /// A photo or picture (thumbnailed unless encrypted).
    Image,
    /// A video.
    Video,
    /// An audio file.
    Audio,
    /// A voice note.
    Voice,
    /// A PDF or another document (kept in the documents bucket).
    Document,
}

impl From<UploadType> for MessageType {
    fn from(t: UploadType) -> Self {
        match t {
            UploadType::Image => MessageType::Image,
            UploadType::Video => MessageType::Video,
            UploadType::Audio => MessageType::Audio,
            UploadType::Voice => MessageType::Voice,
            UploadType::Document => MessageType::Document,
        }
    }
}

/// An upload request: what the client is about to upload, and where it belongs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The conversation the media is for (the caller must take part in it).
    #[schema(min_length = 1, max_length = 128, pattern = r"^\S+$")]
    pub conversation_id: String,
    /// The type of the message that will carry it.
    pub message_type: UploadType,
    /// MIME type of the bytes, e.g. `image/png` (with `encrypted`, `application/octet-stream`
    /// is accepted too). The upload must send exactly this `Content-Type`. Which types each
    /// message type accepts is the deployment's configuration (`MEDIA_<KIND>_TYPES`): another
    /// type is 415.
    #[schema(
        example = "image/png",
        max_length = 200,
        pattern = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+( *;[ -~]*)?$"
    )]
    pub content_type: String,
    /// Exact size in bytes. The upload must send exactly this `Content-Length`. The largest
    /// size of each message type is the deployment's configuration (`MEDIA_MAX_<KIND>_BYTES`):
    /// a larger one is 413.
    #[schema(minimum = 1)]
    pub size_bytes: u64,
    /// Base64 of the SHA-256 of the bytes: when given, storage refuses any other bytes.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
    pub checksum_sha256: Option<String>,
    /// The client encrypted the bytes (end-to-end): no server thumbnail; the client may supply
    /// an encrypted preview at completion instead.
    #[serde(default)]
    pub encrypted: bool,
}

/// A presigned request: send exactly this method, URL and headers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresignedView {
    /// HTTP method.
    pub method: String,
    /// URL, signature included.
    pub url: String,
    /// Headers to send with exactly these values (they are signed).
    pub headers: BTreeMap<String, String>,
    /// When the URL stops working, milliseconds since the epoch.
    pub expires_at: i64,
}

impl PresignedView {
    /// The view of a presigned request that expires at `expires_at` (ms).
    pub fn new(request: PresignedRequest, expires_at: i64) -> Self {
        Self {
            method: request.method,
            url: request.url,
            headers: request
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            expires_at,
        }
    }
}

/// A granted upload: the new media id and the presigned PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadView {
    /// The new media id: what `media_url` in a message refers to.
    pub media_id: String,
    /// The conversation.
    pub conversation_id: String,
    /// Object key, namespaced by conversation.
    pub object_key: String,
    /// `pending` until the upload is completed.
    #[schema(value_type = String, example = "pending")]
    pub state: MediaState,
    /// The presigned PUT.
    pub upload: PresignedView,
}

/// A media record as clients see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MediaView {
    /// Media id.
    pub media_id: String,
    /// Conversation it belongs to.
    pub conversation_id: String,
    /// Uploader.
    pub uploader_id: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Whether the bytes are end-to-end encrypted.
    pub encrypted: bool,
    /// `pending`, `ready` or `rejected`.
    #[schema(value_type = String, example = "ready")]
    pub state: MediaState,
    /// Whether a preview exists: a JPEG thumbnail, or for encrypted media the client's
    /// encrypted preview.
    pub has_preview: bool,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
}

impl From<&Media> for MediaView {
    fn from(m: &Media) -> Self {
        Self {
            media_id: m.media_id.clone(),
            conversation_id: m.conversation_id.clone(),
            uploader_id: m.uploader_id.clone(),
            content_type: m.content_type.clone(),
            size_bytes: m.size_bytes,
            encrypted: m.encrypted,
            state: m.state,
            has_preview: m.thumbnail_key.is_some(),
            created_at: m.created_at.timestamp_millis(),
        }
    }
}

/// Upload completion: for encrypted media, optionally the client's encrypted preview.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// Base64 of the encrypted preview (only for encrypted media, else 409; stored as it is;
    /// at most `MEDIA_MAX_PREVIEW_BYTES` bytes, else 413).
    #[serde(default)]
    #[schema(
        min_length = 4,
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)$"
    )]
    pub encrypted_preview: Option<String>,
}

/// A download: the media and short-lived presigned GETs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DownloadView {
    /// The media.
    pub media: MediaView,
    /// The presigned GET of the bytes.
    pub download: PresignedView,
    /// The presigned GET of the preview (JPEG thumbnail, or the encrypted preview), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PresignedView>,
}
