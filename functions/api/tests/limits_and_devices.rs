//! Per-user and per-address rate limits (429 with Retry-After) in real Redis, and push device
//! tokens in real MongoDB.

mod support;

use messaging::realtime::RateLimit;
use messaging::store::DeviceStore;
use serde_json::json;
use std::time::Duration;
use support::{email, env, env_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_rate_limited_per_user_and_per_address() {
    let env = env_with(|o, _| {
        o.rate_limit = RateLimit {
            max: 3,
            window: Duration::from_secs(60),
        };
        o.auth_rate_limit = RateLimit {
            max: 2,
            window: Duration::from_secs(60),
        };
    })
    .await;
    let (_, alice) = env.quick_user("Alice").await;
    let (_, bob) = env.quick_user("Bob").await;
    for _ in 0..3 {
        let r = env.call("GET", "/v1/me", Some(&alice), None).await;
        assert_eq!(r.status, 200);
        assert!(r.headers.get("x-ratelimit-remaining").is_some());
    }
    // Any route counts against the same budget.
    let r = env
        .call("GET", "/v1/conversations", Some(&alice), None)
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.body["error"]["code"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Bob has his own budget.
    assert_eq!(
        env.call("GET", "/v1/me", Some(&bob), None).await.status,
        200
    );

    // Without a token: per client address...
    let login = |ip: &'static str, who: String| {
        let env = &env;
        async move {
            env.call_with(
                "POST",
                "/v1/auth/login",
                None,
                Some(json!({"email": who, "password": "whatever1"})),
                &[("x-forwarded-for", ip)],
            )
            .await
        }
    };
    assert_eq!(login("10.0.0.1", email("a")).await.status, 401);
    assert_eq!(login("10.0.0.1", email("b")).await.status, 401);
    let r = login("10.0.0.1", email("c")).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(login("10.0.0.2", email("d")).await.status, 401);
    // ...and per phone number or email, whatever the address.
    let target = email("target");
    assert_eq!(login("10.0.1.1", target.clone()).await.status, 401);
    assert_eq!(login("10.0.1.2", target.clone()).await.status, 401);
    assert_eq!(login("10.0.1.3", target.clone()).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tokens_register_move_and_unregister() {
    let env = env().await;
    let (alice, alice_t) = env.quick_user("Alice").await;
    let (_, bob_t) = env.quick_user("Bob").await;
    let r = env
        .call(
            "PUT",
            "/v1/devices/pixel-7",
            Some(&alice_t),
            Some(json!({"platform": "fcm", "token": "fcm-token-1"})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["platform"], "fcm");
    let r = env
        .call(
            "PUT",
            "/v1/devices/pixel-7",
            Some(&alice_t),
            Some(json!({"platform": "fcm", "token": "fcm-token-2"})),
        )
        .await;
    assert_eq!(
        r.body["token"], "fcm-token-2",
        "re-registering replaces the token"
    );
    env.call(
        "PUT",
        "/v1/devices/ipad",
        Some(&alice_t),
        Some(json!({"platform": "apns", "token": "apns-1"})),
    )
    .await;
    let r = env.call("GET", "/v1/devices", Some(&alice_t), None).await;
    let devices: Vec<&str> = r.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(devices, vec!["ipad", "pixel-7"]);
    // The iPad changes hands: its token now belongs to Bob only.
    let r = env
        .call(
            "PUT",
            "/v1/devices/ipad",
            Some(&bob_t),
            Some(json!({"platform": "apns", "token": "apns-1"})),
        )
        .await;
    assert_eq!(r.status, 200);

    let alice_devices = env.store.devices_of(&alice).await.unwrap();
    assert_eq!(alice_devices.len(), 1);
    assert_eq!(alice_devices[0].token, "fcm-token-2");
    // Unregister.
    assert_eq!(
        env.call("DELETE", "/v1/devices/pixel-7", Some(&alice_t), None)
            .await
            .status,
        204
    );
    assert_eq!(
        env.call("DELETE", "/v1/devices/pixel-7", Some(&alice_t), None)
            .await
            .status,
        404
    );
    // Bad input.
    for body in [
        json!({"platform": "blackberry", "token": "x"}),
        json!({"platform": "fcm", "token": ""}),
        json!({"platform": "fcm"}),
    ] {
        let r = env
            .call("PUT", "/v1/devices/d1", Some(&alice_t), Some(body))
            .await;
        assert_eq!(r.status, 400, "{r:?}");
    }
    let r = env
        .call(
            "PUT",
            "/v1/devices/bad%20id",
            Some(&alice_t),
            Some(json!({"platform": "fcm", "token": "t"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(env.call("GET", "/v1/devices", None, None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_registers_its_web_push_subscription() {
    let env = env().await;
    let (alice, alice_t) = env.quick_user("Alice").await;
    let keys = json!({
        "p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        "auth": "BTBZMqHH6r4Tts7J_aSIgg",
    });
    let subscription =
        json!({"endpoint": "https://push.example.com/send/abc", "keys": keys}).to_string();
    let r = env
        .call(
            "PUT",
            "/v1/devices/web-1",
            Some(&alice_t),
            Some(json!({"platform": "web", "token": subscription})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["platform"], "web");
    let stored = env.store.devices_of(&alice).await.unwrap();
    assert_eq!(stored[0].token, subscription);
    // Like FCM and APNs tokens, a subscription is the provider's to judge: one that is no
    // subscription is accepted here (the schema allows any token) and removed by the push
    // function at its first notification (fn-push's tests).
}
