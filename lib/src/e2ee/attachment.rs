//! End-to-end encrypted attachments (images, voice notes, documents): the bytes are sealed on
//! the sending device with a fresh AES-256-GCM key, uploaded through the presign API in its
//! encrypted mode (no server thumbnail; storage checks the ciphertext's SHA-256), and the key
//! travels inside the sealed message ([`Attachment`], in the Megolm plaintext's `extra`). The
//! server stores and serves ciphertext it has no key for; a receiving device checks the hash
//! and the GCM tag before it shows a byte.
//!
//! [`AttachmentStore`] is the presign API as a device's user calls it (upload, download), with
//! every call under a deadline.

use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest as _;

use crate::e2ee::device::CryptoError;
use crate::e2ee::key_directory::ApiSession;
use crate::protocol::MessageType;
use crate::{Error, Result};

/// Deadline of one call (uploads and downloads of up to tens of MB included).
const CALL_DEADLINE: Duration = Duration::from_secs(120);
/// Content type of sealed bytes (the presign API's encrypted mode).
pub const SEALED_CONTENT_TYPE: &str = "application/octet-stream";

/// What a receiving device needs to fetch and open an attachment: sent only sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The media id (also the message's `media_url`).
    pub media_id: String,
    /// The content type of the plaintext bytes (the server only sees octets).
    pub content_type: String,
    /// Size of the plaintext bytes.
    pub size_bytes: u64,
    /// A file name, when the sender gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Always `A256GCM`.
    pub algorithm: String,
    /// The AES-256 key, unpadded base64.
    pub key: String,
    /// The GCM nonce, unpadded base64.
    pub nonce: String,
    /// SHA-256 of the ciphertext, unpadded base64.
    pub sha256: String,
}

/// Seals `bytes` with a fresh key: the ciphertext (with its GCM tag) and everything but the
/// media id of its [`Attachment`].
pub fn seal(bytes: &[u8], content_type: &str, name: Option<&str>) -> (Vec<u8>, Attachment) {
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    aws_lc_rs::rand::fill(&mut key).expect("the system has randomness");
    aws_lc_rs::rand::fill(&mut nonce).expect("the system has randomness");
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte key"));
    let mut ciphertext = bytes.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut ciphertext,
        )
        .expect("AES-GCM seals any length this process holds");
    let attachment = Attachment {
        media_id: String::new(),
        content_type: content_type.to_string(),
        size_bytes: bytes.len() as u64,
        name: name.map(str::to_string),
        algorithm: "A256GCM".into(),
        key: vodozemac::base64_encode(key),
        nonce: vodozemac::base64_encode(nonce),
        sha256: vodozemac::base64_encode(sha2::Sha256::digest(&ciphertext)),
    };
    (ciphertext, attachment)
}

/// Opens the ciphertext of `attachment`: its hash and GCM tag must verify.
pub fn open(ciphertext: &[u8], attachment: &Attachment) -> Result<Vec<u8>, CryptoError> {
    let decode = |text: &str, what: &str| {
        vodozemac::base64_decode(text).map_err(|_| CryptoError::Malformed(what.to_string()))
    };
    if attachment.algorithm != "A256GCM" {
        return Err(CryptoError::Malformed(format!(
            "attachment algorithm {}",
            attachment.algorithm
        )));
    }
    if vodozemac::base64_encode(sha2::Sha256::digest(ciphertext)) != attachment.sha256 {
        return Err(CryptoError::Tampered(
            "the attachment's bytes do not match their hash".into(),
        ));
    }
    let key = decode(&attachment.key, "attachment key")?;
    let nonce: [u8; 12] = decode(&attachment.nonce, "attachment nonce")?
        .try_into()
        .map_err(|_| CryptoError::Malformed("attachment nonce".into()))?;
    let opening = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key)
            .map_err(|_| CryptoError::Malformed("attachment key".into()))?,
    );
    let mut bytes = ciphertext.to_vec();
    let plaintext = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut bytes,
        )
        .map_err(|_| CryptoError::Tampered("the attachment does not verify".into()))?;
    Ok(plaintext.to_vec())
}

