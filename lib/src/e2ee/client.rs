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
use crate::e2ee::attachment::Attachment;
use crate::e2ee::device::{CryptoError, Trust};
use crate::e2ee::directory::DeviceKeys;
use crate::e2ee::keyring::{ONE_TIME_KEYS, OnConflict, Recipients};
use crate::e2ee::{CryptoDevice, Envelope, KeyDirectory, Keyring};
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
        /// The sealed attachment it carries (fetch it with
        /// [`EncryptedClient::fetch_attachment`]).
        attachment: Option<Attachment>,
    },
    /// A message that cannot be opened here (tampered, or sent before this device had the key);
    /// `content` is what arrived.
    Undecryptable {
        /// The message as delivered.
        message: Box<DeliveredMessage>,
        /// Why.
        reason: CryptoError,
    },
    /// An agent's answer as it is generated, opened so far (see `ClientEvent::Streaming`).
    Streaming {
        /// Conversation.
        conversation_id: String,
        /// The run.
        run_id: String,
        /// The agent.
        agent_id: String,
        /// The answer so far, in plaintext.
        text: String,
        /// Whether it travelled encrypted (false only from an agent without keys).
        encrypted: bool,
    },
    /// A contact's device seen for the first time (now pinned), or listed with other keys than
    /// the ones pinned (left out, nothing shared with it or accepted from it, until
    /// [`EncryptedClient::trust`] after its person compared safety codes).
    Identity {
        /// The device as the directory lists it now.
        device: DeviceKeys,
        /// `New` or `Changed`.
        trust: Trust,
    },
    /// Anything else the client said.
    Other(ClientEvent),
}

