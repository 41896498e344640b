//! A generic signed webhook, the third provider: every notification is POSTed once, as JSON, to
//! a configured URL (a custom push gateway, a web-push relay, a test double).
//!
//! Requests are signed the Standard Webhooks way: `webhook-id` (the CloudEvent id, for the
//! receiver's dedupe), `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 of
//! HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`. The receiver checks the signature with the
//! shared secret and refuses old timestamps. 2xx is delivered; 408, 429 (with `Retry-After`)
//! and 5xx are retried; anything else is permanent.

use aws_lc_rs::hmac;
use base64::Engine;
use serde_json::json;

use crate::payload::Payload;
use crate::retry::{Outcome, by_status, transport_error};

/// Webhook settings.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Where notifications are POSTed.
    pub url: String,
    /// The shared HMAC secret (raw bytes of the string).
    pub secret: String,
}

impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The `webhook-signature` value for a message id, timestamp and body.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(format!("{id}.{timestamp}.").as_bytes());
    context.update(body);
    let tag = context.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// The JSON body of a notification.
pub(crate) fn body(payload: &Payload) -> serde_json::Value {
    json!({
        "type": messaging::model::event_types::NOTIFICATION,
        "id": payload.event_id,
        "title": payload.title,
        "body": payload.body,
        "badge": payload.badge,
        "silent": payload.silent,
        "notification": payload.notification,
    })
}

/// One attempt at POSTing `payload` to the webhook.
pub(crate) async fn send(
    http: &reqwest::Client,
    options: &WebhookOptions,
    payload: &Payload,
) -> Outcome {
    let bytes = body(payload).to_string().into_bytes();
    let timestamp = messaging::clock::now_ms() / 1000;
    let response = match http
        .post(&options.url)
        .header("content-type", "application/json")
        .header("webhook-id", &payload.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&options.secret, &payload.event_id, timestamp, &bytes),
        )
        .body(bytes)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return transport_error("webhook", &e),
    };
    by_status(
        "webhook",
        response.status().as_u16(),
        response.headers(),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // Known answer: HMAC-SHA256("secret", "msg_1.1700000000.{}"), base64.
        let sig = signature("secret", "msg_1", 1_700_000_000, b"{}");
        assert!(sig.starts_with("v1,"));
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let tag = base64::engine::general_purpose::STANDARD
            .decode(&sig[3..])
            .unwrap();
        assert!(hmac::verify(&key, b"msg_1.1700000000.{}", &tag).is_ok());
        assert_ne!(sig, signature("other", "msg_1", 1_700_000_000, b"{}"));
    }
}
