//! How a function binary runs: under AWS Lambda, or as a plain HTTP server (Knative, Kubernetes).
//!
//! The choice is made at start from the environment: when `AWS_LAMBDA_RUNTIME_API` is set the
//! binary talks to the Lambda runtime API (`lambda_runtime` / `lambda_http`); otherwise it
//! listens on `0.0.0.0:$PORT` (default 8080), which is what a Knative Service expects. Either
//! way the same `handle` runs with the same event types.
//!
//! - [`run_cloudevent_function`]: CloudEvent consumers (store, agent-response, push). Under
//!   Lambda the payload is an EventBridge event whose `detail` is a structured CloudEvent (or a
//!   bare structured CloudEvent for direct invokes and schedules); a handler error is a Lambda
//!   error, so EventBridge/Lambda retry and then dead-letter. Over HTTP it is a Knative
//!   subscriber: `POST /` in binary or structured mode, `200` with the reply event in binary
//!   mode, `202` without one, the error's status and JSON body on failure (Knative retries 5xx,
//!   429 and 404/408/409 and dead-letters the rest).
//! - [`run_websocket_function`]: WebSocket routes (connect, message, disconnect). Over HTTP:
//!   `POST /` with an `ApiGatewayWebsocketProxyRequest` JSON, answered with the
//!   `ApiGatewayProxyResponse` JSON (what the Kubernetes gateway's remote integration calls).
//! - [`run_http_function`]: HTTP functions (api, presign). Over HTTP every request is handed to
//!   the handler as a `lambda_http::Request`.
//! - [`run_authorizer_function`]: the WebSocket API's `$connect` authorizer. Under Lambda a
//!   refusal is the error `Unauthorized` (API Gateway's 401); over HTTP it is a 401 with that
//!   message, and an answer is the policy JSON.
//!
//! Every HTTP server answers `GET /healthz` (for probes) and stops gracefully on SIGTERM.
//!
//! [`start`] gives a binary's `main` the tokio runtime its mode needs: one thread under Lambda
//! (a sandbox hands its process one event at a time), every core as an HTTP server.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cloudevents::{AttributesReader, Event};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::Source as _;
use crate::error::Error;
use crate::events::EventPublisher;

/// Environment variable the Lambda runtime sets; its presence selects Lambda mode.
pub const LAMBDA_RUNTIME_API_VAR: &str = "AWS_LAMBDA_RUNTIME_API";
/// Port of the HTTP mode when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 8080;

/// Where a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Under the Lambda runtime API.
    Lambda,
    /// As an HTTP server on this port.
    Http(u16),
}

/// The mode `src` selects: Lambda when `AWS_LAMBDA_RUNTIME_API` is set, else HTTP on `$PORT`.
pub fn mode_from(src: &impl crate::config::Source) -> Result<Mode, crate::config::ConfigError> {
    if src.get(LAMBDA_RUNTIME_API_VAR).is_some() {
        return Ok(Mode::Lambda);
    }
    match src.get("PORT") {
        None => Ok(Mode::Http(DEFAULT_PORT)),
        Some(port) => {
            port.trim()
                .parse()
                .map(Mode::Http)
                .map_err(|e| crate::config::ConfigError::Invalid {
                    var: "PORT",
                    reason: format!("`{port}`: {e}"),
                })
        }
    }
}

/// The mode of this process.
pub fn mode() -> Result<Mode, crate::config::ConfigError> {
    mode_from(&crate::config::Env)
}

/// Runs a function binary's `main` to its end on the tokio runtime its mode needs.
///
/// Under Lambda a current-thread runtime: the sandbox hands its process one event at a time,
/// so the Runtime API loop, the handler and the clients' background tasks (connection pools,
/// the MongoDB monitor) can share one thread, and no reply from Redis, MongoDB or the
/// management API has to wake a second one (with the multi-thread runtime the loop ran on the
/// main thread and the clients' tasks on workers: every reply crossed threads, which `cold-start`
/// measures as CPU per warm event). As an HTTP server (Knative, Kubernetes), which serves
/// concurrent requests, tokio's multi-thread runtime on every core. A `PORT` that does not parse
/// is reported by the `run_*` function, as before.
///
/// So under Lambda a handler must not block its thread: slow work goes to `spawn_blocking`
/// (password hashing and thumbnails do), and `block_in_place` would panic. Serving several
/// events at once (`lambda_runtime::run_concurrent`, Lambda Managed Instances) would need the
/// multi-thread runtime back.
pub fn start<F: Future>(main: F) -> F::Output {
    runtime_for(mode().ok()).block_on(main)
}

