//! The wire-level fuzz: 20,000 mutated frames (random and structure-aware: wrong types, huge
//! and negative numbers, deep nesting, unicode, frames up to 127 KB, reserved route names,
//! operator objects in ids) over several connections through the local stack, with the real
//! functions, Redis and the MongoDB-wire server.
//!
//! Every frame gets its answer by protocol or an `error` frame with a code; the kinds that have
//! no answer when they succeed are `delivery_ack`, `read_receipt` and `typing`. Every connection
//! stays usable (a heartbeat after each batch is answered), and the stack neither panics nor
//! logs at ERROR level.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use fuzz::Mutator;
use messaging::model::{Conversation, ConversationKind, User};
use messaging::protocol::{ClientFrame, PresenceStatus, parse_client_frame};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Frames in all.
const FRAMES: usize = 20_000;
/// Connections sending them.
const CONNECTIONS: usize = 4;
/// A heartbeat checks each connection after this many frames.
const BATCH: usize = 250;
/// Largest frame sent (API Gateway closes over 128 KB: that is tested elsewhere).
const MAX_FRAME: usize = 127 * 1024;

/// Counts ERROR events and panics anywhere in this process.
#[derive(Clone, Default)]
struct Alarms {
    errors: Arc<AtomicU64>,
    panics: Arc<AtomicU64>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Alarms {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("ERROR event: {event:?}");
        }
    }
}

/// What a frame should be answered with, from its parse; `None`: nothing when it succeeds.
fn expected_answer(text: &str) -> Option<&'static [&'static str]> {
    match parse_client_frame(text) {
        Err(_) => Some(&["error"]),
        Ok(frame) => match frame {
            ClientFrame::Heartbeat { .. } => Some(&["heartbeat_ack", "error"]),
            ClientFrame::Auth { .. } => Some(&["auth_success", "auth_error", "error"]),
            ClientFrame::Message { .. } => Some(&["message_ack", "error"]),
            ClientFrame::Retransmit { .. } => Some(&["messages", "error"]),
            ClientFrame::Sync { .. } => Some(&["auth_success", "error"]),
            ClientFrame::Presence { .. } => Some(&["presence", "error"]),
            ClientFrame::Cancel { .. } => Some(&["agent_run", "error"]),
            ClientFrame::ToDevice { .. } => Some(&["to_device_sent", "error"]),
            ClientFrame::DeliveryAck { .. }
            | ClientFrame::ToDeviceAck { .. }
            | ClientFrame::ReadReceipt { .. }
            | ClientFrame::Typing { .. } => None,
        },
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads until a frame of one of `kinds` (checking every `error` has a code); `None` on timeout.
async fn answer(ws: &mut Ws, kinds: &[&str]) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => serde_json::from_str::<Value>(&t).ok()?,
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        };
        if frame["type"] == "error" {
            assert!(
                frame["code"].is_string(),
                "an error frame without a code: {frame}"
            );
        }
        if kinds.iter().any(|k| frame["type"] == *k) {
            return Some(frame);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_mutated_frames_all_answered_nothing_broken() {
    use tracing_subscriber::prelude::*;
    let alarms = Alarms::default();
    let _ = tracing_subscriber::registry()
        .with(alarms.clone())
        .try_init();
    let panics = alarms.panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        panics.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));

    let servers = testkit::servers();
    let mut config = local_stack::stack::StackConfig::new(
        servers.redis_url.clone(),
        servers.mongodb_uri.clone(),
        std::env::temp_dir().join(testkit::unique_name("wire")),
        "wire-secret-wire-secret-wire-secret-wire".into(),
    );
    (
        config.ws_port,
        config.broker_port,
        config.s3_port,
        config.agent_port,
        config.api_port,
    ) = (0, 0, 0, 0, 0);
    config.database = testkit::unique_name("wire");
    config.redis_prefix = format!("{}:", testkit::unique_name("wire"));
    config.settings.frame_limit.max = 1_000_000;
    config.settings.send_limit.max = 1_000_000;
    config.demo_agent = false;
    let stack = local_stack::stack::start(config).await.expect("stack");

    let users = ["alice", "bob"]
        .map(|n| format!("{n}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]));
    for u in &users {
        stack
            .ctx
            .store
            .insert_user(&User {
                user_id: u.clone(),
                phone: None,
                email: None,
                name: u.clone(),
                avatar_url: None,
                created_at: mongodb::bson::DateTime::now(),
                last_seen: None,
                status: PresenceStatus::Offline,
            })
            .await
            .unwrap();
    }
    let conversation_id = uuid::Uuid::new_v4().to_string();
    stack
        .ctx
        .store
        .insert_conversation(&Conversation::new(
            conversation_id.clone(),
            ConversationKind::Direct,
            users.to_vec(),
        ))
        .await
        .unwrap();
    let seeds = fuzz::targets::client_frames_for(&conversation_id, "no-such-message");

    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let user = users[c % 2].clone();
        let token = stack
            .issuer
            .issue(&user, Duration::from_secs(3600))
            .unwrap();
        let url = format!("{}/?token={token}&device_id=fuzz{c}", stack.ws_url);
        let seeds = seeds.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let mut mutator = Mutator::new(1000 + c as u64);
            let (mut sent, mut unanswered) = (0usize, Vec::new());
            while sent < FRAMES / CONNECTIONS {
                let bytes = mutator.next(&seeds);
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if text.len() > MAX_FRAME {
                    continue;
                }
                sent += 1;
                ws.send(WsMessage::text(text.clone())).await.expect("send");
                if let Some(kinds) = expected_answer(&text)
                    && answer(&mut ws, kinds).await.is_none()
                {
                    unanswered.push(text.chars().take(200).collect::<String>());
                }
                if sent % BATCH == 0 {
                    ws.send(WsMessage::text(r#"{"type":"heartbeat","timestamp":1}"#))
                        .await
                        .expect("heartbeat");
                    assert!(
                        answer(&mut ws, &["heartbeat_ack"]).await.is_some(),
                        "connection {c} stopped answering after {sent} frames"
                    );
                }
            }
            (sent, unanswered)
        }));
    }
    let mut total = 0;
    for task in tasks {
        let (sent, unanswered) = task.await.expect("a connection task");
        total += sent;
        assert!(
            unanswered.is_empty(),
            "frames without an answer: {unanswered:#?}"
        );
    }
    assert_eq!(total, FRAMES);
    assert_eq!(
        alarms.panics.load(Ordering::Relaxed),
        0,
        "the stack panicked"
    );
    assert_eq!(
        alarms.errors.load(Ordering::Relaxed),
        0,
        "the stack logged at ERROR level"
    );
}
