//! Shared set-up of the api tests: a real Redis and MongoDB (the harness's, with a fresh database
//! and key prefix per test), a local HTTP server standing in for the broker (accepts CloudEvents
//! with 202) and for the SMS/email provider (records every code it is asked to send), and an
//! [`Api`] wired to them exactly as the local stack wires it.

#![allow(dead_code)]

use messaging::store::{AccountStore, ConversationStore, MessageStore};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use fn_api::{Api, ApiOptions, HashCost, HttpCodeSender};
use lambda_http::Body;
use messaging::auth::JwtIssuer;
use messaging::context::{Context, Settings};
use messaging::model::User;
use messaging::protocol::PresenceStatus;
use messaging::realtime::{RateLimit, RedisState};
use messaging::store::{MongoStore, StoreOptions};
use mongodb::bson::DateTime;
use serde_json::{Value, json};

pub const SECRET: &str = "api-test-secret-api-test-secret-0123";
pub const OPERATOR_KEY: &str = "operator-key-0123456789";

/// What the fake providers received.
#[derive(Default)]
pub struct Recorded {
    /// Code-sender requests (JSON bodies).
    pub codes: Vec<Value>,
    /// CloudEvents: (type, data).
    pub events: Vec<(String, Value)>,
}

pub struct Env {
    pub api: Api,
    /// The api function's router over `api`, as Lambda runs it.
    pub router: axum::Router,
    pub store: MongoStore,
    pub redis: RedisState,
    pub prefix: String,
    pub recorded: Arc<Mutex<Recorded>>,
    pub issuer: JwtIssuer,
    pub code_url: String,
}

async fn record_code(State(r): State<Arc<Mutex<Recorded>>>, body: Bytes) -> StatusCode {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.lock().unwrap().codes.push(json);
    StatusCode::OK
}

