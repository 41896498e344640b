//! `chat`: talk to the local stack (or any deployment) from a terminal, with the client library.
//!
//! ```text
//! chat --user alice --agent demo      # chat with the demo agent
//! chat --user alice --with bob        # 1:1 with another user (run `chat --user bob --with alice` too)
//! chat --user alice --conversation ID # an existing conversation
//! ```
//! Chats between people are end-to-end encrypted (the client library's `EncryptedClient`): the
//! terminal's device keys and sessions are kept under `{data-dir}/devices/`, and the chat
//! starts by showing the safety code of every device in it. A chat with an agent that has no
//! keys says it is not encrypted.
//! Type a line and press enter to send it. Incoming messages print with their sequence number;
//! typing, delivery and read receipts show as they come. Received messages are marked read. An
//! agent's answer appears word by word as it is generated, with the run's state (working on a
//! step, waiting for you, failed, cancelled, silent); `/cancel` stops the agent's run.
//! On the local stack the token is minted from its signing key and the endpoints are read from
//! its data directory (`--data-dir`, default `.local-stack`), whatever ports it runs on; elsewhere
//! pass `--token`, `--url` and `--api`. Errors are one line on stderr and a non-zero exit status.

use std::path::PathBuf;
use std::time::Duration;

use std::process::ExitCode;

use clap::Parser;
use local_stack::instance::{self, Endpoints};
use messaging::client::{Client, ClientConfig, ClientEvent};
use messaging::e2ee::KeyDirectory;
use messaging::e2ee::client::{EncryptedClient, EncryptedEvent};
use messaging::protocol::{MessageBody, MessageType};
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
    /// WebSocket API (default: the running local stack's, else ws://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// HTTP API, to open conversations (default: the running local stack's, else
    /// http://127.0.0.1:8084).
    #[arg(long)]
    api: Option<String>,
    /// A token; minted from the local stack's key when absent.
    #[arg(long, env = "CHAT_TOKEN")]
    token: Option<String>,
    /// The local stack's data directory (its signing key).
    #[arg(long, env = "LOCAL_STACK_DATA", default_value = instance::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// A person's mistake or an unreachable stack is one line, never a backtrace (even with
