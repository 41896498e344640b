//! `chat`: talk to the local stack (or any deployment) from a terminal, with the client library.
//!
//! ```text
//! chat --user alice --agent demo      # chat with the demo agent
//! chat --user alice --with bob        # 1:1 with another user (run `chat --user bob --with alice` too)
//! chat --user alice --conversation ID # an existing conversation
//! ```
//! Type a line and press enter to send it. Incoming messages print with their sequence number;
//! typing, delivery and read receipts show as they come. Received messages are marked read.
//! On the local stack the token is minted from its signing key (`--data-dir`); elsewhere pass
//! `--token`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use messaging::client::{Client, ClientConfig, ClientEvent};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Chat from a terminal.
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Args {
    /// Your user id.
    #[arg(long)]
    user: String,
    /// Chat with this agent.
    #[arg(long, conflicts_with_all = ["with", "conversation"])]
    agent: Option<String>,
    /// Chat with this user.
    #[arg(long, conflicts_with = "conversation")]
    with: Option<String>,
    /// An existing conversation id.
    #[arg(long)]
    conversation: Option<String>,
    /// Device id of this terminal.
    #[arg(long, default_value = "terminal")]
    device: String,
    /// WebSocket API.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// HTTP API (to open conversations).
    #[arg(long, default_value = "http://127.0.0.1:8084")]
    api: String,
    /// A token; minted from the local stack's key when absent.
    #[arg(long, env = "CHAT_TOKEN")]
    token: Option<String>,
    /// The local stack's data directory (its signing key).
    #[arg(long, env = "LOCAL_STACK_DATA", default_value = ".local-stack")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = match &args.token {
        Some(t) => t.clone(),
        None => local_stack::stack::local_token(&args.data_dir, &args.user, Some(&args.device))?,
    };
    let conversation_id = match (&args.conversation, &args.agent, &args.with) {
        (Some(id), _, _) => id.clone(),
        (None, Some(agent), _) => {
            open(&args.api, &token, serde_json::json!({"agent_id": agent})).await?
        }
        (None, None, Some(user)) => {
            open(&args.api, &token, serde_json::json!({"user_id": user})).await?
        }
        _ => anyhow::bail!("say who to chat with: --agent, --with or --conversation"),
    };
    let mut config = ClientConfig::new(&args.url, token);
    config.device_id = Some(args.device.clone());
    let mut client = Client::connect(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.url))?;
    println!("conversation {conversation_id}; type and press enter (ctrl-d to quit)");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                match client.send_text(&conversation_id, line).await {
                    Ok(ack) => println!("  ✓ sent #{}", ack.sequence_number),
                    Err(e) => println!("  ✗ {e}"),
                }
            }
            event = client.next_event() => {
                let Some(event) = event else { break };
                show(&client, &args.user, &conversation_id, event);
            }
        }
    }
    client.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

fn show(client: &Client, me: &str, conversation_id: &str, event: ClientEvent) {
    match event {
        ClientEvent::Ready { unread_count } => println!("connected ({unread_count} unread)"),
        ClientEvent::Message(m) => {
            let sender = m.sender_id.clone().unwrap_or_default();
            if sender == me {
                return; // our own message, echoed to keep every device in sync
            }
            if m.conversation_id.as_deref() != Some(conversation_id) {
                println!(
                    "(#{} in another conversation from {sender})",
                    m.sequence_number
                );
                return;
            }
            println!("#{} {sender}: {}", m.sequence_number, m.content);
            let _ = client.read(vec![m.message_id.clone()]);
        }
        ClientEvent::Typing(t) if t.user_id != me => match t.state {
            messaging::protocol::TypingState::Start => println!("  … {} is typing", t.user_id),
            messaging::protocol::TypingState::Stop => {}
        },
        ClientEvent::Read(r) => println!("  ✓✓ read by {}", r.read_by),
        ClientEvent::Delivered(_) | ClientEvent::Typing(_) | ClientEvent::Presence(_) => {}
        ClientEvent::Error { code, message } => println!("  ! {code:?}: {message}"),
        ClientEvent::Disconnected => println!("  (disconnected, reconnecting)"),
    }
}

/// Opens (or finds) a conversation through the HTTP API.
async fn open(api: &str, token: &str, body: serde_json::Value) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/conversations", api.trim_end_matches('/')))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let json: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("could not open the conversation ({status}): {json}");
    }
    json.get("conversation_id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("unexpected answer from the API: {json}"))
}
