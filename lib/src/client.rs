//! A WebSocket client for the messaging API (feature `client`): what apps, agents, tests and the
//! benchmark use to talk to a deployment.
//!
//! It keeps the protocol's promises on the client side: every send carries a generated
//! idempotency key and is resent with the same key after a reconnect until acknowledged;
//! reconnects back off exponentially with jitter and resume with `sync` from the last sequence
//! number seen per conversation; messages reach the caller in sequence order per conversation,
//! with gaps detected and filled by `retransmit`; received messages are acknowledged with
//! `delivery_ack` automatically. A message it sent takes its place in that order from its
//! `message_ack` (the server posts it to the user's other connections, not back to this one).
//!
//! Told to `migration` (its gateway replica is shutting down, or the connection nears its
//! lifetime limit), it moves make-before-break: it opens the new connection, sends `sync` and
//! the unacknowledged sends there (same keys), keeps reading the old one until the new one has
//! synced, then closes the old one. Nothing is lost, repeated or reordered, and the application
//! sees no `Disconnected`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::ErrorCode;
use crate::protocol::{
    AgentRunPayload, ClientFrame, DeliveredMessage, DeliveryReceiptPayload, DeviceListPayload,
    KeysLowPayload, MessageAckPayload, MessageDeltaPayload, MigrationPayload, OutgoingMessage,
    OutgoingToDevice, PresencePayload, ReadReceiptPayload, ReceiptsPayload, ServerFrame,
    ToDevicePayload, TypingPayload, TypingState,
};

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://` or `wss://` URL of the WebSocket API (without the token).
    pub url: String,
    /// JWT, sent as `?token=`.
    pub token: String,
    /// Device id, sent as `?device_id=`.
    pub device_id: Option<String>,
    /// Reconnect after a drop.
    pub reconnect: bool,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Send `delivery_ack` for every message received.
    pub auto_delivery_ack: bool,
    /// How long `send` waits for the ack (resends happen meanwhile on reconnect).
    pub ack_timeout: Duration,
    /// How often a `heartbeat` keeps the connection and presence alive (seeds: 30 s).
    pub heartbeat_interval: Duration,
}

impl ClientConfig {
    /// Defaults for `url` and `token`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            device_id: None,
            reconnect: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            auto_delivery_ack: true,
            ack_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
        }
    }
}

