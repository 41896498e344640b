//! Pushing frames to WebSocket clients through the API Gateway management API (`@connections`).
//!
//! A function cannot write to a socket: it asks the managed WebSocket API to do it with
//! `PostToConnection`. A 410 Gone means the connection is closed (the client went away without a
//! clean `$disconnect`, or it already happened): the caller forgets that one connection and nothing
//! else ([`GatewayError::Gone`]). The same client works against AWS and against the local stack's
//! emulator; only the endpoint differs.
//!
//! The adapter speaks the management API directly: an HTTP request signed with SigV4 (service
//! `execute-api`) by `aws-sigv4`, the SDK's own signer, with the credentials and region of the
//! AWS configuration. It is what `aws-sdk-apigatewaymanagement` sends, without the SDK's
//! per-call machinery (interceptors, endpoint resolution, identity and retry orchestration),
//! which cost 14 % of the stack's CPU in the 1:1 benchmark for three posts per message. Every
//! call has a deadline ([`ApiGatewayManagement::new`]) within which transport failures, 5xx and
//! 429 answers are retried.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Why a post to a connection failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// The connection no longer exists (HTTP 410): forget it.
    #[error("connection is gone")]
    Gone,
    /// The frame is over 128 KB (HTTP 413).
    #[error("payload too large for a WebSocket frame")]
    PayloadTooLarge,
    /// The client cannot keep up or the account is throttled (HTTP 429).
    #[error("throttled by the WebSocket API")]
    Throttled,
    /// Anything else (network, credentials, 5xx).
    #[error("management API failure: {0}")]
    Other(String),
}

/// The gateway port: send to, or close, a client connection.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// Sends one text frame to a connection.
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), GatewayError>;
    /// Closes a connection (its `$disconnect` runs).
    async fn close(&self, connection_id: &str) -> Result<(), GatewayError>;
}

/// The SigV4 service name of the management API.
const SERVICE: &str = "execute-api";

/// Credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Attempts of one call (transport failures, 5xx and 429 are retried within the deadline).
const ATTEMPTS: u32 = 3;

/// What stays literal in a connection id in the path: RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The adapter: SigV4-signed calls to `{endpoint}/@connections/{id}`.
#[derive(Debug)]
pub struct ApiGatewayManagement {
    endpoint: String,
    region: String,
    credentials: Option<SharedCredentialsProvider>,
    cached: Mutex<Option<Credentials>>,
    http: reqwest::Client,
    timeout: Duration,
}

impl ApiGatewayManagement {
    /// A client for the management endpoint, e.g.
    /// `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}` or the local stack's
    /// `http://127.0.0.1:PORT`. Credentials and region come from `sdk_config`; every call is
    /// answered within `timeout` (retries included).
    pub fn new(sdk_config: &aws_config::SdkConfig, endpoint: &str, timeout: Duration) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: sdk_config
                .region()
                .map_or_else(|| "us-east-1".to_string(), |r| r.to_string()),
            credentials: sdk_config.credentials_provider(),
            cached: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client with a timeout always builds"),
            timeout,
        }
    }

    /// The credentials to sign with: the cached ones until shortly before they expire.
    async fn credentials(&self) -> Result<Credentials, GatewayError> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|expiry| expiry > SystemTime::now() + RENEW_BEFORE)
        };
        if let Some(cached) = self.cached.lock().expect("never poisoned").as_ref()
            && fresh(cached)
        {
            return Ok(cached.clone());
        }
        let provider = self
            .credentials
            .as_ref()
            .ok_or_else(|| GatewayError::Other("no AWS credentials configured".into()))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| GatewayError::Other(format!("AWS credentials: {e}")))?;
        *self.cached.lock().expect("never poisoned") = Some(credentials.clone());
        Ok(credentials)
    }

    /// One signed request.
    fn signed(
        &self,
        method: &str,
        url: &str,
        body: &[u8],
        credentials: Credentials,
    ) -> Result<reqwest::Request, GatewayError> {
        let failed = |e: &dyn std::fmt::Display| GatewayError::Other(format!("signing: {e}"));
        let identity: Identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let signable =
            SignableRequest::new(method, url, std::iter::empty(), SignableBody::Bytes(body))
                .map_err(|e| failed(&e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| failed(&e))?
            .into_parts();
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(body.to_vec())
            .map_err(|e| failed(&e))?;
        instructions.apply_to_request_http1x(&mut request);
        reqwest::Request::try_from(request).map_err(|e| failed(&e))
    }

    /// Calls `method` on a connection, retrying what may pass on a second try, within the
    /// deadline.
    async fn call(
        &self,
        method: &str,
        connection_id: &str,
        body: &[u8],
    ) -> Result<(), GatewayError> {
        let url = format!(
            "{}/@connections/{}",
            self.endpoint,
            utf8_percent_encode(connection_id, PATH_SEGMENT)
        );
        let attempts = async {
            let mut last = GatewayError::Other("not attempted".into());
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(25 * 4u64.pow(attempt - 1))).await;
                }
                let request = self.signed(method, &url, body, self.credentials().await?)?;
                match self.http.execute(request).await {
                    Ok(response) if response.status().is_success() => return Ok(()),
                    Ok(response) => {
                        let status = response.status().as_u16();
                        last = match status {
                            410 => return Err(GatewayError::Gone),
                            413 => return Err(GatewayError::PayloadTooLarge),
                            429 => GatewayError::Throttled,
                            _ => GatewayError::Other(refusal(response).await),
                        };
                        if status != 429 && status < 500 {
                            return Err(last);
                        }
                    }
                    Err(e) => last = GatewayError::Other(e.to_string()),
                }
            }
            Err(last)
        };
        tokio::time::timeout(self.timeout, attempts)
            .await
            .unwrap_or_else(|_| {
                Err(GatewayError::Other(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            })
    }
}

/// What AWS says when it refuses a call: its error type and message.
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let error_type = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_string());
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or(body);
    match error_type {
        Some(error_type) => format!("{error_type} ({status}): {message}"),
        None => format!("{status}: {message}"),
    }
}

#[async_trait]
impl Gateway for ApiGatewayManagement {
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), GatewayError> {
        let _timer = crate::metrics::time(crate::metrics::Stage::GatewayPost);
        self.call("POST", connection_id, data).await
    }

    async fn close(&self, connection_id: &str) -> Result<(), GatewayError> {
        self.call("DELETE", connection_id, &[]).await
    }
}
