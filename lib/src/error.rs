//! One error type for every function, and the one place that maps it to what clients see.
//!
//! Handlers return [`Error`]. WebSocket routes turn it into an `error` frame with
//! [`Error::to_frame`]; HTTP routes into a status and JSON body with [`Error::http_status`] and
//! [`Error::to_http_body`]. Internal failures (Redis, MongoDB, AWS) are logged with their details and
//! shown to clients only as `internal` with no details, so nothing private leaks.

use crate::protocol::{FrameError, ServerFrame};

/// The wire codes live with the protocol (they are part of it); their mapping to HTTP is here.
pub use crate::protocol::ErrorCode;

impl ErrorCode {
    /// HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::MalformedJson | Self::UnknownType | Self::InvalidRequest => 400,
            Self::Unauthenticated | Self::InvalidToken | Self::TokenExpired => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::IdempotencyConflict | Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// Every failure a handler can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client mistake, with a code and an explanation safe to show.
    #[error("{message}")]
    Client {
        /// What kind of mistake.
        code: ErrorCode,
        /// Explanation for the client.
        message: String,
    },
    /// Too many requests.
    #[error("rate limit exceeded, retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the window resets.
        retry_after_secs: u64,
    },
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// MongoDB failed.
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// A dependency did not answer within its deadline (a stalled or unreachable server).
    #[error("{context}: no answer within {} ms", after.as_millis())]
    Timeout {
        /// Which dependency.
        context: &'static str,
        /// The deadline that passed.
        after: std::time::Duration,
    },
    /// The work is being done elsewhere, or cannot be done yet: ask again after a while.
    #[error("{context}: {detail} (retry in {retry_after_secs} s)")]
    RetryLater {
        /// What is busy.
        context: &'static str,
        /// Why (logged, never shown).
        detail: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// Another dependency failed (gateway, broker, S3, configuration at run time).
    #[error("{context}: {detail}")]
    Dependency {
        /// Which dependency.
        context: &'static str,
        /// What happened (logged, never shown).
        detail: String,
    },
}

/// What `retry_after` says when a dependency is unavailable: long enough for a restarting server
/// or a failover, short enough that a person barely notices.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A client error with this code and message.
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Client {
            code,
            message: message.into(),
        }
    }

    /// `invalid_request` with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::client(ErrorCode::InvalidRequest, message)
    }

    /// `forbidden` with this message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::client(ErrorCode::Forbidden, message)
    }

    /// `not_found` with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(ErrorCode::NotFound, message)
    }

    /// A failure of a dependency other than Redis or MongoDB.
    pub fn dependency(context: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Dependency {
            context,
            detail: detail.to_string(),
        }
    }

    /// `dependency` did not answer within `after`.
    pub fn timeout(context: &'static str, after: std::time::Duration) -> Self {
        Self::Timeout { context, after }
    }

    /// `unavailable`, to be asked again after `after` (e.g. work another worker holds a lease
    /// on).
    pub fn retry_later(
        context: &'static str,
        detail: impl Into<String>,
        after: std::time::Duration,
    ) -> Self {
        Self::RetryLater {
            context,
            detail: detail.into(),
            retry_after_secs: after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// The code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Client { code, .. } => *code,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Redis(e) if e.is_timeout() || e.is_connection_dropped() => ErrorCode::Unavailable,
            Self::Mongo(e) if is_mongo_unavailable(e) => ErrorCode::Unavailable,
            Self::Redis(_) | Self::Mongo(_) => ErrorCode::Internal,
            Self::Dependency { .. } | Self::Timeout { .. } | Self::RetryLater { .. } => {
                ErrorCode::Unavailable
            }
        }
    }

    /// The message clients see: the explanation for client errors, a generic line otherwise.
    pub fn public_message(&self) -> String {
        match self {
            Self::Client { message, .. } => message.clone(),
            Self::RateLimited { .. } => self.to_string(),
            _ => match self.code() {
                ErrorCode::Unavailable => {
                    "a backend service is unavailable; retry with the same idempotency key".into()
                }
                _ => "internal error; retry with the same idempotency key".into(),
            },
        }
    }

    /// Whether retrying the same request or event can never succeed (a client error: invalid,
    /// forbidden, unknown, conflicting), as opposed to a transient failure (a dependency down or
    /// slow, a rate limit, work in progress elsewhere). Events that fail permanently go to the
    /// dead letters at once; transient failures are retried.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Client { .. })
    }

    /// Whether this is the server's fault (logged at error level) rather than the client's.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::Mongo(_) | Self::Dependency { .. } | Self::Timeout { .. }
        )
    }

    /// Seconds to wait before retrying: the rate limit's window, or a short pause when a
    /// dependency is unavailable (retry then with the same idempotency key).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs }
            | Self::RetryLater {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ if self.code() == ErrorCode::Unavailable => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The `error` frame for a WebSocket client.
    pub fn to_frame(&self, client_message_id: Option<String>) -> ServerFrame {
        ServerFrame::Error {
            code: self.code(),
            message: self.public_message(),
            client_message_id,
            retry_after: self.retry_after(),
        }
    }

    /// The HTTP status for an HTTP client.
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }

    /// The JSON body for an HTTP client: `{"error": {"code", "message", "retry_after"?}}`.
    pub fn to_http_body(&self) -> serde_json::Value {
        serde_json::to_value(crate::http::ErrorBody::of(self)).unwrap_or_default()
    }
}

/// Under Lambda, the error's code is its `errorType` (`invalid_request`, `unavailable`, ...), so
/// alarms and filters can match it; the message is the full one (it goes to the logs and to the
/// invoker, never to a client).
impl From<Error> for lambda_runtime::Diagnostic {
    fn from(error: Error) -> Self {
        lambda_runtime::Diagnostic {
            error_type: error.code().to_string(),
            error_message: error.to_string(),
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Malformed(detail) => Self::client(
                ErrorCode::MalformedJson,
                format!("frame is not valid JSON: {detail}"),
            ),
            FrameError::UnknownType(kind) => Self::client(
                ErrorCode::UnknownType,
                format!("unknown frame type `{kind}`"),
            ),
            FrameError::Invalid(detail) => Self::invalid(detail),
        }
    }
}

fn is_mongo_unavailable(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *e.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}