/// `RUST_BACKTRACE=1` set, as many developer shells do).
fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let running = Endpoints::of_running(&args.data_dir);
    let url = args
        .url
        .clone()
        .or_else(|| running.as_ref().map(|e| e.ws_url.clone()))
        .unwrap_or_else(|| "ws://127.0.0.1:8080".into());
    let api = args
        .api
        .clone()
        .or_else(|| running.as_ref().map(|e| e.api_url.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:8084".into());
    let token = match &args.token {
        Some(t) => t.clone(),
        None => instance::token(
            &args.data_dir,
            &args.user,
            Some(&args.device),
            Duration::from_secs(86_400),
        )?,
    };
    let conversation_id = match (&args.conversation, &args.agent, &args.with) {
        (Some(id), _, _) => id.clone(),
        (None, Some(agent), _) => {
            open(&api, &token, serde_json::json!({"agent_id": agent})).await?
        }
        (None, None, Some(user)) => {
            open(&api, &token, serde_json::json!({"user_id": user})).await?
        }
        _ => anyhow::bail!("say who to chat with: --agent, --with or --conversation"),
    };
    let mut config = ClientConfig::new(&url, token.clone());
    config.device_id = Some(args.device.clone());
    let directory = KeyDirectory::new(&api, &token);
    let state = device_state(&args.data_dir, &args.user, &args.device)?;
    let mut client = EncryptedClient::connect(config, directory.clone(), &args.user, Some(state))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
    println!(
        "conversation {conversation_id}; type and press enter (/file PATH sends a file sealed, /cancel stops an agent's answer, ctrl-d quits)"
    );
    describe_encryption(&directory, &client, &args.user, &conversation_id).await;
    let mut view = View::default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line == "/cancel" {
                    match view.running.last() {
                        Some(run) => {
                            if let Err(e) = client.client().cancel(&conversation_id, run) {
                                println!("  ✗ {e}");
                            }
                        }
                        None => println!("  (no agent is answering)"),
                    }
                    continue;
                }
                if let Some(rest) = line.strip_prefix("/trust ") {
                    let (user, device) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                    match client.trust(user, device.trim()).await {
                        Ok(keys) => println!("  🔒 {user}/{} trusted (safety code {})", keys.device_id, keys.safety_code()),
                        Err(e) => println!("  ✗ {e}"),
                    }
                    continue;
                }
                if let Some(rest) = line.strip_prefix("/file ") {
                    send_file(&mut client, &conversation_id, rest).await;
                    continue;
                }
                match client.send(&conversation_id, MessageBody::text(line)).await {
                    Ok(ack) => println!("  ✓ sent #{}", ack.sequence_number),
                    Err(e) => println!("  ✗ {e}"),
                }
            }
            event = client.next_event() => {
                let Some(event) = event else { break };
                let event = match event {
                    EncryptedEvent::Message { mut message, encrypted, attachment } => {
                        if !encrypted && message.body.message_type != messaging::protocol::MessageType::System {
                            message.body.content = format!("[not encrypted] {}", message.body.content);
                        }
                        if let Some(attachment) = attachment
                            && message.sender_id.as_deref() != Some(args.user.as_str())
                        {
                            message.body.content = format!(
                                "{} {}",
                                message.body.content,
                                save_attachment(&client, &args.data_dir, &attachment).await
                            );
                        }
                        ClientEvent::Message(message)
                    }
                    EncryptedEvent::Undecryptable { message, reason } => {
                        let sender = message.sender_id.clone().unwrap_or_default();
                        if sender != args.user {
                            println!("#{} {sender}: (cannot be decrypted here: {reason})", message.sequence_number);
                        }
                        continue;
                    }
                    // Opened (or plaintext from an agent without keys): the final message says which.
                    EncryptedEvent::Streaming { conversation_id, run_id, agent_id, text, .. } => {
                        ClientEvent::Streaming { conversation_id, run_id, agent_id, text }
                    }
                    EncryptedEvent::Identity { device, trust } => {
                        let code = device.safety_code();
                        match trust {
                            messaging::e2ee::Trust::Changed { .. } => println!(
                                "  ⚠ {}/{} now has other keys (safety code {code}); nothing goes to it until you compare codes with them and type /trust {} {}",
                                device.user_id, device.device_id, device.user_id, device.device_id
                            ),
                            _ if device.user_id == args.user => {}
                            _ => println!("  🔑 new device {}/{} (safety code {code})", device.user_id, device.device_id),
                        }
                        continue;
                    }
                    EncryptedEvent::Other(event) => event,
                };
                view.show(client.client(), &args.user, &conversation_id, event);
            }
        }
    }
    client.client().close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// `/file PATH [caption]`: sends a file as a sealed attachment (an image for .png, .jpg and
/// .webp, else a document).
async fn send_file(client: &mut EncryptedClient, conversation_id: &str, rest: &str) {
    let (path, caption) = rest.split_once(' ').unwrap_or((rest, ""));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return println!("  ✗ {path}: {e}"),
    };
    let extension = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (message_type, content_type) = match extension.as_str() {
        "png" => (MessageType::Image, "image/png"),
        "jpg" | "jpeg" => (MessageType::Image, "image/jpeg"),
        "webp" => (MessageType::Image, "image/webp"),
        "pdf" => (MessageType::Document, "application/pdf"),
        _ => (MessageType::Document, "application/octet-stream"),
    };
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str());
    match client
        .send_attachment(
            conversation_id,
            message_type,
            caption,
            &bytes,
            content_type,
            name,
        )
        .await
    {
        Ok((ack, _)) => println!(
            "  ✓ sent #{} (📎 {} bytes, sealed)",
            ack.sequence_number,
            bytes.len()
        ),
        Err(e) => println!("  ✗ {e}"),
    }
}

