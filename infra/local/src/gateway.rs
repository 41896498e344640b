//! A managed WebSocket API, emulated: API Gateway's WebSocket semantics and its `@connections`
//! management API, so the functions and real AWS SDK clients cannot tell the difference.
//!
//! What it mimics (see DESIGN.md, "The local stack"): `$connect` runs before the upgrade and a
//! non-2xx result refuses it with that status; every text frame becomes one route invocation
//! (concurrently, as Lambda would), the route chosen by the route selection expression
//! (`$request.body.type` by default) with `$default` as fallback; events are shaped like API
//! Gateway's (`requestContext.routeKey`, `eventType`, `connectionId`, `connectedAt`, `messageId`
//! null on CONNECT, headers and query string only on `$connect`, `disconnectStatusCode` and
//! `disconnectReason` on `$disconnect`); frames over 128 KB close with 1009, binary frames with
//! 1003, idle connections after 10 minutes and every connection after 2 hours with 1001. The
//! management API answers `POST`/`GET`/`DELETE /@connections/{id}` (optionally under
//! `/{stage}`) with AWS's status codes and error types: 410 GoneException for unknown or closed
//! connections, 413 PayloadTooLargeException over 128 KB.
//!
//! Several instances can serve one API as replicas ([`WebSocketApi::join`], see
//! [`crate::replicas`]): a management call reaching any of them is answered by the replica that
//! holds the socket. A replica that shuts down [drains](WebSocketApi::drain): it takes no new
//! connections, tells every client to migrate, and closes with 1001 only what is left at the
//! end of the grace period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
    ApiGatewayWebsocketProxyRequestContext,
};
use aws_lambda_events::encodings::Body;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

/// Largest frame in either direction (128 KB).
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

/// A route integration: what API Gateway would invoke (a Lambda function).
#[async_trait]
pub trait RouteHandler: Send + Sync {
    /// Runs the integration for one event.
    async fn invoke(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse;
}

#[async_trait]
impl<F, Fut> RouteHandler for F
where
    F: Fn(ApiGatewayWebsocketProxyRequest) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = ApiGatewayProxyResponse> + Send,
{
    async fn invoke(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        self(event).await
    }
}

/// One route: its integration, a name for logs, and whether the integration's body is sent
/// back to the client (API Gateway's "route response", off by default as in AWS).
#[derive(Clone)]
pub struct Route {
    /// Name of the function behind the route (for logs).
    pub function: String,
    /// The integration.
    pub handler: Arc<dyn RouteHandler>,
    /// Send a non-empty result body back to the client.
    pub route_response: bool,
}

/// Settings of the emulated API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Route selection expression, `$request.body.<path>`.
    pub route_selection: String,
    /// Stage name (events' `requestContext.stage`, optional path prefix of the management API).
    pub stage: String,
    /// API id (events' `requestContext.apiId`).
    pub api_id: String,
    /// Idle timeout (AWS: 10 minutes).
    pub idle_timeout: Duration,
    /// Maximum connection lifetime (AWS: 2 hours).
    pub max_lifetime: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            route_selection: "$request.body.type".into(),
            stage: "local".into(),
            api_id: "localapi".into(),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(7200),
        }
    }
}

enum Outbound {
    /// A frame from the emulator itself (route responses, errors).
    Text(String),
    /// A frame posted through the management API (counted in `queued_bytes`).
    PostedText(String),
    /// A binary frame posted through the management API (counted in `queued_bytes`).
    PostedBinary(Vec<u8>),
    Close(u16, String),
}

/// Bytes posted to a connection but not yet written to its socket, beyond which posts get 429
/// (API Gateway's "client side buffer full" LimitExceededException).
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

struct Connection {
    tx: mpsc::UnboundedSender<Outbound>,
    /// `requestContext.authorizer` of every event of this connection (empty without an
    /// authorizer).
    authorizer: HashMap<String, serde_json::Value>,
    queued_bytes: std::sync::atomic::AtomicUsize,
    connected_at_ms: i64,
    last_active_ms: AtomicI64,
    source_ip: String,
    user_agent: String,
    /// Told to migrate (by [`WebSocketApi::drain`]).
    migrating: AtomicBool,
    /// Closed by the drain at its deadline (1001), not by its client.
    cut: AtomicBool,
}

