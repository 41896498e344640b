//! The E2EE sidecar: end-to-end encryption for an agent written in any language, with no
//! cryptography in the agent. It runs beside the agent (same pod, same host) and holds the
//! agent's device ([`messaging::e2ee::AgentDevice`]: keys published with the agent's token,
//! state in a file); the agent speaks plaintext CloudEvents to it over localhost only.
//!
//! Two HTTP sides, both CloudEvents subscribers (`POST /`, binary or structured mode):
//!
//! - [`Sidecar::inbound`] (`PORT`, where the broker or EventBridge delivers): a
//!   `messaging.message.received` is opened and passed on to the agent (`AGENT_URL`) with its
//!   plaintext; one whose key has not arrived yet is answered `503` (the broker delivers it
//!   again); one the agent must not read (plaintext to an encrypted agent, a message that never
//!   opens) fails its run with the reason and never reaches the agent. Everything else
//!   (`agent.cancel`) is passed on as it is.
//! - [`Sidecar::outbound`] (`SIDECAR_PORT` on 127.0.0.1, the agent's `BROKER_URL`): the
//!   agent's `agent.delta` and `agent.response` are sealed for the conversation (its devices get
//!   the session key first, once per run) and published to the real broker (`BROKER_URL`) or
//!   bus (`EVENT_BUS_NAME`); `agent.progress` goes as it is. A conversation where nobody else
//!   holds keys stays plaintext. A sealed delta must fit the 4 KB of a delta: keep an
//!   encrypted agent's deltas under 2 KB of text (`payload_too_large` otherwise).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cloudevents::{AttributesReader, Event};
use messaging::agent::{AgentHost, Reading};
use messaging::e2ee::AgentDevice;
use messaging::events::{EventPublisher, HttpBroker, event_data};
use messaging::model::{AgentDelta, AgentResponse, MessageReceived, event_types};
use messaging::protocol::MessageType;
use messaging::{Error, ErrorCode, Result};

/// Runs remembered as sealed or not, before the memory is cleared.
const REMEMBERED_RUNS: usize = 10_000;

/// The sidecar of one agent (see the crate doc).
pub struct Sidecar {
    /// The agent's host on the real broker, with its device: opens messages, fails runs.
    host: Arc<AgentHost>,
    device: Arc<AgentDevice>,
    /// The agent's own CloudEvents endpoint.
    agent: HttpBroker,
    /// Where the agent's sealed events go.
    publisher: Arc<dyn EventPublisher>,
    /// Per run (or conversation, for answers outside a run): whether its answer is sealed.
    sealed: Mutex<HashMap<String, bool>>,
}

impl Sidecar {
    /// The sidecar of agent `agent_id` holding `device`, passing plaintext to the agent at
    /// `agent_url` and publishing with `publisher`.
    pub fn new(
        agent_id: &str,
        device: AgentDevice,
        agent_url: &str,
        publisher: Arc<dyn EventPublisher>,
    ) -> Arc<Self> {
        let host = AgentHost::encrypted(agent_id, publisher.clone(), device);
        let device = host
            .device()
            .expect("an encrypted host has a device")
            .clone();
        Arc::new(Self {
            host,
            device,
            agent: HttpBroker::new(agent_url),
            publisher,
            sealed: Mutex::new(HashMap::new()),
        })
    }

    /// An event from the broker, for the agent.
    pub async fn inbound(&self, event: Event) -> Result<()> {
        if event.ty() != event_types::MESSAGE_RECEIVED {
            return self.agent.publish(event).await;
        }
        let mut message: MessageReceived = event_data(&event)?;
        if message.sender_id == self.host.agent_id()
            || message.body.message_type == MessageType::System
        {
            // The agent ignores these; nothing in them is sealed for it.
            return self.agent.publish(event).await;
        }
        match self.host.open(&mut message).await? {
            Reading::Readable { .. } => {
                let event = with_data(event, &message)?;
                self.agent.publish(event).await
            }
            Reading::Refused(reason) => {
                tracing::warn!(message = %message.message_id, %reason, "message refused");
                self.host.refuse(&message, &reason).await
            }
        }
    }

    /// An event from the agent, for the broker.
    pub async fn outbound(&self, event: Event) -> Result<()> {
        let event = match event.ty() {
            event_types::AGENT_DELTA => {
                let mut delta: AgentDelta = event_data(&event)?;
                if self
                    .seals(Some(&delta.run_id), &delta.conversation_id)
                    .await?
                {
                    delta.text = self
                        .device
                        .seal(&delta.conversation_id, &delta.text)
                        .await?;
                    if delta.text.len() > messaging::runs::MAX_DELTA_TEXT {
                        return Err(Error::client(
                            ErrorCode::PayloadTooLarge,
                            format!(
                                "sealed, this delta exceeds {} bytes: send an encrypted agent's answer in pieces of at most 2 KB",
                                messaging::runs::MAX_DELTA_TEXT
                            ),
                        ));
                    }
                }
                with_data(event, &delta)?
            }
            event_types::AGENT_RESPONSE => {
                let mut response: AgentResponse = event_data(&event)?;
                if self
                    .seals(response.run_id.as_deref(), &response.conversation_id)
                    .await?
                {
                    response.response = self
                        .device
                        .seal(&response.conversation_id, &response.response)
                        .await?;
                }
                with_data(event, &response)?
            }
            _ => event,
        };
        self.publisher.publish(event).await
    }

    /// Whether answers in this run are sealed: the first time, the conversation's devices get
    /// this device's session key (false when nobody else in it holds keys).
    async fn seals(&self, run_id: Option<&str>, conversation_id: &str) -> Result<bool> {
        let key = run_id.unwrap_or(conversation_id).to_string();
        if let Some(known) = self.sealed.lock().expect("sealed lock").get(&key) {
            return Ok(*known);
        }
        let sealed = self.device.share(conversation_id).await?;
        let mut runs = self.sealed.lock().expect("sealed lock");
        if runs.len() >= REMEMBERED_RUNS {
            runs.clear();
        }
        runs.insert(key, sealed);
        Ok(sealed)
    }

    /// The broker-facing subscriber (`POST /`, `GET /healthz`).
    pub fn inbound_router(self: &Arc<Self>) -> axum::Router {
        let sidecar = self.clone();
        messaging::runtime::cloudevent_router(move |event: Event| {
            let sidecar = sidecar.clone();
            async move { sidecar.inbound(event).await.map(|()| None) }
        })
    }

    /// The agent-facing ingress (`POST /`): bind it to 127.0.0.1 only.
    pub fn outbound_router(self: &Arc<Self>) -> axum::Router {
        let sidecar = self.clone();
        messaging::runtime::cloudevent_router(move |event: Event| {
            let sidecar = sidecar.clone();
            async move { sidecar.outbound(event).await.map(|()| None) }
        })
    }
}

/// `event` with `data` in place of its data (id, source, type and extensions kept).
fn with_data(mut event: Event, data: &impl serde::Serialize) -> Result<Event> {
    let json = serde_json::to_value(data).map_err(|e| Error::invalid(e.to_string()))?;
    event.set_data("application/json", json);
    Ok(event)
}
