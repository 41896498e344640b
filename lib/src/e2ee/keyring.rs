//! A device's end-to-end encryption with its I/O: the [`CryptoDevice`], where its state is
//! kept, and the [`KeyDirectory`] it publishes to and reads from. What the WebSocket
//! `EncryptedClient` (feature `client`) and the agent SDK's encrypted agents share; only the
//! way `to_device` messages travel differs (a frame, or the HTTP routes).
//!
//! Sending to a conversation: [`Keyring::recipients`] reads who is in it and their devices
//! (verified signatures only), [`Keyring::key_shares`] seals this device's current session key
//! for every member device that lacks it (claiming a key where there is no Olm session yet),
//! the caller sends those and reports them with [`Keyring::shared`], then [`Keyring::seal`]
//! encrypts content. Receiving: [`Keyring::open_to_device`] accepts room keys only from the
//! device the directory lists under their sender, and says which messages to acknowledge
//! (after the state is saved, never before).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::e2ee::device::{CryptoError, DeviceMessage, Plaintext, Trust};
use crate::e2ee::directory::DeviceKeys;
use crate::e2ee::key_directory::{ConversationInfo, KeyDirectory};
use crate::e2ee::{CryptoDevice, OlmEnvelope};
use crate::model::ConversationKind;
use crate::protocol::{OutgoingToDevice, ToDeviceItem};
use crate::{Error, ErrorCode, Result};

/// One-time keys a device publishes at a time (vodozemac's advice: 50).
pub const ONE_TIME_KEYS: usize = 50;

/// What to do when the directory holds other identity keys under this device's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse, saying what to do (a person's device: another device may use the id).
    Refuse,
    /// Replace them (an agent whose state was lost: the id is its own, its peers re-share).
    Replace,
}

/// Who a device's message to a conversation goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients {
    /// Members that hold keys (user ids), this device's own user included.
    pub members: BTreeSet<String>,
    /// Their devices, signatures verified.
    pub devices: Vec<DeviceKeys>,
    /// The conversation is with an agent that holds no keys: content travels in plaintext.
    pub plaintext: bool,
}

/// A device's keys and sessions, where they are kept, and the directory (see the module doc).
pub struct Keyring {
    device: CryptoDevice,
    directory: KeyDirectory,
    /// Where the state is kept between runs, and its key.
    persist: Option<(PathBuf, [u8; 32])>,
    /// Published devices per user, when cached (a client told of changes by `device_list`).
    devices: Option<HashMap<String, (Vec<DeviceKeys>, bool)>>,
    /// When this device's keys were published (this device's clock, milliseconds).
    published_at: i64,
    /// Devices seen for the first time, or with other keys than pinned, not yet told.
    identity_changes: Vec<(DeviceKeys, Trust)>,
    /// Changed identities are trusted at once (logged): for a device nobody can ask (an agent).
    follow_changes: bool,
}

impl Keyring {
    /// `user_id`'s device `device_id`, loaded from `persist` when the file exists. With
    /// `cache_devices`, users' devices are read once until [`Keyring::forget_devices`].
    pub fn load(
        directory: KeyDirectory,
        user_id: &str,
        device_id: &str,
        persist: Option<(PathBuf, [u8; 32])>,
        cache_devices: bool,
    ) -> Result<Self> {
        let device = match &persist {
            Some((path, key)) if path.exists() => {
                let state = |e: &dyn std::fmt::Display| {
                    Error::client(
                        ErrorCode::InvalidRequest,
                        format!("device state {}: {e}", path.display()),
                    )
                };
                let text = std::fs::read_to_string(path).map_err(|e| state(&e))?;
                CryptoDevice::from_pickle(&text, key).map_err(|e| state(&e))?
            }
            _ => CryptoDevice::new(user_id, device_id),
        };
        Ok(Self {
            device,
            directory,
            persist,
            devices: cache_devices.then(HashMap::new),
            published_at: 0,
            identity_changes: Vec::new(),
            follow_changes: false,
        })
    }

    /// Trusts changed identities at once (each logged) instead of leaving their devices out:
    /// for a device with nobody to compare safety codes (an agent).
    pub fn follow_identity_changes(&mut self) {
        self.follow_changes = true;
    }

    /// The device's keys and sessions.
    pub fn device(&self) -> &CryptoDevice {
        &self.device
    }

    /// The device's keys and sessions, to open content that did not come through here.
    pub fn device_mut(&mut self) -> &mut CryptoDevice {
        &mut self.device
    }

