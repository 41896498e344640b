//! The messaging guarantees, end to end: real WebSocket clients (the client library) through the
//! local stack's WebSocket API, the real functions, the broker, real Redis and SecantusDB.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{
    RawWs, WAIT, client, client_config, conversation, ready, said, sealed, stack, stack_with,
    token, user,
};
use local_stack::stack::RunningStack;
use messaging::ErrorCode;
use messaging::client::{Client, ClientError, ClientEvent};
use messaging::model::{ConversationKind, StoredMessage};
use messaging::protocol::{
    DeliveredMessage, MessageBody, MessageStatus, MessageType, OutgoingMessage, TypingState,
};
use messaging::realtime::ConnectionInfo;

fn text(conversation_id: &str, content: &str) -> OutgoingMessage {
    OutgoingMessage {
        conversation_id: conversation_id.into(),
        receiver_id: None,
        body: MessageBody::text(sealed(content)),
        timestamp: 1,
    }
}

/// The message as MongoDB holds it now.
async fn stored(stack: &RunningStack, message_id: &str) -> StoredMessage {
    stack
        .ctx
        .store
        .message(message_id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("message {message_id} is not stored"))
}

/// Collects `n` messages of `conversation_id` from a client, in the order it delivers them
/// (what a [`sealed`] content said in place of the envelope).
async fn messages(client: &mut Client, conversation_id: &str, n: usize) -> Vec<DeliveredMessage> {
    let mut got: Vec<DeliveredMessage> = Vec::new();
    while got.len() < n {
        let m = client
            .wait_for(WAIT, |e| match e {
                ClientEvent::Message(m)
                    if m.conversation_id.as_deref() == Some(conversation_id) =>
                {
                    Some((**m).clone())
                }
                _ => None,
            })
            .await
            .unwrap_or_else(|| {
                let seen: Vec<(u64, &str)> = got
                    .iter()
                    .map(|m| (m.sequence_number, m.body.content.as_str()))
                    .collect();
                panic!("only {} of {n} messages arrived: {seen:?}", got.len())
            });
        let mut m = m;
        m.body.content = said(&m.body.content);
        got.push(m);
    }
    got
}

async fn error_code(client: &mut Client) -> ErrorCode {
    client
        .wait_for(WAIT, |e| match e {
            ClientEvent::Error { code, .. } => Some(*code),
            _ => None,
        })
        .await
        .expect("an error frame")
}

/// Asserts that a call was answered with an `error` frame of `code`.
fn assert_refused(err: &ClientError, code: ErrorCode) {
    assert!(
        matches!(err, ClientError::Server { code: got, .. } if *got == code),
        "expected {code:?}, got {err:?}"
    );
}