/// The emulated WebSocket API and its management API.
pub struct WebSocketApi {
    settings: ApiSettings,
    routes: HashMap<String, Route>,
    authorizer: Option<crate::authorizer::SharedAuthorizer>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    domain: Mutex<String>,
    invocations: AtomicU64,
    /// Tag of this replica, the first bytes of its connection ids (see [`crate::replicas`]).
    tag: AtomicU32,
    registry: std::sync::OnceLock<Arc<crate::replicas::Registry>>,
    /// Shutting down: upgrades are refused.
    draining: AtomicBool,
    /// The `migration` frame of the drain under way, for upgrades that were already past the
    /// draining check when it began.
    migration_frame: Mutex<Option<String>>,
    /// Connections between leaving the table and the end of their `$disconnect`.
    closing: AtomicUsize,
    /// Connections told to migrate that the client closed itself.
    migrated: AtomicU64,
    /// Connections told to migrate that were still open at the deadline.
    cut: AtomicU64,
}

/// How many clients a draining replica tells to migrate per second, at least (see
/// [`WebSocketApi::drain`]).
pub const MIGRATIONS_PER_SECOND: usize = 2000;

/// What a [`WebSocketApi::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections told to migrate.
    pub told: usize,
    /// Of those, closed by their client before the deadline (moved).
    pub moved: u64,
    /// Closed by the gateway with 1001 at the deadline.
    pub cut: u64,
}

impl WebSocketApi {
    /// An API with these routes (`$connect`, `$disconnect`, `$default`, or route keys).
    pub fn new(settings: ApiSettings, routes: HashMap<String, Route>) -> Arc<Self> {
        Self::with_authorizer(settings, routes, None)
    }