/// The presign API (`/v1/media`) as one device's user calls it, for sealed attachments.
#[derive(Clone)]
pub struct AttachmentStore {
    api: ApiSession,
}

impl AttachmentStore {
    /// The HTTP API at `base` with an access token.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            api: ApiSession::new(&base.into(), &token.into(), CALL_DEADLINE),
        }
    }

    /// Seals `bytes`, uploads the ciphertext for a `message_type` message of the conversation
    /// and completes the upload; returns the [`Attachment`] to send sealed.
    pub async fn upload(
        &self,
        conversation_id: &str,
        message_type: MessageType,
        bytes: &[u8],
        content_type: &str,
        name: Option<&str>,
    ) -> Result<Attachment> {
        let (ciphertext, mut attachment) = seal(bytes, content_type, name);
        let checksum = standard_base64(&sha2::Sha256::digest(&ciphertext));
        let granted = self
            .api
            .call(
                reqwest::Method::POST,
                "/v1/media",
                Some(json!({
                    "conversation_id": conversation_id,
                    "message_type": message_type,
                    "content_type": SEALED_CONTENT_TYPE,
                    "size_bytes": ciphertext.len(),
                    "checksum_sha256": checksum,
                    "encrypted": true,
                })),
            )
            .await?;
        let media_id = granted["media_id"]
            .as_str()
            .ok_or_else(|| Error::dependency("media API", "no media_id"))?
            .to_string();
        let url = granted["upload"]["url"].as_str().unwrap_or_default();
        let mut put = self.api.http().put(url).body(ciphertext);
        for (name, value) in granted["upload"]["headers"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            if name != "content-length" {
                put = put.header(name, value.as_str().unwrap_or_default());
            }
        }
        let stored = put
            .send()
            .await
            .map_err(|e| Error::dependency("media storage", e))?;
        if !stored.status().is_success() {
            return Err(Error::dependency(
                "media storage",
                format!("upload refused with {}", stored.status()),
            ));
        }
        self.api
            .call(
                reqwest::Method::POST,
                &format!("/v1/media/{media_id}/complete"),
                Some(json!({})),
            )
            .await?;
        attachment.media_id = media_id;
        Ok(attachment)
    }

    /// Downloads an attachment and opens it (its hash and tag verified).
    pub async fn download(&self, attachment: &Attachment) -> Result<Vec<u8>> {
        let granted = self
            .api
            .call(
                reqwest::Method::GET,
                &format!("/v1/media/{}", attachment.media_id),
                None,
            )
            .await?;
        let url = granted["download"]["url"].as_str().unwrap_or_default();
        let ciphertext = self
            .api
            .http()
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Error::dependency("media storage", e))?
            .bytes()
            .await
            .map_err(|e| Error::dependency("media storage", e))?;
        open(&ciphertext, attachment).map_err(|e| Error::invalid(e.to_string()))
    }
}

/// Padded standard base64, as the presign API's checksum takes it.
fn standard_base64(bytes: &[u8]) -> String {
    let mut text = vodozemac::base64_encode(bytes);
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_attachment_opens_only_unaltered_and_with_its_key() {
        let photo = b"\x89PNG not really a photo".repeat(100);
        let (ciphertext, attachment) = seal(&photo, "image/png", Some("cat.png"));
        assert_ne!(&ciphertext[..photo.len()], &photo[..], "sealed");
        assert_eq!(open(&ciphertext, &attachment).unwrap(), photo);

        let mut altered = ciphertext.clone();
        altered[3] ^= 1;
        assert!(matches!(
            open(&altered, &attachment),
            Err(CryptoError::Tampered(_))
        ));
        // The right hash but another key: the tag does not verify.
        let (_, other) = seal(&photo, "image/png", None);
        let wrong_key = Attachment {
            key: other.key,
            ..attachment.clone()
        };
        assert!(matches!(
            open(&ciphertext, &wrong_key),
            Err(CryptoError::Tampered(_))
        ));
        // Two seals of the same bytes share nothing.
        let (again, second) = seal(&photo, "image/png", None);
        assert_ne!(again, ciphertext);
        assert_ne!(second.key, attachment.key);
    }
}