/// Something the server told the client, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `auth_success` after (re)connecting and syncing.
    Ready {
        /// Messages waiting at that moment.
        unread_count: u64,
    },
    /// A message, in sequence order for its conversation.
    Message(Box<DeliveredMessage>),
    /// Messages one sent were delivered.
    Delivered(DeliveryReceiptPayload),
    /// Messages one sent were read.
    Read(ReadReceiptPayload),
    /// Group members received or read messages up to some sequence number (coalesced).
    Receipts(ReceiptsPayload),
    /// Someone is typing.
    Typing(TypingPayload),
    /// Someone's presence.
    Presence(PresencePayload),
    /// An agent run's state changed.
    Run(AgentRunPayload),
    /// An agent's answer grew: `text` is the whole answer so far (deltas are put in order and
    /// repeats dropped here; a device that missed one asks for a snapshot by itself).
    Streaming {
        /// Conversation.
        conversation_id: String,
        /// The run.
        run_id: String,
        /// The agent.
        agent_id: String,
        /// The answer so far.
        text: String,
    },
    /// Key material from other devices (end-to-end encryption), oldest first. Acknowledge
    /// it with [`ClientHandle::ack_to_device`] once kept.
    ToDevice(ToDevicePayload),
    /// The `to_device` messages with these ids are stored for their devices.
    ToDeviceSent(Vec<String>),
    /// A contact's devices changed: fetch their keys again.
    DeviceList(DeviceListPayload),
    /// This device should publish more one-time keys.
    KeysLow(KeysLowPayload),
    /// An error frame not tied to a send.
    Error {
        /// Code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The connection dropped; the client is reconnecting (if configured to).
    Disconnected,
}

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The upgrade was refused with this HTTP status.
    #[error("connection refused with HTTP {0}")]
    Refused(u16),
    /// Network or protocol failure.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The server answered the request with an `error` frame.
    #[error("{code:?}: {message}")]
    Server {
        /// Code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

impl From<crate::Error> for ClientError {
    fn from(e: crate::Error) -> Self {
        // A refusal keeps the server's words; a local failure says what failed.
        let message = match &e {
            crate::Error::Client { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Self::Server {
            code: e.code(),
            message,
        }
    }
}

type AckSender = oneshot::Sender<Result<MessageAckPayload, ClientError>>;

struct Pending {
    frame: String,
    /// What it says: its `message_ack` stands for the message on this connection (the server
    /// does not post it back), so the client shows it from this and the ack.
    message: OutgoingMessage,
    reply: Option<AckSender>,
    /// The conversation it is queued in.
    conversation: String,
    /// When it first went on the wire: the ack timeout runs from then, not from when it was
    /// queued behind other sends of its conversation.
    sent_at: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

#[derive(Default)]
struct Ordering {
    /// Last sequence number handed to the caller, per conversation.
    last: BTreeMap<String, u64>,
    /// Messages ahead of a gap, per conversation.
    held: HashMap<String, BTreeMap<u64, DeliveredMessage>>,
    /// Gaps asked for, per conversation: up to which sequence number.
    requested: HashMap<String, u64>,
}

struct Shared {
    config: ClientConfig,
    /// The authenticated user, from `auth_success`.
    me: Mutex<Option<String>>,
    out: Mutex<Option<mpsc::UnboundedSender<String>>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Per conversation, the sends in the order they were made (`client_message_id`s): only the
    /// first is on the wire; the next goes when it is answered. So a person's messages are
    /// numbered in the order they were typed, while conversations proceed independently.
    queues: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
    order: Mutex<Ordering>,
    events: mpsc::UnboundedSender<ClientEvent>,
    closed: std::sync::atomic::AtomicBool,
    /// When `auth` was last sent (milliseconds), to re-authenticate at most once a second.
    last_auth_ms: Mutex<i64>,
    /// An `auth` is on its way: sends wait for its `auth_success`.
    awaiting_auth: std::sync::atomic::AtomicBool,
    /// This very value, for timers that resend later.
    this: Mutex<std::sync::Weak<Shared>>,
    /// Streamed answers being received, by (conversation, run).
    streams: Mutex<HashMap<(String, String), Stream>>,
    /// Per run, the `updated_at` of the newest `agent_run` shown: frames of a run's states can
    /// be posted out of order, and an older one must not undo a newer.
    run_states: Mutex<HashMap<(String, String), i64>>,
    /// Where (re)connections go: the configured URL, or where the last `migration` sent us.
    endpoint: Mutex<String>,
    /// The latest `migration` frame received.
    migration: tokio::sync::watch::Sender<Option<MigrationPayload>>,
    /// Counts `auth_success` frames: a connection is synced when this moves.
    synced: tokio::sync::watch::Sender<u64>,
    /// Connections this client moved to without a drop (make-before-break).
    migrations: std::sync::atomic::AtomicU64,
}

/// A streamed answer being received.
#[derive(Default)]
struct Stream {
    /// Index after the last piece in `text`.
    have: u32,
    /// The answer so far.
    text: String,
    /// Frames that came ahead of a missing one: from index -> (to index, text).
    ahead: BTreeMap<u32, (u32, String)>,
}

/// How long frames ahead of a missing one wait for it before the client asks for a snapshot.
const DELTA_GAP_WAIT: Duration = Duration::from_secs(1);

/// How long the first live messages of a conversation this client knows nothing about wait for
/// lower numbers before the client starts the conversation at the lowest it has: two messages
/// of one conversation can be posted to a device out of order (concurrent fan-outs, a hop
/// between gateway replicas), and starting at whichever came first would skip the other.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_millis(300);

/// A connected client. Dropping it closes the connection.
pub struct Client {
    handle: ClientHandle,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.handle
            .shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.abort();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(endpoint: &str, config: &ClientConfig) -> Result<Socket, ClientError> {
    let mut url = format!("{}/?token={}", endpoint.trim_end_matches('/'), config.token);
    if let Some(device) = &config.device_id {
        url.push_str("&device_id=");
        url.push_str(device);
    }
    // Nagle off: frames are small and often written back to back (a `delivery_ack`, then the
    // next `message`); with it on, the second waits for the server's delayed TCP ACK (~40 ms).
    match tokio_tungstenite::connect_async_with_config(url, None, true).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(ClientError::Refused(response.status().as_u16()))
        }
        Err(e) => Err(ClientError::Connection(e.to_string())),
    }
}

impl Client {
    /// Connects, then sends `sync` (empty) and waits for the first `Ready` event to be queued.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        Self::connect_with_state(config, BTreeMap::new()).await
    }

    /// Connects resuming from known state: the last sequence number seen per conversation.
    pub async fn connect_with_state(
        config: ClientConfig,
        since: BTreeMap<String, u64>,
    ) -> Result<Self, ClientError> {
        let socket = open(&config.url, &config).await?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            endpoint: Mutex::new(config.url.clone()),
            migration: tokio::sync::watch::Sender::new(None),
            synced: tokio::sync::watch::Sender::new(0),
            migrations: std::sync::atomic::AtomicU64::new(0),
            config,
            me: Mutex::new(None),
            out: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            order: Mutex::new(Ordering {
                last: since,
                ..Ordering::default()
            }),
            events: events_tx,
            closed: std::sync::atomic::AtomicBool::new(false),
            last_auth_ms: Mutex::new(0),
            awaiting_auth: std::sync::atomic::AtomicBool::new(false),
            this: Mutex::new(std::sync::Weak::new()),
            streams: Mutex::new(HashMap::new()),
            run_states: Mutex::new(HashMap::new()),
        });
        *shared.this.lock().expect("self lock") = Arc::downgrade(&shared);
        let task = tokio::spawn(run(shared.clone(), socket));
        Ok(Self {
            handle: ClientHandle { shared },
            events,
            task,
        })
    }

    /// The next event, or `None` once the client is closed for good.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// The next event within `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<ClientEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits (up to `timeout`) for the next event `pick` accepts, dropping the others.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event_within(left).await?;
            if let Some(t) = pick(&event) {
                return Some(t);
            }
        }
    }
}