    /// An API whose `$connect` route has a Lambda REQUEST authorizer (see
    /// [`crate::authorizer`]).
    pub fn with_authorizer(
        settings: ApiSettings,
        routes: HashMap<String, Route>,
        authorizer: Option<crate::authorizer::SharedAuthorizer>,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            routes,
            authorizer,
            connections: Mutex::new(HashMap::new()),
            domain: Mutex::new("localhost".into()),
            invocations: AtomicU64::new(0),
            tag: AtomicU32::new(rand::random()),
            registry: std::sync::OnceLock::new(),
            draining: AtomicBool::new(false),
            migration_frame: Mutex::new(None),
            closing: AtomicUsize::new(0),
            migrated: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        })
    }

    /// Makes this API one replica of several (see [`crate::replicas`]): joins the registry in
    /// Redis, announcing where the others reach its management API and where clients reach it,
    /// and from now on forwards management calls for the other replicas' connections to them.
    /// `public_url` is the address clients are sent to when told to migrate (a load balancer);
    /// without it they are sent to another live replica. Call it before taking connections.
    pub async fn join(
        &self,
        redis_url: &str,
        prefix: &str,
        management_url: &str,
        websocket_url: &str,
        public_url: Option<String>,
    ) -> anyhow::Result<()> {
        let registry = crate::replicas::Registry::join(
            redis_url,
            prefix,
            management_url,
            websocket_url,
            public_url,
        )
        .await?;
        self.tag
            .store(u32::from_be_bytes(registry.tag()), Ordering::SeqCst);
        self.registry
            .set(registry)
            .map_err(|_| anyhow::anyhow!("this API already joined a registry"))
    }

    fn tag(&self) -> crate::replicas::Tag {
        self.tag.load(Ordering::SeqCst).to_be_bytes()
    }

    /// Shuts this replica down without dropping anyone: refuses new connections, marks itself
    /// draining in the registry, sends every client a `migration` frame with `deadline` = now +
    /// `grace` (paced: [`MIGRATIONS_PER_SECOND`], or faster to tell everyone within half the
    /// grace period), waits until they have closed their connection (or the grace period ends),
    /// closes what is left with 1001, waits for their `$disconnect`s and leaves the registry.
    /// Stop accepting on the listener too (a load balancer then sends clients elsewhere).
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        self.draining.store(true, Ordering::SeqCst);
        let new_endpoint = match self.registry.get() {
            Some(registry) => {
                registry.set_draining().await;
                registry.new_endpoint()
            }
            None => String::new(),
        };
        let deadline = Instant::now() + grace;
        let deadline_ms = messaging::clock::now_ms() + grace.as_millis() as i64;
        let frame = messaging::migration::frame(
            &new_endpoint,
            messaging::protocol::MigrationReason::Shutdown,
            deadline_ms,
        )
        .to_json();
        *self.migration_frame.lock().expect("drain lock") = Some(frame.clone());
        let connections: Vec<Arc<Connection>> = self
            .connections
            .lock()
            .expect("connections lock")
            .values()
            .cloned()
            .collect();
        // Paced, so thousands of clients do not reconnect in the same instant (a herd on the
        // other replicas, the functions and the databases): at least MIGRATIONS_PER_SECOND,
        // faster if that is needed to tell everyone within the first half of the grace period.
        let per_second = (connections.len() as f64 / (grace.as_secs_f64() / 2.0).max(0.001))
            .max(MIGRATIONS_PER_SECOND as f64);
        let batch = ((per_second / 10.0).ceil() as usize).max(1);
        for (i, chunk) in connections.chunks(batch).enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for connection in chunk {
                connection.migrating.store(true, Ordering::SeqCst);
                let _ = connection.tx.send(Outbound::Text(frame.clone()));
            }
        }
        tracing::info!(
            told = connections.len(),
            new_endpoint,
            grace_ms = grace.as_millis() as u64,
            "draining: clients told to migrate"
        );
        while self.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What is left is cut, including an upgrade that completes meanwhile; their
        // `$disconnect`s run before the replica goes (bounded: a stuck integration has its own
        // timeout).
        let settle = Instant::now() + Duration::from_secs(30);
        loop {
            for connection in self.connections.lock().expect("connections lock").values() {
                if !connection.cut.swap(true, Ordering::SeqCst) {
                    let _ = connection
                        .tx
                        .send(Outbound::Close(1001, "Going away".into()));
                }
            }
            if (self.connection_count() == 0 && self.closing.load(Ordering::SeqCst) == 0)
                || Instant::now() >= settle
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(registry) = self.registry.get() {
            registry.leave().await;
        }
        DrainReport {
            told: connections.len(),
            moved: self.migrated.load(Ordering::SeqCst),
            cut: self.cut.load(Ordering::SeqCst),
        }
    }

    /// Sets the domain name put in events (`requestContext.domainName`), e.g. `127.0.0.1:8080`.
    pub fn set_domain(&self, domain: impl Into<String>) {
        *self.domain.lock().expect("domain lock") = domain.into();
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.lock().expect("connections lock").len()
    }

    /// The ids of the open connections.
    pub fn connection_ids(&self) -> Vec<String> {
        self.connections
            .lock()
            .expect("connections lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Route invocations so far.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    /// The router: WebSocket upgrades on `/` and `/{stage}`, the management API on
    /// `/@connections/{id}` and `/{stage}/@connections/{id}`.
    pub fn router(self: Arc<Self>) -> Router {
        self.clone()
            .websocket_router()
            .merge(self.management_router())
    }

    /// Only the WebSocket upgrades (`/`, `/{stage}`): what clients may reach.
    pub fn websocket_router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(upgrade))
            .route("/{stage}", get(upgrade_staged))
            .with_state(self)
    }

    /// Only the management API (`/@connections/{id}`, `/{stage}/@connections/{id}`) and the
    /// replica's Prometheus metrics (`/metrics`): what the functions and the cluster reach, kept
    /// off the public port when deployed.
    pub fn management_router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/@connections/{id}", any(manage))
            .route("/{stage}/@connections/{id}", any(manage_staged))
            .route("/metrics", get(prometheus_metrics))
            .with_state(self)
    }

    /// The route integrations over HTTP, `POST /integrations/{route key}` taking the API
    /// Gateway event and answering the integration's response: what a [`RemoteFunction`]
    /// calls, so gateway replicas in other processes can run this API's functions (tests of
    /// the multi-replica edge).
    ///
    /// [`RemoteFunction`]: crate::remote::RemoteFunction
    pub fn integrations_router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/integrations/{route}", axum::routing::post(integrate))
            .with_state(self)
    }

    fn connection(&self, id: &str) -> Option<Arc<Connection>> {
        self.connections
            .lock()
            .expect("connections lock")
            .get(id)
            .cloned()
    }

    fn base_context(
        &self,
        connection_id: &str,
        connected_at: i64,
    ) -> ApiGatewayWebsocketProxyRequestContext {
        let now = chrono::Utc::now();
        let mut ctx = ApiGatewayWebsocketProxyRequestContext::default();
        ctx.stage = Some(self.settings.stage.clone());
        ctx.request_id = Some(uuid::Uuid::new_v4().to_string());
        ctx.apiid = Some(self.settings.api_id.clone());
        ctx.connected_at = connected_at;
        ctx.connection_id = Some(connection_id.to_string());
        ctx.domain_name = Some(self.domain.lock().expect("domain lock").clone());
        ctx.extended_request_id = ctx.request_id.clone();
        ctx.message_direction = Some("IN".into());
        ctx.request_time = Some(now.format("%d/%b/%Y:%H:%M:%S %z").to_string());
        ctx.request_time_epoch = now.timestamp_millis();
        ctx
    }

    async fn invoke(
        &self,
        route_key: &str,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> Option<(Route, ApiGatewayProxyResponse)> {
        let route = self.routes.get(route_key).cloned()?;
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let connection_id = event
            .request_context
            .connection_id
            .clone()
            .unwrap_or_default();
        let request_id = event.request_context.request_id.clone().unwrap_or_default();
        let response = route.handler.invoke(event).await;
        messaging::metrics::record(
            messaging::metrics::Stage::RouteInvocation,
            started.elapsed(),
        );
        tracing::info!(
            target: "report",
            route = route_key,
            function = %route.function,
            connection_id,
            request_id,
            status = response.status_code,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "REPORT"
        );
        Some((route, response))
    }

    #[allow(clippy::too_many_arguments)]
    fn disconnect_event(
        &self,
        connection_id: &str,
        connected_at: i64,
        source_ip: &str,
        user_agent: &str,
        code: u16,
        reason: &str,
        authorizer: &HashMap<String, serde_json::Value>,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = ApiGatewayWebsocketProxyRequest::default();
        let mut ctx = self.base_context(connection_id, connected_at);
        ctx.authorizer.fields = authorizer.clone();
        ctx.route_key = Some("$disconnect".into());
        ctx.event_type = Some("DISCONNECT".into());
        ctx.identity.source_ip = Some(source_ip.to_string());
        ctx.identity.user_agent = Some(user_agent.to_string());
        ctx.disconnect_status_code = Some(i64::from(code));
        ctx.disconnect_reason = Some(reason.to_string());
        event.request_context = ctx;
        event.is_base64_encoded = false;
        event
    }

    fn select_route(&self, body: &str) -> String {
        let Some(path) = self.settings.route_selection.strip_prefix("$request.body.") else {
            return "$default".into();
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
            return "$default".into();
        };
        let mut current = &value;
        for part in path.split('.') {
            match current.get(part) {
                Some(v) => current = v,
                None => return "$default".into(),
            }
        }
        let key = match current {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return "$default".into(),
        };
        // `$connect` and `$disconnect` are never selected by a message: API Gateway runs them
        // only for the connection's own life cycle.
        if !key.starts_with('$') && self.routes.contains_key(&key) {
            key
        } else {
            "$default".into()
        }
    }
}

