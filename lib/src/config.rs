//! Configuration from the environment, with errors that name the variable and what is wrong.
//!
//! Each function reads only the sections it needs ([`RedisConfig`], [`MongoConfig`], ...), so a
//! function is never refused for lacking a setting it does not use. Every reader takes a lookup
//! function, so tests check parsing without touching the process environment.

use std::time::Duration;

use crate::auth::JwtConfig;
use crate::store::{DEFAULT_MESSAGE_RETENTION, DEFAULT_OPERATION_TIMEOUT, StoreOptions};

/// A configuration value is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// A variable is set to something unusable.
    #[error("environment variable {var} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where configuration values come from.
pub trait Source {
    /// The value of `var`, if set and not empty.
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok().filter(|v| !v.trim().is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Source for F {
    fn get(&self, var: &str) -> Option<String> {
        self(var).filter(|v| !v.trim().is_empty())
    }
}

fn required(src: &impl Source, var: &'static str) -> Result<String, ConfigError> {
    src.get(var).ok_or(ConfigError::Missing(var))
}

/// `var` parsed as a `T` (a number, usually), `default` when unset; the error names the variable
/// and quotes the bad value. The one parser of numbers from configuration.
pub fn parsed<T: std::str::FromStr>(
    src: &impl Source,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match src.get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            var,
            reason: format!("`{v}`: {e}"),
        }),
    }
}

/// `var` as a whole number within `range`, `default` when unset; the error names the bounds.
pub fn bounded(
    src: &impl Source,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let value = parsed(src, var, default)?;
    if !range.contains(&value) {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("must be between {} and {}", range.start(), range.end()),
        });
    }
    Ok(value)
}

/// `var` as a whole number of milliseconds (at least 1), `default` when unset.
pub fn millis(
    src: &impl Source,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let ms: u64 = parsed(src, var, default.as_millis() as u64)?;
    if ms == 0 {
        return Err(ConfigError::Invalid {
            var,
            reason: "must be at least 1".into(),
        });
    }
    Ok(Duration::from_millis(ms))
}

/// `var` as a whole number of seconds, `default` when unset.
pub fn seconds(
    src: &impl Source,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    parsed(src, var, default.as_secs()).map(Duration::from_secs)
}

fn url(src: &impl Source, var: &'static str, schemes: &[&str]) -> Result<String, ConfigError> {
    let value = required(src, var)?;
    if !schemes
        .iter()
        .any(|s| value.starts_with(&format!("{s}://")))
    {
        return Err(ConfigError::Invalid {
            var,
            reason: format!(
                "expected a URL starting with {}",
                schemes.join("://, ") + "://"
            ),
        });
    }
    Ok(value)
}

impl StoreOptions {
    /// Reads `MESSAGE_RETENTION_DAYS` (default 90), `MONGODB_TIMEOUT_MS` (the deadline of each
    /// operation, default 3000) and `OUTBOX_GRACE_MS` (when a message's fan-out is overdue,
    /// default 10000).
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let default_days = DEFAULT_MESSAGE_RETENTION.as_secs() / 86_400;
        let days: u64 = parsed(src, "MESSAGE_RETENTION_DAYS", default_days)?;
        if days == 0 {
            return Err(ConfigError::Invalid {
                var: "MESSAGE_RETENTION_DAYS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            message_retention: Duration::from_secs(days * 86_400),
            operation_timeout: millis(src, "MONGODB_TIMEOUT_MS", DEFAULT_OPERATION_TIMEOUT)?,
            fanout_grace: millis(src, "OUTBOX_GRACE_MS", crate::store::messages::FANOUT_GRACE)?,
            ..Self::default()
        })
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `REDIS_URL` (`redis://` or `rediss://`).
    pub url: String,
    /// `REDIS_KEY_PREFIX`, default `msg:`.
    pub key_prefix: String,
    /// `REDIS_TIMEOUT_MS`: the deadline of each round trip, default 1000.
    pub timeout: Duration,
}

impl RedisConfig {
    /// Reads `REDIS_URL`, `REDIS_KEY_PREFIX` and `REDIS_TIMEOUT_MS`.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            url: url(src, "REDIS_URL", &["redis", "rediss"])?,
            key_prefix: src.get("REDIS_KEY_PREFIX").unwrap_or_else(|| "msg:".into()),
            timeout: millis(src, "REDIS_TIMEOUT_MS", crate::realtime::DEFAULT_TIMEOUT)?,
        })
    }
}

/// MongoDB connection settings.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `MONGODB_URI` (`mongodb://` or `mongodb+srv://`).
    pub uri: String,
    /// `MONGODB_DATABASE`, default `messaging`.
    pub database: String,
    /// Store options (`MESSAGE_RETENTION_DAYS`, default 90).
    pub options: StoreOptions,
}

