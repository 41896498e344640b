//! A device's end-to-end encryption state: its Olm account, its Olm sessions with other
//! devices, and the Megolm sessions of its conversations (`vodozemac`). No I/O: the caller
//! fetches keys, sends `to_device` messages and stores [`CryptoDevice::pickle`].
//!
//! Sending to a conversation: [`CryptoDevice::room_key_for`] gives this device's outbound
//! Megolm session for the conversation and says which member devices still need its key; each
//! gets a [`RoomKey`] through Olm ([`CryptoDevice::encrypt_to_device`]); then
//! [`CryptoDevice::encrypt`] seals the content once for all of them. A session is replaced
//! (never reused) when the conversation's members change, after [`ROTATE_AFTER_MESSAGES`]
//! messages or [`ROTATE_AFTER`]: a removed member cannot read what follows, and a newly added
//! member or device gets the key at its current index, so it reads only what is sent after it
//! joined. Keys are not forwarded between a user's own devices: a new device starts empty.
//!
//! Receiving: [`CryptoDevice::decrypt_to_device`] opens Olm messages (starting a session from
//! a pre-key message); a room key is accepted only if the Olm-authenticated sender is who the
//! key says it is. [`CryptoDevice::decrypt`] opens a message only with a session received from
//! its sender for that conversation, and fails on any altered byte (Megolm's MAC and Ed25519
//! signature).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use vodozemac::megolm::{self, GroupSession, InboundGroupSession, MegolmMessage, SessionKey};
use vodozemac::olm::{self, Account, OlmMessage, Session};

use crate::e2ee::directory::{self, DeviceKeys, IdentityKeys, KeyKind, SignedKey};
use crate::e2ee::envelope::{Algorithm, Envelope, OlmEnvelope, base64_text};

/// An outbound Megolm session is replaced after this many messages.
pub const ROTATE_AFTER_MESSAGES: u32 = 100;
/// An outbound Megolm session is replaced after this long, in milliseconds (one week).
pub const ROTATE_AFTER: i64 = 7 * 24 * 3600 * 1000;

/// Why something could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The envelope or key is malformed.
    #[error("malformed: {0}")]
    Malformed(String),
    /// No session for this message yet: its key has not arrived (it may still).
    #[error("no key yet for session {0}")]
    UnknownSession(String),
    /// The ciphertext, its MAC or signature does not verify: altered or not for us.
    #[error("the message does not verify: {0}")]
    Tampered(String),
    /// Authenticated, but it claims to be from or for someone else.
    #[error("sender mismatch: {0}")]
    Mismatch(String),
    /// The same ciphertext again under another message id: a replay, not a new message.
    #[error("replayed: index {0} of its session was already opened as another message")]
    Replayed(String),
    /// Sent before this device got the session's key (it joined later): never readable here.
    #[error("sent before this device had the key of session {0}")]
    BeforeJoined(String),
    /// A new Olm session needs one of the other device's keys.
    #[error("no session with {0}: claim one of its keys first")]
    NeedsKey(String),
}

/// What a message between people says once decrypted (the Megolm plaintext).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plaintext {
    /// The conversation it was sent to (so a server cannot replay it into another).
    pub conversation_id: String,
    /// What it says.
    pub content: String,
    /// Anything else the client keeps secret (location, a media file's key and hash).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

/// A Megolm session key, sent from one device to another over Olm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomKey {
    /// The conversation the session encrypts.
    pub conversation_id: String,
    /// The Megolm session.
    pub session_id: String,
    /// Its key at the index from which the recipient may read.
    pub session_key: String,
    /// Sending user.
    pub sender_id: String,
    /// Sending device.
    pub sender_device: String,
    /// Receiving user (so the key cannot be replayed to someone else).
    pub recipient_id: String,
    /// Receiving device.
    pub recipient_device: String,
}

/// What travels inside an Olm `to_device` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceMessage {
    /// A Megolm session key.
    RoomKey(RoomKey),
}

/// An opened `to_device` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedDeviceMessage {
    /// What it said.
    pub message: DeviceMessage,
    /// The Curve25519 identity key of the device that sent it (Olm authenticated it): the
    /// caller checks it against the sender's published [`DeviceKeys`].
    pub sender_key: String,
}

struct Outbound {
    session: GroupSession,
    created_at: i64,
    /// Members (user ids) when it was created: any change replaces the session.
    members: BTreeSet<String>,
    /// Curve25519 keys of the devices that have its key: one of them no longer listed (a
    /// removed or reset device) replaces the session.
    shared_with: BTreeSet<String>,
}

