//! An agent in under 50 lines, on the agent SDK (`messaging::agent`): it answers every message
//! by streaming it back reversed, word by word, shows a step while it works, and stops when a
//! participant cancels. Run it with `AGENT_ID`, `PORT` and `BROKER_URL` (or `EVENT_BUS_NAME`
//! on AWS, where the same binary runs as a Lambda function behind an EventBridge rule).

use std::time::Duration;

use messaging::agent::{Agent, AgentHost, Run, serve};
use messaging::model::MessageReceived;

/// Answers with the words of the message in reverse order.
struct Reverse;

#[async_trait::async_trait]
impl Agent for Reverse {
    async fn answer(&self, message: MessageReceived, run: Run) -> messaging::Result<()> {
        if message.body.content.trim() == "?" {
            return run.input_required("What should I reverse?").await;
        }
        run.working(Some("reversing"), None).await?;
        let words: Vec<&str> = message.body.content.split_whitespace().rev().collect();
        for (i, word) in words.iter().enumerate() {
            // A call fails with `conflict` once someone cancelled: `?` ends the run there.
            run.delta(&format!("{}{word}", if i > 0 { " " } else { "" }))
                .await?;
            run.working(Some("reversing"), Some((100 * (i + 1) / words.len()) as u8))
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await; // as a model would
        }
        run.finish().await // stores the streamed text as one message
    }
}

fn main() -> anyhow::Result<()> {
    // One thread under Lambda (one event at a time), every core as an HTTP server.
    messaging::runtime::start(async {
        tracing_subscriber::fmt().with_env_filter("info").init();
        let agent_id = std::env::var("AGENT_ID").unwrap_or_else(|_| "reverse".into());
        serve(AgentHost::from_env(agent_id).await?, Reverse).await
    })
}
