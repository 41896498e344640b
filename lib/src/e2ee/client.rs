//! An encrypting client (feature `client`): the WebSocket [`Client`], a device's
//! [`CryptoDevice`] and the key directory over HTTP ([`KeyDirectory`]), so an app, an agent or
//! a test sends and reads plaintext while only ciphertext travels and is stored.
//!
//! On connect the device publishes its keys unless the directory already has them (50
//! one-time keys and a fallback key; more when told `one_time_keys_low`). Before a message goes
//! out, the conversation's member devices that lack this device's current Megolm session get its
//! key over Olm (`to_device`, waited for until stored); then the content is sealed and sent. A
//! room key is accepted only from the device the directory lists under its sender: Olm
//! authenticates the sending device's Curve25519 key, the directory says whose it is.
//!
//! Received messages are opened in order per conversation: one whose key has not arrived yet
//! holds back the conversation's later messages until the key comes or [`KEY_WAIT`] passes
//! (then it is given up as [`EncryptedEvent::Undecryptable`], and the rest flow again); one
//! stored well before this device published its keys is given up at once (it was sealed
//! before the device existed). A
//! conversation with an agent that published no keys is plaintext both ways, and every
//! message says whether it was encrypted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{Client, ClientConfig, ClientError, ClientEvent};
use crate::e2ee::device::{CryptoError, DeviceMessage, Plaintext};
use crate::e2ee::directory::{DeviceKeys, KeyKind, SignedKey};
use crate::e2ee::{CryptoDevice, Envelope};
use crate::model::ConversationKind;
use crate::protocol::{
    DeliveredMessage, MessageAckPayload, MessageBody, MessageType, OutgoingMessage,
    OutgoingToDevice, ToDevicePayload,
};

/// How long a message waits for its session key before it is given up as undecryptable.
pub const KEY_WAIT: Duration = Duration::from_secs(5);
/// Clock difference tolerated between this device and the server: a message stored this long
/// before the device published its keys was certainly sealed before it could have the key.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// One-time keys a device publishes at a time (vodozemac's advice: 50).
pub const ONE_TIME_KEYS: usize = 50;

/// The key directory and conversation lookups of the HTTP API, as one device's user.
#[derive(Clone)]
pub struct KeyDirectory {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl KeyDirectory {
    /// The HTTP API at `base` (e.g. `http://127.0.0.1:8084`) with an access token.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Connection(format!("HTTP API: {e}")))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body
                .pointer("/error/code")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok())
                .unwrap_or(crate::ErrorCode::Internal);
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("HTTP error")
                .to_string();
            return Err(ClientError::Server { code, message });
        }
        Ok(body)
    }

    /// Publishes `keys` with one-time keys and a fallback key; returns the one-time keys stored.
    pub async fn publish(
        &self,
        keys: &DeviceKeys,
        one_time_keys: &[SignedKey],
        fallback_key: Option<&SignedKey>,
    ) -> Result<u64, ClientError> {
        let body = json!({
            "identity": keys.identity,
            "signature": keys.signature,
            "one_time_keys": one_time_keys,
            "fallback_key": fallback_key,
        });
        let answer = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/keys/{}", keys.device_id),
                Some(body),
            )
            .await?;
        Ok(answer["one_time_key_count"].as_u64().unwrap_or_default())
    }

    /// A user's published devices.
    pub async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceKeys>, ClientError> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/users/{user_id}/keys"),
                None,
            )
            .await?;
        serde_json::from_value(answer["devices"].clone())
            .map_err(|e| ClientError::Connection(format!("HTTP API: devices: {e}")))
    }

    /// Claims one key of each device; the devices that had none are left out.
    pub async fn claim(
        &self,
        devices: &[&DeviceKeys],
    ) -> Result<Vec<(String, String, SignedKey, KeyKind)>, ClientError> {
        let wanted: Vec<Value> = devices
            .iter()
            .map(|d| json!({"user_id": d.user_id, "device_id": d.device_id}))
            .collect();
        let answer = self
            .call(
                reqwest::Method::POST,
                "/v1/keys/claim",
                Some(json!({"devices": wanted})),
            )
            .await?;
        let mut claimed = Vec::new();
        for key in answer["keys"].as_array().cloned().unwrap_or_default() {
            let (Some(user), Some(device), Ok(signed)) = (
                key["user_id"].as_str(),
                key["device_id"].as_str(),
                serde_json::from_value::<SignedKey>(key["key"].clone()),
            ) else {
                continue;
            };
            let kind = if key["fallback"] == true {
                KeyKind::Fallback
            } else {
                KeyKind::OneTime
            };
            claimed.push((user.to_string(), device.to_string(), signed, kind));
        }
        Ok(claimed)
    }

    /// A conversation's kind, participants and agent.
    pub async fn conversation(
        &self,
        conversation_id: &str,
    ) -> Result<ConversationInfo, ClientError> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/conversations/{conversation_id}"),
                None,
            )
            .await?;
        serde_json::from_value(answer)
            .map_err(|e| ClientError::Connection(format!("HTTP API: conversation: {e}")))
    }
}

