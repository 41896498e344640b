//! The demo agent: an HTTP subscriber of the broker, built the way a real agent would be.
//!
//! It receives `messaging.message.received` events whose `agentid` is `demo` (a Trigger filter),
//! shows it is working with an `agent.progress` event, and answers with an `agent.response`
//! event as the HTTP reply, which the broker routes to the agent-response function. So a
//! newcomer can chat the moment the stack is up. In production agents hold the keys of their
//! conversations; this one treats `content` as plain text.
//!
//! Commands, for trying the system out: `/silent` makes it not answer at all (the user then gets
//! the timeout notice), `/slow` makes it think for three seconds with a progress event every second;
//! it says when it stops typing, and the agent-response function also ends the typing indicator
//! when an answer is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cloudevents::{AttributesReader, Event};
use messaging::events::{EventPublisher, HttpBroker, event_data, new_event};
use messaging::model::{
    Agent, AgentProgress, AgentResponse, MessageReceived, ProgressKind, event_types,
};
use messaging::protocol::MessageType;
use mongodb::bson::DateTime;

/// Agent id of the demo agent (and the `agentid` its Trigger filters on).
pub const DEMO_AGENT_ID: &str = "demo";

/// The demo agent.
pub struct DemoAgent {
    broker: HttpBroker,
    source: String,
    think: Duration,
}

impl DemoAgent {
    /// An agent that publishes progress to the broker at `broker_url` and thinks for `think`
    /// before answering.
    pub fn new(broker_url: &str, think: Duration) -> Arc<Self> {
        Arc::new(Self {
            broker: HttpBroker::new(broker_url),
            source: "/agents/demo".into(),
            think,
        })
    }

    /// Its registry entry.
    pub fn registry_entry() -> Agent {
        Agent {
            agent_id: DEMO_AGENT_ID.into(),
            name: "Demo Agent".into(),
            description: "Echoes what you say. Try /slow or /silent.".into(),
            capabilities: vec!["echo".into(), "demo".into()],
            categories: vec!["demo".into()],
            examples: vec!["hello".into(), "/slow".into(), "/silent".into()],
            avatar_url: None,
            endpoint: None,
            last_heartbeat_at: Some(DateTime::now()),
            created_at: DateTime::now(),
        }
    }

    /// The HTTP subscriber: `POST /` with a binary- or structured-mode CloudEvent.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route("/", post(receive)).with_state(self)
    }

    async fn progress(&self, message: &MessageReceived, kind: ProgressKind) {
        let data = AgentProgress {
            conversation_id: message.conversation_id.clone(),
            user_id: message.sender_id.clone(),
            agent_id: DEMO_AGENT_ID.into(),
            kind,
            timestamp: messaging::clock::now_ms(),
        };
        match new_event(event_types::AGENT_PROGRESS, &self.source, &data, &[]) {
            Ok(event) => {
                if let Err(e) = self.broker.publish(event).await {
                    tracing::warn!(error = %e, "demo agent: progress not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "demo agent: progress event"),
        }
    }
}

async fn receive(State(agent): State<Arc<DemoAgent>>, headers: HeaderMap, body: Bytes) -> Response {
    let event: Event = match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
        Ok(e) => e,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a CloudEvent: {e}")).into_response();
        }
    };
    if event.ty() != event_types::MESSAGE_RECEIVED {
        return StatusCode::ACCEPTED.into_response();
    }
    let message: MessageReceived = match event_data(&event) {
        Ok(m) => m,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if message.sender_id == DEMO_AGENT_ID || message.message_type == MessageType::System {
        return StatusCode::ACCEPTED.into_response();
    }
    let text = message.content.trim();
    if text == "/silent" {
        return StatusCode::ACCEPTED.into_response();
    }
    agent.progress(&message, ProgressKind::Typing).await;
    if text == "/slow" {
        // A long task reports progress as it goes (BR-7), here every second for three.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            agent.progress(&message, ProgressKind::Typing).await;
        }
    } else {
        tokio::time::sleep(agent.think).await;
    }
    // Done composing; the answer follows.
    agent.progress(&message, ProgressKind::Idle).await;
    let answer = match text {
        "/slow" => "Sorry for the wait: that was a slow one.".to_string(),
        "" => "You sent me something I cannot read; I only understand text.".to_string(),
        _ => format!("Demo agent here. You said: {text}"),
    };
    let response = AgentResponse {
        idempotency_key: format!("demo-reply/{}", message.message_id),
        conversation_id: message.conversation_id.clone(),
        user_id: message.sender_id.clone(),
        agent_id: DEMO_AGENT_ID.into(),
        response: answer,
        in_reply_to: Some(message.message_id.clone()),
        message_type: MessageType::Text,
        timestamp: messaging::clock::now_ms(),
    };
    match new_event(event_types::AGENT_RESPONSE, &agent.source, &response, &[]) {
        // 200 with the event: the broker takes it as the reply.
        Ok(event) => event.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