struct Inbound {
    session: InboundGroupSession,
    conversation_id: String,
    sender_id: String,
    /// The sending device and its Curve25519 key (Olm authenticated them).
    sender_device: String,
    sender_key: String,
    /// Message index -> the message id it was opened under: the same ciphertext under another
    /// id is a replay.
    seen: BTreeMap<u32, String>,
}

/// Where an inbound session is kept: by its sender's Curve25519 key and its id, so a session id
/// someone else forwarded first cannot take the sender's place.
fn inbound_key(sender_key: &str, session_id: &str) -> String {
    format!("{sender_key}|{session_id}")
}

/// A device's keys and sessions.
pub struct CryptoDevice {
    user_id: String,
    device_id: String,
    account: Account,
    /// Olm sessions by the other device's Curve25519 key, most recently used first.
    olm: HashMap<String, Vec<Session>>,
    /// This device's outbound Megolm session per conversation.
    outbound: HashMap<String, Outbound>,
    /// Megolm sessions received, by session id.
    inbound: HashMap<String, Inbound>,
    /// The Ed25519 key first seen for each other device (`{user}\n{device}`): trust on first
    /// use, so a directory that later lists other keys under the same device is noticed.
    pins: BTreeMap<String, String>,
}

/// What this device makes of another device's published identity (trust on first use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// First seen: pinned now.
    New,
    /// The identity pinned before.
    Known,
    /// Other keys than the ones pinned: not used until the person says to trust them
    /// ([`CryptoDevice::trust`], after comparing safety codes).
    Changed {
        /// The Ed25519 key pinned before.
        pinned: String,
    },
}

/// What [`CryptoDevice::room_key_for`] says about sending to a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShare {
    /// The session the next message will use.
    pub session_id: String,
    /// Member devices (`DeviceKeys` as given) that must get the room key first.
    pub missing: Vec<DeviceKeys>,
    /// The key to send them.
    pub room_key: String,
}

