//! Shared set-up of the end-to-end tests: a local stack per test on free ports, against the
//! harness's real Redis and SecantusDB (a fresh database and key prefix each), users with
//! tokens, conversations, and connected clients.

#![warn(missing_docs)]

use std::time::Duration;

use local_stack::stack::{RunningStack, StackConfig};
use messaging::client::{Client, ClientConfig};
use messaging::model::{Conversation, ConversationKind, User};
use messaging::protocol::PresenceStatus;
use mongodb::bson::DateTime;

/// How long tests wait for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

/// A stack for one test, with settings made for tests: fast agent, short timeouts.
pub async fn stack() -> RunningStack {
    stack_with(|_| {}).await
}

/// A stack for one test, with its configuration adjusted by `adjust`.
pub async fn stack_with(adjust: impl FnOnce(&mut StackConfig)) -> RunningStack {
    let servers = testkit::servers();
    let data = std::env::temp_dir().join(testkit::unique_name("stack"));
    let mut config = StackConfig::new(
        servers.redis_url.clone(),
        servers.mongodb_uri.clone(),
        data,
        "e2e-secret-e2e-secret-e2e-secret-e2e".into(),
    );
    config.ws_port = 0;
    config.broker_port = 0;
    config.s3_port = 0;
    config.agent_port = 0;
    config.api_port = 0;
    config.database = testkit::unique_name("e2e");
    config.redis_prefix = format!("{}:", testkit::unique_name("e2e"));
    config.agent_think = Duration::from_millis(50);
    config.sweep_interval = Duration::from_millis(100);
    config.retry_delay = Duration::from_millis(20);
    config.settings.agent_timeout = Duration::from_secs(2);
    // A fan-out that did not happen is redone quickly (the outbox), and the shared test servers
    // may be slow under a full parallel run: generous deadlines.
    config.store.fanout_grace = Duration::from_secs(2);
    config.store.operation_timeout = Duration::from_secs(10);
    config.redis_timeout = Duration::from_secs(5);
    adjust(&mut config);
    local_stack::stack::start(config)
        .await
        .expect("stack starts")
}

/// Creates a user and returns its id.
pub async fn user(stack: &RunningStack, name: &str) -> String {
    let user_id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    stack
        .ctx
        .store
        .insert_user(&User {
            user_id: user_id.clone(),
            phone: None,
            email: None,
            name: name.into(),
            avatar_url: None,
            created_at: DateTime::now(),
            last_seen: None,
            status: PresenceStatus::Offline,
        })
        .await
        .expect("user stored");
    user_id
}

/// Creates a conversation and returns its id.
pub async fn conversation(
    stack: &RunningStack,
    kind: ConversationKind,
    participants: &[&str],
    agent_id: Option<&str>,
) -> String {
    let conversation_id = uuid::Uuid::new_v4().to_string();
    stack
        .ctx
        .store
        .insert_conversation(&Conversation {
            admins: vec![participants[0].to_string()],
            agent_id: agent_id.map(str::to_string),
            ..Conversation::new(
                conversation_id.clone(),
                kind,
                participants.iter().map(|p| p.to_string()).collect(),
            )
        })
        .await
        .expect("conversation stored");
    conversation_id
}

/// A token for `user_id`.
pub fn token(stack: &RunningStack, user_id: &str) -> String {
    stack
        .issuer
        .issue(user_id, Duration::from_secs(3600))
        .expect("token")
}

/// Client settings for `user_id` on `device`.
pub fn client_config(stack: &RunningStack, user_id: &str, device: &str) -> ClientConfig {
    let mut config = ClientConfig::new(&stack.ws_url, token(stack, user_id));
    config.device_id = Some(device.into());
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(500);
    config.ack_timeout = WAIT;
    config
}

/// A connected, synced client for `user_id` on `device`.
pub async fn client(stack: &RunningStack, user_id: &str, device: &str) -> Client {
    let mut client = Client::connect(client_config(stack, user_id, device))
        .await
        .expect("client connects");
    ready(&mut client).await;
    client
}

/// Waits (up to [`WAIT`]) until `user_id` has exactly `n` registered connections, and returns
/// their ids; panics with `what` otherwise.
pub async fn connections(stack: &RunningStack, user_id: &str, n: usize, what: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids = stack.ctx.realtime.user_connections(user_id).await.unwrap();
        if ids.len() == n {
            return ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {ids:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the client's `Ready` event (sync done).
pub async fn ready(client: &mut Client) -> u64 {
    client
        .wait_for(WAIT, |e| match e {
            messaging::client::ClientEvent::Ready { unread_count } => Some(*unread_count),
            _ => None,
        })
        .await
        .expect("auth_success")
}

/// A WebSocket client that is not the client library: it sends exactly the frames a test writes
/// and shows every frame the server sends, as JSON.
pub struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl RawWs {
    /// Connects to the stack with `?token=` (if any) and `device_id`.
    pub async fn connect(stack: &RunningStack, token: Option<&str>, device: &str) -> Self {
        let url = match token {
            Some(t) => format!("{}/?token={t}&device_id={device}", stack.ws_url),
            None => format!("{}/?device_id={device}", stack.ws_url),
        };
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("raw client connects");
        Self { ws }
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: impl Into<String>) {
        use futures::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(text.into()))
            .await
            .expect("send");
    }

    /// The next JSON frame within `timeout`, `None` if none came.
    pub async fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                    return serde_json::from_str(&t).ok();
                }
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Waits for the next frame of `type`, skipping others; panics after [`WAIT`].
    pub async fn expect(&mut self, frame_type: &str) -> serde_json::Value {
        loop {
            let frame = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("no `{frame_type}` frame"));
            if frame["type"] == frame_type {
                return frame;
            }
        }
    }
}

/// `text` as message content between people: a well-formed end-to-end encrypted envelope
/// that no key opens (`Envelope::opaque`), for tests of the transport. The encryption itself
/// is tested with real keys in `tests/encryption.rs`.
pub fn sealed(text: impl AsRef<str>) -> String {
    messaging::e2ee::Envelope::opaque(text.as_ref())
}

/// What a [`sealed`] content says; any other content (an agent's, the server's) as it is.
pub fn said(content: &str) -> String {
    messaging::e2ee::Envelope::opaque_marker(content).unwrap_or_else(|| content.to_string())
}