async fn stored_count(stack: &local_stack::stack::RunningStack, conversation_id: &str) -> usize {
    stack
        .ctx
        .store
        .messages_in_range(conversation_id, 1, 1_000_000, 100_000)
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_three_devices_get_everything_in_order() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = client(&stack, &alice, "phone").await;
    let mut alice_laptop = client(&stack, &alice, "laptop").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;

    for i in 0..10 {
        let ack = alice_phone
            .send_text(&conv, &sealed(format!("a{i}")))
            .await
            .unwrap();
        assert_eq!(ack.status, MessageStatus::Sent);
        bob_phone
            .send_text(&conv, &sealed(format!("b{i}")))
            .await
            .unwrap();
    }
    for device in [&mut alice_phone, &mut alice_laptop, &mut bob_phone] {
        let got = messages(device, &conv, 20).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.sequence_number).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "every device, in order");
        let contents: Vec<&str> = got.iter().map(|m| m.body.content.as_str()).collect();
        assert_eq!(contents[..4], ["a0", "b0", "a1", "b1"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_on_another_device_after_a_drop_is_stored_once() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let laptop = client(&stack, &alice, "laptop").await;

    // The phone sends and loses its connection before it can see the ack.
    let frame = serde_json::json!({
        "type": "message", "client_message_id": "c1", "idempotency_key": "key-1",
        "payload": {"conversation_id": conv, "content": "hello", "type": "text", "timestamp": 1}
    });
    phone.send_raw(frame.to_string()).unwrap();
    phone.drop_connection();
    // The user retries on the laptop with the same key.
    let retried = laptop
        .send_with_key("key-1", text(&conv, "hello"))
        .await
        .unwrap();
    assert_eq!(retried.sequence_number, 1);
    let again = laptop
        .send_with_key("key-1", text(&conv, "hello"))
        .await
        .unwrap();
    assert_eq!(again, retried);
    assert_eq!(stored_count(&stack, &conv).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_duplicates_yield_one_message() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = std::sync::Arc::new(client(&stack, &alice, "phone").await);
    let sends: Vec<_> = (0..50)
        .map(|_| {
            let phone = phone.clone();
            let conv = conv.clone();
            tokio::spawn(async move { phone.send_with_key("dup", text(&conv, "once")).await })
        })
        .collect();
    let mut acks = HashSet::new();
    for s in sends {
        let ack = s.await.unwrap().unwrap();
        acks.insert((ack.message_id, ack.sequence_number));
    }
    assert_eq!(acks.len(), 1, "50 identical acks");
    assert_eq!(stored_count(&stack, &conv).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_500_messages_in_order_on_reconnect() {
    // A thousand acknowledgement writes: on a MongoDB-wire server of its own, so they neither
    // queue behind this binary's other tests on the shared (single-threaded) one nor slow them.
    let own_mongodb = testkit::start_mongodb(None).expect("a MongoDB-wire server for this test");
    let stack = stack_with(|c| {
        c.mongodb_uri = own_mongodb.url.clone();
        c.settings.send_limit.max = 10_000;
        c.settings.frame_limit.max = 10_000;
    })
    .await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    for i in 0..500 {
        phone
            .send_text(&conv, &sealed(format!("m{i}")))
            .await
            .unwrap();
    }
    // Bob was never online: everything waits for him, as MongoDB says.
    stack.settled().await;
    let owed = messaging::pending::pending(&stack.ctx, &bob, "phone", &Default::default(), 1000)
        .await
        .unwrap();
    assert_eq!(owed.unread_count, 500);
    assert_eq!(owed.messages[&conv].len(), 500);
    let mut bob_phone = Client::connect(client_config(&stack, &bob, "phone"))
        .await
        .unwrap();
    assert_eq!(ready(&mut bob_phone).await, 500);
    let got = messages(&mut bob_phone, &conv, 500).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    assert_eq!(got[499].body.content, "m499");
    // Delivery acks move his phone's watermark in MongoDB to the end (this waits for the
    // outcome, it does not time the writes).
    let deadline = tokio::time::Instant::now() + WAIT * 6;
    loop {
        // A read queued behind those writes may time out: that is "not yet", not a failure.
        let cursors = stack.ctx.store.cursors(&bob, "phone").await;
        if cursors.as_ref().is_ok_and(|c| c.get(&conv) == Some(&500)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery acks record what the phone has: {cursors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_from_lost_frames_is_detected_and_filled_by_retransmit() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    alice_phone.send_text(&conv, &sealed("m1")).await.unwrap();
    assert_eq!(
        messages(&mut bob_phone, &conv, 1).await[0].sequence_number,
        1
    );

    // Frames 2 and 3 are lost on the way to Bob: his connection is hidden from the fan-out.
    let id = stack.ctx.realtime.user_connections(&bob).await.unwrap()[0].clone();
    let info: ConnectionInfo = stack.ctx.realtime.connection(&id).await.unwrap().unwrap();
    stack.ctx.realtime.remove_connection(&id).await.unwrap();
    alice_phone.send_text(&conv, &sealed("m2")).await.unwrap();
    alice_phone.send_text(&conv, &sealed("m3")).await.unwrap();
    stack.settled().await;
    stack.ctx.realtime.register_connection(&info).await.unwrap();
    alice_phone.send_text(&conv, &sealed("m4")).await.unwrap();

    let got = messages(&mut bob_phone, &conv, 3).await;
    let contents: Vec<&str> = got.iter().map(|m| m.body.content.as_str()).collect();
    assert_eq!(contents, ["m2", "m3", "m4"], "gap filled, order kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_reach_the_sender_on_all_devices() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut alice_phone = client(&stack, &alice, "phone").await;
    let mut alice_laptop = client(&stack, &alice, "laptop").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    let ack = alice_phone
        .send_text(&conv, &sealed("read me"))
        .await
        .unwrap();
    messages(&mut bob_phone, &conv, 1).await;
    bob_phone.read(vec![ack.message_id.clone()]).unwrap();
    for device in [&mut alice_phone, &mut alice_laptop] {
        let receipt = device
            .wait_for(WAIT, |e| match e {
                ClientEvent::Read(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .expect("read receipt");
        assert_eq!(receipt.message_ids, std::slice::from_ref(&ack.message_id));
        assert_eq!(receipt.read_by, bob);
    }
    let stored = stored(&stack, &ack.message_id).await;
    assert_eq!(stored.status, MessageStatus::Read);
    let c = stack.ctx.store.conversation(&conv).await.unwrap().unwrap();
    assert_eq!(c.unread_for(&bob), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_peer_and_is_not_stored() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    alice_phone.typing(&conv, TypingState::Start).unwrap();
    let typing = bob_phone
        .wait_for(WAIT, |e| match e {
            ClientEvent::Typing(t) => Some(t.clone()),
            _ => None,
        })
        .await
        .expect("typing frame");
    assert_eq!(
        (typing.user_id.as_str(), typing.state),
        (alice.as_str(), TypingState::Start)
    );
    assert_eq!(stored_count(&stack, &conv).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connection_is_pruned_and_the_other_device_still_gets_the_message() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    // A connection the gateway no longer has (its $disconnect never ran).
    stack
        .ctx
        .realtime
        .register_connection(&ConnectionInfo {
            connection_id: "stale-connection".into(),
            user_id: bob.clone(),
            device_id: "old-tablet".into(),
            connected_at: 1,
        })
        .await
        .unwrap();
    alice_phone.send_text(&conv, &sealed("hi")).await.unwrap();
    assert_eq!(
        messages(&mut bob_phone, &conv, 1).await[0].body.content,
        "hi"
    );
    stack.settled().await;
    let left = stack.ctx.realtime.user_connections(&bob).await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "only the stale connection was removed: {left:?}"
    );
    assert!(!left.contains(&"stale-connection".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_member_group_fans_out_to_everyone_gets_coalesced_receipts_and_a_hundred_and_first_is_refused()
 {
    let stack = stack().await;
    let mut members = Vec::new();
    for i in 0..100 {
        members.push(user(&stack, &format!("m{i}")).await);
    }
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let group = conversation(&stack, ConversationKind::Group, &refs, None).await;
    let mut clients = Vec::new();
    for m in &members {
        clients.push(client(&stack, m, "phone").await);
    }
    let ack = clients[0]
        .send_text(&group, &sealed("hello group"))
        .await
        .unwrap();
    // Every member gets it (the sender's own echo is left in its queue: waiting for it would
    // skip the receipts that may come before it).
    for c in clients.iter_mut().skip(1) {
        let got = messages(c, &group, 1).await;
        assert_eq!(got[0].body.content, "hello group");
    }
    // The 99 delivery receipts reach the sender coalesced: frames at least an interval apart
    // (the first at once), together naming every other member, none per member.
    let mut delivered = HashSet::new();
    let mut sent_at = Vec::new();
    while delivered.len() < 99 {
        let receipts = clients[0]
            .wait_for(WAIT, |e| match e {
                ClientEvent::Receipts(r) => Some(r.clone()),
                ClientEvent::Delivered(d) => panic!("a per-member receipt in a group: {d:?}"),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("receipts stopped at {} of 99", delivered.len()));
        for mark in &receipts.delivered {
            assert_ne!(mark.user_id, members[0], "the sender's own mark");
            assert!(mark.up_to >= 1, "{mark:?}");
            delivered.insert(mark.user_id.clone());
        }
        sent_at.push(receipts.timestamp);
    }
    // The frame naming the last member was sent after the status was computed from the
    // members' cursors.
    let m = stored(&stack, &ack.message_id).await;
    assert_eq!(m.status, MessageStatus::Delivered);
    // At most one frame per interval: the one sent at once, one per interval after it, and one
    // of slack (each frame is stamped after its own lookups, which a loaded machine slows).
    // Uncoalesced, 99 frames would come within a few milliseconds.
    let interval = messaging::protocol::RECEIPTS_INTERVAL_MS as i64;
    let span = sent_at.last().unwrap() - sent_at.first().unwrap();
    assert!(
        sent_at.len() as i64 <= span / interval + 2,
        "{} receipts frames over {span} ms: {sent_at:?}",
        sent_at.len()
    );

    let mut too_many = refs.clone();
    let extra = user(&stack, "extra").await;
    too_many.push(&extra);
    let conversation = messaging::model::Conversation::new(
        "too-big",
        ConversationKind::Group,
        too_many.iter().map(|s| s.to_string()).collect(),
    );
    let refused = stack
        .ctx
        .store
        .insert_conversation(&conversation)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_cannot_send_read_or_retransmit() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let mallory = user(&stack, "mallory").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_phone = client(&stack, &alice, "phone").await;
    let ack = alice_phone
        .send_text(&conv, &sealed("private"))
        .await
        .unwrap();
    let mut intruder = client(&stack, &mallory, "phone").await;

    let err = intruder
        .send_text(&conv, &sealed("let me in"))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::Forbidden);
    intruder.read(vec![ack.message_id.clone()]).unwrap();
    assert_eq!(error_code(&mut intruder).await, ErrorCode::Forbidden);
    intruder
        .send_raw(
            serde_json::json!({"type": "retransmit", "conversation_id": conv,
                "from_sequence": 1, "to_sequence": 1})
            .to_string(),
        )
        .unwrap();
    assert_eq!(error_code(&mut intruder).await, ErrorCode::Forbidden);
    let stored = stored(&stack, &ack.message_id).await;
    assert_eq!(
        stored.status,
        MessageStatus::Sent,
        "the intruder's receipt changed nothing"
    );
    assert_eq!(stored_count(&stack, &conv).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cached_conversation_is_read_again_from_mongodb_and_still_checked() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let mallory = user(&stack, "mallory").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let name = messaging::conversations::cache_name(&conv);
    let corrupt = || async {
        stack
            .ctx
            .realtime
            .cache_put(&name, "{not json", Duration::from_secs(60))
            .await
            .unwrap();
    };
    // A send reads the cache in its frame's round trip; what it cannot parse is read from
    // MongoDB, and the membership rule still applies.
    corrupt().await;
    let intruder = client(&stack, &mallory, "phone").await;
    let err = intruder
        .send_text(&conv, &sealed("let me in"))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::Forbidden);
    corrupt().await;
    let phone = client(&stack, &alice, "phone").await;
    phone.send_text(&conv, &sealed("hi")).await.unwrap();
    let cached = stack.ctx.realtime.cache_get(&name).await.unwrap().unwrap();
    let cached: messaging::model::Conversation = serde_json::from_str(&cached).unwrap();
    assert!(
        cached.has_participant(&bob),
        "the cache holds the conversation again"
    );
    assert_eq!(stored_count(&stack, &conv).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_agent_answers_with_progress_and_a_silent_agent_leads_to_a_timeout_notice() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let conv = conversation(
        &stack,
        ConversationKind::Agent,
        &[&alice, local_stack::agent::PLAIN_DEMO_AGENT_ID],
        Some(local_stack::agent::PLAIN_DEMO_AGENT_ID),
    )
    .await;
    let mut phone = client(&stack, &alice, "phone").await;
    phone.send_text(&conv, "hello agent").await.unwrap();
    // The typing frame and the user's own echo may come in either order: collect both.
    let mut typing = None;
    let mut got = Vec::new();
    while typing.is_none() || got.len() < 2 {
        match phone.next_event_within(WAIT).await {
            Some(ClientEvent::Typing(t)) => typing = Some(t),
            Some(ClientEvent::Message(m)) => got.push(*m),
            Some(_) => {}
            None => panic!("typing {typing:?}, messages {got:?}"),
        }
    }
    assert_eq!(
        typing.unwrap().user_id,
        local_stack::agent::PLAIN_DEMO_AGENT_ID
    );
    assert_eq!(got[0].body.content, "hello agent");
    assert_eq!(
        got[1].sender_id.as_deref(),
        Some(local_stack::agent::PLAIN_DEMO_AGENT_ID)
    );
    assert_eq!(
        got[1].body.content,
        "Demo agent here. You said: hello agent"
    );
    assert_eq!(
        got[1].body.reply_to_message_id.as_deref(),
        Some(got[0].message_id.as_str())
    );

    // The agent stays silent: after the timeout (2 s here) the user is told.
    phone.send_text(&conv, "/silent").await.unwrap();
    let got = messages(&mut phone, &conv, 2).await;
    assert_eq!(got[0].body.content, "/silent");
    assert_eq!(got[1].body.message_type, MessageType::System);
    assert!(
        got[1].body.content.contains("did not answer"),
        "{}",
        got[1].body.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_typed_errors_and_the_connection_stays_usable() {
    let stack = stack_with(|c| c.settings.max_content_bytes = 1000).await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut phone = client(&stack, &alice, "phone").await;
    let send = |payload: serde_json::Value| {
        serde_json::json!({"type": "message", "idempotency_key": uuid::Uuid::new_v4().to_string(),
            "payload": payload})
        .to_string()
    };
    let big = "x".repeat(1001);
    let table: Vec<(String, ErrorCode)> = vec![
        ("{not json".into(), ErrorCode::MalformedJson),
        (r#"{"type": "teleport"}"#.into(), ErrorCode::UnknownType),
        (r#"{"no": "type"}"#.into(), ErrorCode::InvalidRequest),
        (
            r#"{"type": "retransmit", "conversation_id": "c"}"#.into(),
            ErrorCode::InvalidRequest,
        ),
        (
            r#"{"type": "heartbeat", "timestamp": "yesterday"}"#.into(),
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                serde_json::json!({"conversation_id": conv, "content": big, "type": "text", "timestamp": 1}),
            ),
            ErrorCode::PayloadTooLarge,
        ),
        (
            send(
                serde_json::json!({"conversation_id": conv, "content": "x", "type": "image", "timestamp": 1}),
            ),
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                serde_json::json!({"conversation_id": conv, "content": "x", "type": "system", "timestamp": 1}),
            ),
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                serde_json::json!({"conversation_id": conv, "content": "", "type": "location", "timestamp": 1}),
            ),
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                serde_json::json!({"conversation_id": conv, "content": "x", "type": "reaction", "timestamp": 1}),
            ),
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                serde_json::json!({"conversation_id": conv, "content": "x", "type": "text",
                "reply_to_message_id": "nope", "timestamp": 1}),
            ),
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                serde_json::json!({"conversation_id": "no-such-conversation", "content": "x", "type": "text", "timestamp": 1}),
            ),
            ErrorCode::NotFound,
        ),
        (
            serde_json::json!({"type": "retransmit", "conversation_id": conv,
                "from_sequence": 1, "to_sequence": 1_000_000})
            .to_string(),
            ErrorCode::InvalidRequest,
        ),
        (
            serde_json::json!({"type": "retransmit", "conversation_id": conv,
                "from_sequence": 5, "to_sequence": 2})
            .to_string(),
            ErrorCode::InvalidRequest,
        ),
        (
            r#"{"type": "read_receipt", "message_ids": [], "timestamp": 1}"#.into(),
            ErrorCode::InvalidRequest,
        ),
        (
            r#"{"type": "presence", "user_ids": ["stranger"]}"#.into(),
            ErrorCode::Forbidden,
        ),
    ];
    for (frame, expected) in table {
        phone.send_raw(frame.clone()).unwrap();
        assert_eq!(error_code(&mut phone).await, expected, "frame: {frame}");
    }
    // Still usable: a valid send goes through.
    let ack = phone.send_text(&conv, &sealed("still here")).await.unwrap();
    assert_eq!(ack.sequence_number, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_on_connect_and_with_an_auth_frame() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    // A bad token refuses the upgrade with 401.
    let mut bad = client_config(&stack, &alice, "phone");
    bad.token = "not-a-token".into();
    assert_eq!(
        Client::connect(bad).await.err(),
        Some(ClientError::Refused(401))
    );
    let mut expired = client_config(&stack, &alice, "phone");
    let mut claims = stack.issuer.claims(&alice, Duration::from_secs(60));
    claims.exp -= 3600;
    claims.nbf = Some(claims.exp - 60);
    claims.iat = claims.exp - 60;
    expired.token = stack.issuer.sign(&claims).unwrap();
    assert_eq!(
        Client::connect(expired).await.err(),
        Some(ClientError::Refused(401))
    );

    // Without a token: everything but `auth` is refused, then `auth` works.
    let mut anonymous = client_config(&stack, &alice, "phone");
    anonymous.token = String::new();
    let mut c = Client::connect(anonymous).await.unwrap();
    assert_eq!(error_code(&mut c).await, ErrorCode::Unauthenticated); // the client's own sync
    c.send_raw(r#"{"type":"heartbeat","timestamp":1}"#).unwrap();
    assert_eq!(error_code(&mut c).await, ErrorCode::Unauthenticated);
    let auth = serde_json::json!({"type": "auth", "payload": {
        "user_id": alice, "auth_token": e2e::token(&stack, &alice), "device_id": "web",
        "platform": "web", "app_version": "1.0.0"}});
    c.send_raw(auth.to_string()).unwrap();
    assert_eq!(ready(&mut c).await, 0);
    let wrong = serde_json::json!({"type": "auth", "payload": {"auth_token": "garbage"}});
    c.send_raw(wrong.to_string()).unwrap();
    assert_eq!(error_code(&mut c).await, ErrorCode::InvalidToken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_over_their_rate_limit_get_rate_limited_with_a_wait() {
    let stack = stack_with(|c| c.settings.send_limit.max = 3).await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    for i in 0..3 {
        phone
            .send_text(&conv, &sealed(format!("{i}")))
            .await
            .unwrap();
    }
    let err = phone
        .send_text(&conv, &sealed("one too many"))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::RateLimited);
    assert_eq!(
        stored_count(&stack, &conv).await,
        3,
        "nothing stored past the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_different_content_is_an_idempotency_conflict() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let first = phone.send_with_key("k", text(&conv, "one")).await.unwrap();
    let repeat = phone.send_with_key("k", text(&conv, "one")).await.unwrap();
    assert_eq!(first, repeat, "a repeated key gets the original ack");
    let err = phone
        .send_with_key("k", text(&conv, "two"))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::IdempotencyConflict);
    assert_eq!(stored_count(&stack, &conv).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_disconnect_sets_presence_offline_and_saves_last_seen() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let laptop = client(&stack, &alice, "laptop").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    bob_phone.presence(vec![alice.clone()]).unwrap();
    let p = bob_phone
        .wait_for(WAIT, |e| match e {
            ClientEvent::Presence(p) => Some(p.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(p.status, messaging::protocol::PresenceStatus::Online);

    phone.close();
    e2e::connections(&stack, &alice, 1, "phone's connection forgotten").await;
    // One device left: still online, no last seen yet.
    let presence = stack.ctx.realtime.presence(&alice).await.unwrap();
    assert_eq!(presence.status, messaging::protocol::PresenceStatus::Online);
    assert!(
        stack
            .ctx
            .store
            .user(&alice)
            .await
            .unwrap()
            .unwrap()
            .last_seen
            .is_none()
    );

    laptop.close();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let user = stack.ctx.store.user(&alice).await.unwrap().unwrap();
        if user.last_seen.is_some() {
            assert_eq!(user.status, messaging::protocol::PresenceStatus::Offline);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "last_seen saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob_phone.presence(vec![alice.clone()]).unwrap();
    let p = bob_phone
        .wait_for(WAIT, |e| match e {
            ClientEvent::Presence(p) => Some(p.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(p.status, messaging::protocol::PresenceStatus::Offline);
    assert!(p.last_seen.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_changes_nothing() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    let ack = phone.send_text(&conv, &sealed("once")).await.unwrap();
    messages(&mut bob_phone, &conv, 1).await;
    stack.settled().await;
    let before = stack.ctx.store.conversation(&conv).await.unwrap().unwrap();

    // The broker delivers the same event again (at-least-once).
    let stored = stored(&stack, &ack.message_id).await;
    let event = messaging::events::new_event_with_id(
        &stored.message_id,
        messaging::model::event_types::MESSAGE_RECEIVED,
        "/messaging",
        &messaging::model::MessageReceived::from_stored(&stored, None),
        &[],
    )
    .unwrap();
    stack.broker.ingest(event).await;
    stack.settled().await;
    phone.send_text(&conv, &sealed("next")).await.unwrap();
    let got = messages(&mut bob_phone, &conv, 1).await;
    assert_eq!(
        got[0].body.content, "next",
        "no second copy of the first message"
    );
    let after = stack.ctx.store.conversation(&conv).await.unwrap().unwrap();
    assert_eq!(before.last_sequence_number, 1);
    assert_eq!(after.last_sequence_number, 2);
    assert_eq!(after.unread_for(&bob), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_and_forwards_are_messages_with_their_references() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let carol = user(&stack, "carol").await;
    let with_bob = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let with_carol = conversation(&stack, ConversationKind::Direct, &[&alice, &carol], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    let mut carol_phone = client(&stack, &carol, "phone").await;
    let original = phone
        .send_text(&with_bob, &sealed("look at this"))
        .await
        .unwrap();

    let mut reaction = text(&with_bob, "👍");
    reaction.body.message_type = MessageType::Reaction;
    reaction.body.reply_to_message_id = Some(original.message_id.clone());
    phone.send_message(reaction).await.unwrap();
    let got = messages(&mut bob_phone, &with_bob, 2).await;
    assert_eq!(got[1].body.message_type, MessageType::Reaction);
    assert_eq!(
        got[1].body.reply_to_message_id.as_deref(),
        Some(original.message_id.as_str())
    );

    let mut forward = text(&with_carol, "look at this");
    forward.body.forwarded_from = Some(messaging::protocol::ForwardedFrom {
        message_id: original.message_id.clone(),
        conversation_id: with_bob.clone(),
    });
    phone.send_message(forward).await.unwrap();
    let got = messages(&mut carol_phone, &with_carol, 1).await;
    assert_eq!(
        got[0]
            .body
            .forwarded_from
            .as_ref()
            .map(|f| f.message_id.as_str()),
        Some(original.message_id.as_str())
    );
    // Carol cannot forward from a conversation she is not in.
    let mut stolen = text(&with_carol, "x");
    stolen.body.forwarded_from = Some(messaging::protocol::ForwardedFrom {
        message_id: original.message_id.clone(),
        conversation_id: with_bob.clone(),
    });
    let err = carol_phone.send_message(stolen).await.unwrap_err();
    assert_refused(&err, ErrorCode::Forbidden);
}

/// The next `receipts` frame of `group` saying `who` received message 1; a per-member
/// `delivery_ack` frame on the way fails the test.
async fn delivered_to(
    phone: &mut Client,
    group: &str,
    who: &str,
) -> messaging::protocol::ReceiptsPayload {
    phone
        .wait_for(WAIT, |e| match e {
            ClientEvent::Receipts(r)
                if r.conversation_id == group
                    && r.delivered.iter().any(|m| m.user_id == who && m.up_to >= 1) =>
            {
                Some(r.clone())
            }
            ClientEvent::Delivered(d) => panic!("a per-member receipt in a group: {d:?}"),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no receipts frame naming {who}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_receipts_reach_the_sender_coalesced_and_the_status_aggregates_per_member() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let carol = user(&stack, "carol").await;
    let group = conversation(
        &stack,
        ConversationKind::Group,
        &[&alice, &bob, &carol],
        None,
    )
    .await;
    let mut phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    let ack = phone.send_text(&group, &sealed("hi all")).await.unwrap();
    messages(&mut bob_phone, &group, 1).await; // bob's client acks delivery by itself
    let receipts = delivered_to(&mut phone, &group, &bob).await;
    assert!(
        receipts.delivered.iter().all(|m| m.user_id != alice),
        "the sender's own marks are left out: {receipts:?}"
    );
    let m = stored(&stack, &ack.message_id).await;
    assert_eq!(
        m.status,
        MessageStatus::Sent,
        "carol has not received it yet"
    );
    assert!(
        m.delivered_to.is_empty(),
        "group messages keep no per-member lists: {m:?}"
    );

    let mut carol_phone = client(&stack, &carol, "phone").await;
    messages(&mut carol_phone, &group, 1).await;
    delivered_to(&mut phone, &group, &carol).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = stored(&stack, &ack.message_id).await;
        if m.status == MessageStatus::Delivered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered once every member has it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reading is coalesced the same way; the message is read once both have read it.
    for (reader, device) in [(&carol, &mut carol_phone), (&bob, &mut bob_phone)] {
        device.read(vec![ack.message_id.clone()]).unwrap();
        phone
            .wait_for(WAIT, |e| match e {
                ClientEvent::Receipts(r) if r.read.iter().any(|m| &m.user_id == reader) => Some(()),
                ClientEvent::Read(r) => panic!("a per-member read receipt in a group: {r:?}"),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("{reader}'s read receipt"));
        let m = stored(&stack, &ack.message_id).await;
        let expected = if reader == &bob {
            MessageStatus::Read
        } else {
            MessageStatus::Delivered
        };
        assert_eq!(m.status, expected, "after {reader} read it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmit_answers_in_frames_under_128_kb_and_heartbeat_is_acknowledged() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stack = stack_with(|c| c.settings.max_content_bytes = 60_000).await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    for i in 0..6 {
        phone
            .send_text(&conv, &sealed(format!("{i}{}", "x".repeat(44_000))))
            .await
            .unwrap();
    }
    let url = format!("{}/?token={}", stack.ws_url, e2e::token(&stack, &bob));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(
        r#"{"type":"heartbeat","timestamp":1}"#.into(),
    ))
    .await
    .unwrap();
    let retransmit = serde_json::json!({"type": "retransmit", "conversation_id": conv,
        "from_sequence": 1, "to_sequence": 6});
    ws.send(Message::Text(retransmit.to_string().into()))
        .await
        .unwrap();
    let mut seqs = Vec::new();
    let mut frames = 0;
    let mut heartbeat_acked = false;
    while seqs.len() < 6 || !heartbeat_acked {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        assert!(text.len() <= 128 * 1024, "frame of {} bytes", text.len());
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        match json["type"].as_str() {
            Some("heartbeat_ack") => heartbeat_acked = json["server_time"].as_i64().unwrap() > 0,
            Some("messages") => {
                frames += 1;
                for m in json["payload"]["messages"].as_array().unwrap() {
                    seqs.push(m["sequence_number"].as_u64().unwrap());
                }
            }
            _ => {}
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert!(frames >= 3, "split into several frames, got {frames}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_routing_and_unavailable_agents() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    // No fixed agent: the conversation asks for the `echo` capability, which the demo agent has.
    let routed = messaging::model::Conversation {
        agent_capability: Some("echo".into()),
        ..messaging::model::Conversation::new(
            uuid::Uuid::new_v4().to_string(),
            ConversationKind::Agent,
            vec![alice.clone()],
        )
    };
    stack.ctx.store.insert_conversation(&routed).await.unwrap();
    let mut phone = client(&stack, &alice, "phone").await;
    phone
        .send_text(&routed.conversation_id, "route me")
        .await
        .unwrap();
    let got = messages(&mut phone, &routed.conversation_id, 2).await;
    assert_eq!(
        got[1].sender_id.as_deref(),
        Some(local_stack::agent::PLAIN_DEMO_AGENT_ID)
    );

    // An agent that never sent a heartbeat is unavailable: the user is told at once.
    let mut ghost =
        local_stack::agent::DemoAgent::registry_entry(local_stack::agent::PLAIN_DEMO_AGENT_ID);
    ghost.agent_id = "ghost".into();
    ghost.name = "Ghost".into();
    ghost.last_heartbeat_at = None;
    stack.ctx.store.upsert_agent(&ghost).await.unwrap();
    let conv = conversation(
        &stack,
        ConversationKind::Agent,
        &[&alice, "ghost"],
        Some("ghost"),
    )
    .await;
    phone.send_text(&conv, "anyone?").await.unwrap();
    let got = messages(&mut phone, &conv, 2).await;
    assert_eq!(got[1].body.message_type, MessageType::System);
    assert!(
        got[1].body.content.contains("Ghost is unavailable"),
        "{}",
        got[1].body.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_with_a_local_token_opens_a_chat_with_the_demo_agent_over_the_http_api() {
    let stack = stack().await;
    let token = e2e::token(&stack, "newcomer");
    let http = reqwest::Client::new();
    let opened: serde_json::Value = http
        .post(format!("{}/v1/conversations", stack.api_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"agent_id": "demo-plain"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = opened["conversation_id"].as_str().unwrap().to_string();
    let mut phone = client(&stack, "newcomer", "terminal").await;
    phone.send_text(&conv, "hi").await.unwrap();
    let got = messages(&mut phone, &conv, 2).await;
    assert_eq!(got[1].body.content, "Demo agent here. You said: hi");
    // The OpenAPI document is served too.
    let doc: serde_json::Value = http
        .get(format!("{}/openapi.json", stack.api_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_accepts_a_bearer_header_and_refuses_a_token_for_someone_else() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let mut request = stack.ws_url.clone().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", e2e::token(&stack, &alice))
            .parse()
            .unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    e2e::connections(&stack, &alice, 1, "registered from the header token").await;
    drop(ws);
    let url = format!(
        "{}/?token={}&user_id=mallory",
        stack.ws_url,
        e2e::token(&stack, &alice)
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_resumes_and_resends_after_a_drop() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let alice_phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    alice_phone
        .send_text(&conv, &sealed("before"))
        .await
        .unwrap();
    messages(&mut bob_phone, &conv, 1).await;

    bob_phone.drop_connection();
    // While Bob is away: Alice writes twice, and Bob has a send in flight.
    alice_phone
        .send_text(&conv, &sealed("while away 1"))
        .await
        .unwrap();
    alice_phone
        .send_text(&conv, &sealed("while away 2"))
        .await
        .unwrap();
    let ack = bob_phone
        .send_text(&conv, &sealed("sent during the drop"))
        .await
        .unwrap();
    assert_eq!(ack.sequence_number, 4);
    let got = messages(&mut bob_phone, &conv, 3).await;
    let contents: Vec<&str> = got.iter().map(|m| m.body.content.as_str()).collect();
    assert_eq!(
        contents,
        ["while away 1", "while away 2", "sent during the drop"]
    );
    assert_eq!(stored_count(&stack, &conv).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_a_notification_event_without_content() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let event =
                        cloudevents::binding::http::to_event(&headers, body.to_vec()).unwrap();
                    let data: serde_json::Value = messaging::events::event_data(&event).unwrap();
                    sink.lock().unwrap().push(data);
                    axum::http::StatusCode::ACCEPTED
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let triggers = std::env::temp_dir().join(format!("{}.toml", testkit::unique_name("triggers")));
    std::fs::write(
        &triggers,
        format!(
            "[[trigger]]\nname = \"push-sink\"\nsubscriber = \"{url}\"\nfilter.attributes = {{ type = \"messaging.notification\" }}\n"
        ),
    )
    .unwrap();
    let stack = stack_with(|c| c.extra_triggers = vec![triggers.clone()]).await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let ack = phone
        .send_text(&conv, &sealed("secret words"))
        .await
        .unwrap();
    stack.settled().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while received.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "notification event published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let note = received.lock().unwrap()[0].clone();
    assert_eq!(note["user_id"], bob.as_str());
    assert_eq!(note["message_id"], ack.message_id.as_str());
    assert_eq!(note["badge"], 1);
    assert!(
        !note.to_string().contains("secret words"),
        "no content in notifications"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_agent_response_is_stored_once() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let conv = conversation(
        &stack,
        ConversationKind::Agent,
        &[&alice, local_stack::agent::PLAIN_DEMO_AGENT_ID],
        Some(local_stack::agent::PLAIN_DEMO_AGENT_ID),
    )
    .await;
    let response = messaging::model::AgentResponse {
        idempotency_key: "answer-1".into(),
        conversation_id: conv.clone(),
        user_id: alice.clone(),
        agent_id: local_stack::agent::PLAIN_DEMO_AGENT_ID.into(),
        response: "the answer".into(),
        run_id: None,
        in_reply_to: None,
        message_type: MessageType::Text,
        timestamp: 1,
    };
    for _ in 0..3 {
        let event = messaging::events::new_event(
            messaging::model::event_types::AGENT_RESPONSE,
            "/agents/demo-plain",
            &response,
            &[],
        )
        .unwrap();
        stack.broker.ingest(event).await;
    }
    stack.settled().await;
    assert_eq!(stored_count(&stack, &conv).await, 1);
    // An agent answering in a conversation that is not its own is refused (dead-lettered).
    let mut stranger = response.clone();
    stranger.agent_id = "impostor".into();
    stranger.idempotency_key = "answer-2".into();
    let event = messaging::events::new_event(
        messaging::model::event_types::AGENT_RESPONSE,
        "/agents/impostor",
        &stranger,
        &[],
    )
    .unwrap();
    stack.broker.ingest(event).await;
    stack.settled().await;
    assert_eq!(stored_count(&stack, &conv).await, 1);
    assert!(
        stack
            .broker
            .dead_letters()
            .iter()
            .any(|d| d.error_code == 403),
        "refused with 403 and dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_message_refers_to_a_completed_upload_of_its_conversation() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let other = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut phone = client(&stack, &alice, "phone").await;
    let mut bob_phone = client(&stack, &bob, "phone").await;
    let http = reqwest::Client::new();
    let token = e2e::token(&stack, &alice);
    let bytes = vec![7u8; 2048];
    // An end-to-end encrypted image: opaque bytes, no server-side thumbnail.
    let granted: serde_json::Value = http
        .post(format!("{}/v1/media", stack.api_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"conversation_id": conv, "message_type": "image",
            "content_type": "application/octet-stream", "size_bytes": bytes.len(), "encrypted": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media_id = granted["media_id"].as_str().expect("media id").to_string();
    let image = |media: &str, conversation: &str| {
        let mut m = text(conversation, "encrypted-caption");
        m.body.message_type = MessageType::Image;
        m.body.media_url = Some(media.to_string());
        m
    };
    // Not uploaded yet: refused.
    let err = phone
        .send_message(image(&media_id, &conv))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::InvalidRequest);

    let upload = &granted["upload"];
    let mut put = http.put(upload["url"].as_str().unwrap());
    for (name, value) in upload["headers"].as_object().unwrap() {
        put = put.header(name.as_str(), value.as_str().unwrap());
    }
    assert_eq!(put.body(bytes.clone()).send().await.unwrap().status(), 200);
    let done = http
        .post(format!("{}/v1/media/{media_id}/complete", stack.api_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);

    // Another conversation's media, or an unknown id: refused.
    let err = phone
        .send_message(image(&media_id, &other))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::InvalidRequest);
    let err = phone
        .send_message(image("no-such-media", &conv))
        .await
        .unwrap_err();
    assert_refused(&err, ErrorCode::InvalidRequest);

    phone.send_message(image(&media_id, &conv)).await.unwrap();
    let got = messages(&mut bob_phone, &conv, 1).await;
    assert_eq!(got[0].body.media_url.as_deref(), Some(media_id.as_str()));
    assert_eq!(got[0].body.message_type, MessageType::Image);
    let _ = &mut phone;
}

/// The message function's context with Redis and MongoDB adapters of its own, so that only its
/// round trips are counted.
async fn counting_context(
    stack: &local_stack::stack::RunningStack,
) -> (
    messaging::context::Context,
    messaging::realtime::RedisState,
    messaging::store::MongoStore,
) {
    let realtime = messaging::realtime::RedisState::connect(
        &stack.config.redis_url,
        &stack.config.redis_prefix,
    )
    .await
    .unwrap();
    let store = messaging::store::MongoStore::connect(
        &stack.config.mongodb_uri,
        &stack.config.database,
        messaging::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    let ctx = messaging::context::Context {
        realtime: std::sync::Arc::new(realtime.clone()),
        store: std::sync::Arc::new(store.clone()),
        ..stack.ctx.clone()
    };
    (ctx, realtime, store)
}

/// A frame of `user`'s `device` on `connection_id` as API Gateway hands it to the message
/// function, with the identity the `$connect` authorizer passes.
fn authorized_frame(
    connection_id: &str,
    user: &str,
    device: &str,
    route: &str,
    body: String,
) -> aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest {
    let mut event = aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest::default();
    event.request_context.connection_id = Some(connection_id.to_string());
    event.request_context.route_key = Some(route.into());
    for (k, v) in [
        ("principalId", user),
        ("user_id", user),
        ("device_id", device),
    ] {
        event
            .request_context
            .authorizer
            .fields
            .insert(k.into(), serde_json::Value::String(v.to_string()));
    }
    event.body = Some(body);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_from_message_to_ack_takes_one_mongodb_round_trip_whichever_process_sent_last() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let _phone = client(&stack, &alice, "phone").await;
    let mut bobs = client(&stack, &bob, "phone").await;
    let connection_id = stack.ctx.realtime.user_connections(&alice).await.unwrap()[0].clone();
    let (ctx, realtime, store) = counting_context(&stack).await;
    let event = |key: &str| {
        authorized_frame(
            &connection_id,
            &alice,
            "phone",
            "message",
            serde_json::json!({"type": "message", "client_message_id": key, "idempotency_key": key,
                "payload": {"conversation_id": conv, "content": sealed(key), "type": "text", "timestamp": 1}})
            .to_string(),
        )
    };
    // The first send, by another process (the stack's own functions, another Lambda sandbox
    // on AWS), fills the conversation cache and notes the conversation's last number; measure
    // the second, in a process that never stored a message there.
    fn_message::handle(&stack.ctx, event("warm-up")).await;
    let (redis_before, mongo_before) = (realtime.round_trips(), store.round_trips());
    let answer = fn_message::handle(&ctx, event("measured")).await;
    let redis = realtime.round_trips() - redis_before;
    let mongo = store.round_trips() - mongo_before;
    // The warm-up's number, read with the frame's budget, is the floor: no read before the
    // insert.
    assert_eq!(mongo, 1, "the insert");
    let ack: serde_json::Value = match answer.body {
        Some(aws_lambda_events::encodings::Body::Text(text)) => {
            serde_json::from_str(&text).unwrap()
        }
        other => panic!("no message_ack: {other:?}"),
    };
    assert_eq!(ack["type"], "message_ack", "{ack}");
    assert_eq!(
        ack["payload"]["sequence_number"], 2,
        "the number after the warm-up's: no hole"
    );
    assert_eq!(
        redis, 2,
        "rate limits, the registration check, the conversation's routing and last number in \
         one pipeline; the new last number noted beside the publish"
    );
    let delivered = bobs
        .wait_for(WAIT, |e| match e {
            ClientEvent::Message(m) if said(&m.body.content) == "measured" => {
                Some(m.sequence_number)
            }
            _ => None,
        })
        .await;
    assert_eq!(delivered, Some(2), "the measured send was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_a_message_was_sent_on_gets_its_ack_and_every_other_the_message() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let mut phone = RawWs::connect(&stack, Some(&token(&stack, &alice)), "phone").await;
    let mut laptop = client(&stack, &alice, "laptop").await;
    let mut bobs = client(&stack, &bob, "phone").await;
    e2e::connections(&stack, &alice, 2, "alice's two devices not registered").await;
    phone
        .send(
            serde_json::json!({"type": "message", "client_message_id": "c1", "idempotency_key": "k1",
                "payload": {"conversation_id": conv, "content": sealed("hi"), "type": "text", "timestamp": 1}})
            .to_string(),
        )
        .await;
    let ack = phone.expect("message_ack").await;
    let message_id = ack["payload"]["message_id"].as_str().unwrap().to_string();
    for (who, device) in [("bob", &mut bobs), ("alice's laptop", &mut laptop)] {
        let got = device
            .wait_for(WAIT, |e| match e {
                ClientEvent::Message(m) if m.message_id == message_id => Some(m.sequence_number),
                _ => None,
            })
            .await;
        assert_eq!(got, Some(1), "{who} got the message");
    }
    // Once the fan-out is over (recorded done), whatever it posted to the phone is ahead of the
    // heartbeat's answer: nothing but that answer may come.
    tokio::time::timeout(WAIT, stack.settled())
        .await
        .expect("fan-out never finished");
    phone
        .send(serde_json::json!({"type": "heartbeat", "timestamp": 2}).to_string())
        .await;
    loop {
        let frame = phone.next(WAIT).await.expect("an answer to the heartbeat");
        assert!(
            frame["type"] != "message" && frame["type"] != "messages",
            "the sending connection got the message back: {frame}"
        );
        if frame["type"] == "heartbeat_ack" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connections_heartbeat_costs_one_redis_round_trip_no_mongodb_and_no_post() {
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let mut phone = RawWs::connect(&stack, Some(&token(&stack, &alice)), "phone").await;
    let connection_id = e2e::connections(&stack, &alice, 1, "not registered").await[0].clone();
    let (ctx, realtime, store) = counting_context(&stack).await;
    let mut event = authorized_frame(
        &connection_id,
        &alice,
        "phone",
        "heartbeat",
        r#"{"type":"heartbeat","timestamp":1}"#.into(),
    );
    event.request_context.connected_at = 1_700_000_000_000;
    let (redis_before, mongo_before) = (realtime.round_trips(), store.round_trips());
    let seen_before = stack.ctx.realtime.presence(&alice).await.unwrap().last_seen;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let response = fn_message::handle(&ctx, event).await;
    assert_eq!(
        realtime.round_trips() - redis_before,
        1,
        "budget, registration check and presence refresh in one round trip"
    );
    assert_eq!(store.round_trips() - mongo_before, 0);
    // The answer is the route response, not a management-API post.
    let Some(aws_lambda_events::encodings::Body::Text(answer)) = response.body else {
        panic!("no answer in the response: {response:?}");
    };
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["type"], "heartbeat_ack", "{answer}");
    while let Some(frame) = phone.next(Duration::from_millis(300)).await {
        assert_ne!(frame["type"], "heartbeat_ack", "the answer was also posted");
    }
    let seen_after = stack.ctx.realtime.presence(&alice).await.unwrap().last_seen;
    assert!(
        seen_after > seen_before,
        "{seen_before:?} -> {seen_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_as_fast_as_possible_are_stored_in_the_order_they_were_typed() {
    let stack = stack_with(|c| {
        c.settings.send_limit.max = 10_000;
        c.settings.frame_limit.max = 10_000;
    })
    .await;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let carol = user(&stack, "carol").await;
    let with_bob = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let with_carol = conversation(&stack, ConversationKind::Direct, &[&alice, &carol], None).await;
    let phone = client(&stack, &alice, "phone").await;
    // 200 messages typed one after another without waiting, in two conversations at once.
    let mut sends = Vec::new();
    for i in 0..200 {
        let conversation = if i % 2 == 0 { &with_bob } else { &with_carol };
        sends.push(phone.send_text(conversation, &sealed(format!("m{i}"))));
    }
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }
    for (conversation, parity) in [(&with_bob, 0), (&with_carol, 1)] {
        let stored = stack
            .ctx
            .store
            .messages_in_range(conversation, 1, 1_000, 1_000)
            .await
            .unwrap();
        let typed: Vec<String> = (0..200)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("m{i}"))
            .collect();
        let contents: Vec<String> = stored.iter().map(|m| said(&m.body.content)).collect();
        assert_eq!(contents, typed, "stored in the order they were typed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_messages_of_a_new_conversation_posted_out_of_order_arrive_in_order() {
    use messaging::protocol::{DeliveredMessage, MessageBody, ServerFrame};
    let stack = stack().await;
    let alice = user(&stack, "alice").await;
    let mut phone = client(&stack, &alice, "phone").await;
    let connection_id = stack.ctx.realtime.user_connections(&alice).await.unwrap()[0].clone();
    // Two fan-outs raced (or took different hops between gateway replicas): the second message
    // of a conversation this device has never seen reaches it before the first.
    let conversation = uuid::Uuid::new_v4().to_string();
    for seq in [2u64, 1] {
        let frame = ServerFrame::Message {
            payload: DeliveredMessage {
                message_id: format!("m{seq}"),
                sequence_number: seq,
                sender_id: Some("bob".into()),
                receiver_id: None,
                conversation_id: Some(conversation.clone()),
                body: MessageBody::text(format!("number {seq}")),
                timestamp: 1,
                status: None,
            },
        };
        stack
            .ctx
            .gateway
            .post(&connection_id, frame.to_json().as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let seq = phone
            .wait_for(WAIT, |e| match e {
                ClientEvent::Message(m) if m.conversation_id.as_deref() == Some(&conversation) => {
                    Some(m.sequence_number)
                }
                _ => None,
            })
            .await
            .expect("both messages");
        got.push(seq);
    }
    assert_eq!(got, vec![1, 2], "in order, neither skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_sweep_clears_done_fanouts_in_one_write_and_redoes_what_redis_forgot() {
    use messaging::outbox::{FANOUT_SCOPE, Swept, sweep};
    // No background sweep: this test runs it at chosen times.
    let stack = stack_with(|c| c.sweep_interval = Duration::from_secs(3600)).await;
    let grace = stack.config.store.fanout_grace.as_millis() as i64;
    let alice = user(&stack, "alice").await;
    let bob = user(&stack, "bob").await;
    let conv = conversation(&stack, ConversationKind::Direct, &[&alice, &bob], None).await;
    let phone = client(&stack, &alice, "phone").await;
    let mut bobs = client(&stack, &bob, "phone").await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let ack = phone
            .send_text(&conv, &sealed(format!("m{i}")))
            .await
            .unwrap();
        ids.push(ack.message_id);
    }
    assert_eq!(messages(&mut bobs, &conv, 3).await.len(), 3);
    stack.settled().await;
    // Fanned out, and still in the outbox: the store function wrote nothing to clear it.
    for id in &ids {
        assert!(stored(&stack, id).await.fanout_due_at.is_some(), "{id}");
    }
    // Before the marks are overdue the sweep leaves them alone.
    let now = messaging::clock::now_ms();
    assert_eq!(sweep(&stack.ctx, now).await.unwrap(), Swept::default());

    // Redis forgets the third fan-out (as after a restart with nothing saved).
    stack
        .ctx
        .realtime
        .release_work(FANOUT_SCOPE, &ids[2])
        .await
        .unwrap();
    let swept = sweep(&stack.ctx, now + grace + 1000).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            cleared: 2,
            republished: 1
        }
    );
    assert_eq!(stored(&stack, &ids[0]).await.fanout_due_at, None);
    assert_eq!(stored(&stack, &ids[1]).await.fanout_due_at, None);
    // Fanned out again; Bob's device keeps what it has (one of each number).
    stack.settled().await;
    // The retaken message is due again three graces later: then it is cleared, not resent.
    let later = now + 4 * grace + 1000;
    assert_eq!(
        sweep(&stack.ctx, later).await.unwrap(),
        Swept {
            cleared: 1,
            republished: 0
        }
    );
    assert_eq!(stored(&stack, &ids[2]).await.fanout_due_at, None);
    assert_eq!(sweep(&stack.ctx, later).await.unwrap(), Swept::default());
    phone.send_text(&conv, &sealed("m4")).await.unwrap();
    let after = messages(&mut bobs, &conv, 1).await;
    assert_eq!(
        after.iter().map(|m| m.sequence_number).collect::<Vec<_>>(),
        vec![4],
        "the re-fanned-out message 3 reached Bob's client as a repeat and was dropped"
    );
}