/// The sending side of a [`Client`], cheap to clone: one task can read events while others
/// send, mark read, type. A [`Client`] dereferences to its handle.
#[derive(Clone)]
pub struct ClientHandle {
    shared: Arc<Shared>,
}

impl std::ops::Deref for Client {
    type Target = ClientHandle;

    fn deref(&self) -> &ClientHandle {
        &self.handle
    }
}

impl Client {
    /// A handle for sending from other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }
}

impl ClientHandle {
    /// How many times this client moved to a new connection when told to `migration`, without
    /// a drop.
    pub fn migrations(&self) -> u64 {
        self.shared
            .migrations
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Last sequence number delivered to the caller per conversation (to persist and resume).
    pub fn state(&self) -> BTreeMap<String, u64> {
        self.shared.order.lock().expect("order lock").last.clone()
    }

    /// Sends a text frame as is (for tools and tests).
    pub fn send_raw(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.shared.send(text.into())
    }

    /// Sends a client frame.
    pub fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.send_raw(
            serde_json::to_string(frame).map_err(|e| ClientError::Connection(e.to_string()))?,
        )
    }

    /// Sends a text message and waits for its ack. The message is queued when this is called
    /// (before the returned future is first polled), so calls made one after another are
    /// numbered in that order in their conversation; see [`ClientHandle::send_with_key`].
    pub fn send_text(
        &self,
        conversation_id: &str,
        content: &str,
    ) -> impl Future<Output = Result<MessageAckPayload, ClientError>> + Send + use<> {
        self.send_message(OutgoingMessage {
            conversation_id: conversation_id.into(),
            receiver_id: None,
            body: crate::protocol::MessageBody::text(content),
            timestamp: crate::clock::now_ms(),
        })
    }

    /// Sends a message with a fresh idempotency key and waits for its ack. If the connection
    /// drops first, the same frame (same key) is resent after reconnecting.
    pub fn send_message(
        &self,
        payload: OutgoingMessage,
    ) -> impl Future<Output = Result<MessageAckPayload, ClientError>> + Send + use<> {
        self.send_with_key(&uuid::Uuid::new_v4().to_string(), payload)
    }

    /// Like [`ClientHandle::send_message`] with a chosen idempotency key (to retry a send made
    /// elsewhere, e.g. on another device).
    ///
    /// Order: the send joins its conversation's queue now; it goes on the wire when the sends
    /// before it in that conversation are answered (acknowledged or refused), so the server
    /// numbers them in the order they were made. Sends to different conversations do not wait
    /// for each other.
    pub fn send_with_key(
        &self,
        idempotency_key: &str,
        payload: OutgoingMessage,
    ) -> impl Future<Output = Result<MessageAckPayload, ClientError>> + Send + use<> {
        let client_message_id = uuid::Uuid::new_v4().to_string();
        let conversation = payload.conversation_id.clone();
        let message = payload.clone();
        let frame = serde_json::to_string(&ClientFrame::Message {
            client_message_id: Some(client_message_id.clone()),
            idempotency_key: idempotency_key.into(),
            payload,
        });
        let (tx, mut rx) = oneshot::channel();
        let shared = self.shared.clone();
        let sent_at = Arc::new(std::sync::OnceLock::new());
        let queued = frame.map(|frame| {
            shared.pending.lock().expect("pending lock").insert(
                client_message_id.clone(),
                Pending {
                    frame,
                    message,
                    reply: Some(tx),
                    conversation: conversation.clone(),
                    sent_at: sent_at.clone(),
                },
            );
            shared.enqueue(&conversation, &client_message_id);
        });
        let timeout = self.shared.config.ack_timeout;
        async move {
            queued.map_err(|e| ClientError::Connection(e.to_string()))?;
            loop {
                // While queued behind earlier sends the clock has not started; each of those
                // has its own deadline, so the queue always moves on.
                let deadline = sent_at
                    .get()
                    .map(|at| *at + timeout)
                    .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
                match tokio::time::timeout_at(deadline, &mut rx).await {
                    Ok(Ok(result)) => return result,
                    Ok(Err(_)) => return Err(ClientError::Closed),
                    Err(_) if sent_at.get().is_some_and(|at| at.elapsed() >= timeout) => {
                        // Given up: out of the queue, so the sends after it go on.
                        shared.answered(&client_message_id);
                        return Err(ClientError::Timeout);
                    }
                    Err(_) => continue,
                }
            }
        }
    }

