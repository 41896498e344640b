//! An HTTP API (API Gateway HTTP API semantics) in front of `lambda_http` functions.
//!
//! Each request becomes the `lambda_http::Request` a Lambda behind an HTTP API would get: method,
//! path, headers, body, and the query string as `query_string_parameters()` (a request
//! extension, as `lambda_http` sets it). The function's `Response` goes back as it is.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lambda_http::RequestExt;

/// Largest request body accepted (API Gateway HTTP APIs accept 10 MB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// A `lambda_http` function.
#[async_trait::async_trait]
pub trait HttpFunction: Send + Sync {
    /// Handles one request.
    async fn call(&self, request: lambda_http::Request)
    -> lambda_http::Response<lambda_http::Body>;
}

#[async_trait::async_trait]
impl<F, Fut> HttpFunction for F
where
    F: Fn(lambda_http::Request) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = lambda_http::Response<lambda_http::Body>> + Send,
{
    async fn call(
        &self,
        request: lambda_http::Request,
    ) -> lambda_http::Response<lambda_http::Body> {
        self(request).await
    }
}

/// A path as it may be logged: the API's fixed words stay, every other segment (an id, a name:
/// possibly personal data) becomes `{id}`, so `/v1/users/alice` logs as `/v1/users/{id}`.
pub fn redacted(path: &str) -> String {
    const WORDS: &[&str] = &[
        "",
        "v1",
        "me",
        "auth",
        "users",
        "conversations",
        "groups",
        "agents",
        "devices",
        "media",
        "participants",
        "admins",
        "leave",
        "messages",
        "heartbeat",
        "export",
        "register",
        "verify",
        "login",
        "refresh",
        "logout",
        "resend",
        "recover",
        "openapi.json",
        "download",
        "complete",
        "upload",
        "thumbnail",
        "healthz",
    ];
    path.split('/')
        .map(|segment| {
            if WORDS.contains(&segment) {
                segment
            } else {
                "{id}"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A router sending every request to `function`, with a REPORT log line per invocation, and
/// answering CORS as the SAM template's `CorsConfiguration` makes API Gateway answer (preflights
/// never reach the function): a web client served from another origin calls it from a browser.
pub fn router(name: &'static str, function: Arc<dyn HttpFunction>) -> Router {
    Router::new()
        .fallback(invoke)
        .with_state((name, function))
        .layer(cors())
}

/// `AllowOrigins` `*` (the template's default `CorsAllowedOrigins`), its methods and headers,
/// `MaxAge` 3600.
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("authorization"),
            HeaderName::from_static("content-type"),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([HeaderName::from_static("retry-after")])
        .max_age(std::time::Duration::from_secs(3600))
}

async fn invoke(
    State((name, function)): State<(&'static str, Arc<dyn HttpFunction>)>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    request: Request,
) -> Response {
    let started = std::time::Instant::now();
    let (mut parts, body) = request.into_parts();
    // API Gateway tells functions the client address this way.
    if let Ok(value) = axum::http::HeaderValue::from_str(&peer.ip().to_string()) {
        parts.headers.insert("x-forwarded-for", value);
    }
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request body over 10 MB").into_response();
        }
    };
    let query: std::collections::HashMap<String, Vec<String>> = {
        let mut map: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (k, v) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        map
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        }
    };
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let request = lambda_http::Request::from_parts(parts, body).with_query_string_parameters(query);
    let response = function.call(request).await;
    tracing::info!(
        target: "report",
        function = name,
        method = %method,
        path = %redacted(&path),
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "REPORT"
    );
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Empty => AxumBody::empty(),
        lambda_http::Body::Text(t) => AxumBody::from(t),
        lambda_http::Body::Binary(b) => AxumBody::from(b),
        _ => AxumBody::empty(),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn logged_paths_carry_no_ids() {
        assert_eq!(
            super::redacted("/v1/users/alice@example.com"),
            "/v1/users/{id}"
        );
        assert_eq!(
            super::redacted("/v1/groups/g-1/participants/bob"),
            "/v1/groups/{id}/participants/{id}"
        );
        assert_eq!(super::redacted("/openapi.json"), "/openapi.json");
    }
}
