//! The published contract of the WebSocket API and of the CloudEvents: an AsyncAPI 3.1
//! document generated from the Rust types ([`asyncapi`]), so it cannot drift from the code.
//!
//! The JSON Schemas of every frame and event payload come from the types themselves
//! (`schemars`, JSON Schema draft-07, the AsyncAPI schema format), one schema per frame kind;
//! the semantics a client author needs (when to send, ordering, idempotency, receipts,
//! retransmit, sync, limits, close codes, error codes) are written here, next to the frames they
//! concern. The local stack serves it at `GET /asyncapi.json` beside `/openapi.json`; CI
//! validates it with the AsyncAPI parser and exercises it against the local stack with a Python
//! client.

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::error::ErrorCode;
use crate::model::{
    AgentCancel, AgentDelta, AgentProgress, AgentResponse, MessageReceived, Notification,
    PresenceChanged,
};
use crate::protocol::{ClientFrame, MAX_FRAME_BYTES, ServerFrame};

/// Version of the contract (the protocol is additive: fields and frames are only ever added).
pub const VERSION: &str = "1.1.0";

const OVERVIEW: &str = "\
A WhatsApp-like messaging backend for chatting with people and AI agents: 1:1 conversations, \
groups of up to 100, media, receipts, typing, presence, offline delivery.