    /// Marks messages as read.
    pub fn read(&self, message_ids: Vec<String>) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::ReadReceipt {
            message_ids,
            timestamp: crate::clock::now_ms(),
        })
    }

    /// Typing indicator.
    pub fn typing(&self, conversation_id: &str, state: TypingState) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::Typing {
            conversation_id: conversation_id.into(),
            state,
        })
    }

    /// Asks for the presence of users.
    pub fn presence(&self, user_ids: Vec<String>) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::Presence { user_ids })
    }

    /// Stops an agent's run (the answer is an `agent_run` `cancelled`, or an error).
    pub fn cancel(&self, conversation_id: &str, run_id: &str) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::Cancel {
            conversation_id: conversation_id.into(),
            run_id: run_id.into(),
        })
    }

    /// Sends key material to other devices (`to_device`); the server answers with
    /// [`ClientEvent::ToDeviceSent`], or an `unavailable` error after which the same messages
    /// (same ids) are sent again.
    pub fn to_device(&self, messages: Vec<OutgoingToDevice>) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::ToDevice { messages })
    }

    /// Acknowledges `to_device` messages by sequence number: the server deletes them.
    pub fn ack_to_device(&self, sequences: Vec<u64>) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::ToDeviceAck { sequences })
    }

    /// Closes the connection from the client side (no reconnect).
    pub fn close(&self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.shared.send_close();
    }

    /// Drops the connection without a close handshake, as a network failure would; the client
    /// reconnects if configured to. For tests of resilience.
    pub fn drop_connection(&self) {
        let _ = self.shared.send(DROP_SENTINEL.into());
    }
}

const CLOSE_SENTINEL: &str = "\u{0}close";
const DROP_SENTINEL: &str = "\u{0}drop";

impl Shared {
    fn send(&self, text: String) -> Result<(), ClientError> {
        match self.out.lock().expect("out lock").as_ref() {
            Some(tx) => tx.send(text).map_err(|_| ClientError::Closed),
            None => Err(ClientError::Closed),
        }
    }

