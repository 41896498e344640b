//! The operations the page calls, one JSON request each (see the crate doc): the steps of
//! `Keyring` that touch a key, in the order `web/app/e2ee.js` calls them.
//!
//! - a device: `create`, `load` / `pickle` (its state, sealed with a key the page keeps),
//!   `device_keys`, `one_time_keys`, `fallback_key` (what it publishes);
//! - other devices: `verify` (their self-signature), `check_identity` / `trust` (trust on first
//!   use), `safety_code`;
//! - sending: `room_key_needs` (which member devices lack this device's session key, and which
//!   of those need a key claimed for a first Olm session), `key_shares` (the key sealed for each
//!   over Olm), `shared` (they are stored), `seal` (the content, Megolm);
//! - receiving: `open_to_device` (a room key over Olm, accepted only from the device the
//!   directory lists), `open` (a message).

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::e2ee::CryptoDevice;
use crate::e2ee::device::{DeviceMessage, Plaintext, Trust};
use crate::e2ee::directory::{DeviceKeys, KeyKind, SignedKey, safety_code};

thread_local! {
    /// The module's device (a page has one; a WebAssembly instance has one thread).
    static DEVICE: RefCell<Option<CryptoDevice>> = const { RefCell::new(None) };
}

/// A request: the operation and its arguments.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// A new device with fresh identity keys.
    Create { user_id: String, device_id: String },
    /// The device saved by `pickle` with the same key.
    Load { pickle: String, key: [u8; 32] },
    /// The device's state, sealed with `key`.
    Pickle { key: [u8; 32] },
    /// The device's signed identity keys.
    DeviceKeys,
    /// `count` new signed one-time keys.
    OneTimeKeys { count: usize },
    /// A new signed fallback key.
    FallbackKey,
    /// Whether a listed device's keys are well-formed and signed by itself.
    Verify { device: DeviceKeys },
    /// Trust on first use: `new` (pinned now), `known`, or `changed` (not to be used).
    CheckIdentity { device: DeviceKeys },
    /// Pins a device's keys as they are now (its person compared safety codes).
    Trust { device: DeviceKeys },
    /// The safety code of a device's Ed25519 key.
    SafetyCode { ed25519: String },
    /// Which member devices lack this device's current session key for the conversation.
    RoomKeyNeeds {
        conversation_id: String,
        members: BTreeSet<String>,
        devices: Vec<DeviceKeys>,
        now: i64,
    },
    /// The session key sealed over Olm for each device that lacks it.
    KeyShares {
        conversation_id: String,
        members: BTreeSet<String>,
        devices: Vec<DeviceKeys>,
        now: i64,
        #[serde(default)]
        claimed: Vec<Claimed>,
    },
    /// The devices' `to_device` messages are stored: they have the key.
    Shared {
        conversation_id: String,
        devices: Vec<DeviceKeys>,
    },
    /// Seals a message's content (and `extra`, secret too) for the conversation.
    Seal {
        conversation_id: String,
        content: String,
        #[serde(default)]
        extra: Value,
    },
    /// Opens a `to_device` message from `sender` (the device the directory lists).
    OpenToDevice {
        sender_id: String,
        sender: DeviceKeys,
        content: String,
    },
    /// Opens a message's content.
    Open {
        conversation_id: String,
        sender_id: String,
        message_id: String,
        content: String,
    },
}

/// A key handed out by `POST /v1/keys/claim` (an element of its `keys`, as published).
#[derive(Deserialize)]
struct Claimed {
    user_id: String,
    device_id: String,
    key: SignedKey,
    #[serde(default)]
    fallback: bool,
}

/// Runs one JSON request; the answer is `{"ok": value}` or `{"error": reason}`.
pub fn call(request: &[u8]) -> String {
    let answer = match serde_json::from_slice::<Request>(request) {
        Ok(request) => DEVICE.with(|device| run(&mut device.borrow_mut(), request)),
        Err(e) => Err(format!("bad request: {e}")),
    };
    match answer {
        Ok(value) => json!({ "ok": value }),
        Err(reason) => json!({ "error": reason }),
    }
    .to_string()
}

fn device(slot: &mut Option<CryptoDevice>) -> Result<&mut CryptoDevice, String> {
    slot.as_mut()
        .ok_or_else(|| "no device yet: create or load one".to_string())
}