**Connecting.** Open `wss://HOST/STAGE?token=JWT` (optionally `&device_id=D`, one id per device \
of a user, and `&user_id=U` to have the upgrade refused with 403 when the token is someone \
else's). A bad or expired token refuses the upgrade with 401. Tokens come from the HTTP API \
(`/openapi.json`). A connection opened without a token must send `auth` first and wait for \
`auth_success` before anything else: frames are handled concurrently, so a frame sent before \
`auth_success` may be answered `unauthenticated`.

**First frame.** Send `sync` with the last sequence number you have of each conversation \
(`since`); the answer is `auth_success` (with `unread_count`), then `messages` frames with \
everything after those numbers. Conversations you leave out resume from what this device \
acknowledged; a device that never received anything in a conversation gets what its user has \
not read (older history is paged through the HTTP API). History the user cleared is never sent.

**Order.** Every conversation numbers its messages 1, 2, 3, ... without holes \
(`sequence_number`). Deliver to the user in that order; on a gap, ask `retransmit` (the answer's \
`missing` lists numbers that will never exist: messages deleted since). The server handles the \
frames of one connection concurrently, as API Gateway does, and numbers messages in the order \
it stores them: to keep your own messages in the order they were typed, send the next message \
of a conversation once the previous one is answered (`message_ack` or `error`), and pipeline \
across conversations.

**Exactly once.** Every `message` carries an `idempotency_key` (a UUID you make, 1-128 \
characters, scoped to your user). A retry with the same key, from any connection or device, \
gets the same `message_ack` and never a second message; the same key with a different message \
is `idempotency_conflict`. Resend unanswered messages with their key after reconnecting, and \
after `unavailable` once its `retry_after` has passed.

**Receipts.** Send `delivery_ack` for every message you receive, including your own sent from \
your other devices (with `conversation_id` and `sequence_number`): it records what this device has, which \
`sync` resumes from, and tells the sender (`delivery_ack` from the server, with \
`delivered_to`). `read_receipt` marks messages read (unread counts, and `read_receipt` from the \
server to the sender). In groups the senders get neither per member: receipts are coalesced \
into one `receipts` frame per conversation and interval (at most 500 ms; the first after a \
quiet interval goes at once) listing each member's highest acknowledged (`delivered`) and read \
(`read`) sequence number: your message `s` is delivered to every member listed with \
`up_to >= s`. The server time-stamps receipts itself: client clocks are not trusted.

**Your own messages** reach every other connection of yours as `message` frames (so all your \
devices show the whole conversation). The connection you sent one on gets its `message_ack` \
instead, not the message: the ack's `message_id`, `sequence_number` and `timestamp` with what \
you sent are the message, in its place in the conversation's order; it needs no \
`delivery_ack` (your next one covers it). After a reconnect, `sync` may bring it again: a \
repeat of a number you have.

**Limits.** Frames are JSON text of at most 128 KB (a larger frame closes the connection with \
1009, a binary frame with 1003); `content` at most 64 KB by default. API Gateway closes idle \
connections after 10 minutes and every connection after 2 hours (1001): send `heartbeat` every \
30 s, reconnect and `sync` after a close. Per-user rate limits answer `rate_limited` with \
`retry_after` seconds.

**Errors.** A refused frame is answered with an `error` frame: a stable `code`, a `message` for \
people, the `client_message_id` of a refused `message`, and `retry_after` for `rate_limited` and \
`unavailable`. After `unavailable` resend with the same idempotency key; after \
`unauthenticated` send `auth` again. Nothing changed unless the code says so. A frame is always \
answered within the server's frame deadline, never silently dropped, except the frames that \
have no answer when they succeed: `delivery_ack`, `read_receipt` and `typing`.

**Agents' answers, live.** While an agent works on a message, every participant's devices get \
`agent_run` frames (the run's state: `queued`, `working` with an optional `step` and \
`percent`, `input_required` with the question in `reason`, and the final `completed` with \
the stored message's id, `failed` with a reason, or `cancelled`; `stalled` when the agent has \
said nothing for 30 s) and the answer as it is generated, in `message_delta` frames: append \
`text` when `from_index` equals the `to_index` you have (0 at first), replace what you have \
with a `snapshot` that reaches further, ignore a frame whose `to_index` you already have, and \
hold a frame that starts past what you have until the ones before it arrive (frames of a run \
can arrive out of order); after a second without them, send `sync` (you get a snapshot). A device that connects mid-answer gets \
the run's state and a snapshot after `auth_success`. The answer ends as an ordinary message \
(`message`, with `reply_to_message_id` the run id) that replaces the streamed text. `cancel` \
stops a run: every device gets `agent_run` `cancelled`, the agent gets `agent.cancel`, and \
nothing more of the run arrives; a cancelled run leaves no message (show what was streamed as \
cancelled).

**Content** is opaque to the server (end-to-end encrypted by clients): stored and forwarded, \
never read or logged.

**End-to-end encryption.** Each device publishes its identity keys (Curve25519, Ed25519), \
signed one-time keys and a signed fallback key through the HTTP API (`PUT /v1/keys/{device_id}`), \
reads its contacts' devices (`GET /v1/users/{user_id}/keys`) and claims one key per device it \
has no Olm session with (`POST /v1/keys/claim`; each one-time key is handed out once). It sends \
each member device its Megolm session key in an Olm message with `to_device` (answered \
`to_device_sent` once every message is stored; after `unavailable`, send the same frame again: \
the `message_id`s make it idempotent) and then the message, whose `content` is the Megolm \
envelope `{\"algorithm\": \"megolm.v1\", \"sender_key\", \"device_id\", \"session_id\", \"ciphertext\"}` \
as JSON text. A device gets its `to_device` messages live and, when it was away, after \
`auth_success` and before the `messages` that may need them; it acknowledges them by sequence \
number with `to_device_ack` (their content is then deleted). `device_list` says a contact's \
devices changed (fetch their keys again before the next session key is shared); \
`one_time_keys_low` asks this device to publish more one-time keys.

**Differences from the original schemas** (the seeds' \"WebSocket Message Schemas\"), on \
purpose: optional fields that have no value are left out rather than sent as `null` (read a \
missing field as `null`); a received message's `status` is its delivery state across all its \
recipients when it was sent to you (`sent` for a message delivered live); receipts carry the \
server's time; the receipt the server sends a sender is `delivery_ack` with a `payload` \
(`message_ids`, `delivered_to`), distinct from the client's `delivery_ack` by its shape; senders' \
other connections receive their own messages (multi-device); pending and retransmitted messages come as \
`messages` batches in order, each frame under the size limit, `has_more` when more follow.

**CloudEvents.** Agents and the functions exchange CloudEvents 1.0 through a broker (a Knative \
Broker, or EventBridge on AWS with the CloudEvent in `detail`). An agent receives \
`messaging.message.received` (filtered on the `agentid` extension attribute) and answers with \
`agent.response` (as the HTTP reply to the delivery, or a new event), optionally \
`agent.progress` first; or streams it: `agent.delta` pieces numbered from 0 (each (run, \
index) counts once; pieces are passed on in order; a missing one is waited for 1 s, then \
skipped), `agent.progress` with the `run_id` for the run's state, and `agent.response` with \
the `run_id` to end it. The run id is the agent's (by convention the id of the message it \
answers). A participant's stop reaches the agent as `agent.cancel` (filtered on `agentid`); \
whatever it sends for the run afterwards is dropped. Events are delivered at least once: \
dedupe on `source` and `id`.";

/// The AsyncAPI 3.1 document of the WebSocket API and the CloudEvents.
pub fn asyncapi() -> Value {
    let mut generator: SchemaGenerator = SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "#/components/schemas/".into();
            s.meta_schema = None;
        })
        .into_generator();
    let client = variants::<ClientFrame>(&mut generator);
    let server = variants::<ServerFrame>(&mut generator);
    let events: Vec<(&str, &str, Value)> = vec![
        (
            crate::model::event_types::MESSAGE_RECEIVED,
            "A message was stored with its sequence number: the store function fans it out, the \
             conversation's agent (extension `agentid`) answers it. The event id is the message id.",
            generator.subschema_for::<MessageReceived>().to_value(),
        ),
        (
            crate::model::event_types::AGENT_RESPONSE,
            "An agent's answer to a user's message: stored exactly once per `idempotency_key` with \
             the next sequence number and delivered like any message. Only the conversation's \
             agent may answer. As the HTTP reply to the delivered event or a new event.",
            generator.subschema_for::<AgentResponse>().to_value(),
        ),
        (
            crate::model::event_types::AGENT_PROGRESS,
            "An agent is working (`typing`) or stopped (`idle`): shown as the agent typing, and it \
             pushes the user's 'did not answer' notice back by a full timeout (report progress \
             at least every 30 s on long tasks).",
            generator.subschema_for::<AgentProgress>().to_value(),
        ),
        (
            crate::model::event_types::AGENT_DELTA,
            "A piece of an agent's answer as it is generated, numbered from 0 per run: passed on \
             to every participant's devices in order as `message_delta` frames. At most 4 KB of \
             text per piece. The run's `agent.response` (with `run_id`) stores the whole answer.",
            generator.subschema_for::<AgentDelta>().to_value(),
        ),
        (
            crate::model::event_types::AGENT_CANCEL,
            "A participant stopped a run (`cancel` frame). Sent to the run's agent (extension \
             `agentid`); the platform drops whatever the agent sends for the run afterwards.",
            generator.subschema_for::<AgentCancel>().to_value(),
        ),
        (
            crate::model::event_types::NOTIFICATION,
            "A recipient had no live connection: the push function notifies their devices. Never \
             carries content.",
            generator.subschema_for::<Notification>().to_value(),
        ),
        (
            crate::model::event_types::PRESENCE_CHANGED,
            "A user came online (first connection) or went offline (last connection closed).",
            generator.subschema_for::<PresenceChanged>().to_value(),
        ),
    ];
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "ErrorCodes".into(),
        json!({
            "description": "Every error code, with the HTTP status the HTTP API uses for it.",
            "type": "object",
            "properties": error_codes(),
        }),
    );

    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let mut operations = Map::new();
    for (direction, frames) in [("client", &client), ("server", &server)] {
        for (kind, schema) in frames {
            let id = format!("{direction}.{kind}");
            let schema_id = format!("{direction}_{kind}");
            let description = schema
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            schemas.insert(schema_id.clone(), schema.clone());
            let mut message = json!({
                "name": kind,
                "title": format!("{kind} ({})", if direction == "client" { "client to server" } else { "server to client" }),
                "summary": description.lines().next().unwrap_or_default(),
                "description": description,
                "contentType": "application/json",
                "payload": {"$ref": format!("#/components/schemas/{schema_id}")},
            });
            if let Some(example) = example(direction, kind) {
                message["examples"] = json!([{"name": kind, "payload": example}]);
            }
            if direction == "client" {
                message["x-answer"] = json!(answer_of(kind));
            }
            messages.insert(id.clone(), message);
            channel_messages.insert(
                id.clone(),
                json!({"$ref": format!("#/components/messages/{id}")}),
            );
        }
    }
    for (kind, _) in &client {
        operations.insert(
            format!("send_{kind}"),
            json!({
                "action": "send",
                "channel": {"$ref": "#/channels/connection"},
                "summary": format!("The client sends `{kind}`."),
                "messages": [{"$ref": format!("#/channels/connection/messages/client.{kind}")}],
            }),
        );
    }
    for (kind, _) in &server {
        operations.insert(
            format!("receive_{kind}"),
            json!({
                "action": "receive",
                "channel": {"$ref": "#/channels/connection"},
                "summary": format!("The server sends `{kind}`."),
                "messages": [{"$ref": format!("#/channels/connection/messages/server.{kind}")}],
            }),
        );
    }

    let mut channels = Map::new();
    channels.insert(
        "connection".into(),
        json!({
            "address": "/",
            "title": "The WebSocket connection",
            "description": "One connection per device. Frames are JSON text, tagged on `type`.",
            "servers": [{"$ref": "#/servers/websocket"}],
            "messages": channel_messages,
            "bindings": {"ws": {
                "method": "GET",
                "query": {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string", "description": "A JWT from the HTTP API; without it the connection must send `auth` first."},
                        "device_id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "This device (default `default`); what a device received is recorded per device."},
                        "user_id": {"type": "string", "description": "Optional: the upgrade is refused with 403 when the token is another user's."},
                    },
                },
                "bindingVersion": "0.1.0",
            }},
        }),
    );
    for (event_type, description, data) in &events {
        let key = event_type.replace('.', "_");
        let schema_id = format!("event_{key}");
        schemas.insert(schema_id.clone(), data.clone());
        messages.insert(
            format!("event.{event_type}"),
            json!({
                "name": event_type,
                "title": format!("CloudEvent {event_type}"),
                "summary": description,
                "contentType": "application/json",
                "headers": cloudevent_headers(event_type),
                "payload": {"$ref": format!("#/components/schemas/{schema_id}")},
            }),
        );
        channels.insert(
            key.clone(),
            json!({
                "address": event_type,
                "title": format!("CloudEvents of type {event_type}"),
                "servers": [{"$ref": "#/servers/broker"}],
                "messages": {
                    format!("event.{event_type}"): {"$ref": format!("#/components/messages/event.{event_type}")},
                },
            }),
        );
        let action = if *event_type == crate::model::event_types::MESSAGE_RECEIVED
            || *event_type == crate::model::event_types::AGENT_CANCEL
        {
            "receive"
        } else {
            "send"
        };
        operations.insert(
            format!("{action}_{key}"),
            json!({
                "action": action,
                "channel": {"$ref": format!("#/channels/{key}")},
                "summary": format!("An agent or function {action}s `{event_type}`."),
                "messages": [{"$ref": format!("#/channels/{key}/messages/event.{event_type}")}],
            }),
        );
    }

    json!({
        "asyncapi": "3.1.0",
        "info": {
            "title": "Messaging WebSocket API and CloudEvents",
            "version": VERSION,
            "description": OVERVIEW,
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "description": "The WebSocket API (the local stack; on AWS `wss://API.execute-api.REGION.amazonaws.com/STAGE`). Frames of at most 128 KB.",
            },
            "broker": {
                "host": "127.0.0.1:8081",
                "protocol": "http",
                "description": "The CloudEvents broker ingress (binary or structured mode; a Knative Broker, or EventBridge PutEvents with the CloudEvent as `detail`).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
        },
    })
}