/// Fetches and opens a received attachment into `{data_dir}/downloads/`; says where it went.
async fn save_attachment(
    client: &EncryptedClient,
    data_dir: &std::path::Path,
    attachment: &messaging::e2ee::attachment::Attachment,
) -> String {
    let bytes = match client.fetch_attachment(attachment).await {
        Ok(bytes) => bytes,
        Err(e) => return format!("(📎 attachment not opened: {e})"),
    };
    let dir = data_dir.join("downloads");
    // The sender names the file: only its last component, never a path.
    let name: String = attachment
        .name
        .as_deref()
        .unwrap_or("attachment")
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{}-{name}", attachment.media_id));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &bytes)) {
        Ok(()) => format!(
            "(📎 {} bytes, {}: {})",
            bytes.len(),
            attachment.content_type,
            path.display()
        ),
        Err(e) => format!("(📎 attachment not saved: {e})"),
    }
}

/// What the terminal shows of runs: the answers being streamed, and the runs still going.
#[derive(Default)]
struct View {
    /// Run id -> the text printed so far.
    streamed: std::collections::HashMap<String, String>,
    /// Runs still going, oldest first (`/cancel` stops the last).
    running: Vec<String>,
}

impl View {
    fn show(&mut self, client: &Client, me: &str, conversation_id: &str, event: ClientEvent) {
        use std::io::Write as _;
        match event {
            ClientEvent::Ready { unread_count } => println!("connected ({unread_count} unread)"),
            ClientEvent::Message(m) => {
                let sender = m.sender_id.clone().unwrap_or_default();
                if sender == me {
                    return; // our own message (from its ack, or sent on another device)
                }
                if m.conversation_id.as_deref() != Some(conversation_id) {
                    println!(
                        "(#{} in another conversation from {sender})",
                        m.sequence_number
                    );
                    return;
                }
                let streamed = m
                    .body
                    .reply_to_message_id
                    .as_ref()
                    .and_then(|run| self.streamed.remove(run));
                match streamed {
                    // Already on screen word by word: the stored message only gets its number.
                    Some(_) => println!("\n  ✓ #{} from {sender}", m.sequence_number),
                    None => println!("#{} {sender}: {}", m.sequence_number, m.body.content),
                }
                let _ = client.read(vec![m.message_id.clone()]);
            }
            ClientEvent::Streaming {
                conversation_id: conversation,
                run_id,
                agent_id,
                text,
            } if conversation == conversation_id => {
                let printed = self.streamed.entry(run_id).or_default();
                if printed.is_empty() {
                    print!("{agent_id}: ");
                }
                match text.strip_prefix(printed.as_str()) {
                    Some(more) => print!("{more}"),
                    None => print!("\n{agent_id}: {text}"),
                }
                *printed = text;
                let _ = std::io::stdout().flush();
            }
            ClientEvent::Run(run) if run.conversation_id == conversation_id => {
                use messaging::protocol::RunState;
                self.running.retain(|r| r != &run.run_id);
                if !run.state.is_final() {
                    self.running.push(run.run_id.clone());
                }
                let detail = [
                    run.detail.step.clone(),
                    run.detail.percent.map(|p| format!("{p}%")),
                    run.detail.reason.clone(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                };
                let streaming = self.streamed.contains_key(&run.run_id);
                match run.state {
                    RunState::Completed => {}
                    RunState::Cancelled => {
                        self.streamed.remove(&run.run_id);
                        println!(
                            "{}  ⊘ {} cancelled",
                            if streaming { "\n" } else { "" },
                            run.agent_id
                        );
                    }
                    RunState::Failed => {
                        self.streamed.remove(&run.run_id);
                        println!(
                            "{}  ✗ {} failed{detail}",
                            if streaming { "\n" } else { "" },
                            run.agent_id
                        );
                    }
                    _ if run.stalled => {
                        println!("  … {} has said nothing for a while", run.agent_id)
                    }
                    RunState::InputRequired => println!("  ? {}{detail}", run.agent_id),
                    _ if !streaming => {
                        println!("  … {} {}{detail}", run.agent_id, run.state.as_str())
                    }
                    _ => {}
                }
            }
            ClientEvent::Typing(t) if t.user_id != me => match t.state {
                messaging::protocol::TypingState::Start => {
                    if !self.streamed.is_empty() || !self.running.is_empty() {
                        return; // the run's own state says it better
                    }
                    println!("  … {} is typing", t.user_id)
                }
                messaging::protocol::TypingState::Stop => {}
            },
            ClientEvent::Read(r) => println!("  ✓✓ read by {}", r.read_by),
            ClientEvent::Receipts(r) if !r.read.is_empty() => {
                let readers: Vec<String> = r
                    .read
                    .iter()
                    .map(|m| format!("{} (up to #{})", m.user_id, m.up_to))
                    .collect();
                println!("  ✓✓ read by {}", readers.join(", "))
            }
            ClientEvent::Receipts(_) => {}
            ClientEvent::Delivered(_)
            | ClientEvent::Typing(_)
            | ClientEvent::Presence(_)
            | ClientEvent::Streaming { .. }
            | ClientEvent::Run(_)
            | ClientEvent::ToDevice(_)
            | ClientEvent::ToDeviceSent(_)
            | ClientEvent::DeviceList(_)
            | ClientEvent::KeysLow(_) => {}
            ClientEvent::Error { code, message } => println!("  ! {code}: {message}"),
            ClientEvent::Disconnected => println!("  (disconnected, reconnecting)"),
        }
    }
}

/// Where this terminal's device keeps its keys and sessions (`{data_dir}/devices/`), and the
/// key they are encrypted with (made once, readable by this OS user only).
fn device_state(
    data_dir: &std::path::Path,
    user: &str,
    device: &str,
) -> anyhow::Result<(PathBuf, [u8; 32])> {
    let dir = data_dir.join("devices");
    std::fs::create_dir_all(&dir)?;
    let name: String = format!("{user}-{device}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let key_path = dir.join(format!("{name}.key"));
    let key: [u8; 32] = match std::fs::read(&key_path) {
        Ok(bytes) if bytes.len() == 32 => bytes.try_into().expect("32 bytes"),
        _ => {
            let key: [u8; 32] = rand::random();
            std::fs::write(&key_path, key)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
            }
            key
        }
    };
    Ok((dir.join(format!("{name}.olm")), key))
}

/// Says whether the conversation is end-to-end encrypted, with the safety code of every
/// device on it (compare them with the other person's screen: equal codes mean nobody stands
/// between you).
async fn describe_encryption(
    directory: &KeyDirectory,
    client: &EncryptedClient,
    me: &str,
    conversation_id: &str,
) {
    let Ok(info) = directory.conversation(conversation_id).await else {
        return;
    };
    let (participants, agent) = (info.participants, info.agent_id);
    if let Some(agent) = &agent
        && directory
            .devices_of(agent)
            .await
            .map(|d| d.is_empty())
            .unwrap_or(true)
    {
        println!(
            "  ⚠ not end-to-end encrypted: agent {agent} has no keys (its operator reads what it reads)"
        );
        return;
    }
    println!("  🔒 end-to-end encrypted; safety codes:");
    println!(
        "     you ({}): {}",
        client.device().device_id(),
        client.device().device_keys().safety_code()
    );
    for participant in participants.iter().filter(|p| p.as_str() != me) {
        let verified = directory.devices_of(participant).await.map(|d| {
            d.into_iter()
                .filter(|d| &d.user_id == participant && d.verify().is_ok())
                .collect::<Vec<_>>()
        });
        match verified {
            Ok(devices) if devices.is_empty() => {
                println!(
                    "     {participant}: no device yet (they will read what is sent after they connect)"
                )
            }
            Ok(devices) => {
                for device in devices {
                    println!(
                        "     {participant} ({}): {}",
                        device.device_id,
                        device.safety_code()
                    );
                }
            }
            Err(e) => println!("     {participant}: keys unavailable ({e})"),
        }
    }
}

/// Opens (or finds) a conversation through the HTTP API.
async fn open(api: &str, token: &str, body: serde_json::Value) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/conversations", api.trim_end_matches('/')))
        .bearer_auth(token)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach the HTTP API at {api}: is the stack running? ({e})")
        })?;
    let status = response.status();
    let json: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let reason = json
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| json.to_string());
        anyhow::bail!("could not open the conversation: {reason} (HTTP {status})");
    }
    json.get("conversation_id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("unexpected answer from the API: {json}"))
}
