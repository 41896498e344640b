//! A browser's Web Push subscription (the W3C Push API's `PushSubscription`, as `toJSON()` gives
//! it): where its push service accepts messages for it, and the keys a message is encrypted to
//! (RFC 8291). A web device registers it as its push token (`PUT /v1/devices/{id}`, platform
//! `web`; opaque there, as FCM and APNs tokens are); the push function reads it with
//! [`Subscription::parse`] and removes a token that is no subscription.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A subscription, as the browser serialized it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The push service's URL for this subscription (`https://`; `http://` only on loopback,
    /// for local push services).
    pub endpoint: String,
    /// The browser's keys.
    pub keys: SubscriptionKeys,
}

/// The keys of a subscription, unpadded base64url.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key, uncompressed (65 bytes).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

fn base64url(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

impl Subscription {
    /// Parses and checks a push token of platform `web`.
    pub fn parse(token: &str) -> Result<Self> {
        let subscription: Self = serde_json::from_str(token).map_err(|e| {
            Error::invalid(format!(
                "a web push token is the browser's PushSubscription as JSON ({{\"endpoint\", \"keys\": {{\"p256dh\", \"auth\"}}}}): {e}"
            ))
        })?;
        let url = url::Url::parse(&subscription.endpoint)
            .map_err(|_| Error::invalid("the subscription's endpoint is not a URL"))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(Error::invalid(
                "the subscription's endpoint must be https://",
            ));
        }
        subscription.public_key()?;
        subscription.auth_secret()?;
        Ok(subscription)
    }

    /// The browser's public key (65 bytes, uncompressed P-256).
    pub fn public_key(&self) -> Result<Vec<u8>> {
        base64url(&self.keys.p256dh)
            .filter(|k| k.len() == 65 && k[0] == 4)
            .ok_or_else(|| {
                Error::invalid(
                    "keys.p256dh must be an uncompressed P-256 key (65 bytes, base64url)",
                )
            })
    }

    /// The authentication secret (16 bytes).
    pub fn auth_secret(&self) -> Result<Vec<u8>> {
        base64url(&self.keys.auth)
            .filter(|k| k.len() == 16)
            .ok_or_else(|| Error::invalid("keys.auth must be 16 bytes, base64url"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(endpoint: &str, p256dh: &str, auth: &str) -> String {
        serde_json::json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}})
            .to_string()
    }

    const KEY: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    #[test]
    fn a_browser_subscription_is_accepted() {
        let parsed =
            Subscription::parse(&token("https://fcm.googleapis.com/fcm/send/abc", KEY, AUTH))
                .unwrap();
        assert_eq!(parsed.public_key().unwrap().len(), 65);
        assert_eq!(parsed.auth_secret().unwrap().len(), 16);
        assert!(Subscription::parse(&token("http://127.0.0.1:9/push", KEY, AUTH)).is_ok());
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        for (bad, why) in [
            ("not json".to_string(), "PushSubscription"),
            (token("http://push.example.com/x", KEY, AUTH), "https"),
            (token("ftp://127.0.0.1/x", KEY, AUTH), "https"),
            (token("https://push.example.com/x", "AAAA", AUTH), "p256dh"),
            (token("https://push.example.com/x", KEY, "AAAA"), "auth"),
        ] {
            let error = Subscription::parse(&bad).unwrap_err();
            assert_eq!(error.code(), crate::ErrorCode::InvalidRequest);
            assert!(error.to_string().contains(why), "{bad}: {error}");
        }
    }
}