    fn send_close(&self) -> Result<(), ClientError> {
        self.send(CLOSE_SENTINEL.into())
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Takes a message through the ordering: emits what is in order, holds what is ahead of a
    /// gap and asks for the gap. A message that arrived is acknowledged (the server records what
    /// this device has); one this client sent comes from its `message_ack` (`arrived` false),
    /// which told the server already: the device's floor passes it with the next message
    /// acknowledged, and a `sync` before that brings it again as a repeat.
    fn accept(&self, m: DeliveredMessage, arrived: bool) {
        let Some(conversation) = m.conversation_id.clone() else {
            self.emit(ClientEvent::Message(Box::new(m)));
            return;
        };
        if self.config.auto_delivery_ack && arrived {
            let _ = self.send(
                serde_json::to_string(&ClientFrame::DeliveryAck {
                    message_id: m.message_id.clone(),
                    timestamp: crate::clock::now_ms(),
                    conversation_id: Some(conversation.clone()),
                    sequence_number: Some(m.sequence_number),
                })
                .unwrap_or_default(),
            );
        }
        let mut order = self.order.lock().expect("order lock");
        let seq = m.sequence_number;
        let last = match order.last.get(&conversation) {
            Some(l) => *l,
            // Numbers start at 1: nothing lower can come, so a new conversation starts here
            // without the wait below (a first message shown 300 ms late).
            None if seq == 1 => {
                order.last.insert(conversation.clone(), 0);
                0
            }
            // A conversation this client knows nothing about: hold what comes for a moment,
            // then start at the lowest number seen.
            None => {
                let held = order.held.entry(conversation.clone()).or_default();
                let first = held.is_empty();
                held.insert(seq, m);
                if first {
                    self.start_after_wait(conversation);
                }
                return;
            }
        };
        if seq <= last {
            return; // duplicate
        }
        order
            .held
            .entry(conversation.clone())
            .or_default()
            .insert(seq, m);
        self.release(&mut order, &conversation, last);
    }

    /// Starts an unknown conversation at the lowest message held after [`FIRST_MESSAGE_WAIT`]
    /// (unless a `messages` batch started it meanwhile).
    fn start_after_wait(&self, conversation: String) {
        let Some(shared) = self.me_arc() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(FIRST_MESSAGE_WAIT).await;
            let mut order = shared.order.lock().expect("order lock");
            if order.last.contains_key(&conversation) {
                return;
            }
            let lowest = order
                .held
                .get(&conversation)
                .and_then(|held| held.keys().next().copied());
            if let Some(lowest) = lowest {
                shared.release(&mut order, &conversation, lowest.saturating_sub(1));
            }
        });
    }

    /// A `messages` batch (the answer to `sync` or `retransmit`) starts at the device's floor
    /// (what the server knows it has): a conversation this client knew nothing about starts
    /// there, or lower if a live message below it is already held.
    fn start_at_batch(&self, conversation: &str, first: u64) {
        let mut order = self.order.lock().expect("order lock");
        if order.last.contains_key(conversation) {
            return;
        }
        let lowest = order
            .held
            .get(conversation)
            .and_then(|held| held.keys().next().copied())
            .map_or(first, |held| held.min(first));
        order
            .last
            .insert(conversation.to_string(), lowest.saturating_sub(1));
    }

    /// Sends `auth` with the configured token; once it succeeds, every unacknowledged send again
    /// (the server's answer to `auth` delivers what is pending). At most once per second: a
    /// server that keeps refusing is not flooded.
    fn authenticate(&self) {
        let now = crate::clock::now_ms();
        {
            let mut last = self.last_auth_ms.lock().expect("auth lock");
            if now - *last < 1000 {
                return;
            }
            *last = now;
        }
        let auth = ClientFrame::Auth {
            payload: crate::protocol::AuthPayload {
                user_id: None,
                auth_token: self.config.token.clone(),
                device_id: self.config.device_id.clone(),
                platform: None,
                app_version: None,
            },
        };
        // Nothing else goes until `auth_success` (frames the server reads before it would be
        // refused again); then the sends waiting at the head of each conversation follow.
        self.awaiting_auth
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.send(serde_json::to_string(&auth).unwrap_or_default());
    }

    /// `sync` from what was received, then the send at the head of every conversation's queue
    /// again (same keys; the rest follow in order as they are answered).
    fn resume(&self) {
        let since = self.order.lock().expect("order lock").last.clone();
        let _ = self.send(serde_json::to_string(&ClientFrame::Sync { since }).unwrap_or_default());
        self.resend_heads();
    }

    fn resend_heads(&self) {
        let heads: Vec<String> = self
            .queues
            .lock()
            .expect("queues lock")
            .values()
            .filter_map(|q| q.front().cloned())
            .collect();
        let pending = self.pending.lock().expect("pending lock");
        for id in heads {
            if let Some(p) = pending.get(&id)
                && self.send(p.frame.clone()).is_ok()
            {
                let _ = p.sent_at.set(tokio::time::Instant::now());
            }
        }
    }

    /// Queues send `id` in `conversation`; puts it on the wire if nothing is ahead of it.
    fn enqueue(&self, conversation: &str, id: &str) {
        let first = {
            let mut queues = self.queues.lock().expect("queues lock");
            let queue = queues.entry(conversation.to_string()).or_default();
            queue.push_back(id.to_string());
            queue.len() == 1
        };
        if first {
            self.send_pending(id);
        }
    }

    fn send_pending(&self, id: &str) {
        if self.awaiting_auth.load(std::sync::atomic::Ordering::SeqCst) {
            return; // resent after `auth_success`
        }
        let pending = self
            .pending
            .lock()
            .expect("pending lock")
            .get(id)
            .map(|p| (p.frame.clone(), p.sent_at.clone()));
        if let Some((frame, sent_at)) = pending {
            // A failed send now is fine: the head is resent on reconnect.
            if self.send(frame).is_ok() {
                let _ = sent_at.set(tokio::time::Instant::now());
            }
        }
    }

    /// Send `id` is answered (or given up): out of its queue, and the next one goes.
    fn answered(&self, id: &str) -> Option<Pending> {
        let pending = self.pending.lock().expect("pending lock").remove(id);
        let conversation = pending.as_ref().map(|p| p.conversation.clone())?;
        let next = {
            let mut queues = self.queues.lock().expect("queues lock");
            let queue = queues.get_mut(&conversation)?;
            queue.retain(|q| q != id);
            let next = queue.front().cloned();
            if queue.is_empty() {
                queues.remove(&conversation);
            }
            next
        };
        if let Some(next) = next {
            self.send_pending(&next);
        }
        pending
    }

    /// Resends the pending send `client_message_id` after `secs`, if it is still unanswered.
    fn resend_later(&self, client_message_id: &str, secs: u64) {
        let Some(shared) = self.me_arc() else { return };
        let id = client_message_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs.clamp(1, 30))).await;
            let frame = shared
                .pending
                .lock()
                .expect("pending lock")
                .get(&id)
                .map(|p| p.frame.clone());
            if let Some(frame) = frame {
                let _ = shared.send(frame);
            }
        });
    }

    fn me_arc(&self) -> Option<Arc<Shared>> {
        self.this.lock().expect("self lock").upgrade()
    }

    /// Sequence numbers the server says will never exist.
    fn skip(&self, conversation: &str, missing: &[u64]) {
        let mut order = self.order.lock().expect("order lock");
        let last = order.last.get(conversation).copied().unwrap_or(0);
        let mut next = last;
        let mut sorted = missing.to_vec();
        sorted.sort_unstable();
        for s in sorted {
            if s == next + 1 {
                next = s;
            }
        }
        if next > last {
            order.last.insert(conversation.to_string(), next);
            self.release(&mut order, conversation, next);
        }
    }

    fn release(&self, order: &mut Ordering, conversation: &str, mut last: u64) {
        let held = order.held.entry(conversation.to_string()).or_default();
        while let Some(m) = held.remove(&(last + 1)) {
            last += 1;
            let _ = self.events.send(ClientEvent::Message(Box::new(m)));
        }
        let next_held = held.keys().next().copied();
        order.last.insert(conversation.to_string(), last);
        if let Some(ahead) = next_held {
            let wanted = ahead - 1;
            if order.requested.get(conversation).copied().unwrap_or(0) < wanted {
                order.requested.insert(conversation.to_string(), wanted);
                let frame = ClientFrame::Retransmit {
                    conversation_id: conversation.to_string(),
                    from_sequence: last + 1,
                    to_sequence: wanted,
                };
                let _ = self.send(serde_json::to_string(&frame).unwrap_or_default());
            }
        } else {
            order.requested.remove(conversation);
        }
    }

    /// Puts a piece of a streamed answer in place (see [`MessageDeltaPayload`] for the rules):
    /// frames ahead of a missing one wait for it (frames of one run may be posted out of
    /// order), and after [`DELTA_GAP_WAIT`] a `sync` brings a snapshot.
    fn on_delta(&self, delta: MessageDeltaPayload) {
        let key = (delta.conversation_id.clone(), delta.run_id.clone());
        let text = {
            let mut streams = self.streams.lock().expect("streams lock");
            let stream = streams.entry(key.clone()).or_default();
            if delta.snapshot {
                if delta.to_index < stream.have {
                    return; // older than what we have
                }
                stream.have = delta.to_index;
                stream.text = delta.text;
            } else if delta.to_index <= stream.have {
                return; // a repeat
            } else if delta.from_index > stream.have {
                let first = stream.ahead.is_empty();
                stream
                    .ahead
                    .insert(delta.from_index, (delta.to_index, delta.text));
                drop(streams);
                if first {
                    self.sync_unless_filled(key, delta.from_index);
                }
                return;
            } else if delta.from_index < stream.have {
                return; // overlaps a snapshot: the snapshot has it
            } else {
                stream.have = delta.to_index;
                stream.text.push_str(&delta.text);
            }
            // Frames that waited for this one.
            while let Some((to, text)) = stream.ahead.remove(&stream.have) {
                stream.have = to;
                stream.text.push_str(&text);
            }
            stream.ahead.retain(|from, _| *from > stream.have);
            stream.text.clone()
        };
        self.emit(ClientEvent::Streaming {
            conversation_id: delta.conversation_id,
            run_id: delta.run_id,
            agent_id: delta.agent_id,
            text,
        });
    }

    /// Asks for a snapshot if the stream is still stuck before `from` after the wait.
    fn sync_unless_filled(&self, key: (String, String), from: u32) {
        let Some(shared) = self.me_arc() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(DELTA_GAP_WAIT).await;
            let stuck = shared
                .streams
                .lock()
                .expect("streams lock")
                .get(&key)
                .is_some_and(|s| s.have < from);
            if stuck {
                let frame = ClientFrame::Sync {
                    since: shared.order.lock().expect("order lock").last.clone(),
                };
                let _ = shared.send(serde_json::to_string(&frame).unwrap_or_default());
            }
        });
    }

    fn on_frame(&self, frame: ServerFrame) {
        match frame {
            ServerFrame::AuthSuccess { payload } => {
                if let Some(me) = payload.user_id {
                    *self.me.lock().expect("me lock") = Some(me);
                }
                if self
                    .awaiting_auth
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    self.resend_heads();
                }
                self.synced.send_modify(|n| *n += 1);
                self.emit(ClientEvent::Ready {
                    unread_count: payload.unread_count,
                })
            }
            ServerFrame::AuthError { error, code } => self.emit(ClientEvent::Error {
                code: code.unwrap_or(ErrorCode::Unauthenticated),
                message: error,
            }),
            ServerFrame::Message { payload } => self.accept(payload, true),
            ServerFrame::Messages { payload } => {
                if let Some(first) = payload.messages.iter().map(|m| m.sequence_number).min() {
                    self.start_at_batch(&payload.conversation_id, first);
                }
                for m in payload.messages {
                    let mut m = m;
                    m.conversation_id
                        .get_or_insert(payload.conversation_id.clone());
                    self.accept(m, true);
                }
                if !payload.missing.is_empty() {
                    self.skip(&payload.conversation_id, &payload.missing);
                }
            }
            ServerFrame::MessageAck {
                client_message_id,
                payload,
            } => {
                if let Some(id) = client_message_id
                    && let Some(mut pending) = self.answered(&id)
                {
                    // The server posts the message to this user's other connections, not back
                    // here: the ack and what was sent are the message.
                    let me = self.me.lock().expect("me lock").clone();
                    self.accept(
                        DeliveredMessage {
                            message_id: payload.message_id.clone(),
                            sequence_number: payload.sequence_number,
                            sender_id: me,
                            receiver_id: pending.message.receiver_id.clone(),
                            conversation_id: Some(pending.message.conversation_id.clone()),
                            body: pending.message.body.clone(),
                            timestamp: payload.timestamp,
                            status: Some(payload.status),
                        },
                        false,
                    );
                    if let Some(reply) = pending.reply.take() {
                        let _ = reply.send(Ok(payload));
                    }
                }
            }
            ServerFrame::Error {
                code,
                message,
                client_message_id,
                retry_after,
            } => {
                if code == ErrorCode::Unauthenticated && !self.config.token.is_empty() {
                    // The server lost this connection's `auth` (e.g. Redis restarted empty):
                    // authenticate again; sends in flight are resent after it.
                    self.authenticate();
                    return;
                }
                if code == ErrorCode::Unavailable
                    && let Some(id) = &client_message_id
                {
                    // Not stored, or stored without an answer: resend with the same key.
                    self.resend_later(id, retry_after.unwrap_or(1));
                    return;
                }
                let pending = client_message_id.and_then(|id| self.answered(&id));
                match pending {
                    Some(mut p) => {
                        if let Some(reply) = p.reply.take() {
                            let _ = reply.send(Err(ClientError::Server { code, message }));
                        }
                    }
                    None => self.emit(ClientEvent::Error { code, message }),
                }
            }
            ServerFrame::DeliveryAck { payload } => self.emit(ClientEvent::Delivered(payload)),
            ServerFrame::ReadReceipt { payload } => self.emit(ClientEvent::Read(payload)),
            ServerFrame::Receipts { payload } => self.emit(ClientEvent::Receipts(payload)),
            ServerFrame::Typing { payload } => self.emit(ClientEvent::Typing(payload)),
            ServerFrame::Presence { payload } => self.emit(ClientEvent::Presence(payload)),
            ServerFrame::AgentRun { payload } => {
                {
                    let mut seen = self.run_states.lock().expect("run states lock");
                    let key = (payload.conversation_id.clone(), payload.run_id.clone());
                    if seen
                        .get(&key)
                        .is_some_and(|newest| payload.updated_at < *newest)
                    {
                        return; // older than the state shown
                    }
                    if seen.len() >= 10_000 {
                        seen.clear();
                    }
                    seen.insert(key, payload.updated_at);
                }
                if payload.state.is_final() {
                    self.streams
                        .lock()
                        .expect("streams lock")
                        .remove(&(payload.conversation_id.clone(), payload.run_id.clone()));
                }
                self.emit(ClientEvent::Run(payload))
            }
            ServerFrame::MessageDelta { payload } => self.on_delta(payload),
            ServerFrame::Migration { payload } => {
                self.migration.send_replace(Some(payload));
            }
            ServerFrame::HeartbeatAck { .. } => {}
            ServerFrame::ToDevice { payload } => self.emit(ClientEvent::ToDevice(payload)),
            ServerFrame::ToDeviceSent { message_ids } => {
                self.emit(ClientEvent::ToDeviceSent(message_ids))
            }
            ServerFrame::DeviceList { payload } => self.emit(ClientEvent::DeviceList(payload)),
            ServerFrame::OneTimeKeysLow { payload } => self.emit(ClientEvent::KeysLow(payload)),
        }
    }
}

