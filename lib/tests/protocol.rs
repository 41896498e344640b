//! The wire protocol against the seeds' JSON examples, verbatim (ARCHITECTURE.md, "WebSocket
//! Message Schemas"), and the parser's error classes.

use messaging::ErrorCode;
use messaging::protocol::{
    ClientFrame, FrameError, MessageStatus, MessageType, ServerFrame, parse_client_frame,
};
use serde_json::Value;

/// Drops `null` members: the seeds write absent options as `null`, we omit them.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

fn round_trip_client(seed: &str) -> ClientFrame {
    let frame: ClientFrame = serde_json::from_str(seed).expect("seed parses as a client frame");
    let back = serde_json::to_value(&frame).unwrap();
    let original: Value = serde_json::from_str(seed).unwrap();
    assert_eq!(back, strip_nulls(original), "client frame round trip");
    frame
}

fn round_trip_server(seed: &str) -> ServerFrame {
    let frame: ServerFrame = serde_json::from_str(seed).expect("seed parses as a server frame");
    let back = serde_json::to_value(&frame).unwrap();
    let original: Value = serde_json::from_str(seed).unwrap();
    assert_eq!(back, strip_nulls(original), "server frame round trip");
    frame
}

#[test]
fn auth_seed() {
    let seed = r#"{
  "type": "auth",
  "payload": {
    "user_id": "123",
    "auth_token": "jwt_token_here",
    "device_id": "phone-abc",
    "platform": "ios|android|web",
    "app_version": "1.0.0"
  }
}"#;
    match round_trip_client(seed) {
        ClientFrame::Auth { payload } => {
            assert_eq!(payload.user_id.as_deref(), Some("123"));
            assert_eq!(payload.device_id.as_deref(), Some("phone-abc"));
        }
        other => panic!("wrong frame {other:?}"),
    }
}

#[test]
fn auth_success_seed() {
    let seed = r#"{
  "type": "auth_success",
  "payload": {
    "session_id": "sess_xyz789",
    "server_time": 1699189200000,
    "unread_count": 47
  }
}"#;
    match round_trip_server(seed) {
        ServerFrame::AuthSuccess { payload } => assert_eq!(payload.unread_count, 47),
        other => panic!("wrong frame {other:?}"),
    }
}

#[test]
fn send_message_seed() {
    // The seed writes the type as "text|image|..."; a real frame carries one of them.
    let seed = r#"{
  "type": "message",
  "client_message_id": "client_abc123",
  "idempotency_key": "uuid-v4",
  "payload": {
    "conversation_id": "conv-uuid",
    "receiver_id": "456",
    "content": "encrypted-payload",
    "type": "text",
    "media_url": null,
    "reply_to_message_id": null,
    "timestamp": 1699189200000
  }
}"#;
    match round_trip_client(seed) {
        ClientFrame::Message {
            client_message_id,
            idempotency_key,
            payload,
        } => {
            assert_eq!(client_message_id.as_deref(), Some("client_abc123"));
            assert_eq!(idempotency_key, "uuid-v4");
            assert_eq!(payload.body.message_type, MessageType::Text);
            assert_eq!(payload.body.media_url, None);
        }
        other => panic!("wrong frame {other:?}"),
    }
    for kind in ["text", "image", "video", "audio", "document", "location"] {
        let frame = seed.replace("\"type\": \"text\"", &format!("\"type\": \"{kind}\""));
        round_trip_client(&frame);
    }
}

#[test]
fn message_ack_seed() {
    let seed = r#"{
  "type": "message_ack",
  "client_message_id": "client_abc123",
  "payload": {
    "message_id": "server-msg-id",
    "sequence_number": 123,
    "status": "sent",
    "timestamp": 1699189200123
  }
}"#;
    match round_trip_server(seed) {
        ServerFrame::MessageAck { payload, .. } => {
            assert_eq!(payload.sequence_number, 123);
            assert_eq!(payload.status, MessageStatus::Sent);
        }
        other => panic!("wrong frame {other:?}"),
    }
}

