//! Shared set-up of the push tests: a real Redis and MongoDB (the harness's, with a fresh
//! database and key prefix per test), and local servers standing in for the providers that
//! record every request and answer as each test scripts them:
//!
//! - Google's OAuth2 token endpoint and the FCM v1 API (HTTP/1.1, axum);
//! - APNs (HTTP/2 only, with prior knowledge, hyper): an HTTP/1.1 client cannot talk to it;
//! - a webhook receiver (axum).
//!
//! The service-account RSA key and the APNs P-256 key are generated at test time (aws-lc-rs),
//! so no private key is committed; the tests verify the JWT signatures with the public halves.

#![allow(dead_code)]

use messaging::store::{AccountStore, DeviceStore};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use fn_push::{
    ApnsOptions, FcmOptions, Push, PushOptions, RetryPolicy, WebPushOptions, WebhookOptions,
};
use http_body_util::{BodyExt, Full};
use messaging::context::Context;
use messaging::model::{DeviceToken, Notification, PushPlatform, User};
use messaging::protocol::{MessageType, PresenceStatus};
use messaging::store::{MongoStore, StoreOptions};
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};

pub const PROJECT: &str = "test-project";
pub const CLIENT_EMAIL: &str = "push@test-project.iam.gserviceaccount.com";
pub const TEAM_ID: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY1234567";
pub const TOPIC: &str = "com.example.messaging";
pub const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";
pub const VAPID_SUBJECT: &str = "mailto:ops@example.com";

/// Test keys: PEM private keys for the function, PEM public keys for the checks.
pub struct Keys {
    pub rsa_private: String,
    pub rsa_public: String,
    pub ec_private: String,
    pub ec_public: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Keys generated once per test process.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use aws_lc_rs::signature::KeyPair;
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_private = pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref());
        let rsa_public = pem("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref());
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let ec_private = pem("PRIVATE KEY", ec.to_pkcs8v1().unwrap().as_ref());
        let ec_public = pem("PUBLIC KEY", ec.public_key().as_der().unwrap().as_ref());
        Keys {
            rsa_private,
            rsa_public,
            ec_private,
            ec_public,
        }
    })
}

/// One request a provider received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub version: Version,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl Answer {
    pub fn new(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    fn into_response(self) -> Response {
        let mut response = (
            StatusCode::from_u16(self.status).unwrap(),
            [("content-type", "application/json")],
            self.body.to_string(),
        )
            .into_response();
        for (k, v) in self.headers {
            response.headers_mut().insert(k, v.parse().unwrap());
        }
        response
    }
}

/// What the providers received, and what they are told to answer.
#[derive(Default)]
pub struct Recorder {
    pub token_requests: Vec<Received>,
    pub fcm: Vec<Received>,
    pub apns: Vec<Received>,
    pub webhook: Vec<Received>,
    /// Web Push requests (a browser's push service).
    pub web_push: Vec<Received>,
    /// Answers by device token, `"webhook"` or `"token"`, used first to last; then success.
    pub script: HashMap<String, VecDeque<Answer>>,
}

type Shared = Arc<Mutex<Recorder>>;

fn next_answer(r: &Shared, key: &str) -> Option<Answer> {
    r.lock().unwrap().script.get_mut(key)?.pop_front()
}

fn received(version: Version, uri: &Uri, headers: HeaderMap, raw: Bytes) -> Received {
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Received {
        at: Instant::now(),
        version,
        path: uri.path().to_string(),
        headers,
        body,
        raw,
    }
}