    /// The key directory.
    pub fn directory(&self) -> &KeyDirectory {
        &self.directory
    }

    /// When this device published its keys (this process's clock, milliseconds; 0 when they
    /// were published before it started): nothing stored well before was sealed for it.
    pub fn published_at(&self) -> i64 {
        self.published_at
    }

    /// Publishes the device's keys (50 one-time keys and a fallback key) unless the directory
    /// lists them already.
    pub async fn publish_if_needed(&mut self, on_conflict: OnConflict) -> Result<()> {
        let mine = self.device.device_keys();
        let listed = self.directory.devices_of(&mine.user_id).await?;
        if listed.iter().any(|d| d == &mine) {
            return Ok(());
        }
        if on_conflict == OnConflict::Replace
            && listed.iter().any(|d| d.device_id == mine.device_id)
        {
            tracing::warn!(
                device = mine.device_id,
                "device state lost: its keys are replaced"
            );
            self.directory.delete(&mine.device_id).await?;
        }
        self.published_at = crate::clock::now_ms();
        let one_time = self.device.new_one_time_keys(ONE_TIME_KEYS);
        let fallback = self.device.new_fallback_key();
        self.directory
            .publish(&mine, &one_time, Some(&fallback))
            .await
            .map_err(|e| match e.code() {
                // This device id published other keys (its state was lost, or another device
                // uses the id): say what to do.
                ErrorCode::Conflict => Error::client(
                    ErrorCode::Conflict,
                    format!(
                        "device {} already published other keys: use another device id, or delete them (DELETE /v1/keys/{}) if this device was reset",
                        mine.device_id, mine.device_id
                    ),
                ),
                _ => e,
            })?;
        self.save();
        Ok(())
    }

    /// Publishes `count` more one-time keys.
    pub async fn top_up(&mut self, count: usize) -> Result<u64> {
        let one_time = self.device.new_one_time_keys(count);
        let keys = self.device.device_keys();
        let stored = self.directory.publish(&keys, &one_time, None).await?;
        self.save();
        Ok(stored)
    }

    /// Saves the device's state (when it has a file): written beside it and renamed over it, so
    /// a crash leaves the old state or the new, never half of one. False when it failed.
    pub fn save(&self) -> bool {
        let Some((path, key)) = &self.persist else {
            return true;
        };
        let temporary = path.with_extension("tmp");
        let written = std::fs::write(&temporary, self.device.pickle(key))
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = &written {
            tracing::warn!(path = %path.display(), error = %e, "device state not saved");
        }
        written.is_ok()
    }

    /// A user's published devices whose signatures verify (the directory could be wrong, the
    /// device cannot) and whose identity is the one pinned (trust on first use: a device seen
    /// for the first time is pinned; one listed with other keys than pinned is left out until
    /// [`Keyring::trust`]). Both are told by [`Keyring::take_identity_changes`].
    pub async fn devices_of(&mut self, user_id: &str) -> Result<Vec<DeviceKeys>> {
        Ok(self.listed(user_id).await?.0)
    }

    /// The trusted devices of `user_id`, and whether the directory lists any device at all.
    async fn listed(&mut self, user_id: &str) -> Result<(Vec<DeviceKeys>, bool)> {
        if let Some(known) = self.devices.as_ref().and_then(|c| c.get(user_id)) {
            return Ok(known.clone());
        }
        let verified: Vec<DeviceKeys> = self
            .directory
            .devices_of(user_id)
            .await?
            .into_iter()
            .filter(|d| d.user_id == user_id && d.verify().is_ok())
            .collect();
        let any = !verified.is_empty();
        let mut trusted = Vec::new();
        // Pins are saved with the device's state, only when one was added or replaced.
        let mut pinned = false;
        let own = (
            self.device.user_id().to_string(),
            self.device.device_id().to_string(),
        );
        for device in verified {
            if (device.user_id.as_str(), device.device_id.as_str())
                == (own.0.as_str(), own.1.as_str())
            {
                trusted.push(device);
                continue;
            }
            match self.device.check_identity(&device) {
                Trust::Known => trusted.push(device),
                Trust::New => {
                    pinned = true;
                    self.identity_changes.push((device.clone(), Trust::New));
                    trusted.push(device);
                }
                changed @ Trust::Changed { .. } if self.follow_changes => {
                    tracing::warn!(
                        user = device.user_id,
                        device = device.device_id,
                        "identity keys changed: followed (nobody here can compare safety codes)"
                    );
                    self.device.trust(&device);
                    pinned = true;
                    self.identity_changes.push((device.clone(), changed));
                    trusted.push(device);
                }
                changed @ Trust::Changed { .. } => {
                    tracing::warn!(
                        user = device.user_id,
                        device = device.device_id,
                        "identity keys changed: device not used until trusted"
                    );
                    if !self.identity_changes.iter().any(|(d, _)| d == &device) {
                        self.identity_changes.push((device, changed));
                    }
                }
            }
        }
        if let Some(cache) = &mut self.devices {
            cache.insert(user_id.to_string(), (trusted.clone(), any));
        }
        if pinned {
            self.save();
        }
        Ok((trusted, any))
    }

