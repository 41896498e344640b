//! The WebSocket API emulator over real sockets: event shapes, `$connect` rejection, route
//! selection and route responses, frame/idle/lifetime limits, and the `@connections` management
//! API driven by plain HTTP, by `aws-sdk-apigatewaymanagement` and by `messaging`'s adapter.
//!
//! Every test serves a `WebSocketApi` on 127.0.0.1:0 and talks to it with tokio-tungstenite
//! clients. Route handlers record the events they receive; tests wait for them by polling with a
//! deadline, never by sleeping a fixed time (except to prove that nothing arrives).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_sdk_apigatewaymanagement::operation::get_connection::GetConnectionError;
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures::{SinkExt, StreamExt};
use local_stack::gateway::{ApiSettings, MAX_FRAME_BYTES, Route, WebSocketApi};
use messaging::gateway::{ApiGatewayManagement, Gateway, GatewayError};
use messaging::websocket::response;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Event = ApiGatewayWebsocketProxyRequest;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every event any recording route received, in arrival order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    /// A route that records its events and answers with `respond(&event)`.
    fn route<R>(&self, route_response: bool, respond: R) -> Route
    where
        R: Fn(&Event) -> ApiGatewayProxyResponse + Send + Sync + 'static,
    {
        let recorder = self.clone();
        let respond = Arc::new(respond);
        Route {
            function: "recorder".into(),
            handler: Arc::new(move |event: Event| {
                let recorder = recorder.clone();
                let respond = respond.clone();
                async move {
                    let result = respond(&event);
                    recorder.0.lock().expect("recorder lock").push(event);
                    result
                }
            }),
            route_response,
        }
    }

    /// A recording route answering 200 with no body.
    fn ok_route(&self) -> Route {
        self.route(false, |_| response(200, ""))
    }

    fn all(&self) -> Vec<Event> {
        self.0.lock().expect("recorder lock").clone()
    }

    /// Events matching `pred`, recorded so far.
    fn matching(&self, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.all().into_iter().filter(|e| pred(e)).collect()
    }

    /// Waits until at least `n` recorded events match `pred`, and returns them.
    async fn wait_n(&self, n: usize, what: &str, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.matching(&pred);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} x {what}; have {}: {:#?}",
                found.len(),
                self.all()
                    .iter()
                    .map(|e| (
                        e.request_context.route_key.clone(),
                        e.request_context.event_type.clone(),
                        e.body.clone()
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for one event matching `pred`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        self.wait_n(1, what, pred).await.remove(0)
    }

    /// Waits for the `eventType` event of connection `id`.
    async fn wait_event(&self, event_type: &str, id: &str) -> Event {
        self.wait_for(&format!("{event_type} of {id}"), |e| {
            e.request_context.event_type.as_deref() == Some(event_type)
                && e.request_context.connection_id.as_deref() == Some(id)
        })
        .await
    }
}

fn is_type(event: &Event, event_type: &str) -> bool {
    event.request_context.event_type.as_deref() == Some(event_type)
}

/// A running API: the emulator and its address.
struct Server {
    api: Arc<WebSocketApi>,
    addr: SocketAddr,
}

impl Server {
    async fn start(settings: ApiSettings, routes: HashMap<String, Route>) -> Self {
        Self::start_with(settings, routes, None).await
    }

    async fn start_with(
        settings: ApiSettings,
        routes: HashMap<String, Route>,
        authorizer: Option<local_stack::authorizer::SharedAuthorizer>,
    ) -> Self {
        let api = WebSocketApi::with_authorizer(settings, routes, authorizer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        api.set_domain(addr.to_string());
        let router = api.clone().router();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("serve");
        });
        Self { api, addr }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT{path}`.
    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Connects a client to `/local` with a known user agent.
    async fn connect(&self) -> Ws {
        self.connect_to("/local", &[]).await
    }

    /// Connects a client to `path` with extra headers; panics when refused.
    async fn connect_to(&self, path: &str, headers: &[(&'static str, &str)]) -> Ws {
        let request = self.request(path, headers);
        let (ws, response) = tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect");
        assert_eq!(response.status(), 101);
        ws
    }

    fn request(
        &self,
        path: &str,
        headers: &[(&'static str, &str)],
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut request = self.ws_url(path).into_client_request().expect("request");
        request
            .headers_mut()
            .insert("user-agent", "gateway-test/1.0".parse().expect("header"));
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header"));
        }
        request
    }

    /// Polls `connection_count()` until it equals `n`.
    async fn wait_count(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.api.connection_count() != n {
            assert!(
                Instant::now() < deadline,
                "connection_count() is {}, expected {n}",
                self.api.connection_count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Routes `$connect`, `$disconnect` and `$default`, all recording into `recorder`.
fn basic_routes(recorder: &Recorder) -> HashMap<String, Route> {
    let mut routes = HashMap::new();
    for key in ["$connect", "$disconnect", "$default"] {
        routes.insert(key.to_string(), recorder.ok_route());
    }
    routes
}

/// The next data or close message (pings and pongs skipped); `None` when the stream ends.
async fn next_message(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(e)) => panic!("socket error: {e}"),
                None => return None,
            }
        }
    })
    .await
    .expect("timed out waiting for a frame")
}

/// The next frame, which must be a text frame.
async fn next_text(ws: &mut Ws) -> String {
    match next_message(ws).await {
        Some(Message::Text(text)) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads until the server's close frame, then to the end of the socket; returns the frame's
/// code and reason.
async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_message(ws).await {
            Some(Message::Close(Some(frame))) => {
                // Keep reading so tungstenite sends its close reply and sees the end: the
                // server then finishes the handshake without waiting for its own timer.
                let _ =
                    tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Message::Close(None)) => panic!("close frame without a status code"),
            Some(Message::Text(_)) => continue,
            Some(other) => panic!("expected a close frame, got {other:?}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

/// Proves that no data frame arrives within `window` (the only timing-based check: absence).
async fn expect_silence(ws: &mut Ws, window: Duration) {
    if let Ok(frame) = tokio::time::timeout(window, ws.next()).await {
        panic!("expected no frame, got {frame:?}");
    }
}

async fn send_text(ws: &mut Ws, text: impl Into<String>) {
    ws.send(Message::text(text.into())).await.expect("send");
}

/// Closes from the client side with a code and reason, and drains the socket.
async fn close_with(ws: &mut Ws, code: u16, reason: &str) {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
    .await
    .expect("close");
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
}

/// The connection id the CONNECT with this query string marker got.
async fn connect_and_id(server: &Server, recorder: &Recorder, path: &str) -> (Ws, String) {
    let marker = format!("m{}", next_marker());
    let ws = server
        .connect_to(&format!("{path}?marker={marker}"), &[])
        .await;
    let event = recorder
        .wait_for("CONNECT with marker", |e| {
            is_type(e, "CONNECT") && e.query_string_parameters.first("marker") == Some(&marker)
        })
        .await;
    let id = event
        .request_context
        .connection_id
        .clone()
        .expect("connectionId");
    // The connection is registered after the upgrade: wait until the management API knows it.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = http
            .get(connection_url(&server.base(), &id))
            .send()
            .await
            .expect("GET")
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connection {id} never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ws, id)
}

fn next_marker() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// `{base}/@connections/{id}` with the id percent-encoded (ids are base64: `+`, `/`, `=`).
fn connection_url(base: &str, id: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    format!("{base}/@connections/{encoded}")
}

/// `queryStringParameters[name]` of a serialized event, as a string or a one-element array.
fn query_value<'a>(json: &'a Value, name: &str) -> Option<&'a str> {
    match &json["queryStringParameters"][name] {
        Value::String(s) => Some(s),
        Value::Array(values) if values.len() == 1 => values[0].as_str(),
        _ => None,
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// 1. Event shapes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn events_are_shaped_like_api_gateways() {
    let recorder = Recorder::default();
    let mut routes = basic_routes(&recorder);
    routes.insert("custom".into(), recorder.ok_route());
    let server = Server::start(ApiSettings::default(), routes).await;

    let before = now_ms();
    let mut ws = server
        .connect_to("/local?token=abc&x=1", &[("x-test", "hello")])
        .await;
    let after = now_ms();

    // CONNECT
    let connect = recorder
        .wait_for("CONNECT", |e| is_type(e, "CONNECT"))
        .await;
    let ctx = &connect.request_context;
    assert_eq!(ctx.route_key.as_deref(), Some("$connect"));
    assert_eq!(ctx.event_type.as_deref(), Some("CONNECT"));
    let id = ctx.connection_id.clone().expect("connectionId");
    assert!(!id.is_empty());
    assert!(
        (before..=after).contains(&ctx.connected_at),
        "connectedAt {} not in [{before}, {after}]",
        ctx.connected_at
    );
    assert!(ctx.request_time_epoch >= ctx.connected_at);
    assert!(ctx.request_time_epoch <= after);
    let request_time = ctx.request_time.clone().expect("requestTime");
    chrono::DateTime::parse_from_str(&request_time, "%d/%b/%Y:%H:%M:%S %z").unwrap_or_else(|e| {
        panic!("requestTime {request_time:?} is not dd/Mon/yyyy:HH:MM:SS +zzzz: {e}")
    });
    assert!(ctx.request_id.as_deref().is_some_and(|r| !r.is_empty()));
    assert_eq!(
        ctx.domain_name.as_deref(),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!(ctx.stage.as_deref(), Some("local"));
    assert_eq!(ctx.apiid.as_deref(), Some("localapi"));
    assert_eq!(ctx.identity.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(ctx.identity.user_agent.as_deref(), Some("gateway-test/1.0"));
    assert_eq!(ctx.message_id, None);
    assert_eq!(
        connect.headers.get("x-test").and_then(|v| v.to_str().ok()),
        Some("hello")
    );
    assert_eq!(
        messaging::websocket::header(&connect, "X-Test"),
        Some("hello")
    );
    assert_eq!(connect.query_string_parameters.first("token"), Some("abc"));
    assert_eq!(connect.query_string_parameters.first("x"), Some("1"));
    assert_eq!(messaging::websocket::bearer_token(&connect), Some("abc"));
    assert_eq!(connect.body, None);

    // The CONNECT as JSON (what a Lambda would receive), and back.
    let json = serde_json::to_value(&connect).expect("serialize");
    let rc = &json["requestContext"];
    assert_eq!(
        rc.as_object().expect("requestContext").get("messageId"),
        Some(&Value::Null),
        "CONNECT must carry \"messageId\": null: {rc}"
    );
    assert_eq!(rc["routeKey"], "$connect");
    assert_eq!(rc["eventType"], "CONNECT");
    assert_eq!(rc["connectionId"], id.as_str());
    assert_eq!(rc["connectedAt"], ctx.connected_at);
    assert!(rc["requestTimeEpoch"].is_i64());
    assert!(rc["requestTime"].is_string());
    assert!(rc["requestId"].is_string());
    assert_eq!(rc["domainName"], server.addr.to_string());
    assert_eq!(rc["stage"], "local");
    assert_eq!(rc["apiId"], "localapi");
    assert_eq!(rc["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(json["headers"]["x-test"], "hello");
    // API Gateway sends `"token": "abc"`; aws_lambda_events 1.2 serializes this field of the
    // WebSocket request as `"token": ["abc"]` (no `serialize_with` on it, unlike the REST and
    // HTTP API requests). Accept both: it is the library's shape, not the emulator's.
    assert_eq!(query_value(&json, "token"), Some("abc"));
    assert_eq!(query_value(&json, "x"), Some("1"));
    assert_eq!(json["multiValueQueryStringParameters"]["token"][0], "abc");
    assert_eq!(json["isBase64Encoded"], false);
    let back: Event = serde_json::from_value(json.clone()).expect("deserialize the CONNECT");
    assert_eq!(back.request_context, connect.request_context);
    assert_eq!(back.query_string_parameters.first("token"), Some("abc"));
    assert_eq!(
        back.headers.get("x-test").and_then(|v| v.to_str().ok()),
        Some("hello")
    );

    // MESSAGE: routed on $request.body.type, $default otherwise.
    let frames = [
        (r#"{"type":"custom","n":1}"#, "custom"),
        (r#"{"type":"unknown","n":2}"#, "$default"),
        ("not json at all", "$default"),
        (r#"{"n":3}"#, "$default"),
        (r#"{"type":{"nested":true}}"#, "$default"),
    ];
    for (frame, _) in frames {
        send_text(&mut ws, frame).await;
    }
    let messages = recorder
        .wait_n(frames.len(), "MESSAGE events", |e| is_type(e, "MESSAGE"))
        .await;
    let mut message_ids = Vec::new();
    for (frame, route_key) in frames {
        let event = messages
            .iter()
            .find(|e| e.body.as_deref() == Some(frame))
            .unwrap_or_else(|| panic!("no MESSAGE for {frame}"));
        let ctx = &event.request_context;
        assert_eq!(
            ctx.route_key.as_deref(),
            Some(route_key),
            "route of {frame}"
        );
        assert_eq!(ctx.event_type.as_deref(), Some("MESSAGE"));
        assert_eq!(ctx.connection_id.as_deref(), Some(id.as_str()));
        assert_eq!(ctx.connected_at, connect.request_context.connected_at);
        assert!(!event.is_base64_encoded);
        let message_id = ctx.message_id.clone().expect("messageId on MESSAGE");
        assert!(!message_id.is_empty());
        message_ids.push(message_id);
        assert!(
            event.headers.is_empty(),
            "MESSAGE has headers: {:?}",
            event.headers
        );
        assert!(event.multi_value_headers.is_empty());
        assert!(event.query_string_parameters.is_empty());
        assert!(event.multi_value_query_string_parameters.is_empty());
        assert_ne!(ctx.request_id, connect.request_context.request_id);
        let json = serde_json::to_value(event).expect("serialize");
        assert!(json["requestContext"]["messageId"].is_string());
        assert_eq!(json["body"], frame);
        assert_eq!(json["isBase64Encoded"], false);
        assert!(
            json.get("queryStringParameters")
                .is_none_or(|q| q.as_object().is_some_and(|o| o.is_empty())),
            "MESSAGE JSON has a query string: {json}"
        );
    }
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), frames.len(), "messageIds are unique");

    // DISCONNECT: the client's close code and reason.
    close_with(&mut ws, 4000, "bye").await;
    let disconnect = recorder.wait_event("DISCONNECT", &id).await;
    let ctx = &disconnect.request_context;
    assert_eq!(ctx.route_key.as_deref(), Some("$disconnect"));
    assert_eq!(ctx.event_type.as_deref(), Some("DISCONNECT"));
    assert_eq!(ctx.disconnect_status_code, Some(4000));
    assert_eq!(ctx.disconnect_reason.as_deref(), Some("bye"));
    assert_eq!(ctx.connected_at, connect.request_context.connected_at);
    assert_eq!(ctx.identity.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(disconnect.headers.is_empty());
    assert!(disconnect.query_string_parameters.is_empty());
    let json = serde_json::to_value(&disconnect).expect("serialize");
    assert_eq!(json["requestContext"]["disconnectStatusCode"], 4000);
    assert_eq!(json["requestContext"]["disconnectReason"], "bye");
    server.wait_count(0).await;
}

#[tokio::test]
async fn route_selection_follows_a_custom_expression() {
    let recorder = Recorder::default();
    let mut routes = basic_routes(&recorder);
    routes.insert("send".into(), recorder.ok_route());
    let settings = ApiSettings {
        route_selection: "$request.body.meta.action".into(),
        ..ApiSettings::default()
    };
    let server = Server::start(settings, routes).await;
    let mut ws = server.connect_to("/", &[]).await;
    send_text(&mut ws, r#"{"meta":{"action":"send"}}"#).await;
    send_text(&mut ws, r#"{"type":"send"}"#).await;
    let messages = recorder
        .wait_n(2, "MESSAGE events", |e| is_type(e, "MESSAGE"))
        .await;
    for event in messages {
        let expected = if event.body.as_deref() == Some(r#"{"meta":{"action":"send"}}"#) {
            "send"
        } else {
            "$default"
        };
        assert_eq!(event.request_context.route_key.as_deref(), Some(expected));
    }
    close_with(&mut ws, 1000, "").await;
}

// ---------------------------------------------------------------------------------------------
// 2. $connect rejection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_non_2xx_connect_result_refuses_the_upgrade_with_that_status() {
    for status in [401u16, 403] {
        let recorder = Recorder::default();
        let mut routes = basic_routes(&recorder);
        routes.insert(
            "$connect".into(),
            recorder.route(false, move |_| response(status, r#"{"message":"no"}"#)),
        );
        let server = Server::start(ApiSettings::default(), routes).await;
        let request = server.request("/local?token=bad", &[]);
        let result = tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect timed out");
        match result {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status().as_u16(), status);
            }
            Err(other) => panic!("expected an HTTP {status} refusal, got error {other}"),
            Ok((_, response)) => panic!("upgrade accepted: {}", response.status()),
        }
        recorder
            .wait_for("CONNECT", |e| is_type(e, "CONNECT"))
            .await;
        assert_eq!(server.api.connection_count(), 0);
        assert!(recorder.matching(|e| is_type(e, "DISCONNECT")).is_empty());
    }
}

#[tokio::test]
async fn a_plain_http_get_is_not_an_upgrade() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let status = reqwest::get(format!("{}/local", server.base()))
        .await
        .expect("GET")
        .status();
    assert_eq!(status, 400);
    assert!(recorder.all().is_empty(), "no $connect without an upgrade");
}

// ---------------------------------------------------------------------------------------------
// 3. Route responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn route_responses_are_sent_only_when_enabled() {
    let recorder = Recorder::default();
    let mut routes = HashMap::new();
    routes.insert("$connect".to_string(), recorder.ok_route());
    routes.insert(
        "echo".to_string(),
        recorder.route(true, |e| {
            let body = e.body.clone().unwrap_or_default();
            if body.contains("empty") {
                response(200, "")
            } else {
                response(200, format!("echo:{body}"))
            }
        }),
    );
    routes.insert(
        "quiet".to_string(),
        recorder.route(false, |_| response(200, "must not be sent")),
    );
    // No $default: unmatched frames get API Gateway's Forbidden frame.
    let server = Server::start(ApiSettings::default(), routes).await;
    let mut ws = server.connect().await;
    let id = recorder
        .wait_for("CONNECT", |e| is_type(e, "CONNECT"))
        .await
        .request_context
        .connection_id
        .expect("connectionId");

    // route_response: true, non-empty body -> a text frame.
    send_text(&mut ws, r#"{"type":"echo","n":1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"echo:{"type":"echo","n":1}"#);

    // route_response: false -> nothing.
    send_text(&mut ws, r#"{"type":"quiet"}"#).await;
    recorder
        .wait_for("quiet MESSAGE", |e| {
            e.request_context.route_key.as_deref() == Some("quiet")
        })
        .await;
    // route_response: true but an empty body -> nothing either.
    send_text(&mut ws, r#"{"type":"echo","empty":true}"#).await;
    recorder
        .wait_for("empty echo MESSAGE", |e| {
            e.body.as_deref().is_some_and(|b| b.contains("empty"))
        })
        .await;
    expect_silence(&mut ws, Duration::from_millis(300)).await;

    // No match and no $default -> {"message":"Forbidden",...}.
    for frame in [r#"{"type":"nope"}"#, "not json"] {
        send_text(&mut ws, frame).await;
        let reply: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON frame");
        assert_eq!(reply["message"], "Forbidden", "{reply}");
        assert_eq!(reply["connectionId"], id.as_str());
        assert!(reply["requestId"].is_string());
    }
    // The socket stays open after a Forbidden.
    send_text(&mut ws, r#"{"type":"echo","n":2}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"echo:{"type":"echo","n":2}"#);
    close_with(&mut ws, 1000, "").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn frames_over_128_kb_close_with_1009() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;

    // Exactly 128 KB is accepted.
    let mut ws = server.connect().await;
    let exact = "a".repeat(MAX_FRAME_BYTES);
    send_text(&mut ws, exact.clone()).await;
    recorder
        .wait_for("128 KB MESSAGE", |e| {
            e.body.as_ref().is_some_and(|b| b.len() == MAX_FRAME_BYTES)
        })
        .await;

    // One byte more closes with 1009 and fires $disconnect with 1009.
    send_text(&mut ws, "b".repeat(MAX_FRAME_BYTES + 1)).await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1009);
    let disconnects = recorder
        .wait_n(1, "DISCONNECT", |e| is_type(e, "DISCONNECT"))
        .await;
    assert_eq!(
        disconnects[0].request_context.disconnect_status_code,
        Some(1009)
    );
    assert!(
        recorder
            .matching(|e| e.body.as_ref().is_some_and(|b| b.len() > MAX_FRAME_BYTES))
            .is_empty(),
        "the oversized frame must not be delivered"
    );

    // Well over the limit closes with 1009 too.
    let mut ws = server.connect().await;
    send_text(&mut ws, "c".repeat(200 * 1024)).await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1009);
    let disconnects = recorder
        .wait_n(2, "2 DISCONNECTs", |e| is_type(e, "DISCONNECT"))
        .await;
    assert_eq!(
        disconnects[1].request_context.disconnect_status_code,
        Some(1009)
    );
    server.wait_count(0).await;
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let mut ws = server.connect().await;
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1003);
    let disconnect = recorder
        .wait_for("DISCONNECT", |e| is_type(e, "DISCONNECT"))
        .await;
    assert_eq!(
        disconnect.request_context.disconnect_status_code,
        Some(1003)
    );
    assert!(recorder.matching(|e| is_type(e, "MESSAGE")).is_empty());
    server.wait_count(0).await;
}

#[tokio::test]
async fn idle_connections_close_with_1001() {
    let recorder = Recorder::default();
    let settings = ApiSettings {
        idle_timeout: Duration::from_millis(300),
        ..ApiSettings::default()
    };
    let server = Server::start(settings, basic_routes(&recorder)).await;
    let mut ws = server.connect().await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1001);
    let disconnect = recorder
        .wait_for("DISCONNECT", |e| is_type(e, "DISCONNECT"))
        .await;
    assert_eq!(
        disconnect.request_context.disconnect_status_code,
        Some(1001)
    );
    assert!(disconnect.request_context.disconnect_reason.is_some());
    server.wait_count(0).await;
}

#[tokio::test]
async fn connections_close_with_1001_at_their_max_lifetime() {
    let recorder = Recorder::default();
    let settings = ApiSettings {
        max_lifetime: Duration::from_millis(400),
        ..ApiSettings::default()
    };
    let server = Server::start(settings, basic_routes(&recorder)).await;
    let mut ws = server.connect().await;
    // Stay active: the lifetime applies regardless of activity.
    let (code, _) = tokio::time::timeout(WAIT, async {
        let mut n = 0;
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return (u16::from(frame.code), frame.reason.to_string());
                    }
                    Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    n += 1;
                    let _ = ws.send(Message::text(format!("{{\"n\":{n}}}"))).await;
                }
            }
        }
    })
    .await
    .expect("no close within the deadline");
    assert_eq!(code, 1001);
    let disconnect = recorder
        .wait_for("DISCONNECT", |e| is_type(e, "DISCONNECT"))
        .await;
    assert_eq!(
        disconnect.request_context.disconnect_status_code,
        Some(1001)
    );
    server.wait_count(0).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Management API over plain HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn management_api_over_http() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let http = reqwest::Client::new();

    for prefix in ["", "/local"] {
        let base = format!("{}{prefix}", server.base());
        let (mut ws, id) = connect_and_id(&server, &recorder, "/local").await;
        let url = connection_url(&base, &id);
        let connect = recorder.wait_event("CONNECT", &id).await;

        // POST delivers a text frame.
        let res = http
            .post(&url)
            .body("hello from the server")
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), 200, "{prefix}");
        assert_eq!(next_text(&mut ws).await, "hello from the server");

        // Exactly 128 KB is allowed, one byte more is 413.
        let res = http
            .post(&url)
            .body("x".repeat(MAX_FRAME_BYTES))
            .send()
            .await
            .expect("POST 128 KB");
        assert_eq!(res.status(), 200);
        assert_eq!(next_text(&mut ws).await.len(), MAX_FRAME_BYTES);
        let res = http
            .post(&url)
            .body("x".repeat(MAX_FRAME_BYTES + 1))
            .send()
            .await
            .expect("POST 128 KB + 1");
        assert_eq!(res.status(), 413);
        assert_eq!(
            res.headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok()),
            Some("PayloadTooLargeException")
        );

        // Far over the limit (beyond axum's default 2 MB body limit) is still AWS's 413.
        let res = http
            .post(&url)
            .body("x".repeat(3 * 1024 * 1024))
            .send()
            .await
            .expect("POST 3 MB");
        assert_eq!(res.status(), 413);
        assert_eq!(
            res.headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok()),
            Some("PayloadTooLargeException")
        );

        // Unknown id -> 410 GoneException.
        let res = http
            .post(connection_url(&base, "AAAAAAAAAAAAAAAA"))
            .body("x")
            .send()
            .await
            .expect("POST unknown");
        assert_eq!(res.status(), 410);
        assert_eq!(
            res.headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok()),
            Some("GoneException")
        );

        // GET describes the connection.
        let res = http.get(&url).send().await.expect("GET");
        assert_eq!(res.status(), 200);
        let info: Value = res.json().await.expect("GET JSON");
        let connected_at = chrono::DateTime::parse_from_rfc3339(
            info["connectedAt"].as_str().expect("connectedAt"),
        )
        .expect("connectedAt is ISO-8601");
        assert_eq!(
            connected_at.timestamp_millis(),
            connect.request_context.connected_at
        );
        let last_active = chrono::DateTime::parse_from_rfc3339(
            info["lastActiveAt"].as_str().expect("lastActiveAt"),
        )
        .expect("lastActiveAt is ISO-8601");
        assert!(last_active >= connected_at);
        assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");
        assert_eq!(info["identity"]["userAgent"], "gateway-test/1.0");

        // DELETE closes the socket and fires $disconnect; then the id is gone.
        let res = http.delete(&url).send().await.expect("DELETE");
        assert_eq!(res.status(), 204);
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1000);
        recorder.wait_event("DISCONNECT", &id).await;
        let res = http.get(&url).send().await.expect("GET after DELETE");
        assert_eq!(res.status(), 410);
        let res = http.post(&url).body("late").send().await.expect("POST");
        assert_eq!(res.status(), 410);
        let res = http.delete(&url).send().await.expect("DELETE again");
        assert_eq!(res.status(), 410);

        // After the client closes, POST -> 410.
        let (mut ws, id) = connect_and_id(&server, &recorder, "/").await;
        let url = connection_url(&base, &id);
        close_with(&mut ws, 1000, "done").await;
        recorder.wait_event("DISCONNECT", &id).await;
        let res = http.post(&url).body("too late").send().await.expect("POST");
        assert_eq!(res.status(), 410);
        assert_eq!(
            res.headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok()),
            Some("GoneException")
        );
    }
    server.wait_count(0).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Management API through the AWS SDK and messaging's adapter
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn management_api_through_the_aws_sdk() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let cfg = local_stack::stack::local_aws_config().await;

    for base in [server.base(), format!("{}/local", server.base())] {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(&cfg)
            .endpoint_url(&base)
            .build();
        let client = aws_sdk_apigatewaymanagement::Client::from_conf(config);
        let (mut ws, id) = connect_and_id(&server, &recorder, "/local").await;
        let connect = recorder.wait_event("CONNECT", &id).await;

        client
            .post_to_connection()
            .connection_id(&id)
            .data(Blob::new("via the sdk"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("post_to_connection at {base}: {e:?}"));
        assert_eq!(next_text(&mut ws).await, "via the sdk");

        for size in [MAX_FRAME_BYTES + 1, 3 * 1024 * 1024] {
            let err = client
                .post_to_connection()
                .connection_id(&id)
                .data(Blob::new(vec![b'z'; size]))
                .send()
                .await
                .expect_err("post over 128 KB");
            assert!(
                matches!(
                    err.as_service_error(),
                    Some(PostToConnectionError::PayloadTooLargeException(_))
                ),
                "expected PayloadTooLargeException for {size} bytes, got {err:?}"
            );
        }

        let info = client
            .get_connection()
            .connection_id(&id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get_connection at {base}: {e:?}"));
        let connected_at = info.connected_at().expect("connected_at");
        assert_eq!(
            connected_at.to_millis().expect("millis"),
            connect.request_context.connected_at
        );
        assert!(info.last_active_at().is_some());
        let identity = info.identity().expect("identity");
        assert_eq!(identity.source_ip(), Some("127.0.0.1"));
        assert_eq!(identity.user_agent(), Some("gateway-test/1.0"));

        client
            .delete_connection()
            .connection_id(&id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete_connection at {base}: {e:?}"));
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1000);
        recorder.wait_event("DISCONNECT", &id).await;

        let err = client
            .post_to_connection()
            .connection_id(&id)
            .data(Blob::new("late"))
            .send()
            .await
            .expect_err("post to a closed connection");
        assert!(
            matches!(
                err.as_service_error(),
                Some(PostToConnectionError::GoneException(_))
            ),
            "expected GoneException, got {err:?}"
        );
        let err = client
            .get_connection()
            .connection_id(&id)
            .send()
            .await
            .expect_err("get a closed connection");
        assert!(
            matches!(
                err.as_service_error(),
                Some(GetConnectionError::GoneException(_))
            ),
            "expected GoneException, got {err:?}"
        );

        // messaging's adapter over the same endpoint.
        let gateway =
            ApiGatewayManagement::new(&cfg, &base, messaging::config::DEFAULT_GATEWAY_TIMEOUT);
        assert_eq!(gateway.post(&id, b"late").await, Err(GatewayError::Gone));
        assert_eq!(gateway.close(&id).await, Err(GatewayError::Gone));
        let (mut ws, id) = connect_and_id(&server, &recorder, "/").await;
        gateway.post(&id, b"via messaging").await.expect("post");
        assert_eq!(next_text(&mut ws).await, "via messaging");
        assert_eq!(
            gateway
                .post(&id, "y".repeat(MAX_FRAME_BYTES + 1).as_bytes())
                .await,
            Err(GatewayError::PayloadTooLarge)
        );
        gateway.close(&id).await.expect("close");
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1000);
        recorder.wait_event("DISCONNECT", &id).await;
        assert_eq!(gateway.post(&id, b"gone").await, Err(GatewayError::Gone));
    }
    server.wait_count(0).await;
}

/// The management API checks signed calls as API Gateway does: the SDK's and the adapter's
/// signatures pass (above); a wrong secret, a changed body or a stale date is refused with 403
/// and nothing reaches the client.
#[tokio::test]
async fn management_calls_with_a_bad_signature_are_refused() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let (mut ws, id) = connect_and_id(&server, &recorder, "/").await;
    let wrong = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            local_stack::s3::ACCESS_KEY,
            "not-the-secret",
            None,
            None,
            "test",
        ))
        .load()
        .await;

    let sdk = aws_sdk_apigatewaymanagement::Client::from_conf(
        aws_sdk_apigatewaymanagement::config::Builder::from(&wrong)
            .endpoint_url(server.base())
            .build(),
    );
    let err = sdk
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new("forged"))
        .send()
        .await
        .expect_err("a wrong secret is refused");
    assert_eq!(
        err.raw_response().map(|r| r.status().as_u16()),
        Some(403),
        "{err:?}"
    );
    let adapter = ApiGatewayManagement::new(
        &wrong,
        &server.base(),
        messaging::config::DEFAULT_GATEWAY_TIMEOUT,
    );
    match adapter.post(&id, b"forged").await {
        Err(GatewayError::Other(reason)) => {
            assert!(reason.contains("ForbiddenException"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A correctly signed request whose body was changed afterwards.
    use aws_credential_types::provider::ProvideCredentials;
    // Ids are base64 (`/`, `+`, `=`): percent-encoded in the path, as the SDK does.
    let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let url = format!("{}/@connections/{encoded}", server.base());
    let good = local_stack::stack::local_aws_config().await;
    let credentials: aws_smithy_runtime_api::client::identity::Identity = good
        .credentials_provider()
        .expect("credentials")
        .provide_credentials()
        .await
        .expect("credentials")
        .into();
    let signed_headers = |time: std::time::SystemTime| {
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&credentials)
            .region("us-east-1")
            .name("execute-api")
            .time(time)
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .expect("params")
            .into();
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            url.as_str(),
            std::iter::empty(),
            aws_sigv4::http_request::SignableBody::Bytes(b"signed body"),
        )
        .expect("signable");
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
            .expect("signed")
            .into_parts();
        let mut request = http::Request::new(());
        instructions.apply_to_request_http1x(&mut request);
        request.headers().clone()
    };
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now();
    let res = http
        .post(&url)
        .headers(signed_headers(now))
        .body("another body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["x-amzn-errortype"], "ForbiddenException");
    let stale = now - Duration::from_secs(20 * 60);
    let res = http
        .post(&url)
        .headers(signed_headers(stale))
        .body("signed body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The same request, signed now and unchanged, passes.
    let res = http
        .post(&url)
        .headers(signed_headers(now))
        .body("signed body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(next_text(&mut ws).await, "signed body");
}

// ---------------------------------------------------------------------------------------------
// 7. Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn twenty_concurrent_clients() {
    const N: usize = 20;
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;

    let paths: Vec<String> = (0..N).map(|i| format!("/local?client={i}")).collect();
    let clients =
        futures::future::join_all(paths.iter().map(|path| server.connect_to(path, &[]))).await;
    let connects = recorder
        .wait_n(N, "CONNECTs", |e| is_type(e, "CONNECT"))
        .await;
    // Client i's connection id, from its CONNECT (`?client=i`).
    let id_of: HashMap<usize, String> = connects
        .iter()
        .map(|e| {
            let client = e
                .query_string_parameters
                .first("client")
                .expect("client marker")
                .parse()
                .expect("client number");
            let id = e.request_context.connection_id.clone().expect("id");
            (client, id)
        })
        .collect();
    let mut ids: Vec<String> = id_of.values().cloned().collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "every client has its own connectionId");
    server.wait_count(N).await;

    // Each client gets exactly the frame posted to its id (ids are base64, so some contain
    // `/` or `+`, which the SDK percent-encodes in the path).
    let gateway = ApiGatewayManagement::new(
        &local_stack::stack::local_aws_config().await,
        &server.base(),
        messaging::config::DEFAULT_GATEWAY_TIMEOUT,
    );
    let gateway = &gateway;
    let id_of = &id_of;
    futures::future::join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| async move {
                gateway
                    .post(&id_of[&i], format!("to client {i}").as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("post to {}: {e}", id_of[&i]));
                assert_eq!(next_text(&mut ws).await, format!("to client {i}"));
                send_text(&mut ws, format!("{{\"client\":{i}}}")).await;
                close_with(&mut ws, 1000, "").await;
            }),
    )
    .await;
    server.wait_count(0).await;
    let disconnects = recorder
        .wait_n(N, "DISCONNECTs", |e| is_type(e, "DISCONNECT"))
        .await;
    let mut closed: Vec<String> = disconnects
        .iter()
        .map(|e| e.request_context.connection_id.clone().expect("id"))
        .collect();
    closed.sort();
    assert_eq!(closed, ids);
    recorder
        .wait_n(N, "MESSAGEs", |e| is_type(e, "MESSAGE"))
        .await;
}

#[tokio::test]
async fn a_client_that_does_not_read_gets_429_once_its_buffer_is_full() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let (ws, id) = connect_and_id(&server, &recorder, "/").await;
    let url = connection_url(&server.base(), &id);
    let http = reqwest::Client::new();
    let frame = "x".repeat(MAX_FRAME_BYTES);
    // The client never reads: socket buffers fill, then the emulator's queue (4 MiB).
    let mut throttled = None;
    for attempt in 0..2_000 {
        let res = http
            .post(&url)
            .body(frame.clone())
            .send()
            .await
            .expect("POST");
        if res.status() == 429 {
            assert_eq!(
                res.headers()
                    .get("x-amzn-errortype")
                    .and_then(|v| v.to_str().ok()),
                Some("LimitExceededException")
            );
            throttled = Some(attempt);
            break;
        }
        assert_eq!(res.status(), 200);
    }
    assert!(throttled.is_some(), "a full buffer must answer 429");
    drop(ws);
}

// ---------------------------------------------------------------------------------------------
// The $connect authorizer and reserved routes
// ---------------------------------------------------------------------------------------------

/// An authorizer that allows `?token=good` (context user_id=alice, n=7), denies `?token=deny`,
/// fails with `Unauthorized` for `?token=bad`, and fails otherwise; it records what it got.
fn test_authorizer(seen: Arc<Mutex<Vec<Value>>>) -> local_stack::authorizer::SharedAuthorizer {
    Arc::new(move |event: Value| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(event.clone());
            let arn = event["methodArn"].as_str().unwrap_or_default().to_string();
            let policy = |effect: &str| {
                serde_json::json!({
                    "principalId": "alice",
                    "policyDocument": {"Version": "2012-10-17", "Statement": [
                        {"Action": "execute-api:Invoke", "Effect": effect, "Resource": arn}
                    ]},
                    "context": {"user_id": "alice", "n": 7},
                })
            };
            match event
                .pointer("/queryStringParameters/token")
                .and_then(Value::as_str)
            {
                Some("good") => Ok(policy("Allow")),
                Some("deny") => Ok(policy("Deny")),
                Some("bad") => Err("Unauthorized".to_string()),
                _ => Err("boom".to_string()),
            }
        }
    })
}

#[tokio::test]
async fn the_authorizer_runs_before_connect_and_its_context_rides_on_every_event() {
    let recorder = Recorder::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = Server::start_with(
        ApiSettings::default(),
        basic_routes(&recorder),
        Some(test_authorizer(seen.clone())),
    )
    .await;
    for (token, status) in [("bad", 401), ("deny", 403), ("other", 500)] {
        let request = server.request(&format!("/local?token={token}"), &[]);
        match connect_async(request).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), status, "{token}"),
            other => panic!("{token}: expected HTTP {status}, got {other:?}"),
        }
    }
    assert!(
        recorder.matching(|e| is_type(e, "CONNECT")).is_empty(),
        "$connect never runs for a refused upgrade"
    );

    let request = server.request("/local?token=good&marker=auth", &[]);
    let (mut ws, _) = connect_async(request).await.expect("allowed");
    let connect = recorder
        .wait_for("authorized CONNECT", |e| {
            is_type(e, "CONNECT") && e.query_string_parameters.first("marker") == Some("auth")
        })
        .await;
    // The authorizer got AWS's event for WebSocket APIs.
    let event = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(event["type"], "REQUEST");
    assert!(
        event["methodArn"]
            .as_str()
            .unwrap()
            .ends_with("/local/$connect"),
        "{event}"
    );
    assert_eq!(event["requestContext"]["eventType"], "CONNECT");
    assert_eq!(event["queryStringParameters"]["marker"], "auth");
    assert!(event.get("body").is_none());
    let fields = &connect.request_context.authorizer.fields;
    assert_eq!(fields["principalId"], "alice");
    assert_eq!(fields["user_id"], "alice");
    assert_eq!(fields["n"], "7", "context values are stringified");
    assert!(fields["integrationLatency"].is_number());
    let id = connect.request_context.connection_id.clone().unwrap();
    send_text(&mut ws, r#"{"type":"hello"}"#).await;
    let message = recorder.wait_event("MESSAGE", &id).await;
    assert_eq!(
        message.request_context.authorizer.fields["user_id"],
        "alice"
    );
    assert!(
        !message
            .request_context
            .authorizer
            .fields
            .contains_key("integrationLatency")
    );
    close_with(&mut ws, 1000, "bye").await;
    let disconnect = recorder.wait_event("DISCONNECT", &id).await;
    assert_eq!(
        disconnect.request_context.authorizer.fields["user_id"],
        "alice"
    );
}

#[tokio::test]
async fn a_frame_naming_a_reserved_route_goes_to_default() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let (mut ws, id) = connect_and_id(&server, &recorder, "/local").await;
    for reserved in ["$disconnect", "$connect", "$default"] {
        send_text(&mut ws, format!(r#"{{"type":"{reserved}"}}"#)).await;
    }
    let messages = recorder
        .wait_n(3, "three MESSAGE events", |e| {
            is_type(e, "MESSAGE") && e.request_context.connection_id.as_deref() == Some(&id)
        })
        .await;
    for m in messages {
        assert_eq!(m.request_context.route_key.as_deref(), Some("$default"));
    }
    assert!(
        recorder
            .matching(|e| is_type(e, "DISCONNECT")
                || e.request_context.route_key.as_deref() == Some("$disconnect"))
            .is_empty()
    );
    assert_eq!(
        server.api.connection_count(),
        1,
        "the connection is still open"
    );
}

// ---------------------------------------------------------------------------------------------
// Replicas: one management API over several instances
// ---------------------------------------------------------------------------------------------

/// The status of a `POST /@connections/{id}` with a one-byte frame, through `base`.
async fn post_status(base: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .post(connection_url(base, id))
        .body("x")
        .send()
        .await
        .expect("POST")
        .status()
        .as_u16()
}

/// Two replicas of one API on one Redis (a fresh key prefix), each on its own port.
async fn two_replicas(recorder: &Recorder) -> (Server, Server) {
    let redis = testkit::servers().redis_url.clone();
    let prefix = format!("{}:", testkit::unique_name("replicas"));
    let a = Server::start(ApiSettings::default(), basic_routes(recorder)).await;
    let b = Server::start(ApiSettings::default(), basic_routes(recorder)).await;
    for server in [&a, &b] {
        server
            .api
            .join(&redis, &prefix, &server.base(), &server.ws_url(""), None)
            .await
            .expect("joins the registry");
    }
    (a, b)
}

#[tokio::test]
async fn every_replica_answers_for_every_connection_with_the_owners_semantics() {
    let recorder = Recorder::default();
    let (a, b) = two_replicas(&recorder).await;
    let (mut ws, id) = connect_and_id(&a, &recorder, "/").await;
    let http = reqwest::Client::new();
    // Through the other replica: POST, GET answered by the owner.
    let via_b = connection_url(&b.base(), &id);
    let res = http.post(&via_b).body("hello from b").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(next_text(&mut ws).await, "hello from b");
    let res = http.get(&via_b).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["identity"]["userAgent"], "gateway-test/1.0");
    // The staged path too, through the functions' SigV4 adapter.
    let adapter = ApiGatewayManagement::new(
        &local_stack::stack::local_aws_config().await,
        &format!("{}/local", b.base()),
        messaging::config::DEFAULT_GATEWAY_TIMEOUT,
    );
    adapter
        .post(&id, b"via the adapter")
        .await
        .expect("posted via b");
    assert_eq!(next_text(&mut ws).await, "via the adapter");
    // 413 is the owner's answer, relayed with its error type.
    let res = http
        .post(&via_b)
        .body("x".repeat(MAX_FRAME_BYTES + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.headers().get("x-amzn-errortype").unwrap(),
        "PayloadTooLargeException"
    );
    // An id no replica made, and a made-up id of a live replica: 410.
    for unknown in ["bm9ib2R5LWhvbWU=", "not-an-id"] {
        assert_eq!(post_status(&b.base(), unknown).await, 410, "{unknown}");
    }
    let forged =
        local_stack::replicas::connection_id(local_stack::replicas::owner_of(&id).unwrap());
    assert_eq!(post_status(&b.base(), &forged).await, 410);
    // A forwarded call is answered from the receiver's own sockets only: no loop.
    let res = http
        .post(&via_b)
        .header(local_stack::replicas::FORWARDED_HEADER, "1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    // DELETE through the other replica closes the socket; then 410 everywhere.
    let res = http.delete(&via_b).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    a.wait_count(0).await;
    for base in [a.base(), b.base()] {
        assert_eq!(post_status(&base, &id).await, 410);
    }
}

#[tokio::test]
async fn a_draining_replica_migrates_its_clients_and_cuts_only_who_stays() {
    let recorder = Recorder::default();
    let (a, b) = two_replicas(&recorder).await;
    let (mut mover, mover_id) = connect_and_id(&a, &recorder, "/").await;
    let (mut stayer, stayer_id) = connect_and_id(&a, &recorder, "/").await;
    let api = a.api.clone();
    let drain = tokio::spawn(async move { api.drain(Duration::from_secs(2)).await });
    // Both are told where to go (the other replica) and by when.
    let mut frames = Vec::new();
    for ws in [&mut mover, &mut stayer] {
        let frame: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(frame["type"], "migration");
        assert_eq!(frame["payload"]["new_endpoint"], b.ws_url(""));
        assert_eq!(frame["payload"]["reason"], "shutdown");
        assert!(frame["payload"]["deadline"].as_i64().unwrap() > now_ms());
        frames.push(frame);
    }
    // A draining replica takes no new connections.
    let refused = connect_async(a.request("/", &[])).await;
    match refused {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // Posts still reach a client until it has moved, through either replica.
    let res = reqwest::Client::new()
        .post(connection_url(&b.base(), &mover_id))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(next_text(&mut mover).await, "still here");
    // One moves (closes itself); the other stays and is cut with 1001 at the deadline.
    close_with(&mut mover, 1000, "migrated").await;
    assert_eq!(expect_close(&mut stayer).await.0, 1001);
    let report = drain.await.unwrap();
    assert_eq!(report.told, 2);
    assert_eq!(report.moved, 1);
    assert_eq!(report.cut, 1);
    // Both got their $disconnect before the drain returned; the replica left the registry, so
    // its ids are gone everywhere.
    recorder.wait_event("DISCONNECT", &mover_id).await;
    recorder.wait_event("DISCONNECT", &stayer_id).await;
    assert_eq!(post_status(&b.base(), &stayer_id).await, 410);
}

#[tokio::test]
async fn the_metrics_endpoint_counts_connections() {
    let recorder = Recorder::default();
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    let (_ws, _id) = connect_and_id(&server, &recorder, "/").await;
    let text = reqwest::get(format!("{}/metrics", server.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("gateway_connections 1\n"), "{text}");
    assert!(text.contains("gateway_draining 0\n"), "{text}");
}

#[tokio::test]
async fn a_replica_silent_past_its_heartbeat_is_dead_and_its_connections_are_gone() {
    let recorder = Recorder::default();
    let redis_url = testkit::servers().redis_url.clone();
    let prefix = format!("{}:", testkit::unique_name("replicas"));
    let server = Server::start(ApiSettings::default(), basic_routes(&recorder)).await;
    server
        .api
        .join(
            &redis_url,
            &prefix,
            &server.base(),
            &server.ws_url(""),
            None,
        )
        .await
        .unwrap();
    // A replica whose last heartbeat is older than DEAD_AFTER, at an address that would never
    // answer: its connections are 410 at once, without trying it.
    let tag = [9, 9, 9, 9];
    let silent = serde_json::json!({
        "management_url": "http://10.255.255.1:9",
        "websocket_url": "ws://10.255.255.1:9",
        "heartbeat": now_ms() - local_stack::replicas::DEAD_AFTER.as_millis() as i64 - 1000,
        "draining": false,
    });
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(messaging::keys::Keys::new(prefix.clone()).gateway_replicas())
        .arg("09090909")
        .arg(silent.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let id = local_stack::replicas::connection_id(tag);
    let started = Instant::now();
    assert_eq!(post_status(&server.base(), &id).await, 410);
    assert!(started.elapsed() < Duration::from_secs(1));
}