async fn run(shared: Arc<Shared>, first: Socket) {
    let mut socket = Some(first);
    let mut backoff = shared.config.min_backoff;
    let mut attempt = 0u32;
    loop {
        let s = match socket.take() {
            Some(s) => s,
            None => {
                if !shared.config.reconnect
                    || shared.closed.load(std::sync::atomic::Ordering::SeqCst)
                {
                    return;
                }
                let jitter = rand::random::<f64>() * backoff.as_secs_f64() * 0.5;
                tokio::time::sleep(backoff + Duration::from_secs_f64(jitter)).await;
                backoff = (backoff * 2).min(shared.config.max_backoff);
                // Where a migration sent us, and every other attempt the configured address
                // (a replica we were sent to directly may be gone).
                attempt += 1;
                let endpoint = if attempt.is_multiple_of(2) {
                    shared.config.url.clone()
                } else {
                    shared.endpoint.lock().expect("endpoint lock").clone()
                };
                match open(&endpoint, &shared.config).await {
                    Ok(s) => s,
                    Err(_) => continue,
                }
            }
        };
        match session(&shared, s).await {
            SessionEnd::Moved(mut next) => {
                if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = SinkExt::close(&mut *next).await;
                    return;
                }
                socket = Some(*next);
                continue;
            }
            SessionEnd::Dropped => {}
        }
        backoff = shared.config.min_backoff.max(backoff / 2);
        if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        shared.emit(ClientEvent::Disconnected);
    }
}