async fn record_event(
    State(r): State<Arc<Mutex<Recorded>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let ty = headers
        .get("ce-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.lock().unwrap().events.push((ty, json));
    StatusCode::ACCEPTED
}

async fn failing() -> StatusCode {
    StatusCode::SERVICE_UNAVAILABLE
}

/// An environment with test options (cheap hashing, generous limits), adjusted by `adjust`.
pub async fn env_with(adjust: impl FnOnce(&mut ApiOptions, &mut Settings)) -> Env {
    let servers = testkit::servers();
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let app = Router::new()
        .route("/codes", post(record_code))
        .route("/failing", post(failing))
        .route("/", post(record_event))
        .with_state(recorded.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    let prefix = format!("{}:", testkit::unique_name("api"));
    let redis = RedisState::connect(&servers.redis_url, &prefix)
        .await
        .unwrap();
    let store = MongoStore::connect(
        &servers.mongodb_uri,
        &testkit::unique_name("api"),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let database = store.database().name().to_string();
    let mut settings = Settings::default();
    let issuer = JwtIssuer::hs256(SECRET.as_bytes(), "messaging", "messaging-clients");
    let code_url = format!("http://{addr}/codes");
    let mut options = ApiOptions::new(issuer.clone());
    options.code_sender = Arc::new(HttpCodeSender::new(code_url.clone(), None));
    options.operator_key = Some(OPERATOR_KEY.into());
    options.hash_cost = HashCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    options.rate_limit = RateLimit {
        max: 100_000,
        window: Duration::from_secs(60),
    };
    options.auth_rate_limit = options.rate_limit;
    options.code_resend_interval = Duration::from_secs(30);
    adjust(&mut options, &mut settings);
    // Built from configuration, as a deployment builds it.
    let broker = format!("http://{addr}/");
    let mut ctx = Context::from_source(&|var: &str| match var {
        "REDIS_URL" => Some(servers.redis_url.clone()),
        "REDIS_KEY_PREFIX" => Some(prefix.clone()),
        "MONGODB_URI" => Some(servers.mongodb_uri.clone()),
        "MONGODB_DATABASE" => Some(database.clone()),
        "JWT_HS256_SECRET" => Some(SECRET.into()),
        "JWT_LEEWAY_SECS" => Some("5".into()),
        "WEBSOCKET_MANAGEMENT_ENDPOINT" => Some("http://127.0.0.1:9".into()),
        "BROKER_URL" => Some(broker.clone()),
        _ => None,
    })
    .await
    .unwrap();
    ctx.settings = settings;
    let api = Api::new(ctx, options);
    Env {
        router: fn_api::router(api.clone()),
        api,
        store,
        redis,
        prefix,
        recorded,
        issuer,
        code_url,
    }
}

pub async fn env() -> Env {
    env_with(|_, _| {}).await
}

/// An answer: status, headers, JSON body (Null when empty).
pub struct Answer {
    pub status: u16,
    pub headers: lambda_http::http::HeaderMap,
    pub body: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Env {
    /// Sends one request through `fn_api::handle`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut builder = lambda_http::http::Request::builder()
            .method(method)
            .uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let body = match body {
            Some(b) => {
                builder = builder.header("content-type", "application/json");
                Body::Text(b.to_string())
            }
            None => Body::Empty,
        };
        let response = fn_api::handle(&self.router, builder.body(body).unwrap()).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.body() {
            Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::String(t.clone())),
            Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// The last code sent to `to`.
    pub fn last_code(&self, to: &str) -> String {
        let recorded = self.recorded.lock().unwrap();
        recorded
            .codes
            .iter()
            .rev()
            .find(|c| c["to"] == to)
            .and_then(|c| c["code"].as_str())
            .unwrap_or_else(|| panic!("no code was sent to {to}"))
            .to_string()
    }

    pub fn codes_sent_to(&self, to: &str) -> usize {
        self.recorded
            .lock()
            .unwrap()
            .codes
            .iter()
            .filter(|c| c["to"] == to)
            .count()
    }

    /// CloudEvent data of every system message published so far in `conversation_id`.
    pub fn system_events(&self, conversation_id: &str) -> Vec<Value> {
        self.recorded
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|(ty, data)| {
                ty == "messaging.message.received"
                    && data["conversation_id"] == conversation_id
                    && data["sender_id"] == "system"
            })
            .map(|(_, data)| serde_json::from_str(data["content"].as_str().unwrap()).unwrap())
            .collect()
    }

    /// Registers through the API (email, no password) and returns (user_id, tokens).
    pub async fn signup(&self, email: &str, name: &str) -> (String, Value) {
        let r = self
            .call(
                "POST",
                "/v1/auth/register",
                None,
                Some(json!({"email": email, "name": name})),
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let code = self.last_code(email);
        let r = self
            .call(
                "POST",
                "/v1/auth/verify",
                None,
                Some(json!({"email": email, "code": code})),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        (
            r.body["user"]["user_id"].as_str().unwrap().to_string(),
            r.body,
        )
    }

    /// A user stored directly (fast, for large groups), with an access token.
    pub async fn quick_user(&self, name: &str) -> (String, String) {
        let user_id = uuid::Uuid::new_v4().to_string();

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
        let token = self
            .issuer
            .issue(&user_id, Duration::from_secs(600))
            .unwrap();
        (user_id, token)
    }

    /// A token with the operator role.
    pub fn operator_token(&self) -> String {
        let mut claims = self.issuer.claims("ops-person", Duration::from_secs(600));
        claims.roles = vec!["operator".into()];
        self.issuer.sign(&claims).unwrap()
    }
}

/// The access token of a token pair.
pub fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

/// The refresh token of a token pair.
pub fn refresh(tokens: &Value) -> String {
    tokens["refresh_token"].as_str().unwrap().to_string()
}

/// A unique email address.
pub fn email(name: &str) -> String {
    format!(
        "{name}.{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

impl Env {
    /// Stores a message as the message function does, and updates the conversation as the store
    /// function does after it. Returns its sequence number.
    pub async fn message(&self, conversation_id: &str, sender: &str) -> u64 {
        use messaging::model::{LastMessage, NewMessage};
        use messaging::protocol::MessageBody;

        let inserted = self
            .store
            .insert_message(NewMessage {
                idempotency_key: uuid::Uuid::new_v4().to_string(),
                conversation_id: conversation_id.into(),
                sender_id: sender.into(),
                receiver_id: None,
                body: MessageBody::text("ciphertext"),
                client_timestamp: 1,
                last_sequence_hint: None,
            })
            .await
            .unwrap();
        let m = inserted.message;
        self.store
            .record_message(
                &LastMessage {
                    message_id: m.message_id.clone(),
                    sequence_number: m.sequence_number,
                    sender_id: m.sender_id.clone(),
                    message_type: m.body.message_type,
                    at: m.timestamp,
                },
                conversation_id,
            )
            .await
            .unwrap();
        m.sequence_number
    }

    /// Starts the 1:1 conversation of `token`'s user with `other` through the API.
    pub async fn direct(&self, token: &str, other: &str) -> String {
        let r = self
            .call(
                "POST",
                "/v1/conversations",
                Some(token),
                Some(json!({"user_id": other})),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{r:?}");
        r.body["conversation_id"].as_str().unwrap().to_string()
    }
}
