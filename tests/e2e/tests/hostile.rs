//! Hostile clients, from the outside: each finding of the security and fuzz pass (issue 13)
//! reproduced with a raw WebSocket client or plain HTTP, and shown closed.

use std::time::Duration;

use e2e::{RawWs, WAIT, conversation, said, sealed, stack, user};
use messaging::model::ConversationKind;

/// A message frame for `conversation` (content [`sealed`], as between people).
fn message(conversation: &str, key: &str, content: &str) -> String {
    serde_json::json!({
        "type": "message", "client_message_id": key, "idempotency_key": key,
        "payload": {"conversation_id": conversation, "content": sealed(content), "type": "text",
                    "timestamp": 1}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_naming_a_reserved_route_cannot_unregister_its_connection() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut ws = RawWs::connect(&stack, Some(&e2e::token(&stack, &alice)), "phone").await;
    for reserved in ["$disconnect", "$connect"] {
        ws.send(format!(r#"{{"type":"{reserved}"}}"#)).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], "unknown_type", "{error}");
    }
    // Still registered, still online, still answered and still delivered to.
    assert_eq!(
        stack
            .ctx
            .realtime
            .user_connections(&alice)
            .await
            .unwrap()
            .len(),
        1
    );
    ws.send(r#"{"type":"heartbeat","timestamp":1}"#).await;
    ws.expect("heartbeat_ack").await;
    let mut bob_ws = RawWs::connect(&stack, Some(&e2e::token(&stack, &bob)), "phone").await;
    bob_ws.send(message(&conv, "k1", "still there?")).await;
    bob_ws.expect("message_ack").await;
    let got = ws.expect("message").await;
    assert_eq!(
        said(got["payload"]["content"].as_str().unwrap()),
        "still there?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_sequence_numbers_neither_panic_nor_return_the_history() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_token = e2e::token(&stack, &alice);
    let mut ws = RawWs::connect(&stack, Some(&alice_token), "phone").await;
    ws.send(message(&conv, "k1", "one")).await;
    ws.expect("message_ack").await;
    stack.settled().await;
    for since in [u64::MAX, 1 << 63, (1 << 63) + 1] {
        ws.send(serde_json::json!({"type": "sync", "since": {conv.as_str(): since}}).to_string())
            .await;
        ws.expect("auth_success").await;
        // Nothing after it: no `messages` frame follows (the history is not sent again).
        ws.send(r#"{"type":"heartbeat","timestamp":1}"#).await;
        let next = ws.next(WAIT).await.expect("an answer");
        assert_eq!(next["type"], "heartbeat_ack", "since {since}: {next}");
    }
    ws.send(
        serde_json::json!({"type": "retransmit", "conversation_id": conv,
            "from_sequence": u64::MAX, "to_sequence": u64::MAX})
        .to_string(),
    )
    .await;
    let answer = ws.next(WAIT).await.expect("an answer");
    assert!(
        answer["type"] == "messages" && answer["payload"]["messages"] == serde_json::json!([]),
        "{answer}"
    );
    // The HTTP history: the largest `from` (2^63 - 1, the schema's int64) is an empty page,
    // not the whole history; a larger one is outside the schema, refused.
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/conversations/{conv}/messages?from={}",
            stack.api_url,
            i64::MAX
        ))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"], serde_json::json!([]), "{page}");
    let refused = reqwest::Client::new()
        .get(format!(
            "{}/v1/conversations/{conv}/messages?from={}",
            stack.api_url,
            u64::MAX
        ))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleared_history_stays_cleared_on_every_path() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_token = e2e::token(&stack, &alice);
    let mut ws = RawWs::connect(&stack, Some(&alice_token), "phone").await;
    for i in 0..3 {
        ws.send(message(&conv, &format!("old-{i}"), "before the clear"))
            .await;
        ws.expect("message_ack").await;
    }
    stack.settled().await;
    let status = reqwest::Client::new()
        .delete(format!("{}/v1/conversations/{conv}", stack.api_url))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    ws.send(message(&conv, "new", "after the clear")).await;
    ws.expect("message_ack").await;
    stack.settled().await;
    // A new device syncing from 0 gets only what came after the clear.
    let mut laptop = RawWs::connect(&stack, Some(&alice_token), "laptop").await;
    laptop
        .send(serde_json::json!({"type": "sync", "since": {conv.as_str(): 0}}).to_string())
        .await;
    laptop.expect("auth_success").await;
    let batch = laptop.expect("messages").await;
    let contents: Vec<String> = batch["payload"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| said(m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(contents, ["after the clear"]);
    // Retransmit reports the cleared numbers as missing, never their content.
    laptop
        .send(
            serde_json::json!({"type": "retransmit", "conversation_id": conv,
                "from_sequence": 1, "to_sequence": 4})
            .to_string(),
        )
        .await;
    let answer = laptop.expect("messages").await;
    let numbers: Vec<u64> = answer["payload"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [4]);
    assert_eq!(answer["payload"]["missing"], serde_json::json!([1, 2, 3]));
    // The HTTP history: no `from` can reach below the clear.
    for from in ["1", "9223372036854775807", "4611686018427387904"] {
        let page: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "{}/v1/conversations/{conv}/messages?from={from}",
                stack.api_url
            ))
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for m in page["messages"].as_array().unwrap() {
            assert_eq!(
                said(m["content"].as_str().unwrap()),
                "after the clear",
                "from={from}: {page}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_that_names_nobody_is_refused_everywhere() {
    let stack = stack().await;
    for sub in ["", " ", "a.b", "$gt", "bad\nid"] {
        let claims = stack.issuer.claims(sub, Duration::from_secs(60));
        let token = stack.issuer.sign(&claims).unwrap();
        // The upgrade.
        let url = format!("{}/?token={}", stack.ws_url, token);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 401, "sub {sub:?}")
            }
            other => panic!("sub {sub:?}: {:?}", other.map(|_| ())),
        }
        // An `auth` frame on an anonymous connection.
        let mut ws = RawWs::connect(&stack, None, "phone").await;
        ws.send(serde_json::json!({"type": "auth", "payload": {"auth_token": token}}).to_string())
            .await;
        let error = ws.expect("auth_error").await;
        assert_eq!(error["code"], "invalid_token", "sub {sub:?}: {error}");
        // The HTTP API.
        let status = reqwest::Client::new()
            .get(format!("{}/v1/me", stack.api_url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "sub {sub:?}");
    }
    // A bad device id is refused too.
    let alice = user(&stack, "alice").await;
    let url = format!(
        "{}/?token={}&device_id=%24gt",
        stack.ws_url,
        e2e::token(&stack, &alice)
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("device $gt: {:?}", other.map(|_| ())),
    }
    // A token issued to one device cannot connect, or authenticate, as another: the device id
    // decides whose end-to-end encryption queue the connection reads and acknowledges.
    let mut claims = stack.issuer.claims(&alice, Duration::from_secs(600));
    claims.device_id = Some("phone".into());
    let phone_token = stack.issuer.sign(&claims).unwrap();
    let url = format!("{}/?token={phone_token}&device_id=laptop", stack.ws_url);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("phone's token as the laptop: {:?}", other.map(|_| ())),
    }
    let url = format!("{}/?token={phone_token}&device_id=phone", stack.ws_url);
    assert!(
        tokio_tungstenite::connect_async(url).await.is_ok(),
        "its own device connects"
    );
    let mut raw = RawWs::connect(&stack, None, "laptop").await;
    raw.send(
        serde_json::json!({"type": "auth", "payload": {"auth_token": phone_token, "device_id": "laptop"}})
            .to_string(),
    )
    .await;
    let refused = raw.expect("auth_error").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_the_wrong_json_type_are_400_with_a_reason() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let token = e2e::token(&stack, &alice);
    let http = reqwest::Client::new();
    for (method, path, body) in [
        ("PATCH", "/v1/me", r#"["New Name","http://x/a.png"]"#),
        ("POST", "/v1/conversations", r#""alice""#),
        ("POST", "/v1/groups", "42"),
        ("PATCH", "/v1/me", "null"),
        ("POST", "/v1/media", "[1,2]"),
    ] {
        let response = http
            .request(method.parse().unwrap(), format!("{}{path}", stack.api_url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{method} {path} {body}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be a JSON object"),
            "{json}"
        );
    }
    // The profile is untouched.
    let me: serde_json::Value = http
        .get(format!("{}/v1/me", stack.api_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "alice");
}
