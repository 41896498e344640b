//! The key directory's wire types: what a device publishes and what another device claims.
//!
//! Every public key travels as unpadded base64 (as `vodozemac` writes it). A signature is an
//! Ed25519 signature by the device's own identity key over [`DeviceKeys::signing_bytes`] or
//! [`SignedKey::signing_bytes`]: newline-separated fields behind a context label, unambiguous
//! because ids cannot contain control characters ([`crate::ids`]) and base64 has no newline.
//! Binding the user and device ids into every signature means a key cannot be replayed as
//! another device's.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use crate::error::{Error, Result};

/// Longest key id accepted, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 64;

/// A device's long-term public keys.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct IdentityKeys {
    /// Curve25519 key (Olm key agreement), unpadded base64.
    #[schema(pattern = r"^[A-Za-z0-9+/]{43}$")]
    pub curve25519: String,
    /// Ed25519 key (signatures), unpadded base64.
    #[schema(pattern = r"^[A-Za-z0-9+/]{43}$")]
    pub ed25519: String,
}

/// A device's identity as published: its keys, signed by its own Ed25519 key.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct DeviceKeys {
    /// Owner.
    pub user_id: String,
    /// The device (as in tokens and connections).
    pub device_id: String,
    /// Its public keys.
    pub identity: IdentityKeys,
    /// Ed25519 signature by `identity.ed25519`, unpadded base64, over the UTF-8 text
    /// `msg-e2ee/device-keys/v1\n{user_id}\n{device_id}\n{curve25519}\n{ed25519}`
    /// ([`DeviceKeys::signing_bytes`]).
    #[schema(pattern = r"^[A-Za-z0-9+/]{86}$")]
    pub signature: String,
}

impl DeviceKeys {
    /// What the device signs to publish its identity.
    pub fn signing_bytes(user_id: &str, device_id: &str, identity: &IdentityKeys) -> Vec<u8> {
        format!(
            "msg-e2ee/device-keys/v1\n{user_id}\n{device_id}\n{}\n{}",
            identity.curve25519, identity.ed25519
        )
        .into_bytes()
    }

    /// Checks that both keys are well-formed and the signature is the device's own.
    pub fn verify(&self) -> Result<()> {
        curve25519(&self.identity.curve25519)?;
        let ed25519 = ed25519(&self.identity.ed25519)?;
        verify(
            &ed25519,
            &Self::signing_bytes(&self.user_id, &self.device_id, &self.identity),
            &self.signature,
            "device keys",
        )
    }

    /// The device's safety code: 30 digits in groups of five from the SHA-256 of its Ed25519
    /// key. Two people reading the same code for a device know nobody stands between them.
    pub fn safety_code(&self) -> String {
        safety_code(&self.identity.ed25519)
    }
}

/// The safety code of an Ed25519 key (see [`DeviceKeys::safety_code`]).
pub fn safety_code(ed25519_key: &str) -> String {
    let digest = Sha256::digest(ed25519_key.as_bytes());
    digest
        .chunks(5)
        .take(6)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which kind of key a [`SignedKey`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Handed out once, then gone.
    OneTime,
    /// Handed out when no one-time key is left, until the device replaces it.
    Fallback,
}

/// A Curve25519 one-time or fallback key, signed by the device that owns it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct SignedKey {
    /// The device's name for the key (unique per device), 1 to 64 characters.
    #[schema(pattern = r"^[A-Za-z0-9+/=_:-]{1,64}$")]
    pub key_id: String,
    /// The Curve25519 public key, unpadded base64.
    #[schema(pattern = r"^[A-Za-z0-9+/]{43}$")]
    pub key: String,
    /// Ed25519 signature by the device's identity key, unpadded base64, over the UTF-8 text
    /// `msg-e2ee/{kind}/v1\n{user_id}\n{device_id}\n{key_id}\n{key}` where `kind` is
    /// `one-time-key` or `fallback-key` ([`SignedKey::signing_bytes`]).
    #[schema(pattern = r"^[A-Za-z0-9+/]{86}$")]
    pub signature: String,
}

