//! The typed extractors of the HTTP handlers. Each wraps `axum`'s own and turns its rejection
//! into a typed [`Error`] (`invalid_request`, `malformed_json`, `payload_too_large`), so a bad
//! request gets the same [`super::ErrorBody`] as every other refusal, never a plain-text 4xx.
//!
//! - [`Json`]: a JSON object body (any other JSON type is a 400), at most
//!   [`super::MAX_BODY_BYTES`]; `Option<Json<T>>` for a body that may be left out or `null`;
//! - [`Path`], [`Query`]: path and query parameters;
//! - [`Caller`]: who is calling, as the [`super::gate`] established it.

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use lambda_http::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::{Claims, OPERATOR_ROLE};
use crate::error::{Error, ErrorCode};

/// A JSON object request body, checked against `T`'s published schema and deserialized into `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

async fn body_bytes(request: Request) -> crate::Result<axum::body::Bytes> {
    axum::body::to_bytes(request.into_body(), super::MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            Error::client(
                ErrorCode::PayloadTooLarge,
                format!("request body exceeds {} bytes", super::MAX_BODY_BYTES),
            )
        })
}

impl<S: Send + Sync, T: DeserializeOwned + utoipa::ToSchema + 'static> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Error> {
        let bytes = body_bytes(request).await?;
        super::json_body(&bytes).map(Json)
    }
}

/// An empty body, or JSON `null`, is `None` (the schema of an optional body is `T` or `null`);
/// anything else must be a valid [`Json`] body.
impl<S: Send + Sync, T: DeserializeOwned + utoipa::ToSchema + 'static> OptionalFromRequest<S>
    for Json<T>
{
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Option<Self>, Error> {
        let bytes = body_bytes(request).await?;
        let text = bytes.trim_ascii();
        if text.is_empty() || text == b"null" {
            return Ok(None);
        }
        super::json_body(&bytes).map(|body| Some(Json(body)))
    }
}

/// Path parameters (`{name}` segments of the route), percent-decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| Error::invalid(format!("path: {}", rejection.body_text())))
    }
}

/// Query parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| {
                let text = rejection.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Error::invalid(format!("query: {text}"))
            })
    }
}

/// Who is calling: the verified access token (or why it was refused), whether the operator key
/// came with the request, and the client's address (for limits on token-less routes).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The verified bearer token, if one was sent.
    pub claims: Option<Claims>,
    /// Why the bearer token was refused, if one was sent and refused: its code and message.
    pub token_error: Option<(ErrorCode, String)>,
    /// Whether the request carries the operator key.
    pub operator_key: bool,
    /// The client's address.
    pub client_ip: String,
}

impl Caller {
    /// The authenticated user's claims; `unauthenticated` (or the token's own error) otherwise.
    pub fn user(&self) -> crate::Result<&Claims> {
        match (&self.claims, &self.token_error) {
            (Some(claims), _) => Ok(claims),
            (None, Some((code, message))) => Err(Error::client(*code, message.clone())),
            (None, None) => Err(Error::client(
                ErrorCode::Unauthenticated,
                "this route needs `Authorization: Bearer <access token>`",
            )),
        }
    }

    /// The authenticated user's id.
    pub fn user_id(&self) -> crate::Result<&str> {
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

    /// Fails unless the caller is an operator (`unauthenticated` without any credentials).
    pub fn operator(&self) -> crate::Result<()> {
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
}

/// The [`Caller`] the gate put in the request's extensions; a route outside the gate is a bug,
/// answered `internal`.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::dependency("http", "route is not behind the gate"))
    }
}
