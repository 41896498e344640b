//! The key directory's HTTP routes as one device's user sees them (people and agents alike):
//! publishing keys, reading a user's devices, claiming keys, a conversation's members, and a
//! device's `to_device` queue over HTTP (for devices without a WebSocket: agents).
//!
//! Every call has a deadline (10 s); a refusal comes back as the server's [`crate::Error`]
//! with its code, a network failure as `unavailable`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::e2ee::directory::{DeviceKeys, KeyKind, SignedKey};
use crate::model::ConversationKind;
use crate::protocol::{OutgoingToDevice, ToDeviceItem};
use crate::{Error, ErrorCode, Result};

/// Deadline of one call.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// The key directory and conversation lookups of the HTTP API, as one device's user.
#[derive(Clone)]
pub struct KeyDirectory {
    api: ApiSession,
}

/// The HTTP API at one address with one access token, each call under one deadline: what the
/// key directory and the attachment store both call through.
#[derive(Clone)]
pub(crate) struct ApiSession {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// What a device needs to know of a conversation to encrypt for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ConversationInfo {
    /// `direct`, `group` or `agent`.
    pub kind: ConversationKind,
    /// Everyone in it (people and agents).
    pub participants: Vec<String>,
    /// The agent of an agent conversation.
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// A key handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// Whose device.
    pub user_id: String,
    /// Which device.
    pub device_id: String,
    /// The key, signed by the device.
    pub key: SignedKey,
    /// One-time or fallback.
    pub kind: KeyKind,
}

impl ApiSession {
    /// The API at `base` (a trailing `/` is dropped) with `token`, calls bounded by `deadline`.
    pub(crate) fn new(base: &str, token: &str, deadline: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .timeout(deadline)
                .build()
                .unwrap_or_default(),
        }
    }

    /// The HTTP client (for presigned URLs, which carry their own authorisation).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// One call as the token's user: the JSON answer, or the server's refusal as a
    /// [`crate::Error`] with its code (a network failure is `unavailable`).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::dependency("HTTP API", e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body
                .pointer("/error/code")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok())
                .unwrap_or(ErrorCode::Internal);
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("HTTP error")
                .to_string();
            return Err(Error::client(code, message));
        }
        Ok(body)
    }
}

impl KeyDirectory {
    /// The HTTP API at `base` (e.g. `http://127.0.0.1:8084`) with an access token.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            api: ApiSession::new(&base.into(), &token.into(), CALL_DEADLINE),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.api.call(method, path, body).await
    }

    fn parse<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T> {
        serde_json::from_value(value)
            .map_err(|e| Error::dependency("key directory", format!("{what}: {e}")))
    }

    /// Publishes `keys` with one-time keys and a fallback key; returns the one-time keys stored.
    pub async fn publish(
        &self,
        keys: &DeviceKeys,
        one_time_keys: &[SignedKey],
        fallback_key: Option<&SignedKey>,
    ) -> Result<u64> {
        let body = json!({
            "identity": keys.identity,
            "signature": keys.signature,
            "one_time_keys": one_time_keys,
            "fallback_key": fallback_key,
        });
        let answer = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/keys/{}", keys.device_id),
                Some(body),
            )
            .await?;
        Ok(answer["one_time_key_count"].as_u64().unwrap_or_default())
    }

    /// Removes one of the caller's devices (its keys and queue) from the directory.
    pub async fn delete(&self, device_id: &str) -> Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{device_id}"),
            None,
        )
        .await
        .map(drop)
    }

    /// The presign API with the same endpoint and token, for sealed attachments.
    pub fn attachments(&self) -> crate::e2ee::attachment::AttachmentStore {
        crate::e2ee::attachment::AttachmentStore::new(&self.api.base, &self.api.token)
    }

    /// A user's published devices.
    pub async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceKeys>> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/users/{user_id}/keys"),
                None,
            )
            .await?;
        Self::parse(answer["devices"].clone(), "devices")
    }

    /// Claims one key of each device; the devices that had none are left out.
    pub async fn claim(&self, devices: &[&DeviceKeys]) -> Result<Vec<ClaimedKey>> {
        let wanted: Vec<Value> = devices
            .iter()
            .map(|d| json!({"user_id": d.user_id, "device_id": d.device_id}))
            .collect();
        let answer = self
            .call(
                reqwest::Method::POST,
                "/v1/keys/claim",
                Some(json!({"devices": wanted})),
            )
            .await?;
        let mut claimed = Vec::new();
        for key in answer["keys"].as_array().cloned().unwrap_or_default() {
            let (Some(user), Some(device), Ok(signed)) = (
                key["user_id"].as_str(),
                key["device_id"].as_str(),
                serde_json::from_value::<SignedKey>(key["key"].clone()),
            ) else {
                continue;
            };
            claimed.push(ClaimedKey {
                user_id: user.to_string(),
                device_id: device.to_string(),
                key: signed,
                kind: if key["fallback"] == true {
                    KeyKind::Fallback
                } else {
                    KeyKind::OneTime
                },
            });
        }
        Ok(claimed)
    }

    /// A conversation's kind, participants and agent.
    pub async fn conversation(&self, conversation_id: &str) -> Result<ConversationInfo> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/conversations/{conversation_id}"),
                None,
            )
            .await?;
        Self::parse(answer, "conversation")
    }

    /// Sends `to_device` messages from `device_id` (stored when this returns).
    pub async fn send_to_device(
        &self,
        device_id: &str,
        messages: &[OutgoingToDevice],
    ) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/keys/{device_id}/to_device"),
            Some(json!({"messages": messages})),
        )
        .await
        .map(drop)
    }

    /// The first messages of `device_id`'s `to_device` queue, and whether more wait behind.
    pub async fn pending_to_device(&self, device_id: &str) -> Result<(Vec<ToDeviceItem>, bool)> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/keys/{device_id}/to_device"),
                None,
            )
            .await?;
        let more = answer["has_more"] == true;
        Ok((Self::parse(answer["messages"].clone(), "to_device")?, more))
    }

    /// Acknowledges `to_device` messages `device_id` has kept (their content is deleted).
    pub async fn ack_to_device(&self, device_id: &str, sequences: &[u64]) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/keys/{device_id}/to_device/ack"),
            Some(json!({"sequences": sequences})),
        )
        .await
        .map(drop)
    }
}
