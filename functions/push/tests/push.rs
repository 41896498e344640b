//! The push function against local FCM, APNs (HTTP/2) and webhook servers that check the request
//! shape, the auth headers and the JWT signatures, and answer as scripted: success, 429 with
//! Retry-After, invalid tokens, permanent refusals, outages. Redis and MongoDB are real.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::Version;
use base64::Engine;
use fn_push::fcm::{AssertionClaims, FCM_SCOPE};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use messaging::model::PushPlatform;
use messaging::protocol::MessageType;
use serde_json::{Value, json};
use support::{
    Answer, CLIENT_EMAIL, KEY_ID, PROJECT, TEAM_ID, TOPIC, WEBHOOK_SECRET, env, env_with, event_id,
    keys, note, notification_event, webhook_options,
};

/// Verifies the FCM OAuth2 assertion of a token request and returns its claims.
fn verify_assertion(form: &[u8], token_uri: &str) -> AssertionClaims {
    let form = String::from_utf8(form.to_vec()).unwrap();
    let fields: std::collections::HashMap<String, String> = form
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":")))
        .collect();
    assert_eq!(
        fields["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let key = DecodingKey::from_rsa_pem(keys().rsa_public.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let data = jsonwebtoken::decode::<AssertionClaims>(&fields["assertion"], &key, &validation)
        .expect("assertion signed by the service account key");
    assert_eq!(data.claims.scope, FCM_SCOPE);
    assert!(data.claims.exp > data.claims.iat && data.claims.exp - data.claims.iat <= 3600);
    data.claims
}

/// Verifies an APNs provider token (ES256 with the team's key) and returns its header key id.
fn verify_provider_token(authorization: &str) -> String {
    let jwt = authorization
        .strip_prefix("bearer ")
        .expect("authorization: bearer <JWT>");
    let key = DecodingKey::from_ec_pem(keys().ec_public.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[TEAM_ID]);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["iss"]);
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .expect("provider token signed by the APNs key");
    assert!(data.claims["iat"].as_u64().unwrap() > 1_600_000_000);
    data.header.kid.expect("kid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_exchanges_a_signed_assertion_once_and_sends_no_content() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-bob")
        .await;

    let first = note(&bob, &alice, MessageType::Image, 3);
    fn_push::handle(&env.push, notification_event(&event_id(), &first))
        .await
        .unwrap();
    let second = note(&bob, &alice, MessageType::Text, 4);
    fn_push::handle(&env.push, notification_event(&event_id(), &second))
        .await
        .unwrap();

    // One token exchange, signed by the service account; the token is cached for the second.
    let tokens = env.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].header("content-type"),
        "application/x-www-form-urlencoded"
    );
    verify_assertion(&tokens[0].raw, &env.token_uri);

    let sends = env.fcm();
    assert_eq!(sends.len(), 2);
    for send in &sends {
        assert_eq!(send.path, format!("/v1/projects/{PROJECT}/messages:send"));
        assert_eq!(send.header("authorization"), "Bearer access-1");
    }
    let message = &sends[0].body["message"];
    assert_eq!(message["token"], "fcm-bob");
    assert_eq!(
        message["notification"],
        json!({"title": "Alice", "body": "Photo"})
    );
    assert_eq!(
        message["data"],
        json!({
            "type": "messaging.notification",
            "conversation_id": first.conversation_id,
            "message_id": first.message_id,
            "sender_id": alice,
            "sender_name": "Alice",
            "message_type": "image",
            "badge": "3",
        })
    );
    assert_eq!(message["android"]["priority"], "HIGH");
    assert_eq!(message["android"]["notification"]["notification_count"], 3);
    assert_eq!(message["apns"]["payload"]["aps"]["badge"], 3);
    assert_eq!(sends[1].body["message"]["data"]["badge"], "4");
    assert!(
        !sends[0].raw.windows(7).any(|w| w == b"content"),
        "no message content in a notification"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_gets_http2_requests_with_a_signed_provider_token() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "iphone", PushPlatform::Apns, "apns-bob")
        .await;
    let n = note(&bob, &alice, MessageType::Voice, 7);
    fn_push::handle(&env.push, notification_event(&event_id(), &n))
        .await
        .unwrap();
    fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 8)),
    )
    .await
    .unwrap();

    let sends = env.apns();
    assert_eq!(sends.len(), 2);
    let send = &sends[0];
    assert_eq!(send.version, Version::HTTP_2);
    assert_eq!(send.path, "/3/device/apns-bob");
    assert_eq!(verify_provider_token(send.header("authorization")), KEY_ID);
    assert_eq!(
        send.header("authorization"),
        sends[1].header("authorization"),
        "the provider token is reused"
    );
    assert_eq!(send.header("apns-topic"), TOPIC);
    assert_eq!(send.header("apns-push-type"), "alert");
    assert_eq!(send.header("apns-priority"), "10");
    assert_eq!(
        send.body["aps"],
        json!({
            "alert": {"title": "Alice", "body": "Voice message"},
            "badge": 7,
            "sound": "default",
            "thread-id": n.conversation_id,
        })
    );
    assert_eq!(send.body["message_id"], n.message_id);
    assert_eq!(send.body["conversation_id"], n.conversation_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_mode_sends_background_notifications() {
    let env = env_with(|o| o.silent = true).await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "iphone", PushPlatform::Apns, "apns-silent")
        .await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-silent")
        .await;
    fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 1)),
    )
    .await
    .unwrap();
    let apns = env.apns();
    assert_eq!(apns.len(), 1);
    assert_eq!(apns[0].header("apns-push-type"), "background");
    assert_eq!(apns[0].header("apns-priority"), "5");
    assert_eq!(apns[0].body["aps"], json!({"content-available": 1}));
    assert_eq!(apns[0].body["badge"], "1");
    let fcm = env.fcm();
    assert_eq!(fcm.len(), 1);
    let message = &fcm[0].body["message"];
    assert!(
        message.get("notification").is_none(),
        "data-only: {message}"
    );
    assert_eq!(message["data"]["badge"], "1");
    assert_eq!(message["apns"]["payload"]["aps"]["content-available"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_a_signed_notification() {
    let env = env_with(|o| o.webhook = Some(webhook_options())).await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    let id = event_id();
    let n = note(&bob, &alice, MessageType::Document, 2);
    fn_push::handle(&env.push, notification_event(&id, &n))
        .await
        .unwrap();
    let hooks = env.webhook();
    assert_eq!(hooks.len(), 1, "one webhook call, even without devices");
    let hook = &hooks[0];
    assert_eq!(hook.header("webhook-id"), id);
    let timestamp: i64 = hook.header("webhook-timestamp").parse().unwrap();
    assert!((messaging::clock::now_ms() / 1000 - timestamp).abs() < 60);
    let signature = hook
        .header("webhook-signature")
        .strip_prefix("v1,")
        .expect("v1 signature");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&hook.raw);
    let tag = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .unwrap();
    aws_lc_rs::hmac::verify(&key, &signed, &tag).expect("HMAC-SHA256 over id.timestamp.body");
    assert_eq!(hook.body["type"], "messaging.notification");
    assert_eq!(hook.body["title"], "Alice");
    assert_eq!(hook.body["body"], "Document");
    assert_eq!(hook.body["badge"], 2);
    assert_eq!(hook.body["notification"]["message_id"], n.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-busy")
        .await;
    env.script(
        "fcm-busy",
        vec![
            Answer::new(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [{"errorCode": "QUOTA_EXCEEDED"}]}}),
            )
            .with_header("retry-after", "1"),
        ],
    );
    fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 1)),
    )
    .await
    .unwrap();
    let sends = env.fcm();
    assert_eq!(sends.len(), 2, "429 then success");
    let gap = sends[1].at - sends[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {gap:?}"
    );
    assert_eq!(sends[0].body, sends[1].body);
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_access_token_is_exchanged_again() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-auth")
        .await;
    env.script(
        "fcm-auth",
        vec![Answer::new(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        )],
    );
    fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 1)),
    )
    .await
    .unwrap();
    assert_eq!(env.token_requests().len(), 2);
    let sends = env.fcm();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].header("authorization"), "Bearer access-1");
    assert_eq!(sends[1].header("authorization"), "Bearer access-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_removed_and_the_rest_delivered() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "old-pixel", PushPlatform::Fcm, "fcm-gone")
        .await;
    env.device(&bob, "old-iphone", PushPlatform::Apns, "apns-gone")
        .await;
    env.device(&bob, "ipad", PushPlatform::Apns, "apns-fine")
        .await;
    env.script(
        "fcm-gone",
        vec![Answer::new(
            404,
            json!({"error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "status": "NOT_FOUND",
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}],
            }}),
        )],
    );
    env.script(
        "apns-gone",
        vec![Answer::new(
            410,
            json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}),
        )],
    );
    fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 1)),
    )
    .await
    .unwrap();
    assert_eq!(env.tokens_of(&bob).await, vec!["apns-fine".to_string()]);
    assert_eq!(env.fcm().len(), 1, "an invalid token is not retried");
    assert_eq!(env.apns().len(), 2);
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_ends_in_the_dead_letters_once() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "iphone", PushPlatform::Apns, "apns-bad-topic")
        .await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-ok").await;
    env.script(
        "apns-bad-topic",
        vec![Answer::new(400, json!({"reason": "BadTopic"}))],
    );
    let id = event_id();
    let n = note(&bob, &alice, MessageType::Text, 1);
    let error = fn_push::handle(&env.push, notification_event(&id, &n))
        .await
        .unwrap_err();
    assert_eq!(
        error.http_status(),
        400,
        "not retried by the broker: {error}"
    );
    assert!(error.to_string().contains("BadTopic"), "{error}");
    assert_eq!(env.apns().len(), 1, "a permanent refusal is not retried");
    assert_eq!(env.fcm().len(), 1, "the other device got it");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.get_str("source").unwrap(), "push");
    assert_eq!(letter.get_str("kind").unwrap(), "messaging.notification");
    assert!(letter.get_str("error").unwrap().contains("BadTopic"));
    let payload: Value = serde_json::to_value(letter.get_document("payload").unwrap()).unwrap();
    assert_eq!(payload["event_id"], id);
    assert_eq!(payload["failed"][0]["target"]["device_id"], "iphone");
    assert!(
        !payload.to_string().contains("apns-bad-topic"),
        "no device tokens in dead letters"
    );
    // Redelivered (broker or Lambda retry): nothing is sent again, nothing recorded twice.
    fn_push::handle(&env.push, notification_event(&id, &n))
        .await
        .unwrap();
    assert_eq!(env.apns().len(), 1);
    assert_eq!(env.fcm().len(), 1);
    assert_eq!(env.dead_letters().await.len(), 1);
    assert_eq!(env.tokens_of(&bob).await.len(), 2, "tokens are kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_retried_with_backoff_then_dead_lettered() {
    let env = env_with(|o| {
        o.retry.max_attempts = 3;
        o.webhook = Some(webhook_options());
    })
    .await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-down")
        .await;
    let unavailable = Answer::new(
        503,
        json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
    );
    env.script("fcm-down", vec![unavailable.clone(); 5]);
    env.script(
        "webhook",
        vec![Answer::new(500, Value::Null), Answer::new(200, Value::Null)],
    );
    let error = fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 1)),
    )
    .await
    .unwrap_err();
    assert_eq!(error.http_status(), 400);
    let sends = env.fcm();
    assert_eq!(sends.len(), 3, "max_attempts");
    let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(20), "{gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(40),
        "exponential: {gaps:?}"
    );
    assert_eq!(env.webhook().len(), 2, "the webhook recovered on its retry");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0]
            .get_i64("attempts")
            .unwrap_or_else(|_| dead[0].get_i32("attempts").unwrap().into()),
        3
    );
    assert!(dead[0].get_str("error").unwrap().contains("UNAVAILABLE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_events_send_nothing_twice() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-dup")
        .await;
    env.device(&bob, "iphone", PushPlatform::Apns, "apns-dup")
        .await;
    let id = event_id();
    let n = note(&bob, &alice, MessageType::Text, 1);
    let (a, b) = tokio::join!(
        fn_push::handle(&env.push, notification_event(&id, &n)),
        fn_push::handle(&env.push, notification_event(&id, &n)),
    );
    // One sends; a delivery that comes while it is sending is asked to retry later (its
    // retry then finds the work done).
    assert!(a.is_ok() || b.is_ok(), "one of them sent: {a:?} {b:?}");
    for outcome in [a, b] {
        if let Err(e) = outcome {
            assert_eq!(e.code(), messaging::ErrorCode::Unavailable, "{e}");
        }
    }
    fn_push::handle(&env.push, notification_event(&id, &n))
        .await
        .unwrap();
    assert_eq!(env.fcm().len(), 1);
    assert_eq!(env.apns().len(), 1);
    // Another event for the same message and user is another notification.
    fn_push::handle(&env.push, notification_event(&event_id(), &n))
        .await
        .unwrap();
    assert_eq!(env.fcm().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_name_comes_from_the_event_or_the_store() {
    let env = env().await;
    let bob = env.user("Bob").await;
    env.device(&bob, "pixel", PushPlatform::Fcm, "fcm-names")
        .await;
    let mut named = note(&bob, "someone", MessageType::Text, 1);
    named.sender_name = Some("Carol".into());
    fn_push::handle(&env.push, notification_event(&event_id(), &named))
        .await
        .unwrap();
    let unknown = note(&bob, "nobody-known", MessageType::Location, 1);
    fn_push::handle(&env.push, notification_event(&event_id(), &unknown))
        .await
        .unwrap();
    let titles: HashSet<String> = env
        .fcm()
        .iter()
        .map(|s| {
            s.body["message"]["notification"]["title"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        titles,
        HashSet::from(["Carol".to_string(), "New message".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_other_types_or_without_data_are_refused() {
    let env = env().await;
    use cloudevents::{EventBuilder, EventBuilderV10};
    let event = EventBuilderV10::new()
        .id("x")
        .ty("messaging.message.received")
        .source("/test")
        .build()
        .unwrap();
    assert_eq!(
        fn_push::handle(&env.push, event)
            .await
            .unwrap_err()
            .http_status(),
        400
    );
    let event = EventBuilderV10::new()
        .id("y")
        .ty("messaging.notification")
        .source("/test")
        .build()
        .unwrap();
    assert_eq!(
        fn_push::handle(&env.push, event)
            .await
            .unwrap_err()
            .http_status(),
        400
    );
}

/// A browser's subscription to the local push service, and the browser's private key.
fn browser_subscription(
    env: &support::Env,
    name: &str,
) -> (String, aws_lc_rs::agreement::PrivateKey, [u8; 16]) {
    let browser =
        aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
    let auth = [name.len() as u8; 16];
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = json!({
        "endpoint": format!("{}/{name}", env.push_base),
        "keys": {
            "p256dh": b64.encode(browser.compute_public_key().unwrap().as_ref()),
            "auth": b64.encode(auth),
        },
    })
    .to_string();
    (token, browser, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_is_encrypted_to_the_browser_and_signed_with_vapid() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    let (token, browser, auth) = browser_subscription(&env, "bob-browser");
    env.device(&bob, "web-1", PushPlatform::Web, &token).await;

    let sent = note(&bob, &alice, MessageType::Voice, 2);
    fn_push::handle(&env.push, notification_event(&event_id(), &sent))
        .await
        .unwrap();

    let pushes = env.web_push();
    assert_eq!(pushes.len(), 1);
    let push = &pushes[0];
    assert_eq!(push.path, "/push/bob-browser");
    assert_eq!(push.header("content-encoding"), "aes128gcm");
    assert_eq!(push.header("urgency"), "high");
    assert!(push.header("ttl").parse::<u64>().unwrap() > 0);
    // VAPID (RFC 8292): a JWT for this push service's origin, signed by the key it names.
    let authorization = push.header("authorization");
    let (jwt, key) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .expect("authorization: vapid t=<JWT>, k=<key>");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(
        key,
        fn_push::webpush::public_key(&keys().ec_private).unwrap()
    );
    let point = b64.decode(key).unwrap();
    assert_eq!(point.len(), 65);
    let decoding = DecodingKey::from_ec_pem(keys().ec_public.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    let origin = env.push_base.trim_end_matches("/push").to_string();
    validation.set_audience(&[origin.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &decoding, &validation)
        .expect("VAPID token signed by the configured key")
        .claims;
    assert_eq!(claims["sub"], support::VAPID_SUBJECT);
    let lifetime = claims["exp"].as_i64().unwrap() - messaging::clock::now_ms() / 1000;
    assert!(lifetime > 0 && lifetime <= 24 * 3600, "{lifetime}");
    // RFC 8291: only the browser opens it; it says who and what, never the content.
    assert!(
        !push.raw.windows(5).any(|w| w == b"Alice"),
        "readable on the way"
    );
    let opened = fn_push::webpush::decrypt(&push.raw, &browser, &auth).unwrap();
    let body: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(body["title"], "Alice");
    assert_eq!(body["body"], "Voice message");
    assert_eq!(body["badge"], 2);
    assert_eq!(
        body["notification"]["conversation_id"],
        sent.conversation_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_and_unusable_web_subscriptions_are_removed_and_a_busy_one_retried() {
    let env = env().await;
    let alice = env.user("Alice").await;
    let bob = env.user("Bob").await;
    let (gone, _, _) = browser_subscription(&env, "gone");
    let (busy, _, _) = browser_subscription(&env, "busy");
    env.device(&bob, "web-old", PushPlatform::Web, &gone).await;
    env.device(&bob, "web-new", PushPlatform::Web, &busy).await;
    env.device(&bob, "web-odd", PushPlatform::Web, "not-a-subscription")
        .await;
    env.script("gone", vec![Answer::new(410, Value::Null)]);
    env.script(
        "busy",
        vec![Answer::new(429, Value::Null).with_header("retry-after", "1")],
    );
    fn_push::handle(
        &env.push,
        notification_event(&event_id(), &note(&bob, &alice, MessageType::Text, 1)),
    )
    .await
    .unwrap();
    assert_eq!(env.tokens_of(&bob).await, vec![busy]);
    let pushes = env.web_push();
    assert_eq!(
        pushes.iter().filter(|p| p.path.ends_with("/gone")).count(),
        1
    );
    let retried: Vec<_> = pushes
        .iter()
        .filter(|p| p.path.ends_with("/busy"))
        .collect();
    assert_eq!(retried.len(), 2, "429 is retried");
    assert!(
        retried[1].at - retried[0].at >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    assert!(env.dead_letters().await.is_empty());
}