fn run(slot: &mut Option<CryptoDevice>, request: Request) -> Result<Value, String> {
    Ok(match request {
        Request::Create { user_id, device_id } => {
            *slot = Some(CryptoDevice::new(user_id, device_id));
            json!(device(slot)?.device_keys())
        }
        Request::Load { pickle, key } => {
            *slot = Some(CryptoDevice::from_pickle(&pickle, &key).map_err(|e| e.to_string())?);
            json!(device(slot)?.device_keys())
        }
        Request::Pickle { key } => json!(device(slot)?.pickle(&key)),
        Request::DeviceKeys => json!(device(slot)?.device_keys()),
        Request::OneTimeKeys { count } => json!(device(slot)?.new_one_time_keys(count.min(100))),
        Request::FallbackKey => json!(device(slot)?.new_fallback_key()),
        Request::Verify { device } => json!(device.verify().is_ok()),
        Request::CheckIdentity { device: other } => match device(slot)?.check_identity(&other) {
            Trust::New => json!({"trust": "new"}),
            Trust::Known => json!({"trust": "known"}),
            Trust::Changed { pinned } => json!({"trust": "changed", "pinned": pinned}),
        },
        Request::Trust { device: other } => {
            device(slot)?.trust(&other);
            Value::Null
        }
        Request::SafetyCode { ed25519 } => json!(safety_code(&ed25519)),
        Request::RoomKeyNeeds {
            conversation_id,
            members,
            devices,
            now,
        } => {
            let device = device(slot)?;
            let share = device.room_key_for(&conversation_id, &members, &devices, now);
            let unsessioned: Vec<&DeviceKeys> = share
                .missing
                .iter()
                .filter(|d| !device.has_session_with(d))
                .collect();
            json!({"missing": share.missing, "unsessioned": unsessioned})
        }
        Request::KeyShares {
            conversation_id,
            members,
            devices,
            now,
            claimed,
        } => {
            let device = device(slot)?;
            let share = device.room_key_for(&conversation_id, &members, &devices, now);
            let mut messages = Vec::new();
            let mut skipped = Vec::new();
            for target in &share.missing {
                let key = claimed
                    .iter()
                    .find(|c| c.user_id == target.user_id && c.device_id == target.device_id)
                    .map(|c| {
                        let kind = if c.fallback {
                            KeyKind::Fallback
                        } else {
                            KeyKind::OneTime
                        };
                        (&c.key, kind)
                    });
                let message = device.room_key_message(&conversation_id, &share, target);
                match device.encrypt_to_device(target, key, &message) {
                    Ok(content) => messages.push(json!({
                        "user_id": target.user_id,
                        "device_id": target.device_id,
                        "content": content,
                        "device": target,
                    })),
                    // No key to start a session with, or one that does not verify: it gets the
                    // next session once it publishes keys.
                    Err(e) => skipped.push(json!({
                        "user_id": target.user_id,
                        "device_id": target.device_id,
                        "reason": e.to_string(),
                    })),
                }
            }
            json!({"messages": messages, "skipped": skipped})
        }
        Request::Shared {
            conversation_id,
            devices,
        } => {
            let device = device(slot)?;
            for target in &devices {
                device.shared_with(&conversation_id, target);
            }
            Value::Null
        }
        Request::Seal {
            conversation_id,
            content,
            extra,
        } => json!(
            device(slot)?
                .encrypt(&Plaintext {
                    conversation_id,
                    content,
                    extra,
                })
                .map_err(|e| e.to_string())?
        ),
        Request::OpenToDevice {
            sender_id,
            sender,
            content,
        } => {
            let device = device(slot)?;
            let opened = device
                .decrypt_to_device(&sender_id, &sender.device_id, &content)
                .map_err(|e| e.to_string())?;
            // Olm proves which Curve25519 key sent it; the directory says whose key that is.
            if sender.user_id != sender_id || sender.identity.curve25519 != opened.sender_key {
                return Err("sealed by another key than the sender's".to_string());
            }
            match opened.message {
                DeviceMessage::RoomKey(key) => {
                    device
                        .accept_room_key(&key, &opened.sender_key)
                        .map_err(|e| e.to_string())?;
                    json!({"room_key": {"conversation_id": key.conversation_id, "session_id": key.session_id}})
                }
            }
        }
        Request::Open {
            conversation_id,
            sender_id,
            message_id,
            content,
        } => json!(
            device(slot)?
                .decrypt(&conversation_id, &sender_id, &message_id, &content)
                .map_err(|e| e.to_string())?
        ),
    })
}