/// The tokio runtime of a function running in `mode` (`None`: a mode not understood, which
/// the `run_*` functions report).
fn runtime_for(mode: Option<Mode>) -> tokio::runtime::Runtime {
    let mut builder = match mode {
        Some(Mode::Lambda) => tokio::runtime::Builder::new_current_thread(),
        Some(Mode::Http(_)) | None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Builds a function's dependencies (`build`, from the environment). When that fails the
/// reason is reported where an operator looks for it: under Lambda to the Runtime API's
/// `/runtime/init/error` (with an `errorType`: `invalid_configuration`, `unavailable`,
/// `init_failed`), else to the log; then the process exits with status 1 at once, without
/// running destructors (a half-started driver's background tasks would panic while the runtime
/// shuts down).
pub async fn init<T>(build: impl Future<Output = anyhow::Result<T>>) -> T {
    match build.await {
        Ok(dependencies) => dependencies,
        Err(error) => {
            let error_type = init_error_type(&error);
            let message = format!("{error:#}");
            tracing::error!(error_type, error = %message, "cannot start");
            eprintln!("cannot start ({error_type}): {message}");
            if let Some(api) = crate::config::Env.get(LAMBDA_RUNTIME_API_VAR) {
                report_init_error(&api, error_type, &message).await;
            }
            std::process::exit(1);
        }
    }
}

/// The `errorType` of an initialisation failure.
fn init_error_type(error: &anyhow::Error) -> &'static str {
    for cause in error.chain() {
        if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
            return "invalid_configuration";
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return if e.code() == crate::ErrorCode::Unavailable || e.is_server_fault() {
                "unavailable"
            } else {
                "invalid_configuration"
            };
        }
    }
    "init_failed"
}

/// POSTs an initialisation error to the Lambda Runtime API (best effort: Lambda also sees the
/// exit).
async fn report_init_error(api: &str, error_type: &str, message: &str) {
    let body = serde_json::json!({
        "errorMessage": message,
        "errorType": error_type,
        "stackTrace": [],
    });
    let sent = reqwest::Client::new()
        .post(format!("http://{api}/2018-06-01/runtime/init/error"))
        .header("Lambda-Runtime-Function-Error-Type", error_type)
        .json(&body)
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    if let Err(e) = sent {
        eprintln!("could not report the init error to the Runtime API: {e}");
    }
}

/// Listens on `port` on every interface (the HTTP mode of the functions and agents).
pub async fn listen(port: u16) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?;
    tracing::info!(address = %listener.local_addr()?, "listening (HTTP mode)");
    Ok(listener)
}

/// Serves `router` on `listener` until SIGTERM or Ctrl-C, then drains in-flight requests.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(term) => { term.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

async fn healthz() -> &'static str {
    "ok"
}

/// A JSON error response: the error's status, its public JSON body, `Retry-After` for rate limits.
pub fn error_response(error: &Error) -> Response {
    if error.is_server_fault() {
        tracing::error!(error = %error, "function failed");
    } else {
        tracing::warn!(code = ?error.code(), error = %error, "event refused");
    }
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(error.to_http_body())).into_response();
    if let Some(secs) = error.retry_after()
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// CloudEvent functions

