//! The demo agent, written on the agent SDK (`messaging::agent`) the way a real agent would be:
//! an HTTP subscriber of the broker that streams its answer word by word.
//!
//! It receives `messaging.message.received` events whose `agentid` is `demo` (a Trigger
//! filter) and `agent.cancel` for its runs, so a newcomer can chat the moment the stack is up.
//! In production agents hold the keys of their conversations; this one treats `content` as
//! plain text.
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
use messaging::events::HttpBroker;
use messaging::model::{Agent as AgentEntry, MessageReceived};
use mongodb::bson::DateTime;

/// Agent id of the demo agent (and the `agentid` its Triggers filter on).
pub const DEMO_AGENT_ID: &str = "demo";

/// The demo agent.
pub struct DemoAgent {
    /// Pause before each word of an answer.
    word_pause: Duration,
}

impl DemoAgent {
    /// Its registry entry.
    pub fn registry_entry() -> AgentEntry {
        AgentEntry {
            agent_id: DEMO_AGENT_ID.into(),
            name: "Demo Agent".into(),
            description:
                "Echoes what you say, word by word. Try /slow, /long, /ask, /fail or /silent."
                    .into(),
            capabilities: vec!["echo".into(), "demo".into(), "streaming".into()],
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

    /// The HTTP subscriber: `POST /` with a binary- or structured-mode CloudEvent; it publishes
    /// to the broker at `broker_url`, pausing `think` in all over a short answer.
    pub fn router(broker_url: &str, think: Duration) -> Router {
        let host = AgentHost::new(DEMO_AGENT_ID, Arc::new(HttpBroker::new(broker_url)));
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
