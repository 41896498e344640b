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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_publishes_keys_and_exchanges_to_device_messages_over_http() {
    use messaging::e2ee::device::DeviceMessage;
    let env = env().await;
    let (alice, alice_t) = env.quick_user("Alice").await;
    let (eve, _) = env.quick_user("Eve").await;
    let agent_id = format!("helper-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let r = env
        .call(
            "POST",
            "/v1/agents",
            Some(&env.operator_token()),
            Some(json!({"agent_id": agent_id, "name": "Helper", "description": "helps"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let agent_t = env
        .issuer
        .issue(&agent_id, Duration::from_secs(600))
        .unwrap();

    // An agent token publishes keys for the agent (no account needed: it is registered).
    let mut worker = CryptoDevice::new(agent_id.clone(), "worker");
    let r = env
        .call(
            "PUT",
            "/v1/keys/worker",
            Some(&agent_t),
            Some(publish_body(&mut worker, 5)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut phone = CryptoDevice::new(alice.clone(), "phone");
    let r = env
        .call(
            "PUT",
            "/v1/keys/phone",
            Some(&alice_t),
            Some(publish_body(&mut phone, 5)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Before a conversation in common the agent reaches nobody.
    let room_key = |worker: &mut CryptoDevice, conversation: &str| {
        let phone_keys = phone.device_keys();
        let members = [agent_id.clone(), alice.clone()].into_iter().collect();
        let share =
            worker.room_key_for(conversation, &members, std::slice::from_ref(&phone_keys), 0);
        worker.room_key_message(conversation, &share, &phone_keys)
    };
    let claim = json!({"devices": [{"user_id": alice, "device_id": "phone"}]});
    assert_eq!(
        env.call(
            "POST",
            "/v1/keys/claim",
            Some(&agent_t),
            Some(claim.clone())
        )
        .await
        .status,
        404
    );
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&alice_t),
            Some(json!({"agent_id": agent_id})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let chat = r.body["conversation_id"].as_str().unwrap().to_string();

    // The agent claims one of alice's keys and sends her phone a room key over HTTP.
    let r = env
        .call("POST", "/v1/keys/claim", Some(&agent_t), Some(claim))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let key: SignedKey = serde_json::from_value(r.body["keys"][0]["key"].clone()).unwrap();
    let message = room_key(&mut worker, &chat);
    let content = worker
        .encrypt_to_device(
            &phone.device_keys(),
            Some((&key, KeyKind::OneTime)),
            &message,
        )
        .unwrap();
    let send = json!({"messages": [
        {"message_id": "k-1", "user_id": alice, "device_id": "phone", "content": content}
    ]});
    for _ in 0..2 {
        // Sent twice (a retry): stored once.
        let r = env
            .call(
                "POST",
                "/v1/keys/worker/to_device",
                Some(&agent_t),
                Some(send.clone()),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["message_ids"], json!(["k-1"]));
    }

    // Alice's phone reads its queue over HTTP too, opens the key, and acknowledges it.
    let r = env
        .call("GET", "/v1/keys/phone/to_device", Some(&alice_t), None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["has_more"], false);
    let items = r.body["messages"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{r:?}");
    assert_eq!(items[0]["sender_id"], agent_id.as_str());
    assert_eq!(items[0]["sender_device_id"], "worker");
    let opened = phone
        .decrypt_to_device(&agent_id, "worker", items[0]["content"].as_str().unwrap())
        .unwrap();
    let DeviceMessage::RoomKey(room) = opened.message;
    assert_eq!(room.conversation_id, chat);
    assert_eq!(opened.sender_key, worker.device_keys().identity.curve25519);
    let sequence = items[0]["sequence"].as_u64().unwrap();
    let r = env
        .call(
            "POST",
            "/v1/keys/phone/to_device/ack",
            Some(&alice_t),
            Some(json!({"sequences": [sequence]})),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = env
        .call("GET", "/v1/keys/phone/to_device", Some(&alice_t), None)
        .await;
    assert_eq!(r.body["messages"], json!([]), "acknowledged means gone");

    // Refusals, each with its reason, and nothing stored by any of them.
    let olm = content.clone();
    let cases = [
        // A stranger's device.
        (
            &agent_t,
            "/v1/keys/worker/to_device",
            json!({"messages": [{"message_id": "x", "user_id": eve, "device_id": "phone", "content": olm}]}),
            404,
        ),
        // Plaintext is not key material.
        (
            &agent_t,
            "/v1/keys/worker/to_device",
            json!({"messages": [{"message_id": "x", "user_id": alice, "device_id": "phone", "content": "hello"}]}),
            400,
        ),
        // Nothing to send.
        (
            &agent_t,
            "/v1/keys/worker/to_device",
            json!({"messages": []}),
            400,
        ),
        // Nothing to acknowledge.
        (
            &alice_t,
            "/v1/keys/phone/to_device/ack",
            json!({"sequences": []}),
            400,
        ),
    ];
    for (token, path, body, status) in cases {
        let r = env
            .call("POST", path, Some(token), Some(body.clone()))
            .await;
        assert_eq!(r.status, status, "{path} {body}: {r:?}");
        assert!(r.body["error"]["message"].is_string(), "{r:?}");
    }
    let r = env
        .call("GET", "/v1/keys/phone/to_device", Some(&alice_t), None)
        .await;
    assert_eq!(r.body["messages"], json!([]), "refusals store nothing");
    assert_eq!(
        env.call("GET", "/v1/keys/phone/to_device", None, None)
            .await
            .status,
        401
    );

    // A token issued to another device reads and sends for that device only.
    let mut claims = env.issuer.claims(&alice, Duration::from_secs(600));
    claims.device_id = Some("laptop".into());
    let laptop_t = env.issuer.sign(&claims).unwrap();
    assert_eq!(
        env.call("GET", "/v1/keys/phone/to_device", Some(&laptop_t), None)
            .await
            .status,
        403
    );
}