/// A random id shaped like API Gateway's (for message ids of events).
fn new_message_id() -> String {
    use base64::Engine;
    let bytes: [u8; 12] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn upgrade_staged(
    State(api): State<Arc<WebSocketApi>>,
    Path(_stage): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    query: RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    upgrade(State(api), ws, headers, query, ConnectInfo(peer)).await
}

async fn upgrade(
    State(api): State<Arc<WebSocketApi>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let Ok(ws) = ws else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    if api.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this gateway replica is shutting down; connect again",
        )
            .into_response();
    }
    let connection_id = crate::replicas::connection_id(api.tag());
    let connected_at = chrono::Utc::now().timestamp_millis();
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut event = ApiGatewayWebsocketProxyRequest::default();
    let mut ctx = api.base_context(&connection_id, connected_at);
    ctx.route_key = Some("$connect".into());
    ctx.event_type = Some("CONNECT".into());
    ctx.message_id = None;
    ctx.identity.source_ip = Some(peer.ip().to_string());
    ctx.identity.user_agent = Some(user_agent.clone());
    let query_pairs: HashMap<String, Vec<String>> = url_pairs(query.as_deref().unwrap_or(""));
    // The authorizer runs first; its context rides on every event of the connection.
    let mut authorizer_fields = HashMap::new();
    if let Some(authorizer) = &api.authorizer {
        let arn = crate::authorizer::method_arn(&api.settings.api_id, &api.settings.stage);
        let request = crate::authorizer::authorizer_event(&arn, &headers, &query_pairs, &ctx);
        let started = Instant::now();
        let outcome = authorizer.invoke(request).await;
        let latency = started.elapsed().as_millis() as u64;
        match crate::authorizer::evaluate(outcome, &arn) {
            crate::authorizer::Decision::Allow(fields) => {
                authorizer_fields = fields;
                let mut connect_fields = authorizer_fields.clone();
                connect_fields.insert("integrationLatency".into(), latency.into());
                ctx.authorizer.fields = connect_fields;
            }
            crate::authorizer::Decision::Refuse(status, body) => {
                tracing::info!(connection_id, status, "upgrade refused by the authorizer");
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                return (code, axum::Json(body)).into_response();
            }
        }
    }
    event.request_context = ctx;
    event.headers = headers.clone();
    event.multi_value_headers = headers;
    event.query_string_parameters = query_pairs.clone().into();
    event.multi_value_query_string_parameters = query_pairs.into();
    event.is_base64_encoded = false;

    if let Some((_, response)) = api.invoke("$connect", event).await {
        let status = response.status_code;
        if !(200..300).contains(&status) {
            let body = match response.body {
                Some(Body::Text(t)) => t,
                Some(Body::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
                _ => String::new(),
            };
            let code = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::FORBIDDEN);
            return (code, body).into_response();
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let connection = Arc::new(Connection {
        tx,
        authorizer: authorizer_fields.clone(),
        queued_bytes: std::sync::atomic::AtomicUsize::new(0),
        connected_at_ms: connected_at,
        last_active_ms: AtomicI64::new(connected_at),
        source_ip: peer.ip().to_string(),
        user_agent,
        migrating: AtomicBool::new(false),
        cut: AtomicBool::new(false),
    });
    // From here on the connection exists, as on AWS once `$connect` succeeded: posts are
    // queued until the socket is up instead of getting 410.
    api.connections
        .lock()
        .expect("connections lock")
        .insert(connection_id.clone(), connection.clone());
    // A drain that began while this upgrade was in `$connect` did not see it: tell it now.
    if let Some(frame) = api.migration_frame.lock().expect("drain lock").clone() {
        connection.migrating.store(true, Ordering::SeqCst);
        let _ = connection.tx.send(Outbound::Text(frame));
    }
    let failed_api = api.clone();
    let failed_id = connection_id.clone();
    ws.max_message_size(MAX_FRAME_BYTES + 1)
        .max_frame_size(MAX_FRAME_BYTES + 1)
        // Small buffers: an idle connection should cost kilobytes, not the 128 KiB defaults
        // (frames are mostly a few hundred bytes; a bigger one is read in several chunks).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_failed_upgrade(move |error| {
            tracing::info!(connection_id = %failed_id, %error, "upgrade failed after $connect");
            failed_api
                .connections
                .lock()
                .expect("connections lock")
                .remove(&failed_id);
            tokio::spawn(async move {
                let event = failed_api.disconnect_event(
                    &failed_id,
                    connected_at,
                    "",
                    "",
                    1006,
                    "upgrade failed",
                    &authorizer_fields,
                );
                failed_api.invoke("$disconnect", event).await;
            });
        })
        .on_upgrade(move |socket| run_connection(api, connection_id, connection, socket, rx))
}