/// Runs a CloudEvent consumer under Lambda or as a Knative-style HTTP subscriber (see the
/// module documentation). The handler may return a reply event: over HTTP it is the response
/// (the broker publishes it); under Lambda it is published to the configured events adapter
/// ([`crate::eventbridge::publisher_from_env`]) and also returned as the invocation's result.
///
/// Retries follow the error: a transient failure (a dependency down or slow, work in progress
/// elsewhere) is an invocation error (Lambda retries, then sends it to the on-failure
/// destination) or a 5xx/429 (Knative retries); a permanent one (an invalid event, an unknown
/// conversation, a forbidden answer) is recorded in `dead_letters` at once with its reason and
/// the invocation succeeds, or, over HTTP, is a 4xx Knative does not retry (404 and 409, which
/// Knative retries, become 422), and the Broker dead-letters it.
pub async fn run_cloudevent_function<F, Fut>(
    function: &'static str,
    dead_letters: Arc<dyn crate::store::DeadLetterStore>,
    handler: F,
) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::Result<Option<Event>>> + Send + 'static,
{
    match mode()? {
        Mode::Lambda => run_cloudevent_lambda(function, dead_letters, handler).await,
        Mode::Http(port) => {
            let listener = listen(port).await?;
            serve(listener, cloudevent_router(handler)).await?;
            Ok(())
        }
    }
}

async fn run_cloudevent_lambda<F, Fut>(
    function: &'static str,
    dead_letters: Arc<dyn crate::store::DeadLetterStore>,
    handler: F,
) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::Result<Option<Event>>> + Send + 'static,
{
    let replies: Arc<tokio::sync::OnceCell<Arc<dyn EventPublisher>>> = Arc::default();
    let handler = Arc::new(handler);
    lambda_runtime::run(service_fn(move |invocation: LambdaEvent<Value>| {
        let replies = replies.clone();
        let handler = handler.clone();
        let dead_letters = dead_letters.clone();
        async move {
            let payload = invocation.payload;
            let outcome = match crate::eventbridge::event_from_invocation(payload.clone()) {
                Ok(event) => {
                    tracing::info!(event_type = %event.ty(), event_id = %event.id(), "event received");
                    let kind = event.ty().to_string();
                    match handler(event).await {
                        Ok(reply) => Ok(reply),
                        Err(e) => Err((kind, e)),
                    }
                }
                Err(e) => Err(("unreadable".to_string(), e)),
            };
            match outcome {
                Ok(None) => Ok::<Value, lambda_runtime::Diagnostic>(Value::Null),
                Ok(Some(reply)) => {
                    let publisher = replies
                        .get_or_try_init(crate::eventbridge::publisher_from_env)
                        .await
                        .map_err(|e| lambda_runtime::Diagnostic {
                            error_type: "unavailable".into(),
                            error_message: format!("{e:#}"),
                        })?;
                    let detail = crate::eventbridge::to_detail(&reply).map_err(logged)?;
                    publisher.publish(reply).await.map_err(logged)?;
                    Ok(detail)
                }
                Err((kind, e)) if e.is_permanent() => {
                    // Retrying cannot help: dead-letter it now, with the reason.
                    let dead = crate::model::DeadLetter::new(
                        function,
                        kind,
                        payload,
                        e.to_string(),
                        1,
                    );
                    tracing::warn!(code = ?e.code(), error = %e, dead_letter = %dead.dead_letter_id, "event refused for good: dead-lettered");
                    dead_letters.insert_dead_letter(&dead).await.map_err(logged)?;
                    Ok(serde_json::json!({
                        "dead_letter": dead.dead_letter_id,
                        "error": {"code": e.code(), "message": e.to_string()},
                    }))
                }
                Err((_, e)) => Err(logged(e)),
            }
        }
    }))
    .await
}

/// Logs an invocation error and turns it into what the Runtime API is told (`errorType` = the
/// error's code).
fn logged(error: Error) -> lambda_runtime::Diagnostic {
    if error.is_server_fault() {
        tracing::error!(error = %error, "function failed");
    } else {
        tracing::warn!(code = ?error.code(), error = %error, "event refused");
    }
    lambda_runtime::Diagnostic::from(error)
}

/// The HTTP subscriber of [`run_cloudevent_function`]: `POST /` and `GET /healthz`.
pub fn cloudevent_router<F, Fut>(handler: F) -> Router
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::Result<Option<Event>>> + Send + 'static,
{
    let handler: Arc<F> = Arc::new(handler);
    Router::new()
        .route("/", post(receive_cloudevent::<F, Fut>))
        .route("/healthz", get(healthz))
        .with_state(handler)
}

