//! The encrypted forms of `content`: what the server stores and forwards instead of plaintext.
//!
//! A message between people carries an [`Envelope`] (Megolm) as its `content`, a `to_device`
//! message an [`OlmEnvelope`], both as JSON text. The server parses them ([`Envelope::parse`],
//! [`OlmEnvelope::parse`]) only to refuse what is not ciphertext; it cannot open them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest session id accepted, in bytes (Megolm's are 43).
const MAX_SESSION_ID_BYTES: usize = 64;

/// The algorithm of an envelope.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
pub enum Algorithm {
    /// Megolm group ratchet (message content), AES-256-CBC + HMAC-SHA-256, signed by Ed25519.
    #[serde(rename = "megolm.v1")]
    MegolmV1,
    /// Olm double ratchet between two devices (key material), Curve25519 + AES-256 + HMAC.
    #[serde(rename = "olm.v1")]
    OlmV1,
}

/// The `content` of an end-to-end encrypted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always `megolm.v1`.
    pub algorithm: Algorithm,
    /// The sending device's Curve25519 identity key.
    pub sender_key: String,
    /// The sending device.
    pub device_id: String,
    /// The Megolm session that encrypted it.
    pub session_id: String,
    /// The Megolm message (ciphertext, index, MAC and signature), unpadded base64.
    pub ciphertext: String,
}

impl Envelope {
    /// Parses `content` as an envelope, or says why it is not one (`invalid_request`).
    pub fn parse(content: &str) -> Result<Self> {
        let envelope: Self = serde_json::from_str(content).map_err(|_| {
            Error::invalid(
                "content between people must be an end-to-end encrypted envelope: {\"algorithm\": \"megolm.v1\", \"sender_key\", \"device_id\", \"session_id\", \"ciphertext\"}",
            )
        })?;
        if envelope.algorithm != Algorithm::MegolmV1 {
            return Err(Error::invalid(
                "a message envelope's algorithm is megolm.v1",
            ));
        }
        crate::e2ee::directory::curve25519(&envelope.sender_key)?;
        crate::ids::check("the envelope's device_id", &envelope.device_id)?;
        if envelope.session_id.is_empty() || envelope.session_id.len() > MAX_SESSION_ID_BYTES {
            return Err(Error::invalid(
                "the envelope's session_id must be 1 to 64 bytes",
            ));
        }
        base64_text(&envelope.ciphertext, "ciphertext")?;
        Ok(envelope)
    }

    /// The envelope as `content` text.
    pub fn to_content(&self) -> String {
        serde_json::to_string(self).expect("envelopes always serialize")
    }

    /// The first envelope of `text` (envelopes written one after another: an encrypted agent's
    /// streamed answer, one envelope per piece) as its own text, and how many bytes of `text`
    /// it spans; `None` when `text` does not start with a well-formed envelope.
    pub fn parse_first(text: &str) -> Option<(&str, usize)> {
        let mut values =
            serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
        values.next()?.ok()?;
        let used = values.byte_offset();
        let first = &text[..used];
        Self::parse(first).ok()?;
        Some((first, used))
    }

    /// A well-formed envelope no key opens, whose ciphertext bytes are `marker`: for tools that
    /// test the transport and cannot encrypt (load generators, transport tests). Between real
    /// clients, only [`crate::e2ee::CryptoDevice::encrypt`] makes envelopes.
    pub fn opaque(marker: &str) -> String {
        Self {
            algorithm: Algorithm::MegolmV1,
            sender_key: "A".repeat(43),
            device_id: "opaque".into(),
            session_id: "opaque".into(),
            ciphertext: vodozemac::base64_encode(format!("opaque:{marker}")),
        }
        .to_content()
    }

    /// The marker of an [`Envelope::opaque`] content; `None` for any other content.
    pub fn opaque_marker(content: &str) -> Option<String> {
        let envelope = Self::parse(content).ok()?;
        let bytes = vodozemac::base64_decode(&envelope.ciphertext).ok()?;
        String::from_utf8(bytes)
            .ok()?
            .strip_prefix("opaque:")
            .map(str::to_string)
    }
}

