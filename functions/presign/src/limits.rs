//! What may be uploaded: the four media kinds (image, video, audio and voice notes, document),
//! the content types each accepts and its size limit, all from configuration.
//!
//! A content type is judged by its essence (`type/subtype`, lowercased; parameters such as
//! `; charset=utf-8` are allowed and bound to the upload as sent). End-to-end encrypted uploads
//! may also declare `application/octet-stream`: their bytes are ciphertext whatever they hold.

use messaging::protocol::MessageType;

/// Content type of end-to-end encrypted bytes, accepted for every kind when `encrypted`.
pub const ENCRYPTED_CONTENT_TYPE: &str = "application/octet-stream";

const MIB: u64 = 1024 * 1024;

/// A family of media with its own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Photos and pictures.
    Image,
    /// Videos.
    Video,
    /// Audio files and voice notes.
    Audio,
    /// PDFs and other documents.
    Document,
}

impl MediaKind {
    /// Every kind.
    pub const ALL: [MediaKind; 4] = [Self::Image, Self::Video, Self::Audio, Self::Document];

    /// The kind of a message type; `None` for types that carry no media.
    pub fn of(message_type: MessageType) -> Option<Self> {
        match message_type {
            MessageType::Image => Some(Self::Image),
            MessageType::Video => Some(Self::Video),
            MessageType::Audio | MessageType::Voice => Some(Self::Audio),
            MessageType::Document => Some(Self::Document),
            _ => None,
        }
    }

    /// Lowercase name, as in messages and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Document => "document",
        }
    }
}

/// The limits of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindLimits {
    /// Largest object, in bytes.
    pub max_bytes: u64,
    /// Accepted content types (essences, lowercase).
    pub content_types: Vec<String>,
}

impl KindLimits {
    /// The defaults of a kind: images up to 16 MiB (JPEG, PNG, WebP, GIF, HEIC/HEIF), videos up
    /// to 64 MiB (MP4, 3GPP, QuickTime, WebM), audio and voice up to 16 MiB (AAC, MP4, MPEG,
    /// Ogg, Opus, AMR, WebM, WAV), documents up to 100 MiB (PDF, plain text, CSV, RTF, Office
    /// and OpenDocument files, ZIP).
    pub fn defaults(kind: MediaKind) -> Self {
        let (max_bytes, types): (u64, &[&str]) = match kind {
            MediaKind::Image => (
                16 * MIB,
                &[
                    "image/jpeg",
                    "image/png",
                    "image/webp",
                    "image/gif",
                    "image/heic",
                    "image/heif",
                ],
            ),
            MediaKind::Video => (
                64 * MIB,
                &["video/mp4", "video/3gpp", "video/quicktime", "video/webm"],
            ),
            MediaKind::Audio => (
                16 * MIB,
                &[
                    "audio/aac",
                    "audio/mp4",
                    "audio/mpeg",
                    "audio/ogg",
                    "audio/opus",
                    "audio/amr",
                    "audio/webm",
                    "audio/wav",
                ],
            ),
            MediaKind::Document => (
                100 * MIB,
                &[
                    "application/pdf",
                    "text/plain",
                    "text/csv",
                    "application/rtf",
                    "application/msword",
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    "application/vnd.ms-excel",
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    "application/vnd.ms-powerpoint",
                    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                    "application/vnd.oasis.opendocument.text",
                    "application/vnd.oasis.opendocument.spreadsheet",
                    "application/zip",
                ],
            ),
        };
        Self {
            max_bytes,
            content_types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Whether an essence is accepted.
    pub fn allows(&self, essence: &str) -> bool {
        self.content_types.iter().any(|t| t == essence)
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
}

/// The essence (`type/subtype`, lowercased) of a content type; `None` when it is not a
/// well-formed MIME type of at most 200 printable ASCII characters.
pub fn essence(content_type: &str) -> Option<String> {
    if content_type.len() > 200 || !content_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    let main = content_type.split(';').next()?.trim();
    let (ty, sub) = main.split_once('/')?;
    (is_token(ty) && is_token(sub)).then(|| main.to_ascii_lowercase())
}

/// Parses a comma-separated list of content types (for configuration).
pub fn parse_types(list: &str) -> Result<Vec<String>, String> {
    let types: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| essence(t).ok_or_else(|| format!("`{t}` is not a MIME type")))
        .collect::<Result<_, _>>()?;
    if types.is_empty() {
        return Err("at least one content type is needed".into());
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn essences_are_normalised_and_checked() {
        assert_eq!(essence("Image/PNG").as_deref(), Some("image/png"));
        assert_eq!(
            essence("text/plain; charset=utf-8").as_deref(),
            Some("text/plain")
        );
        for bad in [
            "",
            "png",
            "image/",
            "/png",
            "image/p ng",
            "image/png\n",
            "a/b/c",
        ] {
            assert_eq!(essence(bad), None, "{bad:?}");
        }
        assert_eq!(essence(&format!("image/{}", "x".repeat(200))), None);
    }

    #[test]
    fn kinds_of_message_types() {
        assert_eq!(MediaKind::of(MessageType::Voice), Some(MediaKind::Audio));
        assert_eq!(MediaKind::of(MessageType::Image), Some(MediaKind::Image));
        assert_eq!(MediaKind::of(MessageType::Text), None);
        assert!(KindLimits::defaults(MediaKind::Document).allows("application/pdf"));
        assert!(!KindLimits::defaults(MediaKind::Image).allows("application/pdf"));
    }

    #[test]
    fn type_lists_parse() {
        assert_eq!(
            parse_types(" image/png, IMAGE/JPEG ,").unwrap(),
            vec!["image/png", "image/jpeg"]
        );
        assert!(parse_types(",").is_err());
        assert!(parse_types("image/png, nonsense").is_err());
    }
}