    /// Devices seen for the first time, and devices listed with other keys than pinned, since
    /// the last call.
    pub fn take_identity_changes(&mut self) -> Vec<(DeviceKeys, Trust)> {
        std::mem::take(&mut self.identity_changes)
    }

    /// Trusts `user_id`'s device `device_id` with the keys the directory lists now (after its
    /// person compared safety codes); returns them.
    pub async fn trust(&mut self, user_id: &str, device_id: &str) -> Result<DeviceKeys> {
        let device = self
            .directory
            .devices_of(user_id)
            .await?
            .into_iter()
            .find(|d| d.user_id == user_id && d.device_id == device_id && d.verify().is_ok())
            .ok_or_else(|| Error::not_found(format!("{user_id} has no device {device_id}")))?;
        self.device.trust(&device);
        self.forget_devices(Some(user_id));
        self.save();
        Ok(device)
    }

    /// Forgets the cached devices of `user_id` (of everyone with `None`).
    pub fn forget_devices(&mut self, user_id: Option<&str>) {
        if let Some(cache) = &mut self.devices {
            match user_id {
                Some(user) => {
                    cache.remove(user);
                }
                None => cache.clear(),
            }
        }
    }

    /// Who gets this device's messages in the conversation `info` describes (read it fresh for
    /// every send: a member removed a moment ago must not get the next session key).
    pub async fn recipients(&mut self, info: &ConversationInfo) -> Result<Recipients> {
        let mut devices = Vec::new();
        let mut members = BTreeSet::new();
        for participant in &info.participants {
            let (listed, any) = self.listed(participant).await?;
            // An agent without keys (not one whose keys changed: that is no reason to send
            // plaintext; it gets nothing it can open until its new keys are trusted).
            if !any && info.agent_id.as_deref() == Some(participant.as_str()) {
                continue;
            }
            members.insert(participant.clone());
            devices.extend(listed);
        }
        // Plaintext only to an agent that holds no keys (or one chosen per message by
        // capability, which no key can be shared with ahead); between people never.
        let plaintext = info.kind == ConversationKind::Agent
            && info.agent_id.as_ref().is_none_or(|a| !members.contains(a));
        Ok(Recipients {
            members,
            devices,
            plaintext,
        })
    }

    /// This device's current session key for the conversation, sealed over Olm for every
    /// member device that lacks it (a key is claimed for devices without an Olm session; one
    /// with none left to claim, or whose key does not verify, is skipped: it gets the next
    /// session once it publishes keys). Send them, then call [`Keyring::shared`].
    pub async fn key_shares(
        &mut self,
        conversation_id: &str,
        recipients: &Recipients,
    ) -> Result<Vec<(OutgoingToDevice, DeviceKeys)>> {
        let share = self.device.room_key_for(
            conversation_id,
            &recipients.members,
            &recipients.devices,
            crate::clock::now_ms(),
        );
        if share.missing.is_empty() {
            return Ok(Vec::new());
        }
        let unsessioned: Vec<&DeviceKeys> = share
            .missing
            .iter()
            .filter(|d| !self.device.has_session_with(d))
            .collect();
        let claimed = if unsessioned.is_empty() {
            Vec::new()
        } else {
            self.directory.claim(&unsessioned).await?
        };
        let mut messages = Vec::new();
        for device in &share.missing {
            let key = claimed
                .iter()
                .find(|c| c.user_id == device.user_id && c.device_id == device.device_id)
                .map(|c| (&c.key, c.kind));
            let message = self
                .device
                .room_key_message(conversation_id, &share, device);
            match self.device.encrypt_to_device(device, key, &message) {
                Ok(content) => messages.push((
                    OutgoingToDevice {
                        message_id: uuid::Uuid::new_v4().to_string(),
                        user_id: device.user_id.clone(),
                        device_id: device.device_id.clone(),
                        content,
                    },
                    device.clone(),
                )),
                Err(e) => {
                    tracing::warn!(user = device.user_id, device = device.device_id, error = %e, "room key not shared")
                }
            }
        }
        // The Olm sessions just created must outlive a crash before the messages go out.
        self.save();
        Ok(messages)
    }