/// How a connection's session ended.
enum SessionEnd {
    /// It dropped (or was closed): reconnect.
    Dropped,
    /// A `migration` was followed: go on with this new connection.
    Moved(Box<Socket>),
}

/// How long the old connection is kept (and read) after the move, at most, waiting for the new
/// one to sync.
const RETIRE_WITHIN: Duration = Duration::from_secs(10);

/// Opens the connection a `migration` asks for: its endpoint (or ours when it names none),
/// retried until its deadline, then the configured address.
async fn open_for_migration(
    shared: Arc<Shared>,
    target: MigrationPayload,
) -> Result<(Socket, String), ClientError> {
    let current = shared.endpoint.lock().expect("endpoint lock").clone();
    let endpoint = if target.new_endpoint.is_empty() {
        current
    } else {
        target.new_endpoint.clone()
    };
    // The token goes in the URL: never send it over plain `ws://` when we were on `wss://`.
    let endpoint = if shared.config.url.starts_with("wss://") && !endpoint.starts_with("wss://") {
        shared.config.url.clone()
    } else {
        endpoint
    };
    let mut config = shared.config.clone();
    if let Some(token) = target.session_token.filter(|t| !t.is_empty()) {
        config.token = token;
    }
    let mut last = ClientError::Timeout;
    loop {
        for candidate in [&endpoint, &shared.config.url] {
            // An address that does not answer must not use up the time to the deadline.
            let left = Duration::from_millis(
                (target.deadline - crate::clock::now_ms()).clamp(500, 5_000) as u64,
            );
            match tokio::time::timeout(left, open(candidate, &config)).await {
                Ok(Ok(socket)) => return Ok((socket, candidate.clone())),
                Ok(Err(e)) => last = e,
                Err(_) => last = ClientError::Timeout,
            }
        }
        if crate::clock::now_ms() >= target.deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The old connection after a move: what was queued for it is written, its frames are still
/// taken until the new connection has synced (`auth_success`), then it is closed.
async fn retire(
    shared: Arc<Shared>,
    mut sink: futures::stream::SplitSink<Socket, WsMessage>,
    mut stream: futures::stream::SplitStream<Socket>,
    mut queued: mpsc::UnboundedReceiver<String>,
    mut synced: tokio::sync::watch::Receiver<u64>,
) {
    let until = tokio::time::Instant::now() + RETIRE_WITHIN;
    let mut sending = true;
    loop {
        tokio::select! {
            // Until the new session takes over sending (it replaces the sender).
            text = queued.recv(), if sending => match text {
                // A close asked for in the move window set `closed`, which the new session
                // checks; a test's drop in that window has nothing left to drop.
                Some(text) if text == CLOSE_SENTINEL || text == DROP_SENTINEL => {}
                Some(text) => {
                    if sink.send(WsMessage::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                None => sending = false,
            },
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    // A second `migration` for the old connection is not one for the new.
                    if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text)
                        && !matches!(frame, ServerFrame::Migration { .. })
                    {
                        shared.on_frame(frame);
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = synced.changed() => break,
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let _ = sink
        .send(WsMessage::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "migrated".into(),
            },
        )))
        .await;
    // Read until the server's close answer, briefly, so the close is clean.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(frame)) = stream.next().await {
            if let WsMessage::Text(text) = frame
                && let Ok(frame) = serde_json::from_str::<ServerFrame>(&text)
                && !matches!(frame, ServerFrame::Migration { .. })
            {
                shared.on_frame(frame);
            }
        }
    })
    .await;
}

