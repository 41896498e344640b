//! The HTTP plumbing of the presign function: one parsed request ([`Call`]), one answer
//! ([`Reply`]), and the mapping of errors to status codes (through `messaging::Error`, the one
//! place that knows it). The same shapes as the api function's, so both answer alike.

use std::collections::HashMap;

use lambda_http::{Body, Response};
use messaging::auth::Claims;
use messaging::{Error, ErrorCode, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest request body accepted (an encrypted preview, base64, fits with room to spare).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One request, parsed: path parameters, body, caller.
pub struct Call {
    /// Path parameters by name.
    pub params: HashMap<&'static str, String>,
    /// Raw body.
    pub body: Vec<u8>,
    /// The verified bearer token, if one was sent.
    pub claims: Option<Claims>,
    /// Why the bearer token was refused, if one was sent and refused.
    pub token_error: Option<Error>,
}

impl Call {
    /// The authenticated user's id; `unauthenticated` (or the token's own error) otherwise.
    pub fn user_id(&self) -> Result<&str> {
        match (&self.claims, &self.token_error) {
            (Some(c), _) => Ok(c.sub.as_str()),
            (None, Some(e)) => Err(Error::client(e.code(), e.public_message())),
            (None, None) => Err(Error::client(
                ErrorCode::Unauthenticated,
                "this route needs `Authorization: Bearer <access token>`",
            )),
        }
    }

    /// A path parameter.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Whether the body is empty (or only whitespace).
    pub fn body_is_empty(&self) -> bool {
        self.body.iter().all(u8::is_ascii_whitespace)
    }

    /// The JSON body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        messaging::http::json_body(&self.body)
    }
}

/// What a handler answers.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

impl Reply {
    /// `status` with `body` as JSON.
    pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Self> {
        Ok(Self {
            status,
            body: serde_json::to_value(body).map_err(|e| Error::dependency("json", e))?,
        })
    }
}

pub use messaging::http::{bearer, body_bytes};

/// Answers carry presigned URLs: never cache them anywhere.
const NO_STORE: (&str, &str) = ("cache-control", "no-store");

/// Builds the HTTP response for a status, JSON body and extra headers (never cached).
pub fn respond(
    status: u16,
    body: &serde_json::Value,
    extra_headers: &[(&str, String)],
) -> Response<Body> {
    let mut headers = vec![(NO_STORE.0, NO_STORE.1.to_string())];
    headers.extend_from_slice(extra_headers);
    messaging::http::json_response(status, Some(body), &headers)
}

/// The HTTP response for an error: its status, JSON body, and `Retry-After` on 429 (never cached).
pub fn error_response(error: &Error, extra_headers: &[(&str, String)]) -> Response<Body> {
    let mut headers = vec![(NO_STORE.0, NO_STORE.1.to_string())];
    headers.extend_from_slice(extra_headers);
    messaging::http::error_response(error, &headers)
}
