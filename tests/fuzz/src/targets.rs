//! The targets: every decoder of outside bytes, each with valid seeds to mutate.

use std::sync::OnceLock;
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use messaging::auth::{JwtConfig, JwtIssuer, JwtVerifier};
use messaging::identity::{AuthorizerRequest, Identity, authorize};
use serde_json::{Value, json};

/// One fuzz target: a name, its seeds, and what it does with an input (must never panic).
pub struct Target {
    /// Name, for the command line and reports.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// Valid inputs the mutator starts from.
    pub seeds: fn() -> Vec<Value>,
    /// Runs one input.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "client-frame",
        about: "a client's WebSocket frame (messaging::protocol::parse_client_frame)",
        seeds: client_frames,
        run: client_frame,
    },
    Target {
        name: "websocket-event",
        about: "an API Gateway WebSocket event and what the functions read from it",
        seeds: websocket_events,
        run: websocket_event,
    },
    Target {
        name: "authorizer-event",
        about: "the $connect authorizer's event and its decision",
        seeds: authorizer_events,
        run: authorizer_event,
    },
    Target {
        name: "authorizer-answer",
        about: "an authorizer's answer as the emulated API Gateway reads it",
        seeds: authorizer_answers,
        run: authorizer_answer,
    },
    Target {
        name: "cloudevent-structured",
        about: "a structured-mode CloudEvent and the data of every event type we consume",
        seeds: cloudevents,
        run: cloudevent_structured,
    },
    Target {
        name: "cloudevent-binary",
        about: "a binary-mode CloudEvent (ce-* headers from the input) and its data",
        seeds: binary_cloudevents,
        run: cloudevent_binary,
    },
    Target {
        name: "eventbridge-envelope",
        about: "a Lambda invocation from EventBridge, a schedule or a direct invoke",
        seeds: eventbridge_envelopes,
        run: eventbridge_envelope,
    },
    Target {
        name: "http-bodies",
        about: "the JSON body of every HTTP route (api and presign)",
        seeds: http_bodies,
        run: http_body,
    },
    Target {
        name: "media-checks",
        about: "the presign function's content-type parsing and image decoding",
        seeds: media_inputs,
        run: media_check,
    },
    Target {
        name: "jwt",
        about: "a bearer token through verification",
        seeds: tokens,
        run: jwt,
    },
];

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        JwtVerifier::new(&JwtConfig {
            hs256_secret: Some(SECRET.to_vec()),
            rs256_public_pem: None,
            issuer: "messaging".into(),
            audience: "messaging-clients".into(),
            leeway: Duration::from_secs(30),
        })
        .expect("verifier")
    })
}

fn token(sub: &str) -> String {
    JwtIssuer::hs256(SECRET, "messaging", "messaging-clients")
        .issue(sub, Duration::from_secs(3600))
        .expect("token")
}

// ---- client frames

fn client_frames() -> Vec<Value> {
    client_frames_for("c1", "m")
}