fn url_pairs(query: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        map.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    map
}

async fn run_connection(
    api: Arc<WebSocketApi>,
    connection_id: String,
    connection: Arc<Connection>,
    socket: WebSocket,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
) {
    let (mut sink, mut stream) = socket.split();
    // (status, reason) of the close, for $disconnect.
    let close_info: Arc<Mutex<Option<(u16, String)>>> = Arc::new(Mutex::new(None));

    let writer_close = close_info.clone();
    // The writer says when it stopped (after a server-side close, or a dead socket), so the
    // connection ends at once rather than at the next timer tick.
    let (writer_done_tx, mut writer_done) = tokio::sync::oneshot::channel::<()>();
    let writer_connection = connection.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let result = match out {
                Outbound::Text(t) => sink.send(Message::Text(t.into())).await,
                Outbound::PostedText(t) => {
                    let len = t.len();
                    let sent = sink.send(Message::Text(t.into())).await;
                    writer_connection
                        .queued_bytes
                        .fetch_sub(len, Ordering::Relaxed);
                    sent
                }
                Outbound::PostedBinary(b) => {
                    let len = b.len();
                    let sent = sink.send(Message::Binary(b.into())).await;
                    writer_connection
                        .queued_bytes
                        .fetch_sub(len, Ordering::Relaxed);
                    sent
                }
                Outbound::Close(code, reason) => {
                    writer_close
                        .lock()
                        .expect("close lock")
                        .get_or_insert((code, reason.clone()));
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
            };
            if result.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
        let _ = writer_done_tx.send(());
    });

    let started = Instant::now();
    let idle = api.settings.idle_timeout;
    let lifetime = api.settings.max_lifetime;
    let mut ticker = tokio::time::interval(Duration::from_millis(
        (idle.min(lifetime).as_millis() as u64 / 4).clamp(10, 1000),
    ));
    loop {
        tokio::select! {
            frame = stream.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    // Over the size limit tungstenite refuses the frame itself, before the
                    // length check below can see it: that is still "message too big".
                    Some(Err(e)) if is_size_limit_error(&e) => {
                        let _ = connection.tx.send(Outbound::Close(1009, "Message too big".into()));
                        break;
                    }
                    _ => {
                        close_info.lock().expect("close lock").get_or_insert((1006, "Connection closed abnormally".into()));
                        break;
                    }
                };
                match frame {
                    Message::Text(text) => {
                        connection.last_active_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                        if text.len() > MAX_FRAME_BYTES {
                            let _ = connection.tx.send(Outbound::Close(1009, "Message too big".into()));
                            break;
                        }
                        let api = api.clone();
                        let id = connection_id.clone();
                        let connection = connection.clone();
                        tokio::spawn(async move {
                            on_message(api, id, connection, text.to_string()).await;
                        });
                    }
                    Message::Binary(_) => {
                        let _ = connection.tx.send(Outbound::Close(1003, "Binary frames are not supported".into()));
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => {
                        connection.last_active_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                    }
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (f.code, f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        close_info.lock().expect("close lock").get_or_insert((code, reason));
                        break;
                    }
                }
            }
            _ = &mut writer_done => {
                break;
            }
            _ = ticker.tick() => {
                let now = chrono::Utc::now().timestamp_millis();
                let last = connection.last_active_ms.load(Ordering::Relaxed);
                if started.elapsed() >= lifetime {
                    let _ = connection.tx.send(Outbound::Close(1001, "Going away".into()));
                    break;
                }
                if now - last >= idle.as_millis() as i64 {
                    let _ = connection.tx.send(Outbound::Close(1001, "Going away".into()));
                    break;
                }
            }
        }
    }
    // Forget the connection first: from now on posts get 410.
    api.closing.fetch_add(1, Ordering::SeqCst);
    api.connections
        .lock()
        .expect("connections lock")
        .remove(&connection_id);
    let _ = connection.tx.send(Outbound::Close(1000, String::new()));
    let _ = writer.await;
    let (code, reason) = close_info
        .lock()
        .expect("close lock")
        .clone()
        .unwrap_or((1000, String::new()));
    if connection.migrating.load(Ordering::SeqCst) {
        if connection.cut.load(Ordering::SeqCst) {
            api.cut.fetch_add(1, Ordering::SeqCst);
        } else {
            api.migrated.fetch_add(1, Ordering::SeqCst);
        }
    }
    let event = api.disconnect_event(
        &connection_id,
        connection.connected_at_ms,
        &connection.source_ip,
        &connection.user_agent,
        code,
        &reason,
        &connection.authorizer,
    );
    api.invoke("$disconnect", event).await;
    api.closing.fetch_sub(1, Ordering::SeqCst);
}

