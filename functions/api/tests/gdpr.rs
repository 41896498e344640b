//! Personal data over the API against real Redis and MongoDB: the export holds everything, the
//! erasure leaves nothing that names the person while others keep their histories.

mod support;

use futures::TryStreamExt;
use messaging::realtime::{ConnectionInfo, RealtimeState};
use messaging::store::{
    ConversationStore, DeliveryStore, KeyDirectoryStore, MessageStore, ToDeviceStore,
};
use mongodb::bson::Document;
use serde_json::json;
use support::{access, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_complete_and_erasure_leaves_no_personal_data() {
    let env = env().await;
    let marker = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let name = format!("Zelda {marker}");
    let phone = "+4915112345678";
    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"phone": phone, "name": name, "password": "a long password"})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let r = env
        .call(
            "POST",
            "/v1/auth/verify",
            None,
            Some(json!({"phone": phone, "code": env.last_code(phone), "device_id": "zphone"})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let zelda = r.body["user"]["user_id"].as_str().unwrap().to_string();
    let token = access(&r.body);
    let r = env
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(json!({"phone": phone, "password": "a long password"})),
        )
        .await;
    assert_eq!(r.status, 200);
    env.call(
        "PATCH",
        "/v1/me",
        Some(&token),
        Some(json!({"avatar_url": format!("https://cdn.example.com/{marker}.png")})),
    )
    .await;
    let r = env
        .call(
            "PUT",
            "/v1/devices/zphone",
            Some(&token),
            Some(json!({"platform": "apns", "token": format!("apns-{marker}")})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    let (bob, bob_token) = env.quick_user("Bob").await;
    let (cy, _) = env.quick_user("Cy").await;
    let direct = env.direct(&token, &bob).await;
    for sender in [&zelda, &bob, &zelda] {
        env.message(&direct, sender).await;
    }
    let r = env
        .call(
            "POST",
            "/v1/groups",
            Some(&token),
            Some(json!({"name": "Trio", "participants": [&bob, &cy]})),
        )
        .await;
    assert_eq!(r.status, 201);
    let group = r.body["conversation_id"].as_str().unwrap().to_string();
    let mut zelda_group_seqs = Vec::new();
    for sender in [&zelda, &bob, &zelda, &cy] {
        let seq = env.message(&group, sender).await;
        if *sender == zelda {
            zelda_group_seqs.push(seq);
        }
    }
    env.call_with(
        "POST",
        "/v1/agents",
        None,
        Some(json!({"agent_id": "helper", "name": "Helper"})),
        &[("x-operator-key", support::OPERATOR_KEY)],
    )
    .await;
    let agent_conv = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&token),
            Some(json!({"agent_id": "helper"})),
        )
        .await
        .body["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.message(&agent_conv, &zelda).await;
    env.message(&agent_conv, "helper").await;
    env.call(
        "PATCH",
        &format!("/v1/conversations/{direct}"),
        Some(&token),
        Some(json!({"pinned": true})),
    )
    .await;
    // Receipts by Zelda on Bob's message.
    let bob_msgs = env.store.messages_in_range(&direct, 2, 2, 1).await.unwrap();
    env.store
        .record_receipts(
            &[bob_msgs[0].message_id.clone()],
            None,
            &zelda,
            messaging::protocol::MessageStatus::Read,
        )
        .await
        .unwrap();

    // ---- Export ----
    let r = env.call("GET", "/v1/me/export", Some(&token), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let export = r.body;
    assert_eq!(export["format"], "messaging-export/1");
    assert_eq!(export["profile"]["user_id"], zelda.as_str());
    assert_eq!(export["profile"]["phone"], phone);
    assert_eq!(export["profile"]["name"], name.as_str());
    assert!(
        export["profile"]["avatar_url"]
            .as_str()
            .unwrap()
            .contains(&marker)
    );
    assert_eq!(export["has_password"], true);
    assert_eq!(export["sessions"].as_array().unwrap().len(), 2);
    assert!(export["sessions"][0].get("token_hash").is_none());
    assert_eq!(export["devices"][0]["token"], format!("apns-{marker}"));
    let kinds: std::collections::BTreeMap<String, serde_json::Value> = export["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    assert_eq!(kinds.len(), 3, "{export}");
    assert_eq!(kinds["direct"]["pinned"], true);
    assert_eq!(kinds["group"]["role"], "admin");
    assert_eq!(kinds["agent"]["agent_id"], "helper");
    assert_eq!(kinds["direct"]["read_up_to"], 3);
    let sent = export["messages_sent"].as_array().unwrap();
    assert_eq!(sent.len(), 5, "2 direct + 2 group + 1 agent");
    assert!(sent.iter().all(|m| m["sender_id"] == zelda.as_str()));
    assert!(
        !export.to_string().contains("$argon2"),
        "no hashes in the export"
    );

    // What her phone received (MongoDB), a live connection and presence (Redis).
    env.store
        .advance_cursor(&zelda, "zphone", &direct, 2)
        .await
        .unwrap();
    env.redis
        .register_connection(&ConnectionInfo {
            connection_id: format!("conn-{marker}"),
            user_id: zelda.clone(),
            device_id: "zphone".into(),
            connected_at: messaging::clock::now_ms(),
        })
        .await
        .unwrap();
    env.redis.set_offline(&zelda, 1).await.unwrap();

    // Her device's keys, and key material she sent that bob's device has not fetched yet.
    let mut zphone = messaging::e2ee::CryptoDevice::new(zelda.clone(), "zphone");
    let keys = zphone.device_keys();
    let r = env
        .call(
            "PUT",
            "/v1/keys/zphone",
            Some(&token),
            Some(
                json!({"identity": keys.identity, "signature": keys.signature,
                        "one_time_keys": zphone.new_one_time_keys(3),
                        "fallback_key": zphone.new_fallback_key()}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let bphone = messaging::e2ee::CryptoDevice::new(bob.clone(), "bphone");
    env.store
        .publish_device(&bphone.device_keys())
        .await
        .unwrap();
    env.store
        .queue_to_device(
            &zelda,
            "zphone",
            &[messaging::protocol::OutgoingToDevice {
                message_id: "from-zelda".into(),
                user_id: bob.clone(),
                device_id: "bphone".into(),
                content: "ciphertext".into(),
            }],
            1,
        )
        .await
        .unwrap();

    // ---- Erasure ----
    let r = env.call("DELETE", "/v1/me", Some(&token), None).await;
    assert_eq!(r.status, 204, "{r:?}");

    // Nothing in MongoDB names her.
    let db = env.store.database();
    let needles = [zelda.as_str(), phone, name.as_str(), marker.as_str()];
    for collection in db.list_collection_names().await.unwrap() {
        let docs: Vec<Document> = db
            .collection::<Document>(&collection)
            .find(mongodb::bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for d in docs {
            let text = d.to_string();
            for needle in needles {
                assert!(
                    !text.contains(needle),
                    "{collection} still holds `{needle}`: {text}"
                );
            }
        }
    }
    // Nothing in Redis either.
    let mut conn = env.redis.connection_manager();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        assert!(!key.contains(&zelda), "redis key {key}");
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind == "hash" {
            let fields: Vec<String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(
                !fields.iter().any(|f| f.contains(&zelda)),
                "redis hash {key}"
            );
        }
    }

    // Bob keeps both histories, every sequence number, her messages as a deleted user.
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{group}/messages"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let messages = r.body["messages"].as_array().unwrap();
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    let tombstones: std::collections::HashSet<&str> = messages
        .iter()
        .filter(|m| zelda_group_seqs.contains(&m["sequence_number"].as_u64().unwrap()))
        .map(|m| m["sender_id"].as_str().unwrap())
        .collect();
    assert_eq!(tombstones.len(), 1);
    let tombstone = *tombstones.iter().next().unwrap();
    assert!(tombstone.starts_with("deleted-user-"));
    let r = env
        .call(
            "GET",
            &format!("/v1/groups/{group}"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(
        r.body["your_role"], "admin",
        "Bob was promoted when she left"
    );
    assert_eq!(r.body["participants"].as_array().unwrap().len(), 2);
    assert!(
        env.system_events(&group)
            .iter()
            .any(|e| e["event"] == "account_deleted" && e["user"] == tombstone)
    );
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{direct}/messages"),
            Some(&bob_token),
            None,
        )
        .await;
    let senders: Vec<&str> = r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sender_id"].as_str().unwrap())
        .collect();
    assert_eq!(senders, vec![tombstone, bob.as_str(), tombstone]);
    let r = env
        .call(
            "GET",
            &format!("/v1/conversations/{direct}"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(r.body["title"], "Deleted user");
    // Her agent conversation is gone entirely.
    assert!(env.store.conversation(&agent_conv).await.unwrap().is_none());
    assert!(
        env.store
            .messages_in_range(&agent_conv, 1, 10, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Her still-unexpired access token can no longer do anything.
    assert_eq!(
        env.call("GET", "/v1/me", Some(&token), None).await.status,
        404
    );
    let r = env
        .call(
            "POST",
            "/v1/conversations",
            Some(&token),
            Some(json!({"user_id": bob})),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        env.call("DELETE", "/v1/me", Some(&token), None)
            .await
            .status,
        404
    );
    // The phone number is free again.
    let r = env
        .call(
            "POST",
            "/v1/auth/register",
            None,
            Some(json!({"phone": phone, "name": "New"})),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
}