impl MongoConfig {
    /// Reads `MONGODB_URI`, `MONGODB_DATABASE` and the store options
    /// ([`StoreOptions::from_source`]).
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            uri: url(src, "MONGODB_URI", &["mongodb", "mongodb+srv"])?,
            database: src
                .get("MONGODB_DATABASE")
                .unwrap_or_else(|| "messaging".into()),
            options: StoreOptions::from_source(src)?,
        })
    }
}

impl JwtConfig {
    /// Reads `JWT_HS256_SECRET` and/or `JWT_RS256_PUBLIC_KEY` (PEM), `JWT_ISSUER`, `JWT_AUDIENCE`
    /// and `JWT_LEEWAY_SECS` (default 30).
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let hs256_secret = src.get("JWT_HS256_SECRET").map(String::into_bytes);
        if let Some(secret) = &hs256_secret
            && secret.len() < 32
        {
            return Err(ConfigError::Invalid {
                var: "JWT_HS256_SECRET",
                reason: "must be at least 32 bytes".into(),
            });
        }
        let rs256_public_pem = src.get("JWT_RS256_PUBLIC_KEY");
        if let Some(pem) = &rs256_public_pem
            && !pem.contains("BEGIN PUBLIC KEY")
            && !pem.contains("BEGIN RSA PUBLIC KEY")
        {
            return Err(ConfigError::Invalid {
                var: "JWT_RS256_PUBLIC_KEY",
                reason: "expected a PEM public key".into(),
            });
        }
        if hs256_secret.is_none() && rs256_public_pem.is_none() {
            return Err(ConfigError::Missing(
                "JWT_HS256_SECRET or JWT_RS256_PUBLIC_KEY",
            ));
        }
        Ok(Self {
            hs256_secret,
            rs256_public_pem,
            issuer: src.get("JWT_ISSUER").unwrap_or_else(|| "messaging".into()),
            audience: src
                .get("JWT_AUDIENCE")
                .unwrap_or_else(|| "messaging-clients".into()),
            leeway: Duration::from_secs(parsed(src, "JWT_LEEWAY_SECS", 30)?),
        })
    }
}

/// Where the WebSocket API's management endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `WEBSOCKET_MANAGEMENT_ENDPOINT`, e.g. `https://ID.execute-api.REGION.amazonaws.com/STAGE`.
    pub endpoint: String,
    /// `GATEWAY_TIMEOUT_MS`: the deadline of each management-API call, retries included.
    pub timeout: Duration,
}

/// Default of [`GatewayConfig::timeout`].
pub const DEFAULT_GATEWAY_TIMEOUT: Duration = Duration::from_secs(3);

impl GatewayConfig {
    /// Reads `WEBSOCKET_MANAGEMENT_ENDPOINT` and `GATEWAY_TIMEOUT_MS` (default 3000).
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            endpoint: url(src, "WEBSOCKET_MANAGEMENT_ENDPOINT", &["http", "https"])?,
            timeout: millis(src, "GATEWAY_TIMEOUT_MS", DEFAULT_GATEWAY_TIMEOUT)?,
        })
    }
}

/// Where events are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `BROKER_URL`: the broker's CloudEvents ingress.
    pub url: String,
    /// `EVENT_SOURCE`: the CloudEvents `source` of this deployment, default `/messaging`.
    pub source: String,
}

impl BrokerConfig {
    /// Reads `BROKER_URL` and `EVENT_SOURCE`.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            url: url(src, "BROKER_URL", &["http", "https"])?,
            source: src
                .get("EVENT_SOURCE")
                .unwrap_or_else(|| "/messaging".into()),
        })
    }
}

/// S3 settings for media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `AWS_ENDPOINT_URL_S3`: a custom endpoint (local stack, MinIO); AWS when unset.
    pub endpoint: Option<String>,
    /// `S3_FORCE_PATH_STYLE` (default true when an endpoint is set).
    pub path_style: bool,
    /// `MEDIA_BUCKET`, default `messaging-media`.
    pub media_bucket: String,
    /// `DOCUMENTS_BUCKET`, default `messaging-documents`.
    pub documents_bucket: String,
}

impl S3Config {
    /// Reads the S3 variables.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let endpoint = src.get("AWS_ENDPOINT_URL_S3");
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                var: "AWS_ENDPOINT_URL_S3",
                reason: "expected an http(s) URL".into(),
            });
        }
        Ok(Self {
            path_style: parsed(src, "S3_FORCE_PATH_STYLE", endpoint.is_some())?,
            endpoint,
            media_bucket: src
                .get("MEDIA_BUCKET")
                .unwrap_or_else(|| "messaging-media".into()),
            documents_bucket: src
                .get("DOCUMENTS_BUCKET")
                .unwrap_or_else(|| "messaging-documents".into()),
        })
    }
}
