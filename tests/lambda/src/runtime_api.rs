//! A Lambda Runtime API (`/2018-06-01/runtime/...`), as the Lambda service serves it to a
//! function's process: `GET invocation/next` long-polls for the next event (with the request id,
//! deadline, function ARN and trace id headers), `POST invocation/{id}/response` and
//! `invocation/{id}/error` end an invocation, `POST init/error` reports a failed start.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::Notify;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `invocation/{id}/response` with this payload.
    Response(Value),
    /// `invocation/{id}/error` with this `errorType` and body.
    Error {
        /// `errorType` of the body (or the `Lambda-Runtime-Function-Error-Type` header).
        error_type: String,
        /// The body.
        body: Value,
    },
}

/// A failed start, as reported to `init/error`.
#[derive(Debug, Clone, PartialEq)]
pub struct InitError {
    /// `errorType`.
    pub error_type: String,
    /// `errorMessage`.
    pub message: String,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<(String, Value)>>,
    queued: Notify,
    outcomes: Mutex<HashMap<String, Outcome>>,
    ended: Notify,
    init_error: Mutex<Option<InitError>>,
    polls: AtomicU64,
}

/// A Runtime API on a loopback port.
#[derive(Clone)]
pub struct RuntimeApi {
    address: String,
    shared: Arc<Shared>,
}

impl RuntimeApi {
    /// Serves a Runtime API on a free port.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the runtime API");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { address, shared }
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Invokes the function with `event` and waits (up to `timeout`) for its outcome.
    pub async fn invoke(&self, event: Value, timeout: Duration) -> Option<Outcome> {
        let id = uuid::Uuid::new_v4().to_string();
        self.shared
            .queue
            .lock()
            .expect("queue")
            .push_back((id.clone(), event));
        self.shared.queued.notify_waiters();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.shared.ended.notified();
            if let Some(outcome) = self.shared.outcomes.lock().expect("outcomes").remove(&id) {
                return Some(outcome);
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return None;
            }
        }
    }

    /// The init error reported so far, if any.
    pub fn init_error(&self) -> Option<InitError> {
        self.shared.init_error.lock().expect("init error").clone()
    }

    /// How many times the function asked for its next invocation (it is up once this is > 0).
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::Relaxed)
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    shared.polls.fetch_add(1, Ordering::Relaxed);
    loop {
        let queued = shared.queued.notified();
        if let Some((id, event)) = shared.queue.lock().expect("queue").pop_front() {
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() + 30_000)
                .unwrap_or_default();
            return (
                [
                    ("Lambda-Runtime-Aws-Request-Id", id),
                    ("Lambda-Runtime-Deadline-Ms", deadline.to_string()),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:test".into(),
                    ),
                    (
                        "Lambda-Runtime-Trace-Id",
                        "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
                    ),
                    ("Content-Type", "application/json".into()),
                ],
                event.to_string(),
            )
                .into_response();
        }
        queued.await;
    }
}

fn json_of(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    shared
        .outcomes
        .lock()
        .expect("outcomes")
        .insert(id, Outcome::Response(json_of(&body)));
    shared.ended.notify_waiters();
    StatusCode::ACCEPTED
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body = json_of(&body);
    let error_type = body["errorType"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("Lambda-Runtime-Function-Error-Type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    shared
        .outcomes
        .lock()
        .expect("outcomes")
        .insert(id, Outcome::Error { error_type, body });
    shared.ended.notify_waiters();
    StatusCode::ACCEPTED
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let body = json_of(&body);
    *shared.init_error.lock().expect("init error") = Some(InitError {
        error_type: body["errorType"].as_str().unwrap_or_default().to_string(),
        message: body["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    });
    StatusCode::ACCEPTED
}