/// What a client needs to know of a conversation to encrypt for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ConversationInfo {
    /// `direct`, `group` or `agent`.
    pub kind: ConversationKind,
    /// Everyone in it (people and agents).
    pub participants: Vec<String>,
    /// The agent of an agent conversation.
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// What an [`EncryptedClient`] tells its user.
#[derive(Debug, Clone, PartialEq)]
pub enum EncryptedEvent {
    /// A message, opened: `content` is the plaintext.
    Message {
        /// The message as delivered, with its content opened.
        message: Box<DeliveredMessage>,
        /// Whether it travelled encrypted (false only in a conversation with an agent that has
        /// no keys, or for server-written `system` messages).
        encrypted: bool,
    },
    /// A message that cannot be opened here (tampered, or sent before this device had the key);
    /// `content` is what arrived.
    Undecryptable {
        /// The message as delivered.
        message: Box<DeliveredMessage>,
        /// Why.
        reason: CryptoError,
    },
    /// Anything else the client said.
    Other(ClientEvent),
}

/// The WebSocket client with end-to-end encryption (see the module doc).
pub struct EncryptedClient {
    client: Client,
    directory: KeyDirectory,
    device: CryptoDevice,
    /// Where the device's state is kept between runs, and its key.
    persist: Option<(PathBuf, [u8; 32])>,
    ready: VecDeque<EncryptedEvent>,
    /// Per conversation, messages waiting (in order) for a session key, with when they came.
    held: BTreeMap<String, VecDeque<(Instant, DeliveredMessage)>>,
    /// Published devices per user (dropped on `device_list`).
    devices: HashMap<String, Vec<DeviceKeys>>,
    /// `to_device` message ids the server said it stored.
    stored: BTreeSet<String>,
    /// Kinds of the conversations seen (a kind never changes): plaintext is shown only in a
    /// conversation with an agent, never between people.
    kinds: HashMap<String, ConversationKind>,
    /// Conversations whose kind is needed to classify a message that is not ciphertext.
    to_classify: BTreeSet<String>,
    /// When this device's keys were published (this device's clock, milliseconds): nothing
    /// stored well before that was sealed for it.
    published_at: i64,
}