/// Valid client frames naming `conversation_id` and `message_id` (real ones make the wire fuzz
/// reach past the membership checks).
pub fn client_frames_for(conversation_id: &str, message_id: &str) -> Vec<Value> {
    let mut frames = vec![
        json!({"type": "auth", "payload": {"user_id": "u", "auth_token": "t", "device_id": "d",
               "platform": "web", "app_version": "1"}}),
        json!({"type": "message", "client_message_id": "cm", "idempotency_key": "k",
               "payload": {"conversation_id": "c1", "receiver_id": "b", "content": messaging::e2ee::Envelope::opaque("hi"),
                           "type": "text", "timestamp": 1, "media_url": null,
                           "reply_to_message_id": "m", "location": {"latitude": 1.0, "longitude": 2.0},
                           "forwarded_from": {"message_id": "m", "conversation_id": "c"}}}),
        json!({"type": "delivery_ack", "message_id": "m", "timestamp": 1,
               "conversation_id": "c1", "sequence_number": 3}),
        json!({"type": "read_receipt", "message_ids": ["m"], "timestamp": 1}),
        json!({"type": "heartbeat", "timestamp": 1}),
        json!({"type": "retransmit", "conversation_id": "c1", "from_sequence": 1, "to_sequence": 9}),
        json!({"type": "typing", "conversation_id": "c1", "state": "start"}),
        json!({"type": "sync", "since": {"c1": 5}}),
        json!({"type": "presence", "user_ids": ["a"]}),
        json!({"type": "cancel", "conversation_id": "c1", "run_id": "m"}),
        json!({"type": "to_device", "messages": [{"message_id": "m", "user_id": "b", "device_id": "d",
               "content": "{\"algorithm\":\"olm.v1\",\"sender_key\":\"ZCw7fUgr0QDIjxEbXAt8kbhQpsD+T8GL+9Fu6JiTNjY\",\"message_type\":0,\"ciphertext\":\"AwogoIo9\"}"}]}),
        json!({"type": "to_device_ack", "sequences": [1, 2]}),
    ];
    for frame in &mut frames {
        replace_strings(frame, "c1", conversation_id);
        replace_strings(frame, "m", message_id);
    }
    frames
}

fn replace_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_strings(v, from, to)),
        Value::Object(map) => {
            if let Some(v) = map.remove(from) {
                map.insert(to.to_string(), v);
            }
            map.values_mut().for_each(|v| replace_strings(v, from, to));
        }
        _ => {}
    }
}

fn client_frame(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    if let Ok(frame) = messaging::protocol::parse_client_frame(&text) {
        let _ = frame.kind();
        let again = serde_json::to_string(&frame).expect("a parsed frame serializes");
        messaging::protocol::parse_client_frame(&again).expect("and parses again");
    }
}

// ---- API Gateway WebSocket events

fn websocket_events() -> Vec<Value> {
    vec![
        json!({"requestContext": {"routeKey": "$connect", "eventType": "CONNECT",
               "connectionId": "abc=", "connectedAt": 1, "requestTimeEpoch": 2, "stage": "local",
               "authorizer": {"principalId": "u", "user_id": "u", "device_id": "d",
                              "integrationLatency": 3}},
               "headers": {"Authorization": "Bearer x"}, "queryStringParameters": {"token": "t"},
               "isBase64Encoded": false}),
        json!({"requestContext": {"routeKey": "message", "eventType": "MESSAGE",
               "connectionId": "abc=", "connectedAt": 1, "messageId": "m"},
               "body": "{\"type\":\"heartbeat\",\"timestamp\":1}", "isBase64Encoded": false}),
    ]
}

fn websocket_event(input: &[u8]) {
    if let Ok(event) = serde_json::from_slice::<ApiGatewayWebsocketProxyRequest>(input) {
        let _ = Identity::of_event(&event);
        let _ = messaging::websocket::connection_id(&event);
        let _ = messaging::websocket::bearer_token(&event);
        let _ = messaging::websocket::query(&event, "device_id");
    }
}

// ---- the authorizer

fn authorizer_events() -> Vec<Value> {
    let context = json!({"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "c=",
                         "connectedAt": 1, "stage": "local", "apiId": "api"});
    vec![
        json!({"type": "REQUEST", "methodArn": "arn:aws:execute-api:r:a:api/local/$connect",
               "headers": {"Authorization": format!("Bearer {}", token("alice"))},
               "queryStringParameters": {"device_id": "phone"}, "requestContext": context}),
        json!({"type": "REQUEST", "methodArn": "arn",
               "queryStringParameters": {"token": token("bob"), "user_id": "bob"},
               "multiValueQueryStringParameters": {"token": [token("bob")]},
               "requestContext": context}),
    ]
}

fn authorizer_event(input: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<AuthorizerRequest>(input) {
        let _ = authorize(verifier(), &request);
    }
}

fn authorizer_answers() -> Vec<Value> {
    vec![json!({
        "principalId": "alice",
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow",
             "Resource": ["arn:aws:execute-api:*:*:api/local/$connect", "arn:*"]}]},
        "context": {"user_id": "alice", "n": 1, "b": false, "z": null},
    })]
}

