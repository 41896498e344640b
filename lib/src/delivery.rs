//! Getting frames to users: every live connection of every device, pruning stale ones.
//!
//! Every function that talks to clients goes through here, so one rule holds everywhere: a post
//! that fails with 410 Gone removes exactly that connection and nothing else (guarantee 5), and
//! a frame too big for one WebSocket message is never attempted. Batches of stored messages are
//! split into `messages` frames that each stay under the 128 KB limit.

use futures::future::join_all;

use crate::context::Context;
use crate::error::Result;
use crate::gateway::GatewayError;
use crate::model::{
    Conversation, ConversationKind, MessageReceived, PresenceChanged, StoredMessage, event_types,
};
use crate::protocol::{
    DeliveredMessage, MAX_FRAME_BYTES, MessagesPayload, PresenceStatus, ServerFrame,
};

/// What happened to one frame sent to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// The gateway accepted it.
    Delivered,
    /// The connection was gone and has been forgotten.
    Gone,
    /// Another failure (throttled, network); the connection is kept.
    Failed,
}

/// Sends `frame` to one connection; a 410 forgets the connection.
pub async fn post(ctx: &Context, connection_id: &str, frame: &ServerFrame) -> Result<PostOutcome> {
    let body = frame.to_json();
    match ctx.gateway.post(connection_id, body.as_bytes()).await {
        Ok(()) => Ok(PostOutcome::Delivered),
        Err(GatewayError::Gone) => {
            forget_stale(ctx, connection_id).await?;
            Ok(PostOutcome::Gone)
        }
        Err(e) => {
            tracing::warn!(connection_id, error = %e, "post to connection failed");
            Ok(PostOutcome::Failed)
        }
    }
}

/// Removes a connection the gateway says is gone, exactly as a `$disconnect` would.
pub async fn forget_stale(ctx: &Context, connection_id: &str) -> Result<()> {
    forget_connection(ctx, connection_id).await?;
    tracing::info!(connection_id, "stale connection pruned after 410");
    Ok(())
}

/// Forgets one connection (`$disconnect`, or a 410 from the gateway). When it was its user's
/// last, the user goes offline: presence in Redis, `last_seen` in MongoDB, `presence.changed`.
/// Returns what was removed (`None` when the connection was unknown: never authenticated, or
/// already forgotten).
pub async fn forget_connection(
    ctx: &Context,
    connection_id: &str,
) -> Result<Option<crate::realtime::RemovedConnection>> {
    let Some(removed) = ctx.realtime.remove_connection(connection_id).await? else {
        return Ok(None);
    };
    if removed.remaining == 0 {
        let now = crate::clock::now_ms();
        ctx.realtime.set_offline(&removed.user_id, now).await?;
        ctx.store
            .set_last_seen(&removed.user_id, mongodb::bson::DateTime::from_millis(now))
            .await?;
        publish_presence(ctx, &removed.user_id, PresenceStatus::Offline, now).await;
    }
    Ok(Some(removed))
}

/// Announces a user's presence change with `presence.changed`. Best effort: presence is soft
/// state, so a lost announcement is logged, never an error for the caller.
pub async fn publish_presence(ctx: &Context, user_id: &str, status: PresenceStatus, at_ms: i64) {
    let data = PresenceChanged {
        user_id: user_id.to_string(),
        status,
        last_seen: at_ms,
    };
    let published = match crate::events::new_event(
        event_types::PRESENCE_CHANGED,
        &ctx.settings.event_source,
        &data,
        &[],
    ) {
        Ok(event) => ctx.events.publish(event).await,
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        tracing::warn!(error = %e, "presence.changed not published");
    }
}