impl SignedKey {
    /// What the device signs to publish a key.
    pub fn signing_bytes(
        kind: KeyKind,
        user_id: &str,
        device_id: &str,
        key_id: &str,
        key: &str,
    ) -> Vec<u8> {
        let label = match kind {
            KeyKind::OneTime => "one-time-key",
            KeyKind::Fallback => "fallback-key",
        };
        format!("msg-e2ee/{label}/v1\n{user_id}\n{device_id}\n{key_id}\n{key}").into_bytes()
    }

    /// Checks the key id, the key and that the device with Ed25519 key `ed25519` signed it.
    pub fn verify(
        &self,
        kind: KeyKind,
        user_id: &str,
        device_id: &str,
        ed25519: &str,
    ) -> Result<()> {
        if self.key_id.is_empty()
            || self.key_id.len() > MAX_KEY_ID_BYTES
            || !self
                .key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=_-:".contains(&b))
        {
            return Err(Error::invalid(
                "key_id must be 1 to 64 of A-Z, a-z, 0-9, `+/=_-:`",
            ));
        }
        curve25519(&self.key)?;
        verify(
            &self::ed25519(ed25519)?,
            &Self::signing_bytes(kind, user_id, device_id, &self.key_id, &self.key),
            &self.signature,
            "key",
        )
    }
}

/// A Curve25519 public key from its base64 form, or `invalid_request`.
pub fn curve25519(key: &str) -> Result<Curve25519PublicKey> {
    Curve25519PublicKey::from_base64(key)
        .map_err(|_| Error::invalid("a curve25519 key must be 32 bytes in unpadded base64"))
}

/// An Ed25519 public key from its base64 form, or `invalid_request`.
pub fn ed25519(key: &str) -> Result<Ed25519PublicKey> {
    Ed25519PublicKey::from_base64(key)
        .map_err(|_| Error::invalid("an ed25519 key must be 32 bytes in unpadded base64"))
}

fn verify(key: &Ed25519PublicKey, message: &[u8], signature: &str, what: &str) -> Result<()> {
    let signature = Ed25519Signature::from_base64(signature).map_err(|_| {
        Error::invalid(format!(
            "the {what} signature must be 64 bytes in unpadded base64"
        ))
    })?;
    key.verify(message, &signature)
        .map_err(|_| Error::invalid(format!("the {what} signature does not verify")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::CryptoDevice;

    #[test]
    fn published_keys_verify_and_any_change_breaks_them() {
        let mut device = CryptoDevice::new("alice", "phone");
        let keys = device.device_keys();
        keys.verify().unwrap();
        let mut other_device = keys.clone();
        other_device.device_id = "laptop".into();
        assert!(
            other_device.verify().is_err(),
            "signature binds the device id"
        );
        let mut other_user = keys.clone();
        other_user.user_id = "mallory".into();
        assert!(other_user.verify().is_err(), "signature binds the user id");
        let mut swapped = keys.clone();
        swapped.identity.curve25519 = CryptoDevice::new("m", "d")
            .device_keys()
            .identity
            .curve25519;
        assert!(swapped.verify().is_err(), "signature binds the keys");

        let one_time = device.new_one_time_keys(2);
        for key in &one_time {
            key.verify(KeyKind::OneTime, "alice", "phone", &keys.identity.ed25519)
                .unwrap();
            assert!(
                key.verify(KeyKind::Fallback, "alice", "phone", &keys.identity.ed25519)
                    .is_err(),
                "a one-time key is not a fallback key"
            );
            assert!(
                key.verify(KeyKind::OneTime, "alice", "laptop", &keys.identity.ed25519)
                    .is_err()
            );
        }
        let mut bad_id = one_time[0].clone();
        bad_id.key_id = "a b".into();
        assert!(
            bad_id
                .verify(KeyKind::OneTime, "alice", "phone", &keys.identity.ed25519)
                .is_err()
        );
    }

    #[test]
    fn safety_codes_are_thirty_digits_and_differ_per_device() {
        let a = CryptoDevice::new("alice", "phone")
            .device_keys()
            .safety_code();
        let b = CryptoDevice::new("alice", "phone")
            .device_keys()
            .safety_code();
        assert_eq!(a.len(), 35, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_digit() || c == ' '));
        assert_ne!(a, b);
    }
}