impl CryptoDevice {
    /// A new device with fresh identity keys.
    pub fn new(user_id: impl Into<String>, device_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            device_id: device_id.into(),
            account: Account::new(),
            olm: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            pins: BTreeMap::new(),
        }
    }

    /// The owner.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// This device's identity, signed, as the key directory publishes it.
    pub fn device_keys(&self) -> DeviceKeys {
        let keys = self.account.identity_keys();
        let identity = IdentityKeys {
            curve25519: keys.curve25519.to_base64(),
            ed25519: keys.ed25519.to_base64(),
        };
        let signature = self
            .account
            .sign(DeviceKeys::signing_bytes(
                &self.user_id,
                &self.device_id,
                &identity,
            ))
            .to_base64();
        DeviceKeys {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            identity,
            signature,
        }
    }

    /// `count` new one-time keys, signed, to publish (the account keeps their private halves
    /// until a session uses them; publish at most 50 at a time, as vodozemac advises).
    pub fn new_one_time_keys(&mut self, count: usize) -> Vec<SignedKey> {
        self.account.generate_one_time_keys(count);
        let keys = self.account.one_time_keys();
        self.account.mark_keys_as_published();
        keys.into_iter()
            .map(|(id, key)| self.signed(KeyKind::OneTime, &id.to_base64(), &key.to_base64()))
            .collect()
    }

    /// A new fallback key, signed, to publish (replaces the previous one; the one before that
    /// is forgotten).
    pub fn new_fallback_key(&mut self) -> SignedKey {
        self.account.generate_fallback_key();
        let (id, key) = self
            .account
            .fallback_key()
            .into_iter()
            .next()
            .expect("a fallback key was just generated");
        self.account.mark_keys_as_published();
        self.signed(KeyKind::Fallback, &id.to_base64(), &key.to_base64())
    }

    fn signed(&self, kind: KeyKind, key_id: &str, key: &str) -> SignedKey {
        let signature = self
            .account
            .sign(SignedKey::signing_bytes(
                kind,
                &self.user_id,
                &self.device_id,
                key_id,
                key,
            ))
            .to_base64();
        SignedKey {
            key_id: key_id.to_string(),
            key: key.to_string(),
            signature,
        }
    }

    /// Checks `device`'s identity against the one pinned for it, pinning it when it is new.
    pub fn check_identity(&mut self, device: &DeviceKeys) -> Trust {
        let key = format!("{}\n{}", device.user_id, device.device_id);
        match self.pins.get(&key) {
            None => {
                self.pins.insert(key, device.identity.ed25519.clone());
                Trust::New
            }
            Some(pinned) if *pinned == device.identity.ed25519 => Trust::Known,
            Some(pinned) => Trust::Changed {
                pinned: pinned.clone(),
            },
        }
    }

    /// Pins `device`'s identity as it is now (its person compared safety codes).
    pub fn trust(&mut self, device: &DeviceKeys) {
        self.pins.insert(
            format!("{}\n{}", device.user_id, device.device_id),
            device.identity.ed25519.clone(),
        );
    }

    /// Whether this device has an Olm session with the device whose keys are `device`.
    pub fn has_session_with(&self, device: &DeviceKeys) -> bool {
        self.olm
            .get(&device.identity.curve25519)
            .is_some_and(|s| !s.is_empty())
    }

    /// Encrypts `message` for `device` over Olm: with an existing session, or a new one from
    /// `claimed` (one of its keys, checked against its signature first). Returns the
    /// `to_device` content.
    pub fn encrypt_to_device(
        &mut self,
        device: &DeviceKeys,
        claimed: Option<(&SignedKey, KeyKind)>,
        message: &DeviceMessage,
    ) -> Result<String, CryptoError> {
        device.verify().map_err(malformed)?;
        let their_key = directory::curve25519(&device.identity.curve25519).map_err(malformed)?;
        let sessions = self
            .olm
            .entry(device.identity.curve25519.clone())
            .or_default();
        if sessions.is_empty() {
            let Some((key, kind)) = claimed else {
                return Err(CryptoError::NeedsKey(format!(
                    "{}/{}",
                    device.user_id, device.device_id
                )));
            };
            key.verify(
                kind,
                &device.user_id,
                &device.device_id,
                &device.identity.ed25519,
            )
            .map_err(|e| CryptoError::Tampered(e.to_string()))?;
            let one_time = directory::curve25519(&key.key).map_err(malformed)?;
            let session = self
                .account
                .create_outbound_session(olm::SessionConfig::version_1(), their_key, one_time)
                .map_err(|e| CryptoError::Malformed(e.to_string()))?;
            sessions.insert(0, session);
        }
        let plaintext = serde_json::to_vec(message).expect("device messages serialize");
        let encrypted = sessions[0]
            .encrypt(plaintext)
            .map_err(|e| CryptoError::Malformed(e.to_string()))?;
        let (message_type, bytes) = encrypted.to_parts();
        Ok(OlmEnvelope {
            algorithm: Algorithm::OlmV1,
            sender_key: self.account.curve25519_key().to_base64(),
            message_type: message_type as u8,
            ciphertext: vodozemac::base64_encode(bytes),
        }
        .to_content())
    }

    /// Opens a `to_device` message sent by `sender_id`'s device `sender_device` (as the server
    /// says), checking that what Olm authenticated matches.
    pub fn decrypt_to_device(
        &mut self,
        sender_id: &str,
        sender_device: &str,
        content: &str,
    ) -> Result<OpenedDeviceMessage, CryptoError> {
        let envelope = OlmEnvelope::parse(content).map_err(malformed)?;
        let their_key = directory::curve25519(&envelope.sender_key).map_err(malformed)?;
        let bytes = base64_text(&envelope.ciphertext, "ciphertext").map_err(malformed)?;
        let message = OlmMessage::from_parts(envelope.message_type as usize, &bytes)
            .map_err(|e| CryptoError::Malformed(e.to_string()))?;
        let sessions = self.olm.entry(envelope.sender_key.clone()).or_default();
        let mut plaintext = None;
        for (i, session) in sessions.iter_mut().enumerate() {
            if let Ok(bytes) = session.decrypt(&message) {
                let session = sessions.remove(i);
                sessions.insert(0, session);
                plaintext = Some(bytes);
                break;
            }
        }
        let plaintext = match (plaintext, &message) {
            (Some(bytes), _) => bytes,
            (None, OlmMessage::PreKey(pre_key)) => {
                let created = self
                    .account
                    .create_inbound_session(olm::SessionConfig::version_1(), their_key, pre_key)
                    .map_err(|e| CryptoError::Tampered(e.to_string()))?;
                sessions.insert(0, created.session);
                created.plaintext
            }
            (None, OlmMessage::Normal(_)) => {
                return Err(CryptoError::Tampered(
                    "no Olm session with this sender opens it".into(),
                ));
            }
        };
        let message: DeviceMessage = serde_json::from_slice(&plaintext)
            .map_err(|e| CryptoError::Malformed(format!("device message: {e}")))?;
        match &message {
            DeviceMessage::RoomKey(key) => {
                if key.sender_id != sender_id || key.sender_device != sender_device {
                    return Err(CryptoError::Mismatch(format!(
                        "room key from {}/{} arrived as {sender_id}/{sender_device}",
                        key.sender_id, key.sender_device
                    )));
                }
                if key.recipient_id != self.user_id || key.recipient_device != self.device_id {
                    return Err(CryptoError::Mismatch(format!(
                        "room key for {}/{}, not this device",
                        key.recipient_id, key.recipient_device
                    )));
                }
            }
        }
        Ok(OpenedDeviceMessage {
            message,
            sender_key: envelope.sender_key,
        })
    }

    /// Keeps a room key received from the device whose Curve25519 key is `sender_key` (from
    /// [`CryptoDevice::decrypt_to_device`], after the caller's check that the sender publishes
    /// that key). A session already known is kept as it is.
    pub fn accept_room_key(&mut self, key: &RoomKey, sender_key: &str) -> Result<(), CryptoError> {
        let session_key = SessionKey::from_base64(&key.session_key)
            .map_err(|e| CryptoError::Malformed(e.to_string()))?;
        let session = InboundGroupSession::new(&session_key, megolm::SessionConfig::version_1());
        if session.session_id() != key.session_id {
            return Err(CryptoError::Mismatch(
                "session id does not match its key".into(),
            ));
        }
        self.inbound
            .entry(inbound_key(sender_key, &key.session_id))
            .or_insert(Inbound {
                session,
                conversation_id: key.conversation_id.clone(),
                sender_id: key.sender_id.clone(),
                sender_device: key.sender_device.clone(),
                sender_key: sender_key.to_string(),
                seen: BTreeMap::new(),
            });
        Ok(())
    }

    /// The outbound session for a conversation whose members are `members` (user ids) and
    /// whose member devices are `devices` (this device's own user included; this device
    /// itself is skipped): a new one when there is none, the members changed, or it is due
    /// for rotation. Says which devices still need its key.
    pub fn room_key_for(
        &mut self,
        conversation_id: &str,
        members: &BTreeSet<String>,
        devices: &[DeviceKeys],
        now: i64,
    ) -> KeyShare {
        let listed: BTreeSet<&str> = devices
            .iter()
            .map(|d| d.identity.curve25519.as_str())
            .collect();
        let stale = match self.outbound.get(conversation_id) {
            None => true,
            Some(outbound) => {
                &outbound.members != members
                    || outbound
                        .shared_with
                        .iter()
                        .any(|k| !listed.contains(k.as_str()))
                    || outbound.session.message_index() >= ROTATE_AFTER_MESSAGES
                    || now - outbound.created_at >= ROTATE_AFTER
            }
        };
        if stale {
            let session = GroupSession::new(megolm::SessionConfig::version_1());
            // This device reads its own messages too (its other devices get the key as members).
            let own = InboundGroupSession::new(
                &session.session_key(),
                megolm::SessionConfig::version_1(),
            );
            let own_key = self.account.curve25519_key().to_base64();
            self.inbound.insert(
                inbound_key(&own_key, &session.session_id()),
                Inbound {
                    session: own,
                    conversation_id: conversation_id.to_string(),
                    sender_id: self.user_id.clone(),
                    sender_device: self.device_id.clone(),
                    sender_key: own_key,
                    seen: BTreeMap::new(),
                },
            );
            self.outbound.insert(
                conversation_id.to_string(),
                Outbound {
                    session,
                    created_at: now,
                    members: members.clone(),
                    shared_with: BTreeSet::new(),
                },
            );
        }
        let outbound = &self.outbound[conversation_id];
        let missing = devices
            .iter()
            .filter(|d| !(d.user_id == self.user_id && d.device_id == self.device_id))
            .filter(|d| members.contains(&d.user_id))
            .filter(|d| !outbound.shared_with.contains(&d.identity.curve25519))
            .cloned()
            .collect();
        KeyShare {
            session_id: outbound.session.session_id(),
            missing,
            room_key: outbound.session.session_key().to_base64(),
        }
    }

    /// Records that `device` now has the key of the conversation's outbound session.
    pub fn shared_with(&mut self, conversation_id: &str, device: &DeviceKeys) {
        if let Some(outbound) = self.outbound.get_mut(conversation_id) {
            outbound
                .shared_with
                .insert(device.identity.curve25519.clone());
        }
    }

    /// The room key message for `device` (see [`CryptoDevice::room_key_for`]).
    pub fn room_key_message(
        &self,
        conversation_id: &str,
        share: &KeyShare,
        device: &DeviceKeys,
    ) -> DeviceMessage {
        DeviceMessage::RoomKey(RoomKey {
            conversation_id: conversation_id.to_string(),
            session_id: share.session_id.clone(),
            session_key: share.room_key.clone(),
            sender_id: self.user_id.clone(),
            sender_device: self.device_id.clone(),
            recipient_id: device.user_id.clone(),
            recipient_device: device.device_id.clone(),
        })
    }

    /// Encrypts a message's content for a conversation with its outbound session (call
    /// [`CryptoDevice::room_key_for`] and share the key first). Returns the `content`.
    pub fn encrypt(&mut self, plaintext: &Plaintext) -> Result<String, CryptoError> {
        let outbound = self
            .outbound
            .get_mut(&plaintext.conversation_id)
            .ok_or_else(|| {
                CryptoError::NeedsKey(format!("conversation {}", plaintext.conversation_id))
            })?;
        let bytes = serde_json::to_vec(plaintext).expect("plaintexts serialize");
        let message = outbound.session.encrypt(bytes);
        Ok(Envelope {
            algorithm: Algorithm::MegolmV1,
            sender_key: self.account.curve25519_key().to_base64(),
            device_id: self.device_id.clone(),
            session_id: outbound.session.session_id(),
            ciphertext: message.to_base64(),
        }
        .to_content())
    }

    /// Decrypts a message's `content`, sent by `sender_id` (as the server says) to
    /// `conversation_id` as message `message_id`.
    pub fn decrypt(
        &mut self,
        conversation_id: &str,
        sender_id: &str,
        message_id: &str,
        content: &str,
    ) -> Result<Plaintext, CryptoError> {
        let envelope = Envelope::parse(content).map_err(malformed)?;
        let inbound = self
            .inbound
            .get_mut(&inbound_key(&envelope.sender_key, &envelope.session_id))
            .ok_or_else(|| CryptoError::UnknownSession(envelope.session_id.clone()))?;
        if inbound.conversation_id != conversation_id
            || inbound.sender_id != sender_id
            || inbound.sender_device != envelope.device_id
        {
            return Err(CryptoError::Mismatch(format!(
                "session {} belongs to {}/{} in {}",
                envelope.session_id,
                inbound.sender_id,
                inbound.sender_device,
                inbound.conversation_id
            )));
        }
        let message = MegolmMessage::from_base64(&envelope.ciphertext)
            .map_err(|e| CryptoError::Tampered(e.to_string()))?;
        let opened = inbound.session.decrypt(&message).map_err(|e| match e {
            megolm::DecryptionError::UnknownMessageIndex(..) => {
                CryptoError::BeforeJoined(envelope.session_id.clone())
            }
            other => CryptoError::Tampered(other.to_string()),
        })?;
        match inbound.seen.get(&opened.message_index) {
            Some(first) if first != message_id => {
                return Err(CryptoError::Replayed(first.clone()));
            }
            Some(_) => {}
            None => {
                inbound
                    .seen
                    .insert(opened.message_index, message_id.to_string());
            }
        }
        let plaintext: Plaintext = serde_json::from_slice(&opened.plaintext)
            .map_err(|e| CryptoError::Malformed(format!("plaintext: {e}")))?;
        if plaintext.conversation_id != conversation_id {
            return Err(CryptoError::Mismatch(
                "sealed for another conversation".into(),
            ));
        }
        Ok(plaintext)
    }

    /// The whole state, encrypted with `key` (each vodozemac pickle on its own; which
    /// conversations and devices the sessions belong to stays readable), for
    /// [`CryptoDevice::from_pickle`].
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        let state = Pickle {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            account: self.account.pickle().encrypt(key),
            olm: self
                .olm
                .iter()
                .map(|(k, sessions)| {
                    (
                        k.clone(),
                        sessions.iter().map(|s| s.pickle().encrypt(key)).collect(),
                    )
                })
                .collect(),
            outbound: self
                .outbound
                .iter()
                .map(|(conversation, o)| {
                    (
                        conversation.clone(),
                        OutboundPickle {
                            session: o.session.pickle().encrypt(key),
                            created_at: o.created_at,
                            members: o.members.clone(),
                            shared_with: o.shared_with.clone(),
                        },
                    )
                })
                .collect(),
            inbound: self
                .inbound
                .iter()
                .map(|(id, i)| {
                    (
                        id.clone(),
                        InboundPickle {
                            session: i.session.pickle().encrypt(key),
                            conversation_id: i.conversation_id.clone(),
                            sender_id: i.sender_id.clone(),
                            sender_device: i.sender_device.clone(),
                            sender_key: i.sender_key.clone(),
                            seen: i.seen.clone(),
                        },
                    )
                })
                .collect(),
            pins: self.pins.clone(),
        };
        serde_json::to_string(&state).expect("pickles serialize")
    }

    /// Restores a [`CryptoDevice::pickle`].
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self, CryptoError> {
        let bad = |e: &dyn std::fmt::Display| CryptoError::Malformed(format!("pickle: {e}"));
        let state: Pickle = serde_json::from_str(pickle).map_err(|e| bad(&e))?;
        let account =
            olm::AccountPickle::from_encrypted(&state.account, key).map_err(|e| bad(&e))?;
        let mut olm = HashMap::new();
        for (k, sessions) in state.olm {
            let mut restored = Vec::new();
            for s in sessions {
                let p = olm::SessionPickle::from_encrypted(&s, key).map_err(|e| bad(&e))?;
                restored.push(Session::from_pickle(p));
            }
            olm.insert(k, restored);
        }
        let mut outbound = HashMap::new();
        for (conversation, o) in state.outbound {
            let p =
                megolm::GroupSessionPickle::from_encrypted(&o.session, key).map_err(|e| bad(&e))?;
            outbound.insert(
                conversation,
                Outbound {
                    session: GroupSession::from_pickle(p),
                    created_at: o.created_at,
                    members: o.members,
                    shared_with: o.shared_with,
                },
            );
        }
        let mut inbound = HashMap::new();
        for (id, i) in state.inbound {
            let p = megolm::InboundGroupSessionPickle::from_encrypted(&i.session, key)
                .map_err(|e| bad(&e))?;
            inbound.insert(
                id,
                Inbound {
                    session: InboundGroupSession::from_pickle(p),
                    conversation_id: i.conversation_id,
                    sender_id: i.sender_id,
                    sender_device: i.sender_device,
                    sender_key: i.sender_key,
                    seen: i.seen,
                },
            );
        }
        Ok(Self {
            user_id: state.user_id,
            device_id: state.device_id,
            account: Account::from_pickle(account),
            olm,
            outbound,
            inbound,
            pins: state.pins,
        })
    }
}

