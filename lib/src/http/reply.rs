//! What an HTTP handler answers: a [`Reply`] (status and JSON body) or a [`crate::Error`],
//! rendered as the one [`ErrorBody`] every HTTP route documents. An error response carries its
//! [`ErrorCode`] in the response's extensions so the [`super::gate`] can log it.

use axum::response::{IntoResponse, Response};
use lambda_http::http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, ErrorCode};

/// Every error answer of the HTTP API: `{"error": {"code", "message", "retry_after"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a message safe to show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (the same codes as the WebSocket API's `error` frames).
    pub code: ErrorCode,
    /// Explanation for people.
    pub message: String,
    /// Seconds to wait before retrying (`rate_limited`, `unavailable`; also `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ErrorBody {
    /// The body of `error`.
    pub fn of(error: &Error) -> Self {
        Self {
            error: ErrorDetail {
                code: error.code(),
                message: error.public_message(),
                retry_after: error.retry_after(),
            },
        }
    }
}

/// The response for an error: its status, [`ErrorBody`], `Retry-After` when it has one. Server
/// faults are logged here, with the detail clients never see.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.is_server_fault() {
            tracing::error!(error = %self, "request failed");
        }
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(ErrorBody::of(&self))).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self.code());
        response
    }
}

/// A successful answer: a status and an optional JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<serde_json::Value>,
}

impl Reply {
    /// `status` with `body` as JSON.
    pub fn json<T: Serialize>(status: u16, body: &T) -> crate::Result<Self> {
        Ok(Self {
            status,
            body: Some(serde_json::to_value(body).map_err(|e| Error::dependency("json", e))?),
        })
    }

    /// 200 with `body`.
    pub fn ok<T: Serialize>(body: &T) -> crate::Result<Self> {
        Self::json(200, body)
    }

    /// 204 No Content.
    pub fn no_content() -> crate::Result<Self> {
        Ok(Self {
            status: 204,
            body: None,
        })
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        match self.body {
            Some(body) => (status, axum::Json(body)).into_response(),
            None => status.into_response(),
        }
    }
}

/// The fallback of an HTTP function's router: 404 `not_found` naming the path.
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Error {
    Error::not_found(format!(
        "no route {method} {}; see /openapi.json",
        uri.path()
    ))
}

/// The answer to a method a path does not take: 405 with an [`ErrorBody`] (the router adds
/// `Allow`).
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(ErrorBody::of(&Error::invalid(format!(
            "{method} is not allowed on {}; the Allow header lists what is",
            uri.path()
        )))),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_its_status_body_and_retry_after() {
        let response = Error::RateLimited {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(
            response.extensions().get::<ErrorCode>(),
            Some(&ErrorCode::RateLimited)
        );
        let body = ErrorBody::of(&Error::invalid("no"));
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "invalid_request", "message": "no"}})
        );
    }
}