fn authorizer_answer(input: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<Value>(input) {
        let arn = "arn:aws:execute-api:us-east-1:000000000000:api/local/$connect";
        let _ = local_stack::authorizer::evaluate(Ok(value.clone()), arn);
        if let Some(resource) = value.pointer("/policyDocument/Statement/0/Resource/0") {
            let _ = local_stack::authorizer::wildcard_match(&resource.to_string(), arn);
        }
    }
}

// ---- CloudEvents

fn event_json(ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": "e1", "source": "/messaging", "type": ty,
           "datacontenttype": "application/json", "agentid": "demo", "data": data})
}

fn cloudevents() -> Vec<Value> {
    vec![
        event_json(
            "messaging.message.received",
            json!({"message_id": "m", "conversation_id": "c", "sequence_number": 1,
                   "sender_id": "a", "receiver_id": "b", "content": "x", "message_type": "text",
                   "timestamp": 1}),
        ),
        event_json(
            "agent.response",
            json!({"idempotency_key": "k", "conversation_id": "c", "user_id": "u",
                   "agent_id": "demo", "response": "hi", "in_reply_to": "m",
                   "message_type": "text", "timestamp": 1}),
        ),
        event_json(
            "agent.progress",
            json!({"conversation_id": "c", "user_id": "u", "agent_id": "demo",
                   "kind": "typing", "timestamp": 1}),
        ),
        event_json(
            "messaging.notification",
            json!({"user_id": "u", "conversation_id": "c", "message_id": "m", "sender_id": "s",
                   "message_type": "image", "badge": 3}),
        ),
    ]
}

fn consume(event: &cloudevents::Event) {
    use messaging::model::{AgentProgress, AgentResponse, MessageReceived, Notification};
    let _ = messaging::events::event_data::<MessageReceived>(event);
    let _ = messaging::events::event_data::<AgentResponse>(event);
    let _ = messaging::events::event_data::<AgentProgress>(event);
    let _ = messaging::events::event_data::<Notification>(event);
    let _ = messaging::eventbridge::to_detail(event);
}

fn cloudevent_structured(input: &[u8]) {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/cloudevents+json"),
    );
    if let Ok(event) = cloudevents::binding::http::to_event(&headers, input.to_vec()) {
        consume(&event);
    }
}

fn binary_cloudevents() -> Vec<Value> {
    cloudevents()
        .into_iter()
        .map(|e| {
            json!({"headers": {"ce-specversion": "1.0", "ce-id": e["id"], "ce-source": e["source"],
                               "ce-type": e["type"], "ce-agentid": "demo",
                               "content-type": "application/json"},
                   "body": e["data"]})
        })
        .collect()
}

fn cloudevent_binary(input: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Some(map) = value.get("headers").and_then(Value::as_object) {
        for (name, v) in map {
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            if let (Ok(name), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&text),
            ) {
                headers.insert(name, v);
            }
        }
    }
    let body = value
        .get("body")
        .map(|b| b.to_string().into_bytes())
        .unwrap_or_default();
    if let Ok(event) = cloudevents::binding::http::to_event(&headers, body) {
        consume(&event);
    }
}

fn eventbridge_envelopes() -> Vec<Value> {
    let mut out: Vec<Value> = cloudevents()
        .into_iter()
        .map(|e| {
            json!({"version": "0", "id": "x", "detail-type": e["type"], "source": "/messaging",
                   "account": "1", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
                   "resources": [], "detail": e})
        })
        .collect();
    out.push(
        json!({"specversion": "1.0", "id": "<aws.scheduler.execution-id>",
                    "type": "messaging.outbox.sweep", "source": "/aws/scheduler", "data": {}}),
    );
    out
}

fn eventbridge_envelope(input: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<Value>(input)
        && let Ok(event) = messaging::eventbridge::event_from_invocation(value)
    {
        consume(&event);
    }
}

