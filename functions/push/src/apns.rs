//! Apple Push Notification service over HTTP/2.
//!
//! Authentication is token-based: a provider JWT signed with the team's ES256 key (header `kid`
//! = key id, claims `iss` = team id and `iat`), sent as `authorization: bearer <JWT>`. Apple
//! wants it reused, not minted per request, and refreshed within the hour: it is cached for
//! [`TOKEN_REFRESH`] and minted anew when APNs answers `ExpiredProviderToken`.
//!
//! Each notification is `POST {endpoint}/3/device/{token}` with `apns-topic` (the app's bundle
//! id), `apns-push-type` (`alert`, or `background` for silent ones), `apns-priority` (10, or 5
//! for background) and the JSON payload. Answers: 200 delivered; 410 `Unregistered`, 400
//! `BadDeviceToken` and `DeviceTokenNotForTopic` mean the token is dead and is removed; 429 and
//! 5xx are retried (honouring `Retry-After`); anything else is permanent.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::payload::Payload;
use crate::retry::{Outcome, retry_after, retryable_status, transport_error};

/// The production APNs endpoint (the sandbox is `https://api.sandbox.push.apple.com`).
pub const DEFAULT_ENDPOINT: &str = "https://api.push.apple.com";
/// How long a provider JWT is reused (Apple: refresh at most every 20 minutes, at least every
/// 60).
pub const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);

/// APNs settings.
#[derive(Clone, PartialEq, Eq)]
pub struct ApnsOptions {
    /// Apple developer team id (`iss`).
    pub team_id: String,
    /// Id of the signing key (`kid`).
    pub key_id: String,
    /// The `.p8` signing key (PEM, PKCS#8, P-256).
    pub private_key_pem: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Base URL of APNs.
    pub endpoint: String,
    /// Speak HTTP/2 without TLS negotiation (h2c prior knowledge): for local test servers over
    /// plain HTTP. Over TLS, HTTP/2 is negotiated by ALPN either way.
    pub http2_prior_knowledge: bool,
}

impl std::fmt::Debug for ApnsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsOptions")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("private_key_pem", &"<redacted>")
            .field("topic", &self.topic)
            .field("endpoint", &self.endpoint)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .finish()
    }
}

/// Claims of the provider JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProviderClaims {
    /// Team id.
    pub iss: String,
    /// Issued at (seconds).
    pub iat: u64,
}

/// Checks that a PEM is an EC private key that signs ES256.
pub fn check_key(pem: &str) -> Result<EncodingKey, String> {
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &json!({}), &key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

/// The APNs provider: options, signing key, HTTP/2 client and the cached provider JWT.
pub(crate) struct Apns {
    options: ApnsOptions,
    key: Result<EncodingKey, String>,
    http: reqwest::Client,
    jwt: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    pub(crate) fn new(options: ApnsOptions, timeout: Duration) -> Self {
        let key = check_key(&options.private_key_pem)
            .map_err(|e| format!("apns: the signing key is unusable: {e}"));
        if let Err(e) = &key {
            tracing::error!(error = %e, "apns misconfigured: every APNs delivery will fail");
        }
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if options.http2_prior_knowledge {
            builder = builder.http2_prior_knowledge();
        }
        let http = builder.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "apns: HTTP client with defaults");
            reqwest::Client::new()
        });
        Self {
            options,
            key,
            http,
            jwt: Mutex::new(None),
        }
    }

    async fn provider_token(&self) -> Result<String, Outcome> {
        let mut cached = self.jwt.lock().await;
        if let Some((jwt, at)) = cached.as_ref()
            && at.elapsed() < TOKEN_REFRESH
        {
            return Ok(jwt.clone());
        }
        let key = self
            .key
            .as_ref()
            .map_err(|e| Outcome::Permanent(e.clone()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.options.key_id.clone());
        let claims = ProviderClaims {
            iss: self.options.team_id.clone(),
            iat: (messaging::clock::now_ms() / 1000).max(0) as u64,
        };
        let jwt = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| Outcome::Permanent(format!("apns: signing the provider token: {e}")))?;
        *cached = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    /// The APNs JSON payload.
    pub(crate) fn body(payload: &Payload) -> Value {
        let mut body = json!({});
        for (k, v) in &payload.data {
            body[k] = json!(v);
        }
        body["aps"] = if payload.silent {
            json!({"content-available": 1})
        } else {
            json!({
                "alert": {"title": payload.title, "body": payload.body},
                "badge": payload.badge,
                "sound": "default",
                "thread-id": payload.notification.conversation_id,
            })
        };
        body
    }

    /// One attempt at sending `payload` to a device token.
    pub(crate) async fn send(&self, token: &str, payload: &Payload) -> Outcome {
        let jwt = match self.provider_token().await {
            Ok(jwt) => jwt,
            Err(outcome) => return outcome,
        };
        let url = format!(
            "{}/3/device/{token}",
            self.options.endpoint.trim_end_matches('/')
        );
        let (push_type, priority) = if payload.silent {
            ("background", "5")
        } else {
            ("alert", "10")
        };
        let response = match self
            .http
            .post(url)
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.options.topic)
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .json(&Self::body(payload))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transport_error("apns", &e),
        };
        let status = response.status().as_u16();
        if status == 200 {
            return Outcome::Delivered;
        }
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let reason_code = body["reason"].as_str().unwrap_or_default().to_string();
        let reason = format!("apns: {status} {reason_code}").trim().to_string();
        match (status, reason_code.as_str()) {
            (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
                Outcome::InvalidToken(reason)
            }
            (403, "ExpiredProviderToken") => {
                *self.jwt.lock().await = None;
                Outcome::retry(reason)
            }
            (s, _) if retryable_status(s) => Outcome::Retry {
                reason,
                retry_after: retry_after(&headers),
            },
            _ => Outcome::Permanent(reason),
        }
    }
}
