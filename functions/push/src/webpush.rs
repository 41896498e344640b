//! Web Push, the fourth provider: notifications to browsers (the web client's service worker)
//! through whichever push service the browser subscribed with (RFC 8030), the message encrypted
//! to the browser's keys (RFC 8291, `aes128gcm` of RFC 8188) and the request signed by this
//! deployment's VAPID key (RFC 8292), so a push service knows who sends and nobody on the way
//! reads the notification.
//!
//! The body is the same JSON as the webhook's ([`crate::webhook`]: title, body line, badge, the
//! notification's ids; never message content). 201/2xx is delivered; 404 and 410 mean the
//! subscription is gone (the token is removed); 408, 429 (with `Retry-After`) and 5xx are
//! retried; anything else is permanent.

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use messaging::web_push::Subscription;
use serde_json::json;

use crate::payload::Payload;
use crate::retry::{Outcome, by_status, transport_error};

/// Record size announced in the `aes128gcm` header (the whole message is one record).
const RECORD_SIZE: u32 = 4096;
/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const VAPID_VALIDITY_SECS: i64 = 12 * 3600;
/// How long a push service keeps an undelivered notification (a day: the app syncs anyway).
const TTL_SECS: u32 = 24 * 3600;

/// Web Push settings.
#[derive(Clone, PartialEq, Eq)]
pub struct WebPushOptions {
    /// The VAPID key: a P-256 private key, PEM (PKCS#8).
    pub vapid_private_key_pem: String,
    /// Who to contact about this sender (`mailto:` or `https:`), told to push services.
    pub subject: String,
}

impl std::fmt::Debug for WebPushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushOptions")
            .field("vapid_private_key_pem", &"<redacted>")
            .field("subject", &self.subject)
            .finish()
    }
}

/// The VAPID public key of a PEM private key: unpadded base64url of its uncompressed point, what
/// browsers take as `applicationServerKey` (the web client reads it from `config.json`).
pub fn public_key(pem: &str) -> Result<String, String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("not PEM: {e}"))?;
    let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|e| format!("not a P-256 private key: {e}"))?;
    Ok(base64url(pair.public_key().as_ref()))
}

/// A new VAPID key, PEM (PKCS#8): what `WEB_PUSH_VAPID_PRIVATE_KEY` takes (the local stack
/// makes one per data directory; `local-stack vapid-key` prints one for a deployment).
pub fn generate_key() -> String {
    let pair =
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation");
    let der = pair.to_pkcs8v1().expect("PKCS#8 of a fresh key");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HKDF output length.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 gives up to 255 * 32 bytes");
    out
}

/// The content key and nonce of the record (RFC 8291 section 3.4, RFC 8188 section 2.2): the
/// ECDH secret mixed with the browser's auth secret and both public keys, then with the salt.
fn record_keys(
    shared: &[u8],
    auth_secret: &[u8],
    browser_key: &[u8],
    server_key: &[u8],
    salt: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let ikm = hkdf(
        auth_secret,
        shared,
        &[b"WebPush: info\0", browser_key, server_key],
        32,
    );
    (
        hkdf(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], 16),
        hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0"], 12),
    )
}

/// Encrypts `plaintext` for a browser (RFC 8291): an ephemeral P-256 key agreed with the
/// browser's key, mixed with its auth secret, makes the content key of one `aes128gcm` record.
/// Returns the whole body (salt, record size, this key, ciphertext).
pub fn encrypt(
    plaintext: &[u8],
    browser_key: &[u8],
    auth_secret: &[u8],
) -> Result<Vec<u8>, String> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|e| e.to_string())?;
    let server_key = ephemeral.compute_public_key().map_err(|e| e.to_string())?;
    let server_key = server_key.as_ref().to_vec();
    let shared = agreement::agree_ephemeral(
        ephemeral,
        UnparsedPublicKey::new(&ECDH_P256, browser_key),
        "the browser's key does not agree",
        |secret| Ok(secret.to_vec()),
    )
    .map_err(|e: &str| e.to_string())?;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|e| e.to_string())?;
    let (content_key, nonce) = record_keys(&shared, auth_secret, browser_key, &server_key, &salt);
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &content_key).map_err(|e| e.to_string())?);
    // One record, the last: the content then the delimiter 0x02 (no padding).
    let mut record = plaintext.to_vec();
    record.push(2);
    key.seal_in_place_append_tag(
        Nonce::try_assume_unique_for_key(&nonce).map_err(|e| e.to_string())?,
        Aad::empty(),
        &mut record,
    )
    .map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + server_key.len() + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(server_key.len() as u8);
    body.extend_from_slice(&server_key);
    body.extend_from_slice(&record);
    Ok(body)
}