impl EncryptedClient {
    /// Connects as `device` (its state loaded from `persist` when the file exists, and saved
    /// there after every change), publishing its keys unless the directory has them.
    pub async fn connect(
        config: ClientConfig,
        directory: KeyDirectory,
        user_id: &str,
        persist: Option<(PathBuf, [u8; 32])>,
    ) -> Result<Self, ClientError> {
        let device_id = config
            .device_id
            .clone()
            .unwrap_or_else(|| crate::identity::DEFAULT_DEVICE.to_string());
        let device = match &persist {
            Some((path, key)) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ClientError::Connection(format!("device state {}: {e}", path.display()))
                })?;
                CryptoDevice::from_pickle(&text, key).map_err(|e| {
                    ClientError::Connection(format!("device state {}: {e}", path.display()))
                })?
            }
            _ => CryptoDevice::new(user_id, device_id),
        };
        let client = Client::connect(config).await?;
        let mut this = Self {
            client,
            directory,
            device,
            persist,
            ready: VecDeque::new(),
            held: BTreeMap::new(),
            devices: HashMap::new(),
            stored: BTreeSet::new(),
            kinds: HashMap::new(),
            to_classify: BTreeSet::new(),
            published_at: 0,
        };
        this.publish_if_needed().await?;
        Ok(this)
    }

    /// The device's keys and sessions.
    pub fn device(&self) -> &CryptoDevice {
        &self.device
    }

    /// The device's keys and sessions, to open content that did not come through this client.
    pub fn device_mut(&mut self) -> &mut CryptoDevice {
        &mut self.device
    }

    /// The underlying client (reads, typing, presence, cancel).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn publish_if_needed(&mut self) -> Result<(), ClientError> {
        let mine = self.device.device_keys();
        let listed = self.directory.devices_of(&mine.user_id).await?;
        if listed.iter().any(|d| d == &mine) {
            return Ok(());
        }
        self.published_at = crate::clock::now_ms();
        let one_time = self.device.new_one_time_keys(ONE_TIME_KEYS);
        let fallback = self.device.new_fallback_key();
        self.directory
            .publish(&mine, &one_time, Some(&fallback))
            .await
            .map_err(|e| match e {
                // This device id published other keys (its state was lost, or another device
                // uses the id): say what to do.
                ClientError::Server {
                    code: crate::ErrorCode::Conflict,
                    ..
                } => ClientError::Server {
                    code: crate::ErrorCode::Conflict,
                    message: format!(
                        "device {} already published other keys: use another device id, or delete them (DELETE /v1/keys/{}) if this device was reset",
                        mine.device_id, mine.device_id
                    ),
                },
                other => other,
            })?;
        self.save();
        Ok(())
    }

    /// Saves the device's state (when it has a file): written beside it and renamed over it, so
    /// a crash leaves the old state or the new, never half of one. False when it failed.
    fn save(&self) -> bool {
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

    async fn devices_of(&mut self, user_id: &str) -> Result<Vec<DeviceKeys>, ClientError> {
        if let Some(known) = self.devices.get(user_id) {
            return Ok(known.clone());
        }
        let listed = self.directory.devices_of(user_id).await?;
        // Only keys that verify: the directory could be wrong, the device cannot.
        let listed: Vec<DeviceKeys> = listed
            .into_iter()
            .filter(|d| d.user_id == user_id && d.verify().is_ok())
            .collect();
        self.devices.insert(user_id.to_string(), listed.clone());
        Ok(listed)
    }

    /// Sends `body` to a conversation: its members' devices get this device's session key first
    /// when they lack it, then the content goes sealed (plaintext only to an agent without keys).
    pub async fn send(
        &mut self,
        conversation_id: &str,
        body: MessageBody,
    ) -> Result<MessageAckPayload, ClientError> {
        // Members are read for every send, never cached: a member removed a moment ago must not
        // get the next session key (a cache would wait for the removal's `system` message).
        let info = self.directory.conversation(conversation_id).await?;
        self.kinds.insert(conversation_id.to_string(), info.kind);
        let (participants, agent) = (info.participants, info.agent_id);
        // What has arrived meanwhile first: a `device_list` among it changes who gets the key.
        self.drain().await;
        let mut devices = Vec::new();
        let mut members = BTreeSet::new();
        for participant in &participants {
            let listed = self.devices_of(participant).await?;
            if listed.is_empty() && agent.as_deref() == Some(participant.as_str()) {
                continue; // an agent without keys: see below
            }
            members.insert(participant.clone());
            devices.extend(listed);
        }
        // Plaintext only to an agent that holds no keys (or one chosen per message by
        // capability, which no key can be shared with ahead); between people never.
        let plaintext_agent = info.kind == ConversationKind::Agent
            && agent.as_ref().is_none_or(|a| !members.contains(a));
        let mut body = body;
        if !plaintext_agent {
            self.share_key(conversation_id, &members, &devices).await?;
            let sealed = Plaintext {
                conversation_id: conversation_id.to_string(),
                content: std::mem::take(&mut body.content),
                extra: body
                    .location
                    .take()
                    .map(|l| json!({"location": l}))
                    .unwrap_or(Value::Null),
            };
            body.content = self
                .device
                .encrypt(&sealed)
                .map_err(|e| ClientError::Connection(format!("encrypt: {e}")))?;
            self.save();
        }
        self.client
            .send_message(OutgoingMessage {
                conversation_id: conversation_id.to_string(),
                receiver_id: None,
                body,
                timestamp: crate::clock::now_ms(),
            })
            .await
    }

    /// Processes every event that has already arrived, without waiting.
    async fn drain(&mut self) {
        while let Some(event) = self.client.next_event_within(Duration::ZERO).await {
            self.process(event).await;
        }
    }

    /// Gives every member device that lacks it the conversation's current session key.
    async fn share_key(
        &mut self,
        conversation_id: &str,
        members: &BTreeSet<String>,
        devices: &[DeviceKeys],
    ) -> Result<(), ClientError> {
        let share =
            self.device
                .room_key_for(conversation_id, members, devices, crate::clock::now_ms());
        if share.missing.is_empty() {
            return Ok(());
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
        let mut reached = Vec::new();
        for device in &share.missing {
            let key = claimed
                .iter()
                .find(|(u, d, ..)| *u == device.user_id && *d == device.device_id)
                .map(|(_, _, key, kind)| (key, *kind));
            let message = self
                .device
                .room_key_message(conversation_id, &share, device);
            match self.device.encrypt_to_device(device, key, &message) {
                Ok(content) => {
                    messages.push(OutgoingToDevice {
                        message_id: uuid::Uuid::new_v4().to_string(),
                        user_id: device.user_id.clone(),
                        device_id: device.device_id.clone(),
                        content,
                    });
                    reached.push(device.clone());
                }
                // A device with no key left to claim, or one whose key does not verify: it
                // cannot read this session (it gets the next one once it publishes keys).
                Err(e) => {
                    tracing::warn!(user = device.user_id, device = device.device_id, error = %e, "room key not shared")
                }
            }
        }
        for batch in messages.chunks(100) {
            self.send_to_device(batch.to_vec()).await?;
        }
        for device in &reached {
            self.device.shared_with(conversation_id, device);
        }
        self.save();
        Ok(())
    }

    /// Sends `to_device` messages and waits until the server has stored them all (resending the
    /// same ids after `unavailable` or a silent drop).
    async fn send_to_device(&mut self, messages: Vec<OutgoingToDevice>) -> Result<(), ClientError> {
        let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
        for _attempt in 0..5 {
            self.client.to_device(messages.clone())?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if ids.iter().all(|id| self.stored.contains(id)) {
                    for id in &ids {
                        self.stored.remove(id);
                    }
                    return Ok(());
                }
                let Some(event) = tokio::time::timeout_at(deadline, self.client.next_event())
                    .await
                    .ok()
                    .flatten()
                else {
                    break; // resend: same ids, stored once
                };
                match event {
                    ClientEvent::Error { code, message }
                        if code != crate::ErrorCode::Unavailable =>
                    {
                        if code == crate::ErrorCode::NotFound {
                            // A device that is gone: the next send reads the devices again.
                            self.devices.clear();
                        }
                        return Err(ClientError::Server { code, message });
                    }
                    ClientEvent::Error { .. } => break,
                    other => self.process(other).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClientError::Timeout)
    }

    /// The next event, or `None` once the client is closed for good.
    pub async fn next_event(&mut self) -> Option<EncryptedEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            // Kinds needed to classify plaintext: looked up before anything else is read (the
            // conversation stays in `to_classify` until its kind is known).
            if let Some(conversation) = self.to_classify.first().cloned() {
                match self.directory.conversation(&conversation).await {
                    Ok(info) => {
                        self.kinds.insert(conversation.clone(), info.kind);
                        self.to_classify.remove(&conversation);
                        self.retry_held();
                        continue;
                    }
                    Err(e) => {
                        // What waits is treated as between people (plaintext refused) rather
                        // than held; the kind is asked again for the next such message.
                        tracing::warn!(conversation, error = %e, "conversation kind unavailable");
                        self.kinds
                            .insert(conversation.clone(), ConversationKind::Direct);
                        self.to_classify.remove(&conversation);
                        self.retry_held();
                        self.kinds.remove(&conversation);
                        continue;
                    }
                }
            }
            let wait = self
                .held
                .values()
                .filter_map(|q| q.front().map(|(at, _)| *at + KEY_WAIT))
                .min();
            let event = match wait {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.client.next_event()).await {
                        Ok(event) => event?,
                        Err(_) => {
                            self.give_up_overdue();
                            continue;
                        }
                    }
                }
                None => self.client.next_event().await?,
            };
            self.process(event).await;
        }
    }

    /// The next event within `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<EncryptedEvent> {
        tokio::time::timeout(timeout, self.next_event())
            .await
            .ok()
            .flatten()
    }

    async fn process(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::ToDevice(payload) => self.on_to_device(payload).await,
            ClientEvent::ToDeviceSent(ids) => self.stored.extend(ids),
            ClientEvent::DeviceList(payload) => {
                self.devices.remove(&payload.user_id);
            }
            ClientEvent::KeysLow(_) => {
                let one_time = self.device.new_one_time_keys(ONE_TIME_KEYS / 2);
                let keys = self.device.device_keys();
                match self.directory.publish(&keys, &one_time, None).await {
                    Ok(_) => {
                        self.save();
                    }
                    Err(e) => tracing::warn!(error = %e, "one-time keys not topped up"),
                }
            }
            ClientEvent::Message(message) => self.on_message(*message),
            other => self.ready.push_back(EncryptedEvent::Other(other)),
        }
    }

    async fn on_to_device(&mut self, payload: ToDevicePayload) {
        // The network first: each sender's published devices (read again when the sending
        // device is not listed yet). From the first decryption to the ack nothing awaits, so a
        // future dropped meanwhile never loses a key Olm has already opened.
        let mut listed: HashMap<String, Option<Vec<DeviceKeys>>> = HashMap::new();
        for item in &payload.messages {
            if listed.contains_key(&item.sender_id) {
                continue;
            }
            let mut devices = self.devices_of(&item.sender_id).await.ok();
            if devices
                .as_ref()
                .is_some_and(|d| !d.iter().any(|d| d.device_id == item.sender_device_id))
            {
                self.devices.remove(&item.sender_id);
                devices = self.devices_of(&item.sender_id).await.ok();
            }
            listed.insert(item.sender_id.clone(), devices);
        }
        let mut sequences = Vec::new();
        for item in payload.messages {
            let Some(Some(devices)) = listed.get(&item.sender_id) else {
                // The directory did not answer: not acknowledged, so it comes again.
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
        // Acknowledged only once kept: the server deletes what is acknowledged.
        if self.save() && !sequences.is_empty() {
            let _ = self.client.ack_to_device(sequences);
        }
        self.retry_held();
    }

    fn on_message(&mut self, message: DeliveredMessage) {
        let conversation = message.conversation_id.clone().unwrap_or_default();
        if let Some(queue) = self.held.get_mut(&conversation) {
            queue.push_back((Instant::now(), message));
            return;
        }
        if let Some(message) = self.open(message) {
            self.held
                .entry(conversation)
                .or_default()
                .push_back((Instant::now(), message));
        }
    }

    /// Opens a message into `ready`; gives it back when its key has not arrived yet.
    fn open(&mut self, mut message: DeliveredMessage) -> Option<DeliveredMessage> {
        let conversation = message.conversation_id.clone().unwrap_or_default();
        if Envelope::parse(&message.body.content).is_err() {
            // Plaintext: the server's own `system` messages, and an agent without keys. Between
            // people it is refused, whatever the server says: never shown as a message.
            let plaintext = match (message.body.message_type, self.kinds.get(&conversation)) {
                (MessageType::System, _) | (_, Some(ConversationKind::Agent)) => true,
                (_, Some(_)) => false,
                (_, None) => {
                    self.to_classify.insert(conversation);
                    return Some(message);
                }
            };
            if plaintext {
                self.ready.push_back(EncryptedEvent::Message {
                    message: Box::new(message),
                    encrypted: false,
                });
            } else {
                self.ready.push_back(EncryptedEvent::Undecryptable {
                    message: Box::new(message),
                    reason: CryptoError::Malformed(
                        "plaintext in a conversation between people".into(),
                    ),
                });
            }
            return None;
        }
        let sender = message.sender_id.clone().unwrap_or_default();
        match self.device.decrypt(
            &conversation,
            &sender,
            &message.message_id,
            &message.body.content,
        ) {
            Ok(plaintext) => {
                message.body.content = plaintext.content;
                if let Some(location) = plaintext.extra.get("location") {
                    message.body.location = serde_json::from_value(location.clone()).ok();
                }
                self.ready.push_back(EncryptedEvent::Message {
                    message: Box::new(message),
                    encrypted: true,
                });
                None
            }
            // Stored well before this device existed: its key was never meant for it.
            Err(CryptoError::UnknownSession(session))
                if message.timestamp < self.published_at - CLOCK_SKEW.as_millis() as i64 =>
            {
                self.ready.push_back(EncryptedEvent::Undecryptable {
                    message: Box::new(message),
                    reason: CryptoError::BeforeJoined(session),
                });
                None
            }
            Err(CryptoError::UnknownSession(_)) => Some(message),
            Err(reason) => {
                self.ready.push_back(EncryptedEvent::Undecryptable {
                    message: Box::new(message),
                    reason,
                });
                None
            }
        }
    }

    /// Opens what waited for keys, in order per conversation, as far as the keys reach.
    fn retry_held(&mut self) {
        let conversations: Vec<String> = self.held.keys().cloned().collect();
        for conversation in conversations {
            let mut queue = self.held.remove(&conversation).unwrap_or_default();
            while let Some((at, message)) = queue.pop_front() {
                if let Some(message) = self.open(message) {
                    queue.push_front((at, message));
                    break;
                }
            }
            if !queue.is_empty() {
                self.held.insert(conversation, queue);
            }
        }
    }

    /// Gives up the messages that waited longer than [`KEY_WAIT`] for their key.
    fn give_up_overdue(&mut self) {
        let now = Instant::now();
        let conversations: Vec<String> = self.held.keys().cloned().collect();
        for conversation in conversations {
            let Some(queue) = self.held.get_mut(&conversation) else {
                continue;
            };
            while let Some((at, _)) = queue.front() {
                if now < *at + KEY_WAIT {
                    break;
                }
                let (_, message) = queue.pop_front().expect("front exists");
                let session = Envelope::parse(&message.body.content)
                    .map(|e| e.session_id)
                    .unwrap_or_default();
                self.ready.push_back(EncryptedEvent::Undecryptable {
                    message: Box::new(message),
                    reason: CryptoError::UnknownSession(session),
                });
            }
            if queue.is_empty() {
                self.held.remove(&conversation);
            }
        }
        self.retry_held();
    }
}