/// The `content` of a `to_device` message: Olm ciphertext for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OlmEnvelope {
    /// Always `olm.v1`.
    pub algorithm: Algorithm,
    /// The sending device's Curve25519 identity key.
    pub sender_key: String,
    /// 0: a pre-key message (starts a session), 1: a normal message.
    pub message_type: u8,
    /// The Olm message, unpadded base64.
    pub ciphertext: String,
}

impl OlmEnvelope {
    /// Parses a `to_device` message's `content`, or says why it is not Olm ciphertext.
    pub fn parse(content: &str) -> Result<Self> {
        let envelope: Self = serde_json::from_str(content).map_err(|_| {
            Error::invalid(
                "to_device content must be an Olm envelope: {\"algorithm\": \"olm.v1\", \"sender_key\", \"message_type\", \"ciphertext\"}",
            )
        })?;
        if envelope.algorithm != Algorithm::OlmV1 {
            return Err(Error::invalid("a to_device envelope's algorithm is olm.v1"));
        }
        if envelope.message_type > 1 {
            return Err(Error::invalid("message_type is 0 (pre-key) or 1 (normal)"));
        }
        crate::e2ee::directory::curve25519(&envelope.sender_key)?;
        base64_text(&envelope.ciphertext, "ciphertext")?;
        Ok(envelope)
    }

    /// The envelope as `content` text.
    pub fn to_content(&self) -> String {
        serde_json::to_string(self).expect("envelopes always serialize")
    }
}

/// Unpadded standard base64, as `vodozemac` writes it.
pub(crate) fn base64_text(text: &str, what: &str) -> Result<Vec<u8>> {
    match vodozemac::base64_decode(text) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(Error::invalid(format!(
            "{what} must be non-empty unpadded base64"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_and_malformed_envelopes_are_refused_with_a_reason() {
        let key = crate::e2ee::CryptoDevice::new("a", "b")
            .device_keys()
            .identity
            .curve25519;
        let good = Envelope {
            algorithm: Algorithm::MegolmV1,
            sender_key: key.clone(),
            device_id: "phone".into(),
            session_id: "s".repeat(43),
            ciphertext: "AwgAEhAg".into(),
        };
        assert_eq!(Envelope::parse(&good.to_content()).unwrap(), good);
        for bad in [
            "hello".to_string(),
            "{}".to_string(),
            good.to_content().replace("megolm.v1", "olm.v1"),
            good.to_content().replace(&key, "not-a-key"),
            good.to_content().replace("AwgAEhAg", "***"),
            good.to_content().replace("AwgAEhAg", ""),
            good.to_content().replace("\"phone\"", "\"a.b\""),
            good.to_content().replace("}", ",\"plaintext\":\"hi\"}"),
        ] {
            let error = Envelope::parse(&bad).unwrap_err();
            assert_eq!(error.code(), crate::ErrorCode::InvalidRequest, "{bad}");
        }
        let olm = OlmEnvelope {
            algorithm: Algorithm::OlmV1,
            sender_key: key,
            message_type: 0,
            ciphertext: "AwgAEhAg".into(),
        };
        assert_eq!(OlmEnvelope::parse(&olm.to_content()).unwrap(), olm);
        assert!(
            OlmEnvelope::parse(
                &olm.to_content()
                    .replace("\"message_type\":0", "\"message_type\":7")
            )
            .is_err()
        );
        assert!(OlmEnvelope::parse("plaintext").is_err());
        let opaque = Envelope::opaque("m1");
        assert!(Envelope::parse(&opaque).is_ok());
        assert_eq!(Envelope::opaque_marker(&opaque).as_deref(), Some("m1"));
        assert_eq!(Envelope::opaque_marker("m1"), None);
    }
}