#[test]
fn receive_message_seed() {
    let seed = r#"{
  "type": "message",
  "payload": {
    "message_id": "server-msg-id",
    "sequence_number": 124,
    "sender_id": "agent-bruno",
    "receiver_id": "123",
    "conversation_id": "conv-uuid",
    "content": "encrypted-payload",
    "type": "text",
    "media_url": null,
    "timestamp": 1699189200123,
    "status": "delivered"
  }
}"#;
    match round_trip_server(seed) {
        ServerFrame::Message { payload } => {
            assert_eq!(payload.sender_id.as_deref(), Some("agent-bruno"));
            assert_eq!(payload.status, Some(MessageStatus::Delivered));
        }
        other => panic!("wrong frame {other:?}"),
    }
}

#[test]
fn delivery_ack_seed() {
    let seed = r#"{
  "type": "delivery_ack",
  "message_id": "server-msg-id",
  "timestamp": 1699189200456
}"#;
    assert!(matches!(
        round_trip_client(seed),
        ClientFrame::DeliveryAck { .. }
    ));
}

#[test]
fn read_receipt_seeds() {
    let from_client = r#"{
  "type": "read_receipt",
  "message_ids": [
    "msg-id-1",
    "msg-id-2",
    "msg-id-3"
  ],
  "timestamp": 1699189260000
}"#;
    match round_trip_client(from_client) {
        ClientFrame::ReadReceipt { message_ids, .. } => assert_eq!(message_ids.len(), 3),
        other => panic!("wrong frame {other:?}"),
    }
    let to_sender = r#"{
  "type": "read_receipt",
  "payload": {
    "message_ids": ["msg-id-1", "msg-id-2"],
    "read_by": "123",
    "timestamp": 1699189260000
  }
}"#;
    match round_trip_server(to_sender) {
        ServerFrame::ReadReceipt { payload } => assert_eq!(payload.read_by, "123"),
        other => panic!("wrong frame {other:?}"),
    }
}

#[test]
fn heartbeat_seeds() {
    round_trip_client(
        r#"{
  "type": "heartbeat",
  "timestamp": 1699189200000
}"#,
    );
    round_trip_server(
        r#"{
  "type": "heartbeat_ack",
  "server_time": 1699189200123
}"#,
    );
}

#[test]
fn retransmit_seeds() {
    match round_trip_client(
        r#"{
  "type": "retransmit",
  "conversation_id": "conv-uuid",
  "from_sequence": 100,
  "to_sequence": 105
}"#,
    ) {
        ClientFrame::Retransmit {
            from_sequence,
            to_sequence,
            ..
        } => assert_eq!((from_sequence, to_sequence), (100, 105)),
        other => panic!("wrong frame {other:?}"),
    }
    // The seed elides messages 101-105 with a comment; JSON has no comments, so it is left out.
    let messages = r#"{
  "type": "messages",
  "payload": {
    "conversation_id": "conv-uuid",
    "messages": [
      {
        "message_id": "msg-100",
        "sequence_number": 100,
        "content": "encrypted-payload",
        "timestamp": 1699189200000
      }
    ]
  }
}"#;
    // Its message has no `type`: it is a text message, and says so when sent on.
    let frame: ServerFrame = serde_json::from_str(messages).expect("seed parses");
    let mut expected: Value = serde_json::from_str(messages).unwrap();
    expected["payload"]["messages"][0]["type"] = "text".into();
    assert_eq!(serde_json::to_value(&frame).unwrap(), expected);
    match frame {
        ServerFrame::Messages { payload } => assert_eq!(payload.messages[0].sequence_number, 100),
        other => panic!("wrong frame {other:?}"),
    }
}

#[test]
fn migration_seed() {
    // The seed's frame parses; what we send adds why and until when.
    let seed = r#"{
  "type": "migration",
  "payload": {
    "new_endpoint": "wss://messaging.example.com/ws",
    "session_token": "session-token-here"
  }
}"#;
    let frame: ServerFrame = serde_json::from_str(seed).expect("seed parses");
    let ServerFrame::Migration { payload } = &frame else {
        panic!("wrong frame {frame:?}")
    };
    assert_eq!(payload.session_token.as_deref(), Some("session-token-here"));
    assert_eq!(
        payload.reason,
        messaging::protocol::MigrationReason::Shutdown
    );
    round_trip_server(
        r#"{"type": "migration", "payload": {"new_endpoint": "wss://a.example/ws",
            "reason": "lifetime", "deadline": 1700000000000}}"#,
    );
}