fn malformed(error: crate::Error) -> CryptoError {
    CryptoError::Malformed(error.to_string())
}

#[derive(Serialize, Deserialize)]
struct Pickle {
    user_id: String,
    device_id: String,
    account: String,
    olm: HashMap<String, Vec<String>>,
    outbound: HashMap<String, OutboundPickle>,
    inbound: HashMap<String, InboundPickle>,
    /// Pinned identities (absent in states saved before pinning existed).
    #[serde(default)]
    pins: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct OutboundPickle {
    session: String,
    created_at: i64,
    members: BTreeSet<String>,
    shared_with: BTreeSet<String>,
}

#[derive(Serialize, Deserialize)]
struct InboundPickle {
    session: String,
    conversation_id: String,
    sender_id: String,
    sender_device: String,
    sender_key: String,
    seen: BTreeMap<u32, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `share`'s key from `sender` to every missing device, as the client does.
    fn share(
        sender: &mut CryptoDevice,
        conversation: &str,
        share: &KeyShare,
        receivers: &mut [&mut CryptoDevice],
    ) {
        for device in &share.missing {
            let receiver = receivers
                .iter_mut()
                .find(|r| r.user_id() == device.user_id && r.device_id() == device.device_id)
                .unwrap();
            let claimed = if sender.has_session_with(device) {
                None
            } else {
                Some(receiver.new_one_time_keys(1).remove(0))
            };
            let message = sender.room_key_message(conversation, share, device);
            let content = sender
                .encrypt_to_device(
                    device,
                    claimed.as_ref().map(|k| (k, KeyKind::OneTime)),
                    &message,
                )
                .unwrap();
            let opened = receiver
                .decrypt_to_device(sender.user_id(), sender.device_id(), &content)
                .unwrap();
            assert_eq!(opened.sender_key, sender.device_keys().identity.curve25519);
            let DeviceMessage::RoomKey(key) = opened.message;
            receiver.accept_room_key(&key, &opened.sender_key).unwrap();
            sender.shared_with(conversation, device);
        }
    }