async fn receive_cloudevent<F, Fut>(
    State(handler): State<Arc<F>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = crate::Result<Option<Event>>> + Send + 'static,
{
    let event = match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
        Ok(event) => event,
        Err(e) => return error_response(&Error::invalid(format!("not a valid CloudEvent: {e}"))),
    };
    tracing::info!(event_type = %event.ty(), event_id = %event.id(), "event received");
    match handler(event).await {
        Ok(Some(reply)) => reply.into_response(),
        Ok(None) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            let mut response = error_response(&e);
            // Knative retries 404, 408, 409 and 429: a permanent refusal must not look like them.
            if e.is_permanent() && matches!(response.status().as_u16(), 404 | 408 | 409 | 429) {
                *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            }
            response
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket route functions

/// Runs a WebSocket route integration under Lambda (`ApiGatewayWebsocketProxyRequest` in,
/// `ApiGatewayProxyResponse` out) or as an HTTP server taking the same JSON on `POST /`.
pub async fn run_websocket_function<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(ApiGatewayWebsocketProxyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiGatewayProxyResponse> + Send + 'static,
{
    match mode()? {
        Mode::Lambda => {
            let handler = Arc::new(handler);
            lambda_runtime::run(service_fn(move |e: LambdaEvent<Value>| {
                let handler = handler.clone();
                async move {
                    Ok::<_, lambda_runtime::Diagnostic>(match websocket_event(e.payload) {
                        Ok(event) => handler(event).await,
                        Err(e) => crate::websocket::error_response(&e),
                    })
                }
            }))
            .await
        }
        Mode::Http(port) => {
            let listener = listen(port).await?;
            serve(listener, websocket_router(handler)).await?;
            Ok(())
        }
    }
}

/// An API Gateway WebSocket event from its JSON. API Gateway always sends
/// `requestContext.connectedAt`; an event without it (a hand-written test, a proxy that dropped
/// it) is read with 0 rather than refused, and anything else unreadable is a 400 answer, never a
/// failed invocation.
pub fn websocket_event(mut json: Value) -> crate::Result<ApiGatewayWebsocketProxyRequest> {
    if let Some(context) = json
        .get_mut("requestContext")
        .and_then(Value::as_object_mut)
    {
        context
            .entry("connectedAt")
            .or_insert_with(|| Value::from(0));
    }
    serde_json::from_value(json)
        .map_err(|e| Error::invalid(format!("not an API Gateway WebSocket event: {e}")))
}

/// The HTTP server of [`run_websocket_function`]: `POST /` and `GET /healthz`.
pub fn websocket_router<F, Fut>(handler: F) -> Router
where
    F: Fn(ApiGatewayWebsocketProxyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiGatewayProxyResponse> + Send + 'static,
{
    let handler: Arc<F> = Arc::new(handler);
    Router::new()
        .route("/", post(receive_websocket_event::<F, Fut>))
        .route("/healthz", get(healthz))
        .with_state(handler)
}

async fn receive_websocket_event<F, Fut>(State(handler): State<Arc<F>>, body: Bytes) -> Response
where
    F: Fn(ApiGatewayWebsocketProxyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiGatewayProxyResponse> + Send + 'static,
{
    let event = match serde_json::from_slice(&body)
        .map_err(|e| Error::invalid(format!("not JSON: {e}")))
        .and_then(websocket_event)
    {
        Ok(event) => event,
        Err(e) => return error_response(&e),
    };
    axum::Json(handler(event).await).into_response()
}

// ---------------------------------------------------------------------------------------------
// The WebSocket authorizer

/// Runs the `$connect` authorizer under Lambda or as an HTTP server taking the same JSON on
/// `POST /` (answering the policy, or 401 `{"message":"Unauthorized"}`).
pub async fn run_authorizer_function<F>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(
            crate::identity::AuthorizerRequest,
        ) -> Result<
            aws_lambda_events::apigw::ApiGatewayCustomAuthorizerResponse,
            crate::identity::AuthorizerError,
        > + Send
        + Sync
        + 'static,
{
    let handler = Arc::new(handler);
    match mode()? {
        Mode::Lambda => {
            lambda_runtime::run(service_fn(
                move |e: LambdaEvent<crate::identity::AuthorizerRequest>| {
                    let handler = handler.clone();
                    async move {
                        handler(e.payload).map_err(|refusal| lambda_runtime::Diagnostic {
                            // API Gateway answers 401 for exactly this message.
                            error_type: refusal.to_string(),
                            error_message: refusal.to_string(),
                        })
                    }
                },
            ))
            .await
        }
        Mode::Http(port) => {
            let listener = listen(port).await?;
            let router = Router::new()
                .route(
                    "/",
                    post(move |body: Bytes| {
                        let handler = handler.clone();
                        async move {
                            let request = match serde_json::from_slice(&body) {
                                Ok(request) => request,
                                Err(e) => {
                                    return error_response(&Error::invalid(format!(
                                        "not a WebSocket authorizer event: {e}"
                                    )));
                                }
                            };
                            match handler(request) {
                                Ok(policy) => axum::Json(policy).into_response(),
                                Err(refusal) => (
                                    StatusCode::UNAUTHORIZED,
                                    axum::Json(serde_json::json!({"message": refusal.to_string()})),
                                )
                                    .into_response(),
                            }
                        }
                    }),
                )
                .route("/healthz", get(healthz));
            serve(listener, router).await?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP functions

/// Runs an HTTP function under Lambda (`lambda_http`) or as an HTTP server that hands every
/// request (any method, any path except `GET /healthz`) to the handler.
pub async fn run_http_function<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(lambda_http::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = lambda_http::Response<lambda_http::Body>> + Send + 'static,
{
    match mode()? {
        Mode::Lambda => {
            let handler = Arc::new(handler);
            lambda_http::run(lambda_http::service_fn(
                move |request: lambda_http::Request| {
                    let handler = handler.clone();
                    async move { Ok::<_, lambda_http::Error>(handler(request).await) }
                },
            ))
            .await
        }
        Mode::Http(port) => {
            let listener = listen(port).await?;
            serve(listener, http_router(handler)).await?;
            Ok(())
        }
    }
}

/// The HTTP server of [`run_http_function`].
pub fn http_router<F, Fut>(handler: F) -> Router
where
    F: Fn(lambda_http::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = lambda_http::Response<lambda_http::Body>> + Send + 'static,
{
    let handler: Arc<F> = Arc::new(handler);
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(receive_http::<F, Fut>)
        .with_state(handler)
}

async fn receive_http<F, Fut>(
    State(handler): State<Arc<F>>,
    request: axum::extract::Request,
) -> Response
where
    F: Fn(lambda_http::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = lambda_http::Response<lambda_http::Body>> + Send + 'static,
{
    use lambda_http::RequestExt as _;
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return error_response(&Error::client(
                crate::ErrorCode::PayloadTooLarge,
                format!("cannot read the request body: {e}"),
            ));
        }
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        }
    };
    let mut query: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(q) = parts.uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            query
                .entry(k.into_owned())
                .or_default()
                .push(v.into_owned());
        }
    }
    let request = lambda_http::Request::from_parts(parts, body).with_query_string_parameters(query);
    let response = handler(request).await;
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Empty => axum::body::Body::empty(),
        lambda_http::Body::Text(text) => axum::body::Body::from(text),
        lambda_http::Body::Binary(bytes) => axum::body::Body::from(bytes),
        _ => axum::body::Body::empty(),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::{Mode, runtime_for};

    #[test]
    fn one_thread_under_lambda_every_core_as_an_http_server() {
        let flavor = |mode| runtime_for(mode).handle().runtime_flavor();
        assert_eq!(flavor(Some(Mode::Lambda)), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Some(Mode::Http(8080))), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(None), RuntimeFlavor::MultiThread);
    }

    #[test]
    fn the_lambda_runtime_has_timers_sockets_and_tasks_beside_main() {
        // Every outside call has a deadline (timers) over a socket, and the clients' background
        // tasks run while main waits.
        let echoed = runtime_for(Some(Mode::Lambda)).block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut socket, b"pong")
                    .await
                    .unwrap();
            });
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut answer = [0u8; 4];
            let read = tokio::io::AsyncReadExt::read_exact(&mut client, &mut answer);
            tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .expect("answered within the deadline")
                .unwrap();
            server.await.unwrap();
            answer
        });
        assert_eq!(&echoed, b"pong");
    }
}
