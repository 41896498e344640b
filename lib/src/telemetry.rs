//! Logging: JSON lines through `tracing`, and the one way user ids appear in logs.
//!
//! Logs never carry message content or personal data. A user id is logged only as
//! [`hashed_id`]: the first 16 hex digits of its SHA-256, enough to follow one user through the
//! logs without naming them.

use sha2::{Digest, Sha256};

/// Installs a JSON `tracing` subscriber filtered by `RUST_LOG` (default `info`). Safe to call twice.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .try_init();
}

/// The loggable form of a user id: a truncated SHA-256, never the id itself.
pub fn hashed_id(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    hex::encode(&digest[..8])
}