    fn text(conversation: &str, content: &str) -> Plaintext {
        Plaintext {
            conversation_id: conversation.into(),
            content: content.into(),
            extra: serde_json::Value::Null,
        }
    }

    #[test]
    fn members_read_what_a_removed_member_cannot_and_tampering_is_detected() {
        let mut alice = CryptoDevice::new("alice", "phone");
        let mut bob = CryptoDevice::new("bob", "phone");
        let mut carol = CryptoDevice::new("carol", "laptop");
        let members: BTreeSet<String> = ["alice", "bob", "carol"].map(String::from).into();
        let devices = [alice.device_keys(), bob.device_keys(), carol.device_keys()];

        let first = alice.room_key_for("g1", &members, &devices, 0);
        assert_eq!(first.missing.len(), 2, "alice's own device is skipped");
        share(&mut alice, "g1", &first, &mut [&mut bob, &mut carol]);
        let content = alice.encrypt(&text("g1", "hello group")).unwrap();
        assert!(!content.contains("hello"));
        for reader in [&mut bob, &mut carol] {
            assert_eq!(
                reader
                    .decrypt("g1", "alice", "m", &content)
                    .unwrap()
                    .content,
                "hello group"
            );
        }
        assert_eq!(
            alice.decrypt("g1", "alice", "m", &content).unwrap().content,
            "hello group"
        );
        // Nothing left to share for the same members.
        assert!(
            alice
                .room_key_for("g1", &members, &devices, 1)
                .missing
                .is_empty()
        );

        // Another conversation or sender claimed by the server: refused.
        assert!(matches!(
            bob.decrypt("g2", "alice", "m", &content),
            Err(CryptoError::Mismatch(_))
        ));
        assert!(matches!(
            bob.decrypt("g1", "carol", "m", &content),
            Err(CryptoError::Mismatch(_))
        ));
        // Any altered byte of the ciphertext: refused, not shown.
        let mut envelope = Envelope::parse(&content).unwrap();
        let mut bytes = vodozemac::base64_decode(&envelope.ciphertext).unwrap();
        bytes[10] ^= 1;
        envelope.ciphertext = vodozemac::base64_encode(&bytes);
        assert!(matches!(
            bob.decrypt("g1", "alice", "m", &envelope.to_content()),
            Err(CryptoError::Tampered(_))
        ));

        // Carol leaves: a new session, shared with bob only; carol cannot read it.
        let members: BTreeSet<String> = ["alice", "bob"].map(String::from).into();
        let second = alice.room_key_for("g1", &members, &devices, 2);
        assert_ne!(second.session_id, first.session_id);
        assert_eq!(second.missing.len(), 1);
        share(&mut alice, "g1", &second, &mut [&mut bob]);
        let after = alice.encrypt(&text("g1", "without carol")).unwrap();
        assert_eq!(
            bob.decrypt("g1", "alice", "m", &after).unwrap().content,
            "without carol"
        );
        assert!(matches!(
            carol.decrypt("g1", "alice", "m", &after),
            Err(CryptoError::UnknownSession(_))
        ));
    }