async fn token_endpoint(
    State(r): State<Shared>,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let n = {
        let mut rec = r.lock().unwrap();
        rec.token_requests
            .push(received(version, &uri, headers, raw));
        rec.token_requests.len()
    };
    match next_answer(&r, "token") {
        Some(answer) => answer.into_response(),
        None => Answer::new(
            200,
            json!({"access_token": format!("access-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
        )
        .into_response(),
    }
}

async fn fcm_send(
    State(r): State<Shared>,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let request = received(version, &uri, headers, raw);
    let token = request.body["message"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    r.lock().unwrap().fcm.push(request);
    match next_answer(&r, &token) {
        Some(answer) => answer.into_response(),
        None => Answer::new(
            200,
            json!({"name": format!("projects/{PROJECT}/messages/{}", uuid::Uuid::new_v4())}),
        )
        .into_response(),
    }
}

async fn webhook(
    State(r): State<Shared>,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    r.lock()
        .unwrap()
        .webhook
        .push(received(version, &uri, headers, raw));
    match next_answer(&r, "webhook") {
        Some(answer) => answer.into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn web_push(
    State(r): State<Shared>,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let request = received(version, &uri, headers, raw);
    let subscription = request
        .path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    r.lock().unwrap().web_push.push(request);
    match next_answer(&r, &subscription) {
        Some(answer) => answer.into_response(),
        None => StatusCode::CREATED.into_response(),
    }
}

async fn apns(
    r: Shared,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let raw = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request = received(parts.version, &parts.uri, parts.headers, raw);
    let token = request
        .path
        .strip_prefix("/3/device/")
        .unwrap_or_default()
        .to_string();
    r.lock().unwrap().apns.push(request);
    let answer = next_answer(&r, &token).unwrap_or_else(|| Answer::new(200, Value::Null));
    let mut builder = hyper::Response::builder()
        .status(answer.status)
        .header("apns-id", uuid::Uuid::new_v4().to_string());
    for (k, v) in &answer.headers {
        builder = builder.header(*k, v);
    }
    let body = if answer.body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(answer.body.to_string())
    };
    Ok(builder.body(Full::new(body)).unwrap())
}

/// Serves APNs over HTTP/2 with prior knowledge (h2c) only.
async fn serve_apns(recorder: Shared) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| apns(recorder.clone(), req));
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    addr
}

pub struct Env {
    pub push: Push,
    pub store: MongoStore,
    pub recorder: Shared,
    pub token_uri: String,
    pub options: PushOptions,
    /// Where the local push service takes subscriptions (`{push_base}/{subscription}`).
    pub push_base: String,
}

/// An environment with every provider pointed at the local servers and fast retries,
/// adjusted by `adjust`.
pub async fn env_with(adjust: impl FnOnce(&mut PushOptions)) -> Env {
    let servers = testkit::servers();
    let recorder: Shared = Arc::default();
    let app = Router::new()
        .route("/token", post(token_endpoint))
        .route("/hook", post(webhook))
        .route("/push/{subscription}", post(web_push))
        .fallback(fcm_send)
        .with_state(recorder.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    let apns_addr = serve_apns(recorder.clone()).await;

    let prefix = format!("{}:", testkit::unique_name("push"));
    let store = MongoStore::connect(
        &servers.mongodb_uri,
        &testkit::unique_name("push"),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    // Built from configuration, as a deployment builds it.
    let database = store.database().name().to_string();
    let ctx = Context::from_source(&|var: &str| match var {
        "REDIS_URL" => Some(servers.redis_url.clone()),
        "REDIS_KEY_PREFIX" => Some(prefix.clone()),
        "MONGODB_URI" => Some(servers.mongodb_uri.clone()),
        "MONGODB_DATABASE" => Some(database.clone()),
        "JWT_HS256_SECRET" => Some("push-test-secret-push-test-secret-0123".into()),
        "WEBSOCKET_MANAGEMENT_ENDPOINT" => Some("http://127.0.0.1:9".into()),
        "BROKER_URL" => Some("http://127.0.0.1:9/".into()),
        _ => None,
    })
    .await
    .unwrap();
    let token_uri = format!("http://{http_addr}/token");
    let mut options = PushOptions {
        fcm: Some(FcmOptions {
            project_id: PROJECT.into(),
            client_email: CLIENT_EMAIL.into(),
            private_key_pem: keys().rsa_private.clone(),
            token_uri: token_uri.clone(),
            endpoint: format!("http://{http_addr}"),
        }),
        apns: Some(ApnsOptions {
            team_id: TEAM_ID.into(),
            key_id: KEY_ID.into(),
            private_key_pem: keys().ec_private.clone(),
            topic: TOPIC.into(),
            endpoint: format!("http://{apns_addr}"),
            http2_prior_knowledge: true,
        }),
        webhook: None,
        web_push: Some(WebPushOptions {
            vapid_private_key_pem: keys().ec_private.clone(),
            subject: VAPID_SUBJECT.into(),
        }),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
        },
        silent: false,
        request_timeout: Duration::from_secs(5),
    };
    adjust(&mut options);
    if let Some(w) = options.webhook.as_mut() {
        w.url = format!("http://{http_addr}/hook");
    }
    Env {
        push: Push::new(ctx, options.clone()),
        store,
        recorder,
        token_uri,
        options,
        push_base: format!("http://{http_addr}/push"),
    }
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

/// The webhook option (its URL is filled in by [`env_with`]).
pub fn webhook_options() -> WebhookOptions {
    WebhookOptions {
        url: String::new(),
        secret: WEBHOOK_SECRET.into(),
    }
}

impl Env {
    /// A user with a display name.
    pub async fn user(&self, name: &str) -> String {
        let user_id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        self.store
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
            .unwrap();
        user_id
    }

    /// Registers a device token for `user_id`.
    pub async fn device(
        &self,
        user_id: &str,
        device_id: &str,
        platform: PushPlatform,
        token: &str,
    ) {
        self.store
            .upsert_device(&DeviceToken {
                user_id: user_id.into(),
                device_id: device_id.into(),
                platform,
                token: token.into(),
                created_at: DateTime::now(),
                updated_at: DateTime::now(),
            })
            .await
            .unwrap();
    }

    /// Scripts the next answers for a device token (or `"webhook"`, `"token"`).
    pub fn script(&self, key: &str, answers: Vec<Answer>) {
        self.recorder
            .lock()
            .unwrap()
            .script
            .entry(key.to_string())
            .or_default()
            .extend(answers);
    }

    pub fn fcm(&self) -> Vec<Received> {
        self.recorder.lock().unwrap().fcm.clone()
    }

    pub fn apns(&self) -> Vec<Received> {
        self.recorder.lock().unwrap().apns.clone()
    }

    pub fn web_push(&self) -> Vec<Received> {
        self.recorder.lock().unwrap().web_push.clone()
    }

    pub fn webhook(&self) -> Vec<Received> {
        self.recorder.lock().unwrap().webhook.clone()
    }

    pub fn token_requests(&self) -> Vec<Received> {
        self.recorder.lock().unwrap().token_requests.clone()
    }

    pub async fn tokens_of(&self, user_id: &str) -> Vec<String> {
        self.store
            .devices_of(user_id)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.token)
            .collect()
    }

    pub async fn dead_letters(&self) -> Vec<Document> {
        use futures::TryStreamExt;
        self.store
            .database()
            .collection::<Document>(messaging::store::collections::DEAD_LETTERS)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }
}

/// A `messaging.notification` event as the store function publishes it.
pub fn notification_event(id: &str, note: &Notification) -> Event {
    EventBuilderV10::new()
        .id(id)
        .ty(messaging::model::event_types::NOTIFICATION)
        .source("/messaging")
        .data("application/json", serde_json::to_value(note).unwrap())
        .build()
        .unwrap()
}

/// A notification for `user_id` from `sender_id` (name left for the function to look up).
pub fn note(user_id: &str, sender_id: &str, message_type: MessageType, badge: u64) -> Notification {
    Notification {
        user_id: user_id.into(),
        conversation_id: format!("conv-{}", uuid::Uuid::new_v4().simple()),
        message_id: uuid::Uuid::new_v4().to_string(),
        sender_id: sender_id.into(),
        sender_name: None,
        message_type,
        badge,
    }
}

/// A unique event id.
pub fn event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