/// The variants of an internally tagged enum, each as its own schema, by tag.
fn variants<T: JsonSchema>(generator: &mut SchemaGenerator) -> Vec<(String, Value)> {
    let schema = generator.root_schema_for::<T>().to_value();
    schema["oneOf"]
        .as_array()
        .map(|variants| {
            variants
                .iter()
                .filter_map(|v| {
                    let kind = v["properties"]["type"]["const"].as_str()?.to_string();
                    Some((kind, v.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn error_codes() -> Value {
    let codes = [
        ErrorCode::MalformedJson,
        ErrorCode::UnknownType,
        ErrorCode::InvalidRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::IdempotencyConflict,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::UnsupportedMediaType,
    ];
    let mut map = Map::new();
    for code in codes {
        let name = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        map.insert(
            name.clone(),
            json!({"const": name, "x-http-status": code.http_status()}),
        );
    }
    Value::Object(map)
}

fn cloudevent_headers(event_type: &str) -> Value {
    let mut properties = json!({
        "specversion": {"const": "1.0"},
        "id": {"type": "string", "description": "Unique per source; consumers dedupe on source and id."},
        "source": {"type": "string", "description": "`/messaging` for the platform's events (EVENT_SOURCE), `/agents/ID` by convention for agents."},
        "type": {"const": event_type},
        "datacontenttype": {"const": "application/json"},
        "time": {"type": "string", "format": "date-time"},
    });
    if event_type == crate::model::event_types::MESSAGE_RECEIVED
        || event_type == crate::model::event_types::AGENT_CANCEL
    {
        properties["agentid"] = json!({
            "type": "string",
            "description": "Extension attribute: the agent the message is for (present when the conversation has one); Triggers and EventBridge rules filter on it.",
        });
    }
    json!({
        "type": "object",
        "description": "CloudEvents context attributes (binary mode: `ce-` headers; structured mode and EventBridge: members of the event).",
        "required": ["specversion", "id", "source", "type"],
        "properties": properties,
    })
}

/// What a client frame is answered with, for the document (`x-answer`).
fn answer_of(kind: &str) -> &'static str {
    match kind {
        "auth" => "auth_success then messages frames, or auth_error",
        "message" => "message_ack (echoing client_message_id), or error with client_message_id",
        "delivery_ack" | "read_receipt" | "typing" => "nothing when it succeeds; error otherwise",
        "heartbeat" => "heartbeat_ack (the route response)",
        "retransmit" => "messages frames (the last one with missing), or error",
        "sync" => "auth_success then messages frames, or error",
        "presence" => "one presence frame per user, or error",
        "cancel" => "agent_run cancelled (to every device of every participant), or error",
        "to_device" => "to_device_sent (every message stored for its device), or error",
        "to_device_ack" => "nothing when it succeeds; error otherwise",
        _ => "",
    }
}

/// An example of each frame kind (the seeds' examples where they exist).
fn example(direction: &str, kind: &str) -> Option<Value> {
    let conversation = "c0a8e8b4-2c7d-4a7e-9d6b-0c6a1b2f3e4d";
    let message_id = "01938f7e-6b0a-7c2e-9f3d-5a4b3c2d1e0f";
    Some(match (direction, kind) {
        ("client", "auth") => {
            json!({"type": "auth", "payload": {"user_id": "u-123", "auth_token": "eyJ...", "device_id": "phone-1", "platform": "ios", "app_version": "1.0.0"}})
        }
        ("client", "message") => {
            json!({"type": "message", "client_message_id": "c-1", "idempotency_key": "6f1c1f7e-3a5b-4b8e-9b7d-2a9e8c7d6b5a", "payload": {"conversation_id": conversation, "receiver_id": "u-456", "content": "<ciphertext>", "type": "text", "timestamp": 1_700_000_000_000i64}})
        }
        ("client", "delivery_ack") => {
            json!({"type": "delivery_ack", "message_id": message_id, "timestamp": 1_700_000_000_000i64, "conversation_id": conversation, "sequence_number": 42})
        }
        ("client", "read_receipt") => {
            json!({"type": "read_receipt", "message_ids": [message_id], "timestamp": 1_700_000_000_000i64})
        }
        ("client", "heartbeat") => json!({"type": "heartbeat", "timestamp": 1_700_000_000_000i64}),
        ("client", "retransmit") => {
            json!({"type": "retransmit", "conversation_id": conversation, "from_sequence": 40, "to_sequence": 42})
        }
        ("client", "typing") => {
            json!({"type": "typing", "conversation_id": conversation, "state": "start"})
        }
        ("client", "sync") => json!({"type": "sync", "since": {conversation: 41}}),
        ("client", "presence") => json!({"type": "presence", "user_ids": ["u-456"]}),
        ("client", "cancel") => {
            json!({"type": "cancel", "conversation_id": conversation, "run_id": message_id})
        }
        ("client", "to_device") => {
            json!({"type": "to_device", "messages": [{"message_id": "5d0c6c2e-0b8e-4f61-9f0e-2b1c3d4e5f60", "user_id": "u-456", "device_id": "phone-1", "content": "{\"algorithm\":\"olm.v1\",\"sender_key\":\"ZCw7fUgr0QDIjxEbXAt8kbhQpsD+T8GL+9Fu6JiTNjY\",\"message_type\":0,\"ciphertext\":\"AwogoIo9...\"}"}]})
        }
        ("client", "to_device_ack") => json!({"type": "to_device_ack", "sequences": [7, 8]}),
        ("server", "to_device") => {
            json!({"type": "to_device", "payload": {"messages": [{"sequence": 7, "message_id": "5d0c6c2e-0b8e-4f61-9f0e-2b1c3d4e5f60", "sender_id": "u-123", "sender_device_id": "phone-1", "content": "{\"algorithm\":\"olm.v1\",\"sender_key\":\"ZCw7fUgr0QDIjxEbXAt8kbhQpsD+T8GL+9Fu6JiTNjY\",\"message_type\":0,\"ciphertext\":\"AwogoIo9...\"}", "timestamp": 1_700_000_000_000i64}]}})
        }
        ("server", "to_device_sent") => {
            json!({"type": "to_device_sent", "message_ids": ["5d0c6c2e-0b8e-4f61-9f0e-2b1c3d4e5f60"]})
        }
        ("server", "device_list") => {
            json!({"type": "device_list", "payload": {"user_id": "u-456", "timestamp": 1_700_000_000_000i64}})
        }
        ("server", "one_time_keys_low") => {
            json!({"type": "one_time_keys_low", "payload": {"device_id": "phone-1", "remaining": 9}})
        }
        ("server", "agent_run") => {
            json!({"type": "agent_run", "payload": {"conversation_id": conversation, "run_id": message_id, "agent_id": "assistant", "state": "working", "step": "search", "percent": 40, "updated_at": 1_700_000_000_000i64}})
        }
        ("server", "message_delta") => {
            json!({"type": "message_delta", "payload": {"conversation_id": conversation, "run_id": message_id, "agent_id": "assistant", "from_index": 3, "to_index": 5, "text": "Hello there"}})
        }
        ("server", "auth_success") => {
            json!({"type": "auth_success", "payload": {"user_id": "u-123", "session_id": "Xk2=", "server_time": 1_700_000_000_000i64, "unread_count": 3}})
        }
        ("server", "message_ack") => {
            json!({"type": "message_ack", "client_message_id": "c-1", "payload": {"message_id": message_id, "sequence_number": 42, "status": "sent", "timestamp": 1_700_000_000_000i64}})
        }
        ("server", "message") => {
            json!({"type": "message", "payload": {"message_id": message_id, "sequence_number": 42, "sender_id": "u-123", "receiver_id": "u-456", "conversation_id": conversation, "content": "<ciphertext>", "type": "text", "timestamp": 1_700_000_000_000i64, "status": "sent"}})
        }
        ("server", "receipts") => {
            json!({"type": "receipts", "payload": {"conversation_id": conversation, "delivered": [{"user_id": "u-456", "up_to": 42}, {"user_id": "u-789", "up_to": 42}], "read": [{"user_id": "u-456", "up_to": 41}], "timestamp": 1_700_000_000_000i64}})
        }
        ("server", "heartbeat_ack") => {
            json!({"type": "heartbeat_ack", "server_time": 1_700_000_000_000i64})
        }
        ("server", "error") => {
            json!({"type": "error", "code": "rate_limited", "message": "rate limit exceeded, retry in 12 s", "retry_after": 12})
        }
        _ => return None,
    })
}

/// Largest frame, for documents and tests.
pub const FRAME_LIMIT: usize = MAX_FRAME_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(doc: &Value, direction: &str) -> Vec<String> {
        doc["components"]["messages"]
            .as_object()
            .unwrap()
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{direction}.")).map(str::to_string))
            .collect()
    }

    #[test]
    fn every_frame_kind_has_a_message_and_a_schema() {
        let doc = asyncapi();
        let client = frames(&doc, "client");
        let server = frames(&doc, "server");
        for kind in crate::protocol::ClientFrame::KINDS {
            assert!(
                client.contains(&kind.to_string()),
                "client {kind}: {client:?}"
            );
            assert!(
                !answer_of(kind).is_empty(),
                "{kind} has no documented answer"
            );
        }
        for kind in [
            "auth_success",
            "auth_error",
            "message",
            "messages",
            "message_ack",
            "delivery_ack",
            "read_receipt",
            "receipts",
            "typing",
            "presence",
            "heartbeat_ack",
            "error",
            "agent_run",
            "message_delta",
        ] {
            assert!(
                server.contains(&kind.to_string()),
                "server {kind}: {server:?}"
            );
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (direction, kinds) in [("client", &client), ("server", &server)] {
            for kind in kinds {
                assert!(schemas.contains_key(&format!("{direction}_{kind}")));
            }
        }
        // Every $ref points at something that exists.
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap();
            let pointer = target.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }

    #[test]
    fn examples_are_frames_the_code_accepts_and_sends() {
        let doc = asyncapi();
        for (id, message) in doc["components"]["messages"].as_object().unwrap() {
            let Some(example) = message["examples"][0]["payload"].as_object() else {
                continue;
            };
            let example = Value::Object(example.clone());
            if id.starts_with("client.") {
                serde_json::from_value::<ClientFrame>(example.clone())
                    .unwrap_or_else(|e| panic!("{id}: {e}: {example}"));
            } else if id.starts_with("server.") {
                let frame: ServerFrame = serde_json::from_value(example.clone())
                    .unwrap_or_else(|e| panic!("{id}: {e}: {example}"));
                assert_eq!(serde_json::to_value(&frame).unwrap(), example, "{id}");
            }
        }
    }
}
