//! The key directory (end-to-end encryption) against real MongoDB and Redis: signatures checked
//! on upload, identity keys fixed per device, keys visible to contacts only, every one-time key
//! handed out once even to concurrent claims, the fallback key when none are left, and limits.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use messaging::e2ee::{CryptoDevice, KeyKind, SignedKey};
use serde_json::{Value, json};
use support::env;

/// The body publishing `device`'s identity with `one_time` keys and a fallback key.
fn publish_body(device: &mut CryptoDevice, one_time: usize) -> Value {
    let keys = device.device_keys();
    json!({
        "identity": keys.identity,
        "signature": keys.signature,
        "one_time_keys": device.new_one_time_keys(one_time),
        "fallback_key": device.new_fallback_key(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_signed_keys_and_its_identity_never_changes() {
    let env = env().await;
    let (alice, token) = env.quick_user("Alice").await;
    let mut phone = CryptoDevice::new(alice.clone(), "phone");
    let r = env
        .call(
            "PUT",
            "/v1/keys/phone",
            Some(&token),
            Some(publish_body(&mut phone, 20)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["one_time_key_count"], 20);
    assert_eq!(r.body["has_fallback_key"], true);

    // Topping up with the same identity adds keys.
    let r = env
        .call(
            "PUT",
            "/v1/keys/phone",
            Some(&token),
            Some(publish_body(&mut phone, 5)),
        )
        .await;
    assert_eq!(r.body["one_time_key_count"], 25, "{r:?}");

    // Other identity keys under the same device id: a conflict, until the device is deleted.
    let mut impostor = CryptoDevice::new(alice.clone(), "phone");
    let r = env
        .call(
            "PUT",
            "/v1/keys/phone",
            Some(&token),
            Some(publish_body(&mut impostor, 1)),
        )
        .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.body["error"]["code"], "conflict");
    assert_eq!(
        env.call("DELETE", "/v1/keys/phone", Some(&token), None)
            .await
            .status,
        204
    );
    assert_eq!(
        env.call("DELETE", "/v1/keys/phone", Some(&token), None)
            .await
            .status,
        404
    );
    let r = env
        .call(
            "PUT",
            "/v1/keys/phone",
            Some(&token),
            Some(publish_body(&mut impostor, 1)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["one_time_key_count"], 1,
        "the old device's keys went with it"
    );

    let r = env
        .call(
            "GET",
            &format!("/v1/users/{alice}/keys"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["devices"].as_array().unwrap().len(), 1);
    assert_eq!(
        r.body["devices"][0]["identity"]["ed25519"],
        impostor.device_keys().identity.ed25519
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_do_not_verify_are_refused_with_a_reason() {
    let env = env().await;
    let (alice, token) = env.quick_user("Alice").await;
    let mut phone = CryptoDevice::new(alice.clone(), "phone");
    let good = publish_body(&mut phone, 2);
    let put = |body: Value| {
        let env = &env;
        let token = token.clone();
        async move {
            env.call("PUT", "/v1/keys/phone", Some(&token), Some(body))
                .await
        }
    };

    // Signed as another device.
    let r = env
        .call("PUT", "/v1/keys/laptop", Some(&token), Some(good.clone()))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    // Signed by someone else for this user.
    let mut other = good.clone();
    other["identity"] = json!(
        CryptoDevice::new(alice.clone(), "phone")
            .device_keys()
            .identity
    );
    assert_eq!(put(other).await.status, 400);
    // A one-time key signed by another device, and a one-time key passed off as the fallback.
    let mut forged = good.clone();
    forged["one_time_keys"] = json!(CryptoDevice::new(alice.clone(), "phone").new_one_time_keys(1));
    assert_eq!(put(forged).await.status, 400);
    let mut swapped = good.clone();
    swapped["fallback_key"] = good["one_time_keys"][0].clone();
    assert_eq!(put(swapped).await.status, 400);
    // Not keys at all.
    let mut garbage = good.clone();
    garbage["identity"]["curve25519"] = json!("not base64!");
    let r = put(garbage).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "invalid_request");
    // The same key id twice.
    let mut twice = good.clone();
    let first = twice["one_time_keys"][0].clone();
    twice["one_time_keys"].as_array_mut().unwrap().push(first);
    assert_eq!(put(twice).await.status, 400);
    // More than 100 keys in one upload, then more than 200 stored.
    let mut many = good.clone();
    many["one_time_keys"] = json!(
        phone
            .new_one_time_keys(50)
            .into_iter()
            .chain(phone.new_one_time_keys(50))
            .chain(phone.new_one_time_keys(1))
            .collect::<Vec<SignedKey>>()
    );
    assert_eq!(put(many).await.status, 400);
    let mut stored = 0;
    for _ in 0..4 {
        let mut batch = good.clone();
        batch["one_time_keys"] = json!(phone.new_one_time_keys(50));
        let r = put(batch).await;
        assert_eq!(r.status, 200, "{r:?}");
        stored = r.body["one_time_key_count"].as_u64().unwrap();
    }
    assert_eq!(stored, 200);
    let mut over = good.clone();
    over["one_time_keys"] = json!(phone.new_one_time_keys(1));
    let r = put(over).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("200"));
    // Nothing of the refused uploads was stored.
    let r = env
        .call(
            "GET",
            &format!("/v1/users/{alice}/keys"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        r.body["devices"][0]["identity"],
        json!(phone.device_keys().identity)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_for_contacts_and_each_one_time_key_is_handed_out_once() {
    let env = env().await;
    let (alice, alice_t) = env.quick_user("Alice").await;
    let (_bob, bob_t) = env.quick_user("Bob").await;
    let (_eve, eve_t) = env.quick_user("Eve").await;
    let mut phone = CryptoDevice::new(alice.clone(), "phone");
    let body = publish_body(&mut phone, 10);
    let published: BTreeSet<String> = body["one_time_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    let fallback = body["fallback_key"]["key"].as_str().unwrap().to_string();
    assert_eq!(
        env.call("PUT", "/v1/keys/phone", Some(&alice_t), Some(body))
            .await
            .status,
        200
    );

    // A stranger sees nothing and claims nothing.
    let keys_path = format!("/v1/users/{alice}/keys");
    assert_eq!(
        env.call("GET", &keys_path, Some(&eve_t), None).await.status,
        404
    );
    let claim = json!({"devices": [{"user_id": alice, "device_id": "phone"}]});
    assert_eq!(
        env.call("POST", "/v1/keys/claim", Some(&eve_t), Some(claim.clone()))
            .await
            .status,
        404
    );

    env.direct(&bob_t, &alice).await;
    let r = env.call("GET", &keys_path, Some(&bob_t), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["devices"][0]["device_id"], "phone");

    // 25 claims at once for 10 one-time keys: 10 distinct one-time keys, then the fallback.
    let claims = (0..25).map(|_| {
        let env = &env;
        let claim = claim.clone();
        let bob_t = bob_t.clone();
        async move {
            env.call("POST", "/v1/keys/claim", Some(&bob_t), Some(claim))
                .await
        }
    });
    let answers = futures::future::join_all(claims).await;
    let mut one_time = Vec::new();
    let mut fallbacks = 0;
    let device = phone.device_keys();
    for r in answers {
        assert_eq!(r.status, 200, "{r:?}");
        let claimed = &r.body["keys"][0];
        let key: SignedKey = serde_json::from_value(claimed["key"].clone()).unwrap();
        if claimed["fallback"] == true {
            assert_eq!(key.key, fallback);
            key.verify(KeyKind::Fallback, &alice, "phone", &device.identity.ed25519)
                .unwrap();
            fallbacks += 1;
        } else {
            key.verify(KeyKind::OneTime, &alice, "phone", &device.identity.ed25519)
                .unwrap();
            one_time.push(key.key);
        }
    }
    let distinct: BTreeSet<String> = one_time.iter().cloned().collect();
    assert_eq!(one_time.len(), 10, "every one-time key handed out");
    assert_eq!(distinct, published, "each exactly once");
    assert_eq!(fallbacks, 15);

    // A device that published nothing is reported missing; too many devices is refused.
    let r = env
        .call(
            "POST",
            "/v1/keys/claim",
            Some(&bob_t),
            Some(json!({"devices": [{"user_id": alice, "device_id": "tablet"}]})),
        )
        .await;
    assert_eq!(r.body["missing"][0]["device_id"], "tablet", "{r:?}");
    let too_many: Vec<Value> = (0..201)
        .map(|i| json!({"user_id": alice, "device_id": format!("d{i}")}))
        .collect();
    let r = env
        .call(
            "POST",
            "/v1/keys/claim",
            Some(&bob_t),
            Some(json!({"devices": too_many})),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_to_a_device_publishes_for_that_device_only() {
    let env = env().await;
    let (alice, _) = env.quick_user("Alice").await;
    let mut claims = env.issuer.claims(&alice, Duration::from_secs(600));
    claims.device_id = Some("phone".into());
    let phone_token = env.issuer.sign(&claims).unwrap();
    let mut laptop = CryptoDevice::new(alice.clone(), "laptop");
    let r = env
        .call(
            "PUT",
            "/v1/keys/laptop",
            Some(&phone_token),
            Some(publish_body(&mut laptop, 1)),
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let mut phone = CryptoDevice::new(alice.clone(), "phone");
    let r = env
        .call(
            "PUT",
            "/v1/keys/phone",
            Some(&phone_token),
            Some(publish_body(&mut phone, 1)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_has_at_most_thirty_two_devices_with_keys() {
    let env = env().await;
    let (alice, token) = env.quick_user("Alice").await;
    for i in 0..32 {
        let mut device = CryptoDevice::new(alice.clone(), format!("d{i}"));
        let r = env
            .call(
                "PUT",
                &format!("/v1/keys/d{i}"),
                Some(&token),
                Some(publish_body(&mut device, 1)),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let mut one_more = CryptoDevice::new(alice.clone(), "d32");
    let r = env
        .call(
            "PUT",
            "/v1/keys/d32",
            Some(&token),
            Some(publish_body(&mut one_more, 1)),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("32"));
    // One deleted makes room.
    assert_eq!(
        env.call("DELETE", "/v1/keys/d0", Some(&token), None)
            .await
            .status,
        204
    );
    let r = env
        .call(
            "PUT",
            "/v1/keys/d32",
            Some(&token),
            Some(publish_body(&mut one_more, 1)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
