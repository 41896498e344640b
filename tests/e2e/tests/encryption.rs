//! End-to-end encryption through the whole local stack: keys published and claimed over the
//! HTTP API, room keys sent device to device with `to_device` (live, and queued for a device
//! that is offline), messages sealed with Megolm, and nothing readable left on the server.
//! The frames are written by hand (`RawWs`), so the wire format is what is tested.

use std::collections::BTreeSet;

use e2e::{RawWs, WAIT, conversation, stack, token, user};
use local_stack::stack::RunningStack;
use messaging::e2ee::KeyDirectory;
use messaging::e2ee::client::{EncryptedClient, EncryptedEvent};
use messaging::e2ee::device::{DeviceMessage, Plaintext};
use messaging::e2ee::{CryptoDevice, CryptoError, DeviceKeys, Envelope, KeyKind, SignedKey};
use messaging::model::ConversationKind;
use messaging::protocol::{MessageBody, MessageType, ServerFrame};
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

/// Calls the stack's HTTP API as `user_id`.
async fn api(
    stack: &RunningStack,
    user_id: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", stack.api_url);
    let mut request = match method {
        "PUT" => client.put(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    }
    .bearer_auth(token(stack, user_id));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("api answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Publishes `device`'s identity with `one_time` keys and a fallback key.
async fn publish(stack: &RunningStack, device: &mut CryptoDevice, one_time: usize) {
    let keys = device.device_keys();
    let body = json!({
        "identity": keys.identity,
        "signature": keys.signature,
        "one_time_keys": device.new_one_time_keys(one_time),
        "fallback_key": device.new_fallback_key(),
    });
    let path = format!("/v1/keys/{}", device.device_id());
    let (status, answer) = api(stack, device.user_id(), "PUT", &path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
}

/// Shares `sender`'s room key for `conversation` with every member device that lacks it
/// (claiming keys where there is no Olm session yet), over a `to_device` frame on `ws`.
async fn share_room_key(
    stack: &RunningStack,
    sender: &mut CryptoDevice,
    ws: &mut RawWs,
    conversation: &str,
    members: &[&str],
) -> Value {
    let mut devices: Vec<DeviceKeys> = Vec::new();
    for member in members {
        let (status, answer) = api(
            stack,
            sender.user_id(),
            "GET",
            &format!("/v1/users/{member}/keys"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        devices
            .extend(serde_json::from_value::<Vec<DeviceKeys>>(answer["devices"].clone()).unwrap());
    }
    let members: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
    let share = sender.room_key_for(conversation, &members, &devices, messaging::clock::now_ms());
    let wanted: Vec<Value> = share
        .missing
        .iter()
        .filter(|d| !sender.has_session_with(d))
        .map(|d| json!({"user_id": d.user_id, "device_id": d.device_id}))
        .collect();
    let mut claimed: Vec<(String, String, SignedKey, bool)> = Vec::new();
    if !wanted.is_empty() {
        let (status, answer) = api(
            stack,
            sender.user_id(),
            "POST",
            "/v1/keys/claim",
            Some(json!({"devices": wanted})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        for key in answer["keys"].as_array().unwrap() {
            claimed.push((
                key["user_id"].as_str().unwrap().into(),
                key["device_id"].as_str().unwrap().into(),
                serde_json::from_value(key["key"].clone()).unwrap(),
                key["fallback"] == true,
            ));
        }
    }
    let mut messages = Vec::new();
    for device in &share.missing {
        let key = claimed
            .iter()
            .find(|(u, d, ..)| *u == device.user_id && *d == device.device_id)
            .map(|(_, _, key, fallback)| {
                (
                    key,
                    if *fallback {
                        KeyKind::Fallback
                    } else {
                        KeyKind::OneTime
                    },
                )
            });
        let message = sender.room_key_message(conversation, &share, device);
        let content = sender.encrypt_to_device(device, key, &message).unwrap();
        messages.push(json!({
            "message_id": uuid::Uuid::new_v4().to_string(),
            "user_id": device.user_id,
            "device_id": device.device_id,
            "content": content,
        }));
        sender.shared_with(conversation, device);
    }
    let frame = json!({"type": "to_device", "messages": messages});
    ws.send(frame.to_string()).await;
    let sent = ws.expect("to_device_sent").await;
    assert_eq!(
        sent["message_ids"].as_array().unwrap().len(),
        messages.len(),
        "{sent}"
    );
    frame
}

/// Opens every `to_device` message of `frame` on `device`, keeps the room keys, acknowledges.
async fn receive_keys(device: &mut CryptoDevice, ws: &mut RawWs, frame: &Value) -> usize {
    let items = frame["payload"]["messages"].as_array().unwrap();
    let mut sequences = Vec::new();
    for item in items {
        let opened = device
            .decrypt_to_device(
                item["sender_id"].as_str().unwrap(),
                item["sender_device_id"].as_str().unwrap(),
                item["content"].as_str().unwrap(),
            )
            .unwrap();
        let DeviceMessage::RoomKey(key) = opened.message;
        device.accept_room_key(&key, &opened.sender_key).unwrap();
        sequences.push(item["sequence"].as_u64().unwrap());
    }
    ws.send(json!({"type": "to_device_ack", "sequences": sequences}).to_string())
        .await;
    items.len()
}

/// A raw connection of `user_id`'s `device`, synced (`auth_success` seen).
async fn connect(stack: &RunningStack, user_id: &str, device: &str) -> RawWs {
    let mut ws = RawWs::connect(stack, Some(&token(stack, user_id)), device).await;
    ws.send(json!({"type": "sync", "since": {}}).to_string())
        .await;
    ws.expect("auth_success").await;
    ws
}

fn sealed(device: &mut CryptoDevice, conversation: &str, text: &str) -> String {
    device
        .encrypt(&Plaintext {
            conversation_id: conversation.into(),
            content: text.into(),
            extra: Value::Null,
        })
        .unwrap()
}

async fn send(ws: &mut RawWs, conversation: &str, content: &str) -> Value {
    ws.send(
        json!({
            "type": "message",
            "idempotency_key": uuid::Uuid::new_v4().to_string(),
            "payload": {"conversation_id": conversation, "content": content, "timestamp": 1},
        })
        .to_string(),
    )
    .await;
    ws.expect("message_ack").await
}

/// Everything the stack logs in this test process (every test's), from the first call on.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every value under the stack's Redis prefix, as text.
async fn everything_in_redis(stack: &RunningStack) -> String {
    let client = redis::Client::open(testkit::servers().redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", stack.config.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => redis::Value::Nil,
        };
        all.push_str(&format!("{key} {value:?}\n"));
    }
    all
}

/// Asserts that none of `plaintexts` is readable anywhere the server keeps or writes things:
/// MongoDB, every Redis value under the stack's prefix, the S3 objects, and the logs captured
/// so far (from the first `captured_logs()` of any test in this process).
async fn assert_nowhere(stack: &RunningStack, plaintexts: &[&str]) {
    let stored = everything_stored(stack).await;
    let cached = everything_in_redis(stack).await;
    let objects = String::from_utf8_lossy(&everything_in_s3(stack)).to_string();
    let logged = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    for plaintext in plaintexts {
        assert!(
            !stored.contains(plaintext),
            "{plaintext:?} is readable in MongoDB"
        );
        assert!(
            !cached.contains(plaintext),
            "{plaintext:?} is readable in Redis"
        );
        assert!(
            !objects.contains(plaintext),
            "{plaintext:?} is readable in S3"
        );
        assert!(!logged.contains(plaintext), "{plaintext:?} is in the logs");
    }
}

/// Every document of every collection, as text.
async fn everything_stored(stack: &RunningStack) -> String {
    let db = stack.mongo.database();
    let mut all = String::new();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<Document> = futures::TryStreamExt::try_collect(
            db.collection::<Document>(&name)
                .find(doc! {})
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        for d in docs {
            all.push_str(&d.to_string());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_chat_is_readable_on_every_device_and_nowhere_else() {
    let logs = captured_logs();
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let chat = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = CryptoDevice::new(alice.clone(), "phone");
    let mut bob_phone = CryptoDevice::new(bob.clone(), "phone");
    let mut bob_laptop = CryptoDevice::new(bob.clone(), "laptop");
    let mut alice_ws = connect(&stack, &alice, "phone").await;
    publish(&stack, &mut alice_phone, 10).await;
    let mut bob_ws = connect(&stack, &bob, "phone").await;
    publish(&stack, &mut bob_phone, 10).await;
    // Alice hears of her own new device, then of bob's.
    loop {
        let told = alice_ws.expect("device_list").await;
        if told["payload"]["user_id"] == bob.as_str() {
            break;
        }
        assert_eq!(told["payload"]["user_id"], alice.as_str());
    }
    // The laptop publishes keys, then goes away.
    publish(&stack, &mut bob_laptop, 10).await;

    let sent = share_room_key(
        &stack,
        &mut alice_phone,
        &mut alice_ws,
        &chat,
        &[&alice, &bob],
    )
    .await;
    // Bob's phone gets its key at once; the laptop's waits in MongoDB.
    let keys = bob_ws.expect("to_device").await;
    assert_eq!(receive_keys(&mut bob_phone, &mut bob_ws, &keys).await, 1);
    let secret = "the eagle lands at noon";
    let content = sealed(&mut alice_phone, &chat, secret);
    send(&mut alice_ws, &chat, &content).await;
    let message = bob_ws.expect("message").await;
    let plaintext = bob_phone
        .decrypt(
            &chat,
            &alice,
            "m",
            message["payload"]["content"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(plaintext.content, secret);

    // The same to_device frame again (a retry): answered, stored once, delivered again.
    alice_ws.send(sent.to_string()).await;
    alice_ws.expect("to_device_sent").await;
    let queued = stack
        .mongo
        .database()
        .collection::<Document>("to_device")
        .count_documents(doc! {"user_id": &bob, "device_id": "laptop"})
        .await
        .unwrap();
    assert_eq!(queued, 1, "a retry stores nothing twice");
    let phone_queue = stack
        .mongo
        .database()
        .collection::<Document>("to_device")
        .count_documents(
            doc! {"user_id": &bob, "device_id": "phone", "acked_at": {"$exists": true}},
        )
        .await
        .unwrap();
    assert_eq!(phone_queue, 1, "a retry after the ack finds the tombstone");

    // The laptop connects: its key comes before the message that needs it.
    let mut laptop_ws = connect(&stack, &bob, "laptop").await;
    let mut got_key = false;
    loop {
        let frame = laptop_ws
            .next(WAIT)
            .await
            .expect("the laptop's queue arrives");
        match frame["type"].as_str().unwrap() {
            "to_device" => {
                receive_keys(&mut bob_laptop, &mut laptop_ws, &frame).await;
                got_key = true;
            }
            "messages" => {
                assert!(got_key, "key material first: {frame}");
                let content = frame["payload"]["messages"][0]["content"].as_str().unwrap();
                assert_eq!(
                    bob_laptop
                        .decrypt(&chat, &alice, "m", content)
                        .unwrap()
                        .content,
                    secret
                );
                break;
            }
            _ => {}
        }
    }
    // Acknowledged: the content is gone from the queue (a tombstone keeps retries idempotent).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = stack
            .mongo
            .database()
            .collection::<Document>("to_device")
            .count_documents(doc! {"user_id": &bob, "content": {"$ne": ""}})
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let docs: Vec<Document> = futures::TryStreamExt::try_collect(
                stack
                    .mongo
                    .database()
                    .collection::<Document>("to_device")
                    .find(doc! {})
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
            panic!("{left} to_device messages left after their acks: {docs:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Bob answers from the laptop: a session of its own, shared with alice (and bob's phone).
    share_room_key(
        &stack,
        &mut bob_laptop,
        &mut laptop_ws,
        &chat,
        &[&alice, &bob],
    )
    .await;
    let keys = alice_ws.expect("to_device").await;
    receive_keys(&mut alice_phone, &mut alice_ws, &keys).await;
    let reply = "roger, noon it is";
    send(
        &mut laptop_ws,
        &chat,
        &sealed(&mut bob_laptop, &chat, reply),
    )
    .await;
    let message = alice_ws.expect("message").await;
    assert_eq!(
        alice_phone
            .decrypt(
                &chat,
                &bob,
                "m",
                message["payload"]["content"].as_str().unwrap()
            )
            .unwrap()
            .content,
        reply
    );

    // Nothing the server stored (MongoDB, Redis) or logged reads as either plaintext.
    let stored = everything_stored(&stack).await;
    let cached = everything_in_redis(&stack).await;
    assert!(
        cached.contains(&bob),
        "the Redis scan sees the stack's keys: {cached}"
    );
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        logged.contains("message stored"),
        "the log capture sees the stack's logs"
    );
    assert!(!stored.is_empty());
    assert_nowhere(&stack, &[secret, reply, "eagle", "roger"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_refuses_strangers_plaintext_and_unknown_devices_and_tells_owners_to_top_up() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let eve = user(&stack, "eve").await;
    conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = CryptoDevice::new(alice.clone(), "phone");
    let mut bob_phone = CryptoDevice::new(bob.clone(), "phone");
    let mut eve_phone = CryptoDevice::new(eve.clone(), "phone");
    publish(&stack, &mut bob_phone, 10).await;
    publish(&stack, &mut eve_phone, 10).await;
    let mut alice_ws = connect(&stack, &alice, "phone").await;
    let mut bob_ws = connect(&stack, &bob, "phone").await;

    let olm = |to: &DeviceKeys, key: &SignedKey, alice_phone: &mut CryptoDevice| {
        let share = alice_phone.room_key_for("c", &BTreeSet::new(), &[], 0);
        let message = alice_phone.room_key_message("c", &share, to);
        alice_phone
            .encrypt_to_device(to, Some((key, KeyKind::OneTime)), &message)
            .unwrap()
    };
    let to = |user: &str, device: &str, content: &str| {
        json!({"type": "to_device", "messages": [{
            "message_id": uuid::Uuid::new_v4().to_string(),
            "user_id": user, "device_id": device, "content": content,
        }]})
        .to_string()
    };
    let eve_key = eve_phone.new_one_time_keys(1).remove(0);
    let content = olm(&eve_phone.device_keys(), &eve_key, &mut alice_phone);
    // A stranger (no conversation in common): not_found, nothing stored.
    alice_ws.send(to(&eve, "phone", &content)).await;
    let error = alice_ws.expect("error").await;
    assert_eq!(error["code"], "not_found", "{error}");
    // Plaintext is not key material.
    alice_ws.send(to(&bob, "phone", "hello bob")).await;
    let error = alice_ws.expect("error").await;
    assert_eq!(error["code"], "invalid_request", "{error}");
    // A device that published no keys.
    alice_ws.send(to(&bob, "tablet", &content)).await;
    let error = alice_ws.expect("error").await;
    assert_eq!(error["code"], "not_found", "{error}");
    // Too many messages in one frame.
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"message_id": format!("m{i}"), "user_id": bob, "device_id": "phone", "content": content}))
        .collect();
    alice_ws
        .send(json!({"type": "to_device", "messages": many}).to_string())
        .await;
    assert_eq!(alice_ws.expect("error").await["code"], "invalid_request");
    let stored = stack
        .mongo
        .database()
        .collection::<Document>("to_device")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 0, "refused frames store nothing");

    // Claiming bob's keys until fewer than 10 are left tells bob's phone to publish more.
    let (status, answer) = api(
        &stack,
        &alice,
        "POST",
        "/v1/keys/claim",
        Some(json!({"devices": [{"user_id": bob, "device_id": "phone"}]})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let low = bob_ws.expect("one_time_keys_low").await;
    assert_eq!(low["payload"]["device_id"], "phone");
    assert_eq!(low["payload"]["remaining"], 9);
}

/// An encrypting client of `user_id` on `device`.
async fn encrypted(stack: &RunningStack, user_id: &str, device: &str) -> EncryptedClient {
    let mut config = e2e::client_config(stack, user_id, device);
    config.reconnect = true;
    let directory = KeyDirectory::new(&stack.api_url, token(stack, user_id));
    let mut client = EncryptedClient::connect(config, directory, user_id, None)
        .await
        .expect("encrypted client connects");
    client
        .next_event_within(WAIT)
        .await
        .expect("ready after connecting");
    client
}

/// The next opened message of `conversation` from `sender` at `client` (echoes of its own
/// messages and other senders' are skipped).
async fn opened(
    client: &mut EncryptedClient,
    conversation: &str,
    sender: &str,
) -> (String, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event_within(left).await {
            Some(EncryptedEvent::Message {
                message, encrypted, ..
            }) => {
                if message.conversation_id.as_deref() != Some(conversation)
                    || message.body.message_type == MessageType::System
                    || message.sender_id.as_deref() != Some(sender)
                {
                    continue;
                }
                assert!(encrypted, "a message between people travels encrypted");
                return (message.sender_id.unwrap_or_default(), message.body.content);
            }
            Some(EncryptedEvent::Undecryptable { message, reason }) => {
                panic!(
                    "{}: undecryptable {message:?}: {reason}",
                    client.device().device_id()
                )
            }
            Some(
                EncryptedEvent::Other(_)
                | EncryptedEvent::Streaming { .. }
                | EncryptedEvent::Identity { .. },
            ) => continue,
            None => panic!(
                "{}/{}: no message within {WAIT:?}",
                client.device().user_id(),
                client.device().device_id()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_five_on_several_devices_reads_everything_and_a_removed_member_nothing_after() {
    captured_logs();
    let stack = stack().await;
    let names = ["ana", "ben", "cy", "dee", "eli"];
    let mut ids = Vec::new();
    for name in names {
        ids.push(user(&stack, name).await);
    }
    let [ana, ben, cy, dee, eli] = [0, 1, 2, 3, 4].map(|i| ids[i].clone());
    let (status, group) = api(
        &stack,
        &ana,
        "POST",
        "/v1/groups",
        Some(json!({"name": "five", "participants": [ben, cy, dee, eli]})),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    let group = group["conversation_id"].as_str().unwrap().to_string();

    let mut ana_phone = encrypted(&stack, &ana, "phone").await;
    let mut ana_laptop = encrypted(&stack, &ana, "laptop").await;
    let mut ben_phone = encrypted(&stack, &ben, "phone").await;
    let mut cy_phone = encrypted(&stack, &cy, "phone").await;
    let mut dee_phone = encrypted(&stack, &dee, "phone").await;
    let mut eli_phone = encrypted(&stack, &eli, "phone").await;

    let hello = "first light over the harbour";
    ana_phone
        .send(&group, MessageBody::text(hello))
        .await
        .unwrap();
    for reader in [
        &mut ana_laptop,
        &mut ben_phone,
        &mut cy_phone,
        &mut dee_phone,
        &mut eli_phone,
    ] {
        assert_eq!(
            opened(reader, &group, &ana).await,
            (ana.clone(), hello.to_string())
        );
    }
    let reply = "the gulls are early today";
    eli_phone
        .send(&group, MessageBody::text(reply))
        .await
        .unwrap();
    for reader in [
        &mut ana_phone,
        &mut ana_laptop,
        &mut ben_phone,
        &mut cy_phone,
        &mut dee_phone,
    ] {
        assert_eq!(
            opened(reader, &group, &eli).await,
            (eli.clone(), reply.to_string())
        );
    }

    // Dee is removed: what ana sends next is sealed with a new session dee never gets.
    let (status, answer) = api(
        &stack,
        &ana,
        "DELETE",
        &format!("/v1/groups/{group}/participants/{dee}"),
        None,
    )
    .await;
    assert!(status == 200 || status == 204, "{answer}");
    let secret = "meet without dee at the lighthouse";
    let ack = ana_phone
        .send(&group, MessageBody::text(secret))
        .await
        .unwrap();
    for reader in [
        &mut ben_phone,
        &mut cy_phone,
        &mut eli_phone,
        &mut ana_laptop,
    ] {
        assert_eq!(
            opened(reader, &group, &ana).await,
            (ana.clone(), secret.to_string())
        );
    }
    let stored = stack
        .ctx
        .store
        .message(&ack.message_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        dee_phone
            .device_mut()
            .decrypt(&group, &ana, &stored.message_id, &stored.body.content)
            .is_err(),
        "a removed member cannot open what is sent after the removal"
    );

    // Ben adds a tablet: it reads what is sent after it joined, not before.
    let mut ben_tablet = encrypted(&stack, &ben, "tablet").await;
    let later = "tablet sees this";
    let later_ack = ana_phone
        .send(&group, MessageBody::text(later))
        .await
        .unwrap();
    // Its catch-up brings the history it cannot open (given up as such), then the new message.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ben_tablet.next_event_within(left).await {
            Some(EncryptedEvent::Message {
                message, encrypted, ..
            }) if message.message_id == later_ack.message_id => {
                assert!(encrypted);
                assert_eq!(message.body.content, later);
                break;
            }
            Some(EncryptedEvent::Undecryptable { message, .. }) => {
                assert!(
                    message.sequence_number < later_ack.sequence_number,
                    "{message:?}"
                );
            }
            Some(_) => continue,
            None => panic!("the tablet never opened what was sent after it joined"),
        }
    }
    let first = stack
        .ctx
        .store
        .messages_in_range(&group, 1, 3, 10)
        .await
        .unwrap();
    for earlier in first
        .iter()
        .filter(|m| m.body.message_type != MessageType::System)
    {
        assert!(
            ben_tablet
                .device_mut()
                .decrypt(
                    &group,
                    &earlier.sender_id,
                    &earlier.message_id,
                    &earlier.body.content
                )
                .is_err(),
            "a device added later cannot open what came before it"
        );
    }

    // Nothing the server stored or logged reads as any of it.
    assert_nowhere(
        &stack,
        &[hello, reply, secret, later, "harbour", "lighthouse"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ciphertext_or_planted_plaintext_is_caught_by_the_receiving_client_not_shown() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let chat = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = encrypted(&stack, &alice, "phone").await;
    let mut bob_phone = encrypted(&stack, &bob, "phone").await;
    let ack = alice_phone
        .send(&chat, MessageBody::text("genuine"))
        .await
        .unwrap();
    assert_eq!(opened(&mut bob_phone, &chat, &alice).await.1, "genuine");

    // A server that alters the next message in flight: one bit of its ciphertext flipped.
    let stored = stack
        .ctx
        .store
        .message(&ack.message_id)
        .await
        .unwrap()
        .unwrap();
    let mut envelope = Envelope::parse(&stored.body.content).unwrap();
    let mut bytes = vodozemac_bytes(&envelope.ciphertext);
    bytes[12] ^= 0x01;
    envelope.ciphertext = messaging_base64(&bytes);
    let mut forged = stored.to_delivered();
    forged.message_id = "forged".into();
    forged.sequence_number = ack.sequence_number + 1;
    forged.body.content = envelope.to_content();
    for connection in stack.ctx.realtime.user_connections(&bob).await.unwrap() {
        messaging::fanout::post(
            &stack.ctx,
            &connection,
            &ServerFrame::Message {
                payload: forged.clone(),
            },
        )
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob_phone.next_event_within(left).await {
            Some(EncryptedEvent::Undecryptable { message, reason }) => {
                assert_eq!(message.message_id, "forged");
                assert!(matches!(reason, CryptoError::Tampered(_)), "{reason}");
                break;
            }
            Some(EncryptedEvent::Message { message, .. }) => {
                panic!("a tampered message was shown: {message:?}")
            }
            Some(
                EncryptedEvent::Other(_)
                | EncryptedEvent::Streaming { .. }
                | EncryptedEvent::Identity { .. },
            ) => continue,
            None => panic!("the tampered message never surfaced"),
        }
    }

    // A server that slips plaintext into a chat between people: refused, never shown.
    let mut planted = stored.to_delivered();
    planted.message_id = "planted".into();
    planted.sequence_number = ack.sequence_number + 2;
    planted.body.content = "it's me, send me the code".into();
    for connection in stack.ctx.realtime.user_connections(&bob).await.unwrap() {
        messaging::fanout::post(
            &stack.ctx,
            &connection,
            &ServerFrame::Message {
                payload: planted.clone(),
            },
        )
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob_phone.next_event_within(left).await {
            Some(EncryptedEvent::Undecryptable { message, reason })
                if message.message_id == "planted" =>
            {
                assert!(matches!(reason, CryptoError::Malformed(_)), "{reason}");
                break;
            }
            Some(EncryptedEvent::Message { message, .. }) => {
                panic!("plaintext between people was shown: {message:?}")
            }
            Some(_) => continue,
            None => panic!("the planted message never surfaced"),
        }
    }
}

/// The agent's answer at `client`: the streamed text as last shown and the final message, each
/// with whether it travelled encrypted.
async fn answer(
    client: &mut EncryptedClient,
    conversation: &str,
    agent: &str,
) -> ((String, bool), (String, bool)) {
    let mut streamed = (String::new(), false);
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event_within(left).await {
            Some(EncryptedEvent::Streaming {
                conversation_id,
                text,
                encrypted,
                ..
            }) if conversation_id == conversation => streamed = (text, encrypted),
            Some(EncryptedEvent::Message {
                message, encrypted, ..
            }) if message.sender_id.as_deref() == Some(agent)
                && message.conversation_id.as_deref() == Some(conversation) =>
            {
                return (streamed, (message.body.content, encrypted));
            }
            Some(EncryptedEvent::Undecryptable { message, reason }) => {
                panic!("undecryptable {message:?}: {reason}")
            }
            Some(_) => continue,
            None => panic!("{agent} did not answer within {:?}", WAIT * 2),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_agent_reads_and_answers_sealed_and_the_server_keeps_no_plaintext() {
    captured_logs();
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let chat = conversation(
        &stack,
        ConversationKind::Agent,
        &[&alice, "demo"],
        Some("demo"),
    )
    .await;
    let mut phone = encrypted(&stack, &alice, "phone").await;
    let mut laptop = encrypted(&stack, &alice, "laptop").await;

    // The agent published a device; the conversation says it is encrypted.
    let (status, keys) = api(&stack, &alice, "GET", "/v1/users/demo/keys", None).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["devices"][0]["device_id"], "demo-agent", "{keys}");
    let (_, view) = api(
        &stack,
        &alice,
        "GET",
        &format!("/v1/conversations/{chat}"),
        None,
    )
    .await;
    assert_eq!(view["end_to_end_encrypted"], true, "{view}");

    // A short message: streamed word by word and stored, sealed both ways, on both devices.
    phone
        .send(
            &chat,
            MessageBody::text("hello agent, the password is tangerine-42"),
        )
        .await
        .unwrap();
    let expected = "Demo agent here. You said: hello agent, the password is tangerine-42";
    let ((streamed, stream_sealed), (stored, stored_sealed)) =
        answer(&mut phone, &chat, "demo").await;
    assert!(stream_sealed && stored_sealed, "the answer travels sealed");
    assert_eq!(stored, expected);
    assert!(
        expected.starts_with(&streamed) && !streamed.is_empty(),
        "{streamed}"
    );
    let (_, (on_laptop, laptop_sealed)) = answer(&mut laptop, &chat, "demo").await;
    assert!(laptop_sealed);
    assert_eq!(
        on_laptop, expected,
        "every device of the user reads the answer"
    );

    // A word longer than a sealed piece: streamed in several sealed pieces, read whole.
    let long_word = "marmalade".repeat(600);
    phone
        .send(&chat, MessageBody::text(format!("{long_word} end")))
        .await
        .unwrap();
    let ((streamed, _), (stored, _)) = answer(&mut phone, &chat, "demo").await;
    assert_eq!(
        stored,
        format!("Demo agent here. You said: {long_word} end")
    );
    assert!(
        streamed.contains(&long_word),
        "the long piece streamed whole"
    );

    // Plaintext to the encrypted agent: the run fails with a reason, nothing is answered.
    let mut raw = e2e::RawWs::connect(&stack, Some(&token(&stack, &alice)), "tool").await;
    send(&mut raw, &chat, "plain words").await;
    loop {
        let run = raw.expect("agent_run").await;
        if run["payload"]["state"] == "failed" {
            let reason = run["payload"]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("encrypted messages only"), "{run}");
            break;
        }
    }

    // The agent without keys: plaintext both ways, and said so.
    let plain = conversation(
        &stack,
        ConversationKind::Agent,
        &[&alice, "demo-plain"],
        Some("demo-plain"),
    )
    .await;
    phone
        .send(&plain, MessageBody::text("hi plain"))
        .await
        .unwrap();
    let (_, (stored, sealed)) = answer(&mut phone, &plain, "demo-plain").await;
    assert!(
        !sealed,
        "an agent without keys answers in plaintext, marked so"
    );
    assert_eq!(stored, "Demo agent here. You said: hi plain");

    // Neither MongoDB nor Redis nor the agent's saved state holds the encrypted chat's words.
    let stored = everything_stored(&stack).await;
    let cached = everything_in_redis(&stack).await;
    let state = std::fs::read_to_string(stack.config.data_dir.join("devices/agent-demo.olm"))
        .expect("the agent's state is saved");
    for secret in [
        "tangerine-42",
        "marmalade",
        "Demo agent here. You said: hello",
    ] {
        assert!(!stored.contains(secret), "MongoDB holds {secret}");
        assert!(!cached.contains(secret), "Redis holds {secret}");
        assert!(!state.contains(secret), "the agent's state holds {secret}");
    }
}

fn vodozemac_bytes(text: &str) -> Vec<u8> {
    vodozemac::base64_decode(text).unwrap()
}

fn messaging_base64(bytes: &[u8]) -> String {
    vodozemac::base64_encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_makes_an_agent_without_crypto_code_end_to_end_encrypted() {
    captured_logs();
    use messaging::e2ee::AgentDevice;
    // The sidecar's two sides, and the plain agent behind it (the demo agent's code with no
    // keys: it reads and writes plaintext, to the sidecar only).
    let agent_id = "sidecar-echo";
    let inbound = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let behind = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_url = format!("http://{}/", inbound.local_addr().unwrap());
    let outbound_url = format!("http://{}/", outbound.local_addr().unwrap());
    let agent_url = format!("http://{}/", behind.local_addr().unwrap());
    let triggers = std::env::temp_dir().join(testkit::unique_name("sidecar-triggers"));
    std::fs::write(
        &triggers,
        format!(
            "[[trigger]]\nname = \"sidecar\"\nsubscriber = \"{inbound_url}\"\n\
             filter.attributes = {{ type = \"messaging.message.received\", agentid = \"{agent_id}\" }}\n\
             delivery = {{ retry = 5, backoff_policy = \"exponential\", backoff_delay_ms = 100 }}\n"
        ),
    )
    .unwrap();
    let stack = e2e::stack_with(|c| c.extra_triggers.push(triggers.clone())).await;
    let mut entry = local_stack::agent::DemoAgent::registry_entry(agent_id);
    entry.agent_id = agent_id.into();
    stack.ctx.store.upsert_agent(&entry).await.unwrap();
    let device = AgentDevice::start(
        &stack.api_url,
        &token(&stack, agent_id),
        agent_id,
        "sidecar",
        None,
    )
    .await
    .expect("the sidecar publishes the agent's keys");
    let publisher = std::sync::Arc::new(messaging::events::HttpBroker::new(&stack.broker_url));
    let sidecar = e2ee_sidecar::Sidecar::new(agent_id, device, &agent_url, publisher);
    let plain_agent = local_stack::agent::DemoAgent::router(
        agent_id,
        &outbound_url,
        None,
        std::time::Duration::from_millis(50),
    );
    for (listener, router) in [
        (inbound, sidecar.inbound_router()),
        (outbound, sidecar.outbound_router()),
        (behind, plain_agent),
    ] {
        tokio::spawn(async move { axum::serve(listener, router).await });
    }

    let alice = user(&stack, "alice").await;
    let chat = conversation(
        &stack,
        ConversationKind::Agent,
        &[&alice, agent_id],
        Some(agent_id),
    )
    .await;
    let mut phone = encrypted(&stack, &alice, "phone").await;
    phone
        .send(&chat, MessageBody::text("hello sidecar, the plum is ripe"))
        .await
        .unwrap();
    let ((streamed, stream_sealed), (stored, stored_sealed)) =
        answer(&mut phone, &chat, agent_id).await;
    assert!(
        stream_sealed && stored_sealed,
        "sealed by the sidecar both ways"
    );
    assert_eq!(
        stored,
        "Demo agent here. You said: hello sidecar, the plum is ripe"
    );
    assert!(stored.starts_with(&streamed), "{streamed}");

    // Plaintext never reaches the agent: its run fails with the reason.
    let mut raw = e2e::RawWs::connect(&stack, Some(&token(&stack, &alice)), "tool").await;
    send(&mut raw, &chat, "plain words").await;
    loop {
        let run = raw.expect("agent_run").await;
        if run["payload"]["state"] == "failed" {
            assert!(
                run["payload"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("encrypted messages only"),
                "{run}"
            );
            break;
        }
    }
    let stored = everything_stored(&stack).await;
    assert!(
        !stored.contains("plum is ripe"),
        "MongoDB holds the plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_is_sealed_on_the_device_and_only_ciphertext_is_stored() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let chat = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = encrypted(&stack, &alice, "phone").await;
    let mut bob_phone = encrypted(&stack, &bob, "phone").await;
    let photo: Vec<u8> = b"PRETEND-PNG the secret whiteboard says 7-3-1 "
        .iter()
        .cycle()
        .take(50_000)
        .copied()
        .collect();
    let (_, sent) = alice_phone
        .send_attachment(
            &chat,
            MessageType::Image,
            "the whiteboard",
            &photo,
            "image/png",
            Some("board.png"),
        )
        .await
        .expect("the sealed photo is sent");
    assert_eq!(sent.content_type, "image/png");

    // Bob's phone gets the caption and the key inside the sealed message, and opens the bytes.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (message, attachment) = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob_phone.next_event_within(left).await {
            Some(EncryptedEvent::Message {
                message,
                encrypted,
                attachment,
            }) if message.sender_id.as_deref() == Some(alice.as_str()) => {
                assert!(encrypted);
                break (message, attachment.expect("the attachment's key arrived"));
            }
            Some(EncryptedEvent::Undecryptable { reason, .. }) => panic!("{reason}"),
            Some(_) => continue,
            None => panic!("no photo"),
        }
    };
    assert_eq!(message.body.content, "the whiteboard");
    assert_eq!(message.body.message_type, MessageType::Image);
    assert_eq!(
        message.body.media_url.as_deref(),
        Some(sent.media_id.as_str())
    );
    assert_eq!(attachment.name.as_deref(), Some("board.png"));
    let opened = bob_phone.fetch_attachment(&attachment).await.unwrap();
    assert_eq!(opened, photo, "bob reads the photo alice sent");

    // The server holds octets it cannot open: the stored object is ciphertext, the media record
    // and the message say nothing of the key or the words.
    let media = stack
        .ctx
        .store
        .media(&sent.media_id)
        .await
        .unwrap()
        .unwrap();
    assert!(media.encrypted);
    assert_eq!(media.content_type, "application/octet-stream");
    let objects = everything_in_s3(&stack);
    assert!(!objects.is_empty(), "the upload reached S3");
    assert!(
        !objects.windows(14).any(|w| w == b"secret whitebo"),
        "S3 holds the photo's plaintext"
    );
    let stored = everything_stored(&stack).await;
    for secret in [
        "the whiteboard",
        "secret whiteboard",
        attachment.key.as_str(),
    ] {
        assert!(!stored.contains(secret), "MongoDB holds {secret}");
    }
    // Someone outside the conversation gets no download at all.
    let eve = user(&stack, "eve").await;
    let (status, _) = api(
        &stack,
        &eve,
        "GET",
        &format!("/v1/media/{}", sent.media_id),
        None,
    )
    .await;
    assert!(status == 403 || status == 404, "a stranger got {status}");
}

/// Every byte of every object the stack's S3 keeps.
fn everything_in_s3(stack: &RunningStack) -> Vec<u8> {
    fn walk(dir: &std::path::Path, all: &mut Vec<u8>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, all);
            } else if let Ok(bytes) = std::fs::read(&path) {
                all.extend(bytes);
            }
        }
    }
    let mut all = Vec::new();
    walk(&stack.config.data_dir.join("s3"), &mut all);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_listed_with_other_keys_gets_nothing_until_it_is_trusted() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let chat = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = encrypted(&stack, &alice, "phone").await;
    let bob_phone = encrypted(&stack, &bob, "phone").await;
    alice_phone
        .send(&chat, MessageBody::text("first"))
        .await
        .unwrap();
    drop(bob_phone);

    // Bob's phone now lists other keys under the same id (a reset phone, or a directory lying).
    let (status, _) = api(&stack, &bob, "DELETE", "/v1/keys/phone", None).await;
    assert_eq!(status, 204);
    let mut new_phone = encrypted(&stack, &bob, "phone").await;
    alice_phone
        .send(&chat, MessageBody::text("not for unverified keys"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match alice_phone.next_event_within(left).await {
            // (Bob's phone was first seen, and pinned, when alice sent "first".)
            Some(EncryptedEvent::Identity { device, trust })
                if device.user_id == bob && trust != messaging::e2ee::Trust::New =>
            {
                assert!(
                    matches!(trust, messaging::e2ee::Trust::Changed { .. }),
                    "{trust:?}"
                );
                assert_eq!(device.device_id, "phone");
                break;
            }
            Some(_) => continue,
            None => panic!("alice was not told bob's phone changed keys"),
        }
    }
    // Nothing was shared with the changed device: it cannot open what was sent meanwhile.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match new_phone.next_event_within(left).await {
            // #1 was sent before the new phone existed; #2 after, but only to trusted keys.
            Some(EncryptedEvent::Undecryptable { message, .. }) if message.sequence_number == 2 => {
                break;
            }
            Some(EncryptedEvent::Message { message, .. })
                if message.sender_id.as_deref() == Some(alice.as_str()) =>
            {
                panic!(
                    "a device with unverified keys read {:?}",
                    message.body.content
                )
            }
            Some(_) => continue,
            None => panic!("the message never reached bob's new phone"),
        }
    }

    // Alice compares safety codes with bob and trusts the new keys: the next message opens.
    let trusted = alice_phone.trust(&bob, "phone").await.unwrap();
    assert_eq!(
        trusted.identity.ed25519,
        new_phone.device().device_keys().identity.ed25519
    );
    alice_phone
        .send(&chat, MessageBody::text("verified now"))
        .await
        .unwrap();
    assert_eq!(
        opened(&mut new_phone, &chat, &alice).await.1,
        "verified now"
    );
}
