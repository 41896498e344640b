//! The demo agents, written on the agent SDK (`messaging::agent`) the way a real agent would
//! be: HTTP subscribers of the broker that stream their answer word by word.
//!
//! `demo` is end-to-end encrypted: it holds a device with keys (published through the HTTP
//! API with an agent token, its state kept under the stack's data directory), opens what people
//! send and seals what it answers, so the README's chat with it is encrypted end to end.
//! `demo-plain` holds no keys, for tools that cannot encrypt (websocat, the outside smoke and
//! conformance suites): its conversations are marked not encrypted. Each receives
//! `messaging.message.received` events whose `agentid` is its id (a Trigger filter) and
//! `agent.cancel` for its runs, so a newcomer can chat the moment the stack is up.
//!
//! Commands, for trying the system out: `/slow` works for three seconds reporting a step and a
//! percent every second; `/long` streams a 500-word answer; `/ask` asks a question
//! (`input_required`); `/fail` fails the run; `/silent` does not answer at all (the user then
//! gets the timeout notice). Anything else is echoed back, one word at a time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use messaging::agent::{Agent, AgentHost, Run};
use messaging::e2ee::AgentDevice;
use messaging::events::HttpBroker;
use messaging::model::{Agent as AgentEntry, MessageReceived};
use mongodb::bson::DateTime;

/// Agent id of the encrypted demo agent (and the `agentid` its Triggers filter on).
pub const DEMO_AGENT_ID: &str = "demo";
/// Agent id of the demo agent without keys, for tools that cannot encrypt.
pub const PLAIN_DEMO_AGENT_ID: &str = "demo-plain";
/// The encrypted demo agent's device.
pub const DEMO_AGENT_DEVICE: &str = "demo-agent";

/// The demo agent.
pub struct DemoAgent {
    /// Pause before each word of an answer.
    word_pause: Duration,
}

impl DemoAgent {
    /// The registry entry of `agent_id` (one of the two demo agents).
    pub fn registry_entry(agent_id: &str) -> AgentEntry {
        let plain = agent_id == PLAIN_DEMO_AGENT_ID;
        AgentEntry {
            agent_id: agent_id.into(),
            name: if plain {
                "Demo Agent (not encrypted)".into()
            } else {
                "Demo Agent".into()
            },
            description: if plain {
                "The demo agent without keys, for tools that cannot encrypt. Echoes what you say, word by word. Try /slow, /long, /ask, /fail or /silent."
            } else {
                "End-to-end encrypted. Echoes what you say, word by word. Try /slow, /long, /ask, /fail or /silent."
            }
            .into(),
            // Capability routing picks an agent per message, so such conversations travel in
            // plaintext (no key can be shared ahead): the capabilities routed to are the plain
            // agent's; the encrypted one is reached by its id.
            capabilities: if plain {
                vec!["echo".into(), "demo".into(), "streaming".into()]
            } else {
                vec!["end-to-end-encrypted".into()]
            },
            categories: vec!["demo".into()],
            examples: vec![
                "hello".into(),
                "/slow".into(),
                "/long".into(),
                "/silent".into(),
            ],
            avatar_url: None,
            endpoint: None,
            last_heartbeat_at: Some(DateTime::now()),
            created_at: DateTime::now(),
        }
    }

    /// The HTTP subscriber of one demo agent: `POST /` with a binary- or structured-mode
    /// CloudEvent; it publishes to the broker at `broker_url`, pausing `think` in all over a
    /// short answer. With `device` it is encrypted.
    pub fn router(
        agent_id: &str,
        broker_url: &str,
        device: Option<AgentDevice>,
        think: Duration,
    ) -> Router {
        let broker = Arc::new(HttpBroker::new(broker_url));
        let host = match device {
            Some(device) => AgentHost::encrypted(agent_id, broker, device),
            None => AgentHost::new(agent_id, broker),
        };
        let agent = DemoAgent {
            word_pause: think / 8,
        };
        messaging::agent::router(host, Arc::new(agent))
    }

    async fn stream(&self, run: &Run, text: &str) -> messaging::Result<()> {
        for word in text.split_inclusive(' ') {
            tokio::time::sleep(self.word_pause).await;
            run.delta(word).await?;
        }
        run.finish().await
    }
}

#[async_trait]
impl Agent for DemoAgent {
    async fn answer(&self, message: MessageReceived, run: Run) -> messaging::Result<()> {
        let text = message.body.content.trim().to_string();
        match text.as_str() {
            "/silent" => Ok(()),
            "/fail" => run.fail("you asked me to fail").await,
            "/ask" => run.input_required("What should I repeat for you?").await,
            "/slow" => {
                // A long task reports what it does as it goes (BR-7), here every second.
                for (i, step) in ["reading", "thinking", "writing"].iter().enumerate() {
                    run.working(Some(step), Some((i as u8 + 1) * 33)).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                self.stream(&run, "Sorry for the wait: that was a slow one.")
                    .await
            }
            "/long" => {
                run.working(Some("writing"), None).await?;
                for i in 0..500 {
                    run.delta(&format!("word{i} ")).await?;
                }
                run.finish().await
            }
            "" => {
                self.stream(
                    &run,
                    "You sent me something I cannot read; I only understand text.",
                )
                .await
            }
            _ => {
                run.working(None, None).await?;
                self.stream(&run, &format!("Demo agent here. You said: {text}"))
                    .await
            }
        }
    }
}