/// Whether a read error is tungstenite refusing a frame or message over the configured size
/// (`Space limit exceeded: Message too long: N > M`). axum hides tungstenite's error type, so
/// this looks at the message.
fn is_size_limit_error(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("Message too long")
}

async fn on_message(
    api: Arc<WebSocketApi>,
    connection_id: String,
    connection: Arc<Connection>,
    body: String,
) {
    let tx = connection.tx.clone();
    let route_key = api.select_route(&body);
    let mut event = ApiGatewayWebsocketProxyRequest::default();
    let mut ctx = api.base_context(&connection_id, connection.connected_at_ms);
    ctx.authorizer.fields = connection.authorizer.clone();
    ctx.route_key = Some(route_key.clone());
    ctx.event_type = Some("MESSAGE".into());
    ctx.message_id = Some(new_message_id());
    event.request_context = ctx;
    event.body = Some(body);
    event.is_base64_encoded = false;
    match api.invoke(&route_key, event).await {
        Some((route, response)) => {
            if route.route_response
                && let Some(Body::Text(text)) = response.body
                && !text.is_empty()
            {
                let _ = tx.send(Outbound::Text(text));
            }
        }
        None => {
            // No route and no $default: API Gateway answers with this frame.
            let frame = serde_json::json!({
                "message": "Forbidden",
                "connectionId": connection_id,
                "requestId": uuid::Uuid::new_v4().to_string(),
            });
            let _ = tx.send(Outbound::Text(frame.to_string()));
        }
    }
}