/// The WebSocket client with end-to-end encryption (see the module doc).
pub struct EncryptedClient {
    client: Client,
    keyring: Keyring,
    ready: VecDeque<EncryptedEvent>,
    /// Per conversation, messages waiting (in order) for a session key, with when they came.
    held: BTreeMap<String, VecDeque<(Instant, DeliveredMessage)>>,
    /// `to_device` message ids the server said it stored.
    stored: BTreeSet<String>,
    /// Kinds of the conversations seen (a kind never changes): plaintext is shown only in a
    /// conversation with an agent, never between people.
    kinds: HashMap<String, ConversationKind>,
    /// Conversations whose kind is needed to classify a message that is not ciphertext.
    to_classify: BTreeSet<String>,
    /// Streamed answers opened so far, per run: the ciphertext opened and its plaintext.
    streams: HashMap<(String, String), (usize, String)>,
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
        let mut keyring = Keyring::load(directory, user_id, &device_id, persist, true)?;
        let client = Client::connect(config).await?;
        keyring.publish_if_needed(OnConflict::Refuse).await?;
        Ok(Self {
            client,
            keyring,
            ready: VecDeque::new(),
            held: BTreeMap::new(),
            stored: BTreeSet::new(),
            kinds: HashMap::new(),
            to_classify: BTreeSet::new(),
            streams: HashMap::new(),
        })
    }

    /// The device's keys and sessions.
    pub fn device(&self) -> &CryptoDevice {
        self.keyring.device()
    }

    /// The device's keys and sessions, to open content that did not come through this client.
    pub fn device_mut(&mut self) -> &mut CryptoDevice {
        self.keyring.device_mut()
    }

    /// The underlying client (reads, typing, presence, cancel).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `body` to a conversation: its members' devices get this device's session key first
    /// when they lack it, then the content goes sealed (plaintext only to an agent without keys).
    pub async fn send(
        &mut self,
        conversation_id: &str,
        body: MessageBody,
    ) -> Result<MessageAckPayload, ClientError> {
        self.send_sealed(conversation_id, body, None).await
    }

    /// Sends `bytes` as an attachment (`message_type` image, voice, document, ...) with a
    /// `caption`: sealed on this device with a fresh key, uploaded as ciphertext, and the key
    /// sent inside the sealed message. Not to an agent without keys (nothing would be sealed).
    pub async fn send_attachment(
        &mut self,
        conversation_id: &str,
        message_type: MessageType,
        caption: &str,
        bytes: &[u8],
        content_type: &str,
        name: Option<&str>,
    ) -> Result<(MessageAckPayload, Attachment), ClientError> {
        let attachment = self
            .keyring
            .directory()
            .attachments()
            .upload(conversation_id, message_type, bytes, content_type, name)
            .await?;
        let body = MessageBody {
            message_type,
            media_url: Some(attachment.media_id.clone()),
            ..MessageBody::text(caption)
        };
        let ack = self
            .send_sealed(conversation_id, body, Some(&attachment))
            .await?;
        Ok((ack, attachment))
    }

    /// Trusts `user_id`'s device `device_id` with the keys the directory lists now (after
    /// comparing its safety code with its person's screen).
    pub async fn trust(
        &mut self,
        user_id: &str,
        device_id: &str,
    ) -> Result<DeviceKeys, ClientError> {
        Ok(self.keyring.trust(user_id, device_id).await?)
    }

    /// Downloads and opens an attachment of a received message.
    pub async fn fetch_attachment(&self, attachment: &Attachment) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .keyring
            .directory()
            .attachments()
            .download(attachment)
            .await?)
    }

    async fn send_sealed(
        &mut self,
        conversation_id: &str,
        body: MessageBody,
        attachment: Option<&Attachment>,
    ) -> Result<MessageAckPayload, ClientError> {
        // Members are read for every send, never cached: a member removed a moment ago must not
        // get the next session key (a cache would wait for the removal's `system` message).
        let info = self
            .keyring
            .directory()
            .conversation(conversation_id)
            .await?;
        self.kinds.insert(conversation_id.to_string(), info.kind);
        // What has arrived meanwhile first: a `device_list` among it changes who gets the key.
        self.drain().await;
        let recipients = self.keyring.recipients(&info).await?;
        let mut body = body;
        if recipients.plaintext && attachment.is_some() {
            return Err(ClientError::Server {
                code: crate::ErrorCode::InvalidRequest,
                message: "an agent without keys cannot get a sealed attachment".into(),
            });
        }
        if !recipients.plaintext {
            self.share_key(conversation_id, &recipients).await?;
            let mut extra = serde_json::Map::new();
            if let Some(location) = body.location.take() {
                extra.insert("location".into(), json!(location));
            }
            if let Some(attachment) = attachment {
                extra.insert("attachment".into(), json!(attachment));
            }
            let extra = if extra.is_empty() {
                Value::Null
            } else {
                Value::Object(extra)
            };
            body.content =
                self.keyring
                    .seal(conversation_id, std::mem::take(&mut body.content), extra)?;
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
        recipients: &Recipients,
    ) -> Result<(), ClientError> {
        let shares = self.keyring.key_shares(conversation_id, recipients).await?;
        for batch in shares.chunks(crate::to_device::MAX_TO_DEVICE_MESSAGES) {
            self.send_to_device(batch.iter().map(|(m, _)| m.clone()).collect())
                .await?;
            let devices: Vec<DeviceKeys> = batch.iter().map(|(_, d)| d.clone()).collect();
            self.keyring.shared(conversation_id, &devices);
        }
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
                            self.keyring.forget_devices(None);
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
            for (device, trust) in self.keyring.take_identity_changes() {
                self.ready
                    .push_back(EncryptedEvent::Identity { device, trust });
            }
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            // Kinds needed to classify plaintext: looked up before anything else is read (the
            // conversation stays in `to_classify` until its kind is known).
            if let Some(conversation) = self.to_classify.first().cloned() {
                match self.keyring.directory().conversation(&conversation).await {
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
                self.keyring.forget_devices(Some(&payload.user_id));
            }
            ClientEvent::KeysLow(_) => {
                if let Err(e) = self.keyring.top_up(ONE_TIME_KEYS / 2).await {
                    tracing::warn!(error = %e, "one-time keys not topped up");
                }
            }
            ClientEvent::Streaming {
                conversation_id,
                run_id,
                agent_id,
                text,
            } => self.on_streaming(conversation_id, run_id, agent_id, text),
            ClientEvent::Message(message) => self.on_message(*message),
            // A run that ended streams no more: what was opened of it is forgotten (as the
            // client forgets the ciphertext).
            ClientEvent::Run(run) if run.state.is_final() => {
                self.streams
                    .remove(&(run.conversation_id.clone(), run.run_id.clone()));
                self.ready
                    .push_back(EncryptedEvent::Other(ClientEvent::Run(run)));
            }
            other => self.ready.push_back(EncryptedEvent::Other(other)),
        }
    }

    async fn on_to_device(&mut self, payload: ToDevicePayload) {
        // Acknowledged only once kept: the server deletes what is acknowledged.
        let sequences = self.keyring.open_to_device(&payload.messages).await;
        if !sequences.is_empty() {
            let _ = self.client.ack_to_device(sequences);
        }
        self.retry_held();
    }

    /// Opens an encrypted agent's streamed answer so far (each piece is its own envelope; only
    /// what was not opened before is opened now). Plaintext passes only from an agent without
    /// keys; a piece that does not open ends what is shown at the last piece that did.
    fn on_streaming(
        &mut self,
        conversation_id: String,
        run_id: String,
        agent_id: String,
        text: String,
    ) {
        let key = (conversation_id.clone(), run_id.clone());
        let (mut opened_len, mut plaintext) = self
            .streams
            .get(&key)
            .filter(|(len, _)| text.len() >= *len)
            .cloned()
            .unwrap_or_default();
        if opened_len == 0 && Envelope::parse_first(&text).is_none() {
            // Not ciphertext: an agent without keys streams plaintext.
            self.ready.push_back(EncryptedEvent::Streaming {
                conversation_id,
                run_id,
                agent_id,
                text,
                encrypted: false,
            });
            return;
        }
        let stream_id = format!("stream/{run_id}");
        while let Some((envelope, used)) = Envelope::parse_first(&text[opened_len..]) {
            match self
                .keyring
                .open(&conversation_id, &agent_id, &stream_id, envelope)
            {
                Ok(piece) => {
                    plaintext.push_str(&piece.content);
                    opened_len += used;
                }
                Err(e) => {
                    tracing::debug!(run = run_id, error = %e, "streamed piece not opened yet");
                    break;
                }
            }
        }
        self.streams.insert(key, (opened_len, plaintext.clone()));
        self.ready.push_back(EncryptedEvent::Streaming {
            conversation_id,
            run_id,
            agent_id,
            text: plaintext,
            encrypted: true,
        });
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
                    attachment: None,
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
        match self.keyring.open(
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
                // An attachment counts only as the media the message names.
                let attachment = plaintext
                    .extra
                    .get("attachment")
                    .and_then(|a| serde_json::from_value::<Attachment>(a.clone()).ok())
                    .filter(|a| message.body.media_url.as_deref() == Some(a.media_id.as_str()));
                self.ready.push_back(EncryptedEvent::Message {
                    message: Box::new(message),
                    encrypted: true,
                    attachment,
                });
                None
            }
            // Stored well before this device existed: its key was never meant for it.
            Err(CryptoError::UnknownSession(session))
                if message.timestamp
                    < self.keyring.published_at() - CLOCK_SKEW.as_millis() as i64 =>
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