/// Opens a push body as the browser it was encrypted to does (RFC 8291 from the receiving
/// side): what this module's tests and the push tests' local push service check with.
pub fn decrypt(
    body: &[u8],
    browser: &agreement::PrivateKey,
    auth_secret: &[u8],
) -> Result<Vec<u8>, String> {
    if body.len() < 21 {
        return Err("shorter than the aes128gcm header".into());
    }
    let salt = &body[..16];
    let key_len = body[20] as usize;
    let server_key = body.get(21..21 + key_len).ok_or("truncated key id")?;
    let browser_key = browser.compute_public_key().map_err(|e| e.to_string())?;
    let shared = agreement::agree(
        browser,
        UnparsedPublicKey::new(&ECDH_P256, server_key),
        "the sender's key does not agree",
        |secret| Ok(secret.to_vec()),
    )
    .map_err(|e: &str| e.to_string())?;
    let (content_key, nonce) =
        record_keys(&shared, auth_secret, browser_key.as_ref(), server_key, salt);
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &content_key).map_err(|e| e.to_string())?);
    let mut record = body[21 + key_len..].to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(&nonce).map_err(|e| e.to_string())?,
            Aad::empty(),
            &mut record,
        )
        .map_err(|_| "the record does not verify".to_string())?;
    match plain.split_last() {
        Some((2, content)) => Ok(content.to_vec()),
        _ => Err("the last record does not end with 0x02".into()),
    }
}

/// The Web Push sender: the VAPID key, loaded once.
pub struct WebPush {
    options: WebPushOptions,
    http: reqwest::Client,
    signing: EncodingKey,
    public_key: String,
}

impl WebPush {
    /// The sender for `options` (the key was checked by [`public_key`] at configuration).
    pub fn new(options: WebPushOptions, http: reqwest::Client) -> Result<Self, String> {
        let signing = EncodingKey::from_ec_pem(options.vapid_private_key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let public_key = public_key(&options.vapid_private_key_pem)?;
        Ok(Self {
            options,
            http,
            signing,
            public_key,
        })
    }

    /// The VAPID token for a push service (`aud` is its origin).
    fn vapid(&self, endpoint: &reqwest::Url) -> Result<String, String> {
        let audience = endpoint.origin().ascii_serialization();
        let claims = json!({
            "aud": audience,
            "exp": messaging::clock::now_ms() / 1000 + VAPID_VALIDITY_SECS,
            "sub": self.options.subject,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.signing).map_err(|e| e.to_string())
    }

    /// One attempt at sending `payload` to the subscription `token`.
    pub(crate) async fn send(&self, token: &str, payload: &Payload) -> Outcome {
        let subscription = match Subscription::parse(token) {
            Ok(s) => s,
            // Checked at registration; one stored before that check is useless.
            Err(e) => return Outcome::InvalidToken(format!("web push: {e}")),
        };
        let (Ok(endpoint), Ok(browser_key), Ok(auth)) = (
            reqwest::Url::parse(&subscription.endpoint),
            subscription.public_key(),
            subscription.auth_secret(),
        ) else {
            return Outcome::InvalidToken("web push: unusable subscription".into());
        };
        let body = crate::webhook::body(payload).to_string();
        let (encrypted, vapid) = match (
            encrypt(body.as_bytes(), &browser_key, &auth),
            self.vapid(&endpoint),
        ) {
            (Ok(e), Ok(v)) => (e, v),
            (Err(e), _) => return Outcome::InvalidToken(format!("web push: {e}")),
            (_, Err(e)) => return Outcome::Permanent(format!("web push: VAPID: {e}")),
        };
        let response = match self
            .http
            .post(endpoint)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", TTL_SECS.to_string())
            .header("urgency", if payload.silent { "normal" } else { "high" })
            .header(
                "authorization",
                format!("vapid t={vapid}, k={}", self.public_key),
            )
            .body(encrypted)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transport_error("web push", &e),
        };
        // A subscription the push service no longer knows is gone (RFC 8030 section 7.3).
        by_status(
            "web push",
            response.status().as_u16(),
            response.headers(),
            &[404, 410],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_name_their_public_key() {
        let pem = generate_key();
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(public_key(&pem).unwrap())
            .unwrap();
        assert_eq!((public.len(), public[0]), (65, 4));
        assert!(
            WebPush::new(
                WebPushOptions {
                    vapid_private_key_pem: pem,
                    subject: "mailto:a@example.com".into()
                },
                reqwest::Client::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn a_browser_opens_what_is_encrypted_to_it_and_nobody_else_does() {
        let browser = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
        let browser_key = browser.compute_public_key().unwrap();
        let auth = [7u8; 16];
        let body = encrypt(b"{\"title\":\"Alice\"}", browser_key.as_ref(), &auth).unwrap();
        assert_eq!(
            decrypt(&body, &browser, &auth).unwrap(),
            b"{\"title\":\"Alice\"}"
        );
        assert!(
            decrypt(&body, &browser, &[8u8; 16]).is_err(),
            "another auth secret opened it"
        );
        let stranger = agreement::PrivateKey::generate(&ECDH_P256).unwrap();
        assert!(
            decrypt(&body, &stranger, &auth).is_err(),
            "another browser opened it"
        );
    }
}