    #[test]
    fn a_device_added_later_reads_only_what_follows_and_state_survives_a_pickle() {
        let mut alice = CryptoDevice::new("alice", "phone");
        let mut bob = CryptoDevice::new("bob", "phone");
        let members: BTreeSet<String> = ["alice", "bob"].map(String::from).into();
        let share1 = alice.room_key_for("d1", &members, &[bob.device_keys()], 0);
        share(&mut alice, "d1", &share1, &mut [&mut bob]);
        let before = alice.encrypt(&text("d1", "before the tablet")).unwrap();

        let mut tablet = CryptoDevice::new("bob", "tablet");
        let devices = [bob.device_keys(), tablet.device_keys()];
        let share2 = alice.room_key_for("d1", &members, &devices, 1);
        assert_eq!(
            share2.session_id, share1.session_id,
            "same members: same session"
        );
        assert_eq!(share2.missing, vec![tablet.device_keys()]);
        share(&mut alice, "d1", &share2, &mut [&mut tablet]);
        let after = alice.encrypt(&text("d1", "after the tablet")).unwrap();
        assert_eq!(
            tablet.decrypt("d1", "alice", "m", &after).unwrap().content,
            "after the tablet"
        );
        assert!(matches!(
            tablet.decrypt("d1", "alice", "m", &before),
            Err(CryptoError::BeforeJoined(_))
        ));

        let key = [7u8; 32];
        let pickle = bob.pickle(&key);
        assert!(!pickle.contains("before the tablet"));
        let mut restored = CryptoDevice::from_pickle(&pickle, &key).unwrap();
        assert_eq!(restored.device_keys(), bob.device_keys());
        assert_eq!(
            restored
                .decrypt("d1", "alice", "m", &after)
                .unwrap()
                .content,
            "after the tablet"
        );
        assert!(CryptoDevice::from_pickle(&pickle, &[8u8; 32]).is_err());

        // Olm answers flow back over the session the pre-key message started.
        let back = bob.room_key_for("d1", &members, &[alice.device_keys()], 2);
        share(&mut bob, "d1", &back, &mut [&mut alice]);
        let reply = bob.encrypt(&text("d1", "reply")).unwrap();
        assert_eq!(
            alice.decrypt("d1", "bob", "m", &reply).unwrap().content,
            "reply"
        );
    }