// ---- HTTP bodies

fn http_bodies() -> Vec<Value> {
    vec![
        json!({"phone": "+15551234567", "email": "a@b.c", "name": "A", "password": "p"}),
        json!({"destination": "phone:+1555", "code": "123456", "device_id": "d"}),
        json!({"refresh_token": "r"}),
        json!({"name": "n", "avatar_url": "https://x/a.png"}),
        json!({"user_id": "bob", "agent_id": "demo", "capability": "echo"}),
        json!({"pinned": true, "archived": false}),
        json!({"name": "g", "description": "d", "participants": ["a", "b"]}),
        json!({"user_ids": ["a"]}),
        json!({"agent_id": "a", "name": "n", "description": "d", "capabilities": ["c"],
               "categories": ["x"], "examples": ["e"], "endpoint": "https://x"}),
        json!({"platform": "fcm", "token": "t"}),
        json!({"conversation_id": "c", "kind": "image", "content_type": "image/png",
               "size_bytes": 100, "encrypted": false}),
        json!({"size_bytes": 100}),
    ]
}

fn http_body(input: &[u8]) {
    use fn_api::views as api;
    use fn_presign::views as presign;
    use messaging::http::json_body;
    let _ = json_body::<api::RegisterRequest>(input);
    let _ = json_body::<api::ContactRequest>(input);
    let _ = json_body::<api::VerifyRequest>(input);
    let _ = json_body::<api::LoginRequest>(input);
    let _ = json_body::<api::RefreshRequest>(input);
    let _ = json_body::<api::LogoutRequest>(input);
    let _ = json_body::<api::UpdateProfileRequest>(input);
    let _ = json_body::<api::CreateConversationRequest>(input);
    let _ = json_body::<api::UpdateConversationRequest>(input);
    let _ = json_body::<api::CreateGroupRequest>(input);
    let _ = json_body::<api::UpdateGroupRequest>(input);
    let _ = json_body::<api::AddParticipantsRequest>(input);
    let _ = json_body::<api::PromoteRequest>(input);
    let _ = json_body::<api::CreateAgentRequest>(input);
    let _ = json_body::<api::UpdateAgentRequest>(input);
    let _ = json_body::<api::DeviceRequest>(input);
    let _ = json_body::<presign::UploadRequest>(input);
    let _ = json_body::<presign::CompleteRequest>(input);
}

// ---- media

fn media_inputs() -> Vec<Value> {
    vec![
        json!({"content_type": "image/png; charset=binary", "types": "image/png, image/jpeg",
               "bytes": [137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82]}),
        json!({"content_type": "image/jpeg", "bytes": [255, 216, 255, 224, 0, 16, 74, 70, 73, 70]}),
        json!({"content_type": "image/webp", "bytes": [82, 73, 70, 70, 0, 0, 0, 0, 87, 69, 66, 80]}),
    ]
}

fn media_check(input: &[u8]) {
    use fn_presign::{limits, thumbnail};
    let value: Value = serde_json::from_slice(input).unwrap_or(Value::Null);
    let content_type = value["content_type"].as_str().unwrap_or("image/png");
    let _ = limits::essence(content_type);
    let _ = limits::parse_types(value["types"].as_str().unwrap_or(content_type));
    // The bytes: from the JSON seed, or the raw input itself.
    let bytes: Vec<u8> = value["bytes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect()
        })
        .unwrap_or_else(|| input.to_vec());
    let _ = thumbnail::decoded_dimensions(&bytes);
    if let Some(format) = limits::essence(content_type).and_then(|e| thumbnail::format_of(&e)) {
        let _ = thumbnail::make(&bytes, format, 64);
    }
}

// ---- tokens

fn tokens() -> Vec<Value> {
    vec![
        json!(token("alice")),
        json!(format!("{}x", token("bob"))),
        json!("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
    ]
}

fn jwt(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let token = serde_json::from_str::<String>(&text).unwrap_or_else(|_| text.to_string());
    let _ = verifier().verify(&token);
}