async fn manage_staged(
    State(api): State<Arc<WebSocketApi>>,
    Path((_stage, id)): Path<(String, String)>,
    uri: OriginalUri,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    manage(State(api), Path(id), uri, method, headers, body).await
}

/// An error answer of the management API, as AWS shapes it (`x-amzn-errortype` and a JSON
/// `message`).
pub fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", error_type),
            ("content-type", "application/json"),
        ],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn iso8601(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn manage(
    State(api): State<Arc<WebSocketApi>>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The first replica a call reaches checks its signature (a forwarded call was checked);
    // a body over the limit is refused as too large whatever its signature.
    if let Ok(body) = &body
        && body.len() <= MAX_FRAME_BYTES
        && !headers.contains_key(crate::replicas::FORWARDED_HEADER)
    {
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        if let Err(reason) = crate::sigv4::verify(method.as_str(), target, &headers, body) {
            return aws_error(StatusCode::FORBIDDEN, "ForbiddenException", &reason);
        }
    }
    let Some(connection) = api.connection(&id) else {
        return manage_elsewhere(&api, &id, method, &headers, body).await;
    };
    match method.as_str() {
        "POST" => {
            // Over axum's body limit the extractor refuses the body itself: still AWS's 413.
            let too_large = match &body {
                Ok(body) => body.len() > MAX_FRAME_BYTES,
                Err(rejection) => rejection.status() == StatusCode::PAYLOAD_TOO_LARGE,
            };
            if too_large {
                return aws_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PayloadTooLargeException",
                    "Message too long",
                );
            }
            let body = match body {
                Ok(body) => body,
                Err(rejection) => return rejection.into_response(),
            };
            let queued = connection
                .queued_bytes
                .fetch_add(body.len(), Ordering::Relaxed);
            if queued + body.len() > MAX_QUEUED_BYTES {
                connection
                    .queued_bytes
                    .fetch_sub(body.len(), Ordering::Relaxed);
                return aws_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "LimitExceededException",
                    "the client is not reading: its buffer is full",
                );
            }
            let out = match String::from_utf8(body.to_vec()) {
                Ok(text) => Outbound::PostedText(text),
                Err(e) => Outbound::PostedBinary(e.into_bytes()),
            };
            if connection.tx.send(out).is_err() {
                return aws_error(StatusCode::GONE, "GoneException", "");
            }
            StatusCode::OK.into_response()
        }
        "GET" => {
            let body = serde_json::json!({
                "connectedAt": iso8601(connection.connected_at_ms),
                "lastActiveAt": iso8601(connection.last_active_ms.load(Ordering::Relaxed)),
                "identity": {
                    "sourceIp": connection.source_ip,
                    "userAgent": connection.user_agent,
                },
            });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        "DELETE" => {
            let _ = connection.tx.send(Outbound::Close(1000, String::new()));
            StatusCode::NO_CONTENT.into_response()
        }
        _ => method_not_allowed(),
    }
}