/// One connection's life: resume (sync + resend), then pump frames until it drops or a
/// `migration` has been followed.
async fn session(shared: &Arc<Shared>, socket: Socket) -> SessionEnd {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    *shared.out.lock().expect("out lock") = Some(tx);
    let mut migration = shared.migration.subscribe();
    migration.borrow_and_update();
    let mut opening: Option<tokio::task::JoinHandle<Result<(Socket, String), ClientError>>> = None;
    // A new connection is authenticated by its token: nothing waits for an older `auth`.
    shared
        .awaiting_auth
        .store(false, std::sync::atomic::Ordering::SeqCst);
    shared.resume();
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat_interval);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(text) = out else { break };
                if text == CLOSE_SENTINEL {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    break;
                }
                if text == DROP_SENTINEL {
                    // Vanish without a close handshake, as a network failure would.
                    break;
                }
                if sink.send(WsMessage::Text(text.into())).await.is_err() {
                    break;
                }
            }
            frame = stream.next() => {
                match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                            shared.on_frame(frame);
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = heartbeat.tick() => {
                let frame = ClientFrame::Heartbeat { timestamp: crate::clock::now_ms() };
                let _ = shared.send(serde_json::to_string(&frame).unwrap_or_default());
            }
            changed = migration.changed() => {
                if changed.is_err() { continue; }
                let target = migration.borrow_and_update().clone();
                if let (Some(target), None) = (target, &opening) {
                    opening = Some(tokio::spawn(open_for_migration(shared.clone(), target)));
                }
            }
            opened = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => {
                opening = None;
                let Ok(Ok((next, endpoint))) = opened else {
                    // Could not reach anywhere before the deadline: this connection ends when
                    // the server closes it, and the client reconnects as after any drop.
                    continue;
                };
                *shared.endpoint.lock().expect("endpoint lock") = endpoint;
                shared.migrations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // From here on sends go to the new connection (its session sends `sync` and
                // resends what is unacknowledged); the old one is read until that sync is done.
                // What is sent until then still goes out on the old one.
                let synced = shared.synced.subscribe();
                tokio::spawn(retire(shared.clone(), sink, stream, rx, synced));
                return SessionEnd::Moved(Box::new(next));
            }
        }
    }
    if let Some(opening) = opening {
        opening.abort();
    }
    *shared.out.lock().expect("out lock") = None;
    SessionEnd::Dropped
}
