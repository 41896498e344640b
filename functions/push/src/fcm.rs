//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Authentication is Google's OAuth2 service-account flow: an RS256 JWT assertion signed with
//! the service account's private key (`iss` = its client email, `scope` =
//! [`FCM_SCOPE`], `aud` = the token URI) is exchanged at the token URI for an access token,
//! which is cached until shortly before it expires and dropped early when FCM refuses it (401).
//! Messages go to `POST {endpoint}/v1/projects/{project_id}/messages:send` with
//! `Authorization: Bearer <access token>`.
//!
//! Answers: 2xx delivered; `UNREGISTERED` (404) or `SENDER_ID_MISMATCH` (403) mean the token
//! is dead and is removed; 401 refreshes the access token and retries; 408, 429 (with
//! `Retry-After`) and 5xx are retried; anything else (e.g. 400 `INVALID_ARGUMENT`) is permanent.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::payload::Payload;
use crate::retry::{Outcome, retry_after, retryable_status, transport_error};

/// OAuth2 scope of FCM sends.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's OAuth2 token URI.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The FCM API.
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
/// Lifetime asked for assertion JWTs (Google's maximum).
pub const ASSERTION_TTL: Duration = Duration::from_secs(3600);

/// FCM settings: the Firebase project and its service account.
#[derive(Clone, PartialEq, Eq)]
pub struct FcmOptions {
    /// Firebase project id.
    pub project_id: String,
    /// The service account's `client_email`.
    pub client_email: String,
    /// The service account's `private_key` (PEM, RSA).
    pub private_key_pem: String,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
    /// Base URL of the FCM API.
    pub endpoint: String,
}

impl std::fmt::Debug for FcmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmOptions")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key_pem", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Claims of the OAuth2 assertion.
#[derive(Debug, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The service account's email.
    pub iss: String,
    /// [`FCM_SCOPE`].
    pub scope: String,
    /// The token URI.
    pub aud: String,
    /// Issued at (seconds).
    pub iat: u64,
    /// Expires at (seconds).
    pub exp: u64,
}

/// Checks that a PEM is an RSA private key that signs.
pub fn check_key(pem: &str) -> Result<EncodingKey, String> {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &json!({}), &key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

struct AccessToken {
    value: String,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The FCM provider: options, signing key, HTTP client and the cached access token.
pub(crate) struct Fcm {
    options: FcmOptions,
    key: Result<EncodingKey, String>,
    http: reqwest::Client,
    token: Mutex<Option<AccessToken>>,
}

fn now_secs() -> u64 {
    (messaging::clock::now_ms() / 1000).max(0) as u64
}

impl Fcm {
    pub(crate) fn new(options: FcmOptions, http: reqwest::Client) -> Self {
        let key = check_key(&options.private_key_pem)
            .map_err(|e| format!("fcm: the service account private key is unusable: {e}"));
        if let Err(e) = &key {
            tracing::error!(error = %e, "fcm misconfigured: every FCM delivery will fail");
        }
        Self {
            options,
            key,
            http,
            token: Mutex::new(None),
        }
    }

    fn assertion(&self) -> Result<String, Outcome> {
        let key = self
            .key
            .as_ref()
            .map_err(|e| Outcome::Permanent(e.clone()))?;
        let iat = now_secs();
        let claims = AssertionClaims {
            iss: self.options.client_email.clone(),
            scope: FCM_SCOPE.into(),
            aud: self.options.token_uri.clone(),
            iat,
            exp: iat + ASSERTION_TTL.as_secs(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| Outcome::Permanent(format!("fcm: signing the assertion: {e}")))
    }

    /// A valid access token, from the cache or a fresh exchange.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let assertion = self.assertion()?;
        let response = self
            .http
            .post(&self.options.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error("fcm token exchange", &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let reason = format!("fcm token exchange: {status} {}", truncate(&body));
            return Err(if retryable_status(status) {
                Outcome::Retry {
                    reason,
                    retry_after: retry_after(&headers),
                }
            } else {
                Outcome::Permanent(reason)
            });
        }
        let token: TokenResponse = serde_json::from_str(&body).map_err(|e| {
            Outcome::Permanent(format!("fcm token exchange: unexpected answer: {e}"))
        })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
        let margin = Duration::from_secs(60).min(lifetime / 2);
        *cached = Some(AccessToken {
            value: token.access_token.clone(),
            refresh_at: Instant::now() + lifetime - margin,
        });
        Ok(token.access_token)
    }

    async fn forget_access_token(&self) {
        *self.token.lock().await = None;
    }

    /// The FCM v1 message for a device token.
    pub(crate) fn message(token: &str, payload: &Payload) -> Value {
        let mut message = json!({
            "token": token,
            "data": payload.data,
        });
        if payload.silent {
            message["android"] = json!({"priority": "NORMAL"});
            message["apns"] = json!({
                "headers": {"apns-push-type": "background", "apns-priority": "5"},
                "payload": {"aps": {"content-available": 1}},
            });
        } else {
            let tag = payload.notification.conversation_id.clone();
            message["notification"] = json!({"title": payload.title, "body": payload.body});
            message["android"] = json!({
                "priority": "HIGH",
                "notification": {"tag": tag, "notification_count": payload.badge},
            });
            message["apns"] = json!({
                "payload": {"aps": {"badge": payload.badge, "thread-id": tag}},
            });
        }
        json!({ "message": message })
    }

    /// One attempt at sending `payload` to a device token.
    pub(crate) async fn send(&self, token: &str, payload: &Payload) -> Outcome {
        let access = match self.access_token().await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.options.endpoint.trim_end_matches('/'),
            self.options.project_id
        );
        let response = match self
            .http
            .post(url)
            .bearer_auth(access)
            .json(&Self::message(token, payload))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transport_error("fcm", &e),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Outcome::Delivered;
        }
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        let state = error["status"].as_str().unwrap_or_default();
        let code = error["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|d| d["errorCode"].as_str())
            .unwrap_or_default();
        let message = error["message"].as_str().unwrap_or_default();
        let reason = format!("fcm: {status} {state} {code} {message}")
            .trim()
            .to_string();
        match (status, code) {
            (_, "UNREGISTERED") | (_, "SENDER_ID_MISMATCH") => Outcome::InvalidToken(reason),
            (401, _) => {
                self.forget_access_token().await;
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

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
