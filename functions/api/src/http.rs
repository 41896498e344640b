//! The HTTP plumbing of the api function: one parsed request ([`Call`]), one answer ([`Reply`]),
//! and the mapping of errors to status codes (through `messaging::Error`, the one place that
//! knows it).

use std::collections::HashMap;

use lambda_http::{Body, Request, RequestExt, Response};
use messaging::auth::{Claims, OPERATOR_ROLE};
use messaging::{Error, ErrorCode, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One request, parsed: path parameters, query, body, caller.
pub struct Call {
    /// Path parameters by name.
    pub params: HashMap<&'static str, String>,
    /// Query parameters (first value of each).
    pub query: HashMap<String, String>,
    /// Raw body.
    pub body: Vec<u8>,
    /// The verified bearer token, if one was sent.
    pub claims: Option<Claims>,
    /// Why the bearer token was refused, if one was sent and refused.
    pub token_error: Option<Error>,
    /// Whether the request carries the operator key.
    pub operator_key: bool,
    /// Client address, for limits on token-less routes.
    pub client_ip: String,
}

impl Call {
    /// The authenticated user's claims; `unauthenticated` (or the token's own error) otherwise.
    pub fn user(&self) -> Result<&Claims> {
        match (&self.claims, &self.token_error) {
            (Some(c), _) => Ok(c),
            (None, Some(e)) => Err(Error::client(e.code(), e.public_message())),
            (None, None) => Err(Error::client(
                ErrorCode::Unauthenticated,
                "this route needs `Authorization: Bearer <access token>`",
            )),
        }
    }

    /// The authenticated user's id.
    pub fn user_id(&self) -> Result<&str> {
        self.user().map(|c| c.sub.as_str())
    }

    /// Whether the caller is an operator (operator key, or a token with the operator role).
    pub fn is_operator(&self) -> bool {
        self.operator_key
            || self
                .claims
                .as_ref()
                .is_some_and(|c| c.has_role(OPERATOR_ROLE))
    }

    /// Fails unless the caller is an operator.
    pub fn operator(&self) -> Result<()> {
        if self.is_operator() {
            return Ok(());
        }
        if self.claims.is_none() {
            self.user()?;
        }
        Err(Error::forbidden(
            "operators only: send `X-Operator-Key` or a token with the `operator` role",
        ))
    }

    /// A path parameter.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// A query parameter, if present and not empty.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A numeric query parameter.
    pub fn query_u64(&self, name: &str) -> Result<Option<u64>> {
        self.query(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::invalid(format!("query parameter `{name}` must be a whole number"))
                })
            })
            .transpose()
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
    /// JSON body, if any.
    pub body: Option<serde_json::Value>,
}

impl Reply {
    /// `status` with `body` as JSON.
    pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Self> {
        Ok(Self {
            status,
            body: Some(serde_json::to_value(body).map_err(|e| Error::dependency("json", e))?),
        })
    }

    /// 200 with `body`.
    pub fn ok<T: Serialize>(body: &T) -> Result<Self> {
        Self::json(200, body)
    }

    /// 204 No Content.
    pub fn no_content() -> Result<Self> {
        Ok(Self {
            status: 204,
            body: None,
        })
    }
}

pub use messaging::http::{bearer, body_bytes};

/// Query parameters: from the URI, else from what API Gateway parsed.
pub fn query_of(request: &Request) -> HashMap<String, String> {
    let mut query = HashMap::new();
    if let Some(raw) = request.uri().query() {
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            query
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
    }
    if query.is_empty() {
        let parsed = request.query_string_parameters();
        for (k, _) in parsed.iter() {
            if let Some(v) = parsed.first(k) {
                query.insert(k.to_string(), v.to_string());
            }
        }
    }
    query
}

/// The client's address: API Gateway's `sourceIp`, else the first `X-Forwarded-For` hop.
pub fn client_ip(request: &Request) -> String {
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) =
        request.request_context_ref()
        && let Some(ip) = &c.http.source_ip
    {
        return ip.clone();
    }
    request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Builds the HTTP response for a reply.
pub fn respond(reply: Reply, extra_headers: &[(&str, String)]) -> Response<Body> {
    messaging::http::json_response(reply.status, reply.body.as_ref(), extra_headers)
}

/// The HTTP response for an error: its status, JSON body, and `Retry-After` on 429.
pub fn error_response(error: &Error) -> Response<Body> {
    messaging::http::error_response(error, &[])
}

/// Constant-time comparison of two secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