/// Sends `frame` to every live connection of `user_id` (except `except`), concurrently.
/// Returns how many connections took it.
pub async fn send_to_user(
    ctx: &Context,
    user_id: &str,
    frame: &ServerFrame,
    except: Option<&str>,
) -> Result<usize> {
    let connections = ctx.realtime.user_connections(user_id).await?;
    let targets: Vec<&String> = connections
        .iter()
        .filter(|c| Some(c.as_str()) != except)
        .collect();
    let outcomes = join_all(targets.iter().map(|c| post(ctx, c, frame))).await;
    let mut delivered = 0;
    for outcome in outcomes {
        if outcome? == PostOutcome::Delivered {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// Splits messages of one conversation into `messages` frames of at most 128 KB each, in order.
/// `has_more` is set on every frame but the last.
pub fn batch_frames(conversation_id: &str, messages: Vec<DeliveredMessage>) -> Vec<ServerFrame> {
    // Envelope without messages, plus room for the `has_more` flag and separators.
    let envelope = ServerFrame::Messages {
        payload: MessagesPayload {
            conversation_id: conversation_id.to_string(),
            messages: Vec::new(),
            has_more: true,
            missing: Vec::new(),
        },
    }
    .to_json()
    .len()
        + 16;
    let budget = MAX_FRAME_BYTES - envelope;
    let mut batches: Vec<Vec<DeliveredMessage>> = vec![Vec::new()];
    let mut size = 0;
    for m in messages {
        let len = serde_json::to_string(&m).map(|s| s.len()).unwrap_or(budget) + 1;
        let current = batches.last_mut().expect("never empty");
        if !current.is_empty() && size + len > budget {
            batches.push(Vec::new());
            size = 0;
        }
        size += len;
        batches.last_mut().expect("never empty").push(m);
    }
    let count = batches.len();
    batches
        .into_iter()
        .enumerate()
        .filter(|(i, b)| !b.is_empty() || *i == 0)
        .map(|(i, messages)| ServerFrame::Messages {
            payload: MessagesPayload {
                conversation_id: conversation_id.to_string(),
                messages,
                has_more: i + 1 < count,
                missing: Vec::new(),
            },
        })
        .collect()
}

/// The agent that should answer a message `sender_id` wrote in `conversation`, if any
/// (seeds' Agent Gateway): the conversation's own agent; else an online agent of the registry
/// with the conversation's capability; else the configured default agent. Never the sender
/// itself, and never for a server-written message.
pub async fn route_agent(
    ctx: &Context,
    conversation: &Conversation,
    sender_id: &str,
) -> Result<Option<String>> {
    if conversation.kind != ConversationKind::Agent || sender_id == SYSTEM_SENDER {
        return Ok(None);
    }
    let chosen = match (&conversation.agent_id, &conversation.agent_capability) {
        (Some(agent), _) => Some(agent.clone()),
        (None, Some(capability)) => {
            let online_since = mongodb::bson::DateTime::from_millis(
                crate::clock::now_ms() - ctx.settings.agent_offline_after.as_millis() as i64,
            );
            match ctx
                .store
                .agent_with_capability(capability, online_since)
                .await?
            {
                Some(agent) => Some(agent.agent_id),
                None => ctx.settings.default_agent.clone(),
            }
        }
        (None, None) => ctx.settings.default_agent.clone(),
    };
    Ok(chosen.filter(|a| a != sender_id))
}

/// Publishes `messaging.message.received` for a stored message, with the message id as the
/// event id (consumers dedupe on it) and, when `agent` is given, the `agentid` extension that
/// Triggers filter on.
pub async fn publish_received(
    ctx: &Context,
    message: &StoredMessage,
    agent: Option<&str>,
) -> Result<()> {
    let data = MessageReceived::from_stored(message);
    let extensions: Vec<(&str, &str)> = match agent {
        Some(a) => vec![(event_types::AGENT_ID_EXTENSION, a)],
        None => vec![],
    };
    let event = crate::events::new_event_with_id(
        &message.message_id,
        event_types::MESSAGE_RECEIVED,
        &ctx.settings.event_source,
        &data,
        &extensions,
    )?;
    ctx.events.publish(event).await
}

/// Sender id of messages the server writes itself.
pub const SYSTEM_SENDER: &str = "system";

/// Stores a `system` message in a conversation (once per `key`) and fans it out like any other.
/// System messages are written by the server in the clear: they tell people what happened
/// ("the agent did not answer"), never anything a participant wrote.
pub async fn post_system_message(
    ctx: &Context,
    conversation: &Conversation,
    key: &str,
    text: &str,
) -> Result<StoredMessage> {
    let inserted = ctx
        .store
        .insert_message(crate::model::NewMessage {
            idempotency_key: key.to_string(),
            conversation_id: conversation.conversation_id.clone(),
            sender_id: SYSTEM_SENDER.to_string(),
            receiver_id: None,
            message_type: crate::protocol::MessageType::System,
            content: text.to_string(),
            media_url: None,
            reply_to_message_id: None,
            forwarded_from: None,
            location: None,
            client_timestamp: crate::clock::now_ms(),
        })
        .await?;
    publish_received(ctx, &inserted.message, None).await?;
    Ok(inserted.message)
}