#[test]
fn auth_error_and_error_frames() {
    round_trip_server(
        r#"{"type": "auth_error", "error": "token expired", "code": "token_expired"}"#,
    );
    let frame = round_trip_server(
        r#"{"type": "error", "code": "rate_limited", "message": "slow down", "retry_after": 3}"#,
    );
    assert!(matches!(
        frame,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            retry_after: Some(3),
            ..
        }
    ));
}

#[test]
fn frames_added_by_this_project() {
    round_trip_client(r#"{"type": "typing", "conversation_id": "c", "state": "start"}"#);
    round_trip_client(r#"{"type": "sync", "since": {"c1": 4, "c2": 0}}"#);
    round_trip_client(r#"{"type": "presence", "user_ids": ["u1", "u2"]}"#);
    round_trip_server(
        r#"{"type": "typing", "payload": {"conversation_id": "c", "user_id": "u", "state": "stop"}}"#,
    );
    round_trip_server(
        r#"{"type": "presence", "payload": {"user_id": "u", "status": "online", "last_seen": 5}}"#,
    );
    round_trip_server(
        r#"{"type": "delivery_ack", "payload": {"message_ids": ["m"], "delivered_to": "u", "timestamp": 1}}"#,
    );
    round_trip_client(
        r#"{"type": "message", "idempotency_key": "k", "payload": {"conversation_id": "c",
            "content": "x", "type": "reaction", "reply_to_message_id": "m1", "timestamp": 1}}"#,
    );
    round_trip_client(
        r#"{"type": "message", "idempotency_key": "k", "payload": {"conversation_id": "c",
            "content": "x", "type": "text", "forwarded_from": {"message_id": "m", "conversation_id": "c0"},
            "timestamp": 1}}"#,
    );
    round_trip_client(
        r#"{"type": "message", "idempotency_key": "k", "payload": {"conversation_id": "c",
            "content": "x", "type": "location", "location": {"latitude": 52.5, "longitude": 13.4},
            "timestamp": 1}}"#,
    );
}

#[test]
fn parser_tells_malformed_unknown_and_invalid_apart() {
    assert!(matches!(
        parse_client_frame("{not json"),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        parse_client_frame(r#"{"type": "teleport"}"#),
        Err(FrameError::UnknownType(t)) if t == "teleport"
    ));
    assert!(matches!(
        parse_client_frame(r#"{"type": "retransmit", "conversation_id": "c"}"#),
        Err(FrameError::Invalid(_))
    ));
    assert!(matches!(
        parse_client_frame(r#"{"no_type": 1}"#),
        Err(FrameError::Invalid(_))
    ));
    assert!(matches!(
        parse_client_frame(r#"[1,2]"#),
        Err(FrameError::Invalid(_))
    ));
    assert!(parse_client_frame(r#"{"type":"heartbeat","timestamp":1}"#).is_ok());
}

#[test]
fn errors_map_to_frames_and_statuses_in_one_place() {
    let e: messaging::Error = FrameError::Malformed("eof".into()).into();
    assert_eq!(e.code(), ErrorCode::MalformedJson);
    assert_eq!(e.http_status(), 400);
    let frame = e.to_frame(Some("c1".into()));
    let json: Value = serde_json::from_str(&frame.to_json()).unwrap();
    assert_eq!(json["type"], "error");
    assert_eq!(json["code"], "malformed_json");
    assert_eq!(json["client_message_id"], "c1");

    let limited = messaging::Error::RateLimited {
        retry_after_secs: 7,
    };
    assert_eq!(limited.http_status(), 429);
    assert_eq!(limited.retry_after(), Some(7));

    // Internal failures never leak details.
    let internal = messaging::Error::dependency("broker", "secret host 10.0.0.1 refused");
    assert!(!internal.public_message().contains("10.0.0.1"));
    assert_eq!(internal.to_http_body()["error"]["code"], "unavailable");

    let unsupported =
        messaging::Error::client(messaging::ErrorCode::UnsupportedMediaType, "text/html");
    assert_eq!(unsupported.http_status(), 415);
}

/// The one list of client frame types (the routes) is exactly the frames the published
/// document describes.
#[test]
fn the_client_frame_kinds_are_the_documented_frames() {
    let document = messaging::contract::asyncapi();
    let documented: std::collections::BTreeSet<String> = document["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|name| name.strip_prefix("client_").map(str::to_string))
        .collect();
    let kinds: std::collections::BTreeSet<String> = messaging::protocol::ClientFrame::KINDS
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(kinds, documented);
}
