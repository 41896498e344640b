//! The one layer in front of every documented route of an HTTP function: it verifies the bearer
//! token and the operator key, charges the request to its rate limit (per user with a token, per
//! client address without one), hands the handler a [`Caller`], adds `X-RateLimit-Remaining`,
//! and logs one line per request with its route, status and error code.
//!
//! A refused token is not refused here: routes that need no token (sign-in) still work, and
//! routes that need one answer the token's own error (`invalid_token`, `token_expired`) through
//! [`Caller::user`]. Routes added after the gate (the documents) are neither limited nor
//! authenticated: tools fetch them freely, and they cost nothing.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lambda_http::http::HeaderValue;

use super::extract::Caller;
use crate::auth::JwtVerifier;
use crate::error::ErrorCode;
use crate::realtime::{RateLimit, RealtimeState};
use crate::telemetry::hashed_id;

/// A rate limit and the Redis scope its counters live in.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Counter scope (e.g. `api`, `api-anon`, `media`).
    pub scope: &'static str,
    /// Requests per window.
    pub limit: RateLimit,
}

/// How an HTTP function admits requests.
#[derive(Clone)]
pub struct Gate {
    jwt: JwtVerifier,
    realtime: Arc<dyn RealtimeState>,
    operator_key: Option<String>,
    user: Budget,
    anonymous: Option<Budget>,
}

impl Gate {
    /// Verifies tokens with `jwt` and charges each user's requests to `user` in `realtime`.
    /// Without [`Gate::anonymous`], requests without a token pass uncharged (every route of
    /// such a function refuses them).
    pub fn new(jwt: JwtVerifier, realtime: Arc<dyn RealtimeState>, user: Budget) -> Self {
        Self {
            jwt,
            realtime,
            operator_key: None,
            user,
            anonymous: None,
        }
    }

    /// Charges requests without a token to `budget`, per client address.
    pub fn anonymous(mut self, budget: Budget) -> Self {
        self.anonymous = Some(budget);
        self
    }

    /// Accepts `key` in `X-Operator-Key` as operator credentials (charged to the user budget,
    /// as the subject `operator`).
    pub fn operator_key(mut self, key: Option<String>) -> Self {
        self.operator_key = key;
        self
    }

    /// Who is calling.
    fn caller(&self, request: &Request) -> Caller {
        let headers = request.headers();
        let (claims, token_error) = match super::bearer(headers) {
            Some(token) => match self.jwt.verify(token) {
                Ok(claims) => (Some(claims), None),
                Err(e) => (None, Some((e.code(), e.public_message()))),
            },
            None => (None, None),
        };
        let operator_key = match (&self.operator_key, headers.get("x-operator-key")) {
            (Some(expected), Some(given)) => given
                .to_str()
                .is_ok_and(|given| same_secret(expected, given)),
            _ => false,
        };
        Caller {
            claims,
            token_error,
            operator_key,
            client_ip: client_ip(request),
        }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state(gate, admit)`, as a route layer).
pub async fn admit(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let caller = gate.caller(&request);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let charge = match (&caller.claims, caller.operator_key, gate.anonymous) {
        (Some(claims), _, _) => Some((gate.user, claims.sub.clone())),
        (None, true, _) => Some((gate.user, "operator".to_string())),
        (None, false, Some(budget)) => Some((budget, format!("ip:{}", caller.client_ip))),
        (None, false, None) => None,
    };
    let remaining = match charge {
        None => None,
        Some((budget, subject)) => {
            let decision = gate
                .realtime
                .rate_limit(budget.scope, &subject, budget.limit, crate::clock::now_ms())
                .await
                .and_then(|d| d.check());
            match decision {
                Ok(remaining) => Some(remaining),
                Err(e) => {
                    tracing::info!(%method, %route, code = %e.code(), "request refused");
                    return e.into_response();
                }
            }
        }
    };
    let who = caller
        .claims
        .as_ref()
        .map(|c| hashed_id(&c.sub))
        .unwrap_or_default();
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some(remaining) = remaining {
        response
            .headers_mut()
            .insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    }
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    match response.extensions().get::<ErrorCode>() {
        Some(code) => {
            tracing::info!(%method, %route, status, %code, user = %who, ms, "request refused")
        }
        None => tracing::info!(%method, %route, status, user = %who, ms, "request served"),
    }
    response
}

/// The client's address: API Gateway's `sourceIp`, else the first `X-Forwarded-For` hop.
fn client_ip(request: &Request) -> String {
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) =
        request
            .extensions()
            .get::<lambda_http::request::RequestContext>()
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

/// Constant-time comparison of two secrets.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