fn method_not_allowed() -> Response {
    aws_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "use POST, GET or DELETE",
    )
}

/// A management call for a connection this replica does not hold: the owner answers it (see
/// [`crate::replicas`]), or it is gone.
async fn manage_elsewhere(
    api: &WebSocketApi,
    id: &str,
    method: axum::http::Method,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !matches!(method.as_str(), "POST" | "GET" | "DELETE") {
        return method_not_allowed();
    }
    let forwarded = headers.contains_key(crate::replicas::FORWARDED_HEADER);
    let (Some(registry), Some(owner), false) =
        (api.registry.get(), crate::replicas::owner_of(id), forwarded)
    else {
        return crate::replicas::gone();
    };
    if owner == api.tag() {
        return crate::replicas::gone();
    }
    let replica = match registry.owner(owner).await {
        crate::replicas::Owner::Alive(replica) => replica,
        crate::replicas::Owner::Gone => return crate::replicas::gone(),
        crate::replicas::Owner::Unknown => {
            return aws_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerErrorException",
                "the replica holding this connection cannot be found right now; retry",
            );
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return aws_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLargeException",
                "Message too long",
            );
        }
        Err(rejection) => return rejection.into_response(),
    };
    registry.forward(&replica, method, id, body).await
}

/// `GET /metrics` (Prometheus text): what the HorizontalPodAutoscaler scales the gateway on.
async fn prometheus_metrics(State(api): State<Arc<WebSocketApi>>) -> Response {
    let body = format!(
        "# HELP gateway_connections Open WebSocket connections held by this replica.\n\
         # TYPE gateway_connections gauge\n\
         gateway_connections {}\n\
         # HELP gateway_draining 1 while this replica is shutting down.\n\
         # TYPE gateway_draining gauge\n\
         gateway_draining {}\n\
         # HELP gateway_route_invocations_total Route integrations invoked.\n\
         # TYPE gateway_route_invocations_total counter\n\
         gateway_route_invocations_total {}\n\
         # HELP gateway_migrated_total Connections told to migrate that moved before the deadline.\n\
         # TYPE gateway_migrated_total counter\n\
         gateway_migrated_total {}\n",
        api.connection_count(),
        u8::from(api.draining.load(Ordering::SeqCst)),
        api.invocations(),
        api.migrated.load(Ordering::SeqCst),
    );
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// `POST /integrations/{route}`: runs the route's integration on the posted event.
async fn integrate(
    State(api): State<Arc<WebSocketApi>>,
    Path(route): Path<String>,
    axum::Json(event): axum::Json<ApiGatewayWebsocketProxyRequest>,
) -> Response {
    match api.routes.get(&route) {
        Some(route) => axum::Json(route.handler.invoke(event).await).into_response(),
        None => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}