    /// Records that `devices` got the conversation's current session key (their `to_device`
    /// messages are stored).
    pub fn shared(&mut self, conversation_id: &str, devices: &[DeviceKeys]) {
        for device in devices {
            self.device.shared_with(conversation_id, device);
        }
        self.save();
    }

    /// Seals `content` (and `extra`, e.g. a location) for the conversation with this device's
    /// current session (after [`Keyring::key_shares`]); returns the message `content`.
    pub fn seal(
        &mut self,
        conversation_id: &str,
        content: String,
        extra: serde_json::Value,
    ) -> Result<String> {
        let sealed = self
            .device
            .encrypt(&Plaintext {
                conversation_id: conversation_id.to_string(),
                content,
                extra,
            })
            .map_err(|e| Error::invalid(format!("encrypt: {e}")))?;
        self.save();
        Ok(sealed)
    }

    /// Opens `to_device` messages and keeps the room keys they carry; returns the sequence
    /// numbers to acknowledge (empty when the state could not be saved: they come again).
    /// Messages whose sender's devices could not be read are not acknowledged either; ones
    /// that fail to open, or come from a device the directory does not list, are (they never
    /// will open).
    pub async fn open_to_device(&mut self, items: &[ToDeviceItem]) -> Vec<u64> {
        // The network first: each sender's published devices (read again when the sending
        // device is not listed yet). From the first decryption to the save nothing awaits, so a
        // future dropped meanwhile never loses a key Olm has already opened.
        let mut listed: HashMap<&str, Option<Vec<DeviceKeys>>> = HashMap::new();
        for item in items {
            if listed.contains_key(item.sender_id.as_str()) {
                continue;
            }
            let mut devices = self.devices_of(&item.sender_id).await.ok();
            if devices
                .as_ref()
                .is_some_and(|d| !d.iter().any(|d| d.device_id == item.sender_device_id))
            {
                self.forget_devices(Some(&item.sender_id));
                devices = self.devices_of(&item.sender_id).await.ok();
            }
            listed.insert(&item.sender_id, devices);
        }
        let mut sequences = Vec::new();
        for item in items {
            let Some(Some(devices)) = listed.get(item.sender_id.as_str()) else {
                tracing::warn!(
                    sender = item.sender_id,
                    "sender's keys unavailable: to_device kept"
                );
                continue;
            };
            sequences.push(item.sequence);
            // Olm proves which Curve25519 key sent it; the directory says whose key that is.
            let Some(sender) = devices
                .iter()
                .find(|d| d.device_id == item.sender_device_id)
            else {
                tracing::warn!(
                    sender = item.sender_id,
                    "to_device from a device the directory does not list: refused"
                );
                continue;
            };
            let opened = match self.device.decrypt_to_device(
                &item.sender_id,
                &item.sender_device_id,
                &item.content,
            ) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(sender = item.sender_id, error = %e, "to_device message refused");
                    continue;
                }
            };
            if sender.identity.curve25519 != opened.sender_key {
                tracing::warn!(
                    sender = item.sender_id,
                    "to_device sealed by another key than the sender's: refused"
                );
                continue;
            }
            match opened.message {
                DeviceMessage::RoomKey(key) => {
                    if let Err(e) = self.device.accept_room_key(&key, &opened.sender_key) {
                        tracing::warn!(error = %e, "room key refused");
                    }
                }
            }
        }
        if self.save() { sequences } else { Vec::new() }
    }

    /// How many of `items` started an Olm session (each used one of this device's one-time
    /// keys, or its fallback key).
    pub fn sessions_started(items: &[ToDeviceItem]) -> usize {
        items
            .iter()
            .filter(|i| OlmEnvelope::parse(&i.content).is_ok_and(|e| e.message_type == 0))
            .count()
    }

    /// Opens a message's `content` sent by `sender_id` to `conversation_id` as `message_id`.
    pub fn open(
        &mut self,
        conversation_id: &str,
        sender_id: &str,
        message_id: &str,
        content: &str,
    ) -> std::result::Result<Plaintext, CryptoError> {
        self.device
            .decrypt(conversation_id, sender_id, message_id, content)
    }
}