    #[test]
    fn a_room_key_names_its_sender_and_recipient() {
        let mut alice = CryptoDevice::new("alice", "phone");
        let mut bob = CryptoDevice::new("bob", "phone");
        let members: BTreeSet<String> = ["alice", "bob"].map(String::from).into();
        let share = alice.room_key_for("d1", &members, &[bob.device_keys()], 0);
        let message = alice.room_key_message("d1", &share, &bob.device_keys());
        let claimed = bob.new_one_time_keys(1).remove(0);
        let content = alice
            .encrypt_to_device(
                &bob.device_keys(),
                Some((&claimed, KeyKind::OneTime)),
                &message,
            )
            .unwrap();
        // The server says it came from someone else: refused.
        assert!(matches!(
            bob.decrypt_to_device("mallory", "phone", &content),
            Err(CryptoError::Mismatch(_))
        ));
        // A key signed for another device is refused before use.
        let mut forged = bob.new_one_time_keys(1).remove(0);
        forged.key = CryptoDevice::new("m", "d")
            .new_one_time_keys(1)
            .remove(0)
            .key;
        let carol = CryptoDevice::new("carol", "phone");
        assert!(matches!(
            alice.encrypt_to_device(
                &carol.device_keys(),
                Some((&forged, KeyKind::OneTime)),
                &message
            ),
            Err(CryptoError::Tampered(_))
        ));
    }

