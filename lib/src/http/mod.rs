//! What the HTTP functions (api, presign) share: they are `axum` routers whose routes are
//! documented by `utoipa` annotations, so a route cannot exist without its OpenAPI entry.
//!
//! - [`extract`]: the typed extractors handlers take ([`Json`], [`Path`], [`Query`],
//!   [`Caller`]), each refusing bad input with the same typed `messaging::Error` a WebSocket
//!   client would get;
//! - [`gate`]: the one authentication and rate-limit layer in front of every route;
//! - [`schema`]: request bodies checked against the schema the document publishes for them;
//! - [`reply`]: what handlers answer ([`Reply`]) and the one error body ([`ErrorBody`]),
//!   rendered from [`crate::Error`] so HTTP clients see the same codes as WebSocket clients;
//! - [`openapi`]: the answers every route can give, added to each operation of a document;
//! - [`lambda`]: runs a router on the `lambda_http` request an API Gateway HTTP API (or the
//!   local stack) hands a function.

pub mod extract;
pub mod gate;
pub mod lambda;
pub mod openapi;
pub mod reply;
pub mod schema;

pub use extract::{Caller, Json, Path, Query};
pub use gate::Gate;
pub use lambda::call;
pub use reply::{ErrorBody, ErrorDetail, Reply, method_not_allowed, no_route};

use lambda_http::{Body, Response};

use crate::error::{Error, ErrorCode};

/// Largest request body the HTTP functions accept.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The path without an API Gateway stage prefix: `/prod/v1/me` -> `/v1/me` for root `/v1/`.
pub fn without_stage<'a>(path: &'a str, root: &str) -> &'a str {
    if path.starts_with(root) {
        return path;
    }
    match path.find(root) {
        Some(i) => &path[i..],
        None => path,
    }
}

/// The bearer token of a request's headers.
pub fn bearer(headers: &lambda_http::http::HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A `lambda_http` response with `status`, a JSON body when given, and extra headers (for
/// answers given outside a router: the HTTP server of a function in Knative mode).
pub fn json_response(
    status: u16,
    body: Option<&serde_json::Value>,
    extra_headers: &[(&str, String)],
) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in extra_headers {
        builder = builder.header(*name, value.as_str());
    }
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Body::Text(json.to_string())
        }
        None => Body::Empty,
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// The `lambda_http` response for an error: its status, its JSON body, `Retry-After` when the
/// error has one, and extra headers.
pub fn error_response(error: &Error, extra_headers: &[(&str, String)]) -> Response<Body> {
    let mut headers = extra_headers.to_vec();
    if let Some(secs) = error.retry_after() {
        headers.push(("retry-after", secs.to_string()));
    }
    json_response(error.http_status(), Some(&error.to_http_body()), &headers)
}

/// A request body as `T`. Every body this API takes is a JSON object: an empty body, malformed
/// JSON (`malformed_json`), JSON of another type (an array would fill a struct's fields by
/// position), or an object that breaks `T`'s published schema ([`schema::check`]) is a 400 that
/// says which.
pub fn json_body<T: serde::de::DeserializeOwned + utoipa::ToSchema + 'static>(
    body: &[u8],
) -> crate::Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("a JSON request body is required"));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::client(ErrorCode::MalformedJson, format!("request body: {e}")))?;
    if !value.is_object() {
        return Err(Error::invalid(format!(
            "the request body must be a JSON object, not {}",
            json_type(&value)
        )));
    }
    schema::check::<T>(&value)?;
    serde_json::from_value(value).map_err(|e| Error::invalid(format!("request body: {e}")))
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