    #[test]
    fn a_replay_under_another_id_is_caught_and_a_removed_device_rotates_the_session() {
        let mut alice = CryptoDevice::new("alice", "phone");
        let mut phone = CryptoDevice::new("bob", "phone");
        let mut tablet = CryptoDevice::new("bob", "tablet");
        let members: BTreeSet<String> = ["alice", "bob"].map(String::from).into();
        let devices = [phone.device_keys(), tablet.device_keys()];
        let first = alice.room_key_for("d1", &members, &devices, 0);
        share(&mut alice, "d1", &first, &mut [&mut phone, &mut tablet]);
        let content = alice.encrypt(&text("d1", "once")).unwrap();
        assert_eq!(
            phone
                .decrypt("d1", "alice", "m1", &content)
                .unwrap()
                .content,
            "once"
        );
        // The same message delivered again (sync, retransmit): opened again.
        assert!(phone.decrypt("d1", "alice", "m1", &content).is_ok());
        // The same ciphertext as another message: a replay.
        assert!(matches!(
            phone.decrypt("d1", "alice", "m2", &content),
            Err(CryptoError::Replayed(_))
        ));
        // Bob's tablet is removed (lost): the next message uses a session it never had.
        let second = alice.room_key_for("d1", &members, &[phone.device_keys()], 1);
        assert_ne!(second.session_id, first.session_id);
        share(&mut alice, "d1", &second, &mut [&mut phone]);
        let after = alice.encrypt(&text("d1", "tablet gone")).unwrap();
        assert!(tablet.decrypt("d1", "alice", "m3", &after).is_err());
        assert_eq!(
            phone.decrypt("d1", "alice", "m3", &after).unwrap().content,
            "tablet gone"
        );
    }

    #[test]
    fn a_session_forwarded_by_someone_else_cannot_take_its_senders_place() {
        let mut alice = CryptoDevice::new("alice", "phone");
        let mut bob = CryptoDevice::new("bob", "phone");
        let mut carol = CryptoDevice::new("carol", "phone");
        let members: BTreeSet<String> = ["alice", "bob", "carol"].map(String::from).into();
        let share_a =
            alice.room_key_for("g", &members, &[bob.device_keys(), carol.device_keys()], 0);
        // Bob forwards alice's session key to carol as if it were his own, before alice does.
        let forged = RoomKey {
            conversation_id: "g".into(),
            session_id: share_a.session_id.clone(),
            session_key: share_a.room_key.clone(),
            sender_id: "bob".into(),
            sender_device: "phone".into(),
            recipient_id: "carol".into(),
            recipient_device: "phone".into(),
        };
        carol
            .accept_room_key(&forged, &bob.device_keys().identity.curve25519)
            .unwrap();
        share(&mut alice, "g", &share_a, &mut [&mut bob, &mut carol]);
        let content = alice.encrypt(&text("g", "from alice")).unwrap();
        assert_eq!(
            carol.decrypt("g", "alice", "m1", &content).unwrap().content,
            "from alice"
        );
    }

    #[test]
    fn identities_are_pinned_on_first_use_and_the_pins_survive_a_pickle() {
        let mut alice = CryptoDevice::new("alice", "phone");
        let bob = CryptoDevice::new("bob", "phone");
        let impostor = CryptoDevice::new("bob", "phone");
        assert_eq!(alice.check_identity(&bob.device_keys()), Trust::New);
        assert_eq!(alice.check_identity(&bob.device_keys()), Trust::Known);
        let key = [7u8; 32];
        let mut alice = CryptoDevice::from_pickle(&alice.pickle(&key), &key).unwrap();
        assert_eq!(
            alice.check_identity(&impostor.device_keys()),
            Trust::Changed {
                pinned: bob.device_keys().identity.ed25519
            },
            "other keys under a pinned device are noticed, after a restart too"
        );
        alice.trust(&impostor.device_keys());
        assert_eq!(alice.check_identity(&impostor.device_keys()), Trust::Known);
    }
}
