//! `message`: where the guarantees live.
//!
//! Validate, check membership (and, between people, that the content is an end-to-end
//! encrypted envelope: `messaging::e2ee::Envelope`), store exactly once with the conversation's next sequence number
//! (and the fan-out in the outbox, in the same write: see `messaging::store::messages`), publish
//! `messaging.message.received`, and answer `message_ack` (the route response). The ack means
//! "stored": the event may be lost (the outbox sweeper publishes it again), and a retry with the
//! same key, from any connection or device, gets the same ack and never a second message.

use messaging::agent_routing::route_agent;
use messaging::context::Context;
use messaging::conversations::{membership, membership_given};
use messaging::error::ErrorCode;
use messaging::model::{Conversation, ConversationKind, MediaState, NewMessage, StoredMessage};
use messaging::protocol::{
    MessageAckPayload, MessageStatus, MessageType, OutgoingMessage, ServerFrame,
};
use messaging::realtime::{AgentWait, ConnectionInfo, SendingTo};
use messaging::telemetry::hashed_id;
use messaging::{Error, Result};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Handles a `message` frame; its answer is the `message_ack`. `read`: what the frame's round
/// trip read about the conversation, its cached routing fields and last-number hint (`None`:
/// not read; the conversation is read here and the number found by the store).
pub async fn send(
    ctx: &Context,
    caller: &ConnectionInfo,
    client_message_id: Option<String>,
    idempotency_key: String,
    payload: OutgoingMessage,
    read: Option<SendingTo>,
) -> Result<ServerFrame> {
    validate(&payload, &idempotency_key, ctx.settings.max_content_bytes)?;
    let (conversation, last_sequence_hint) = match read {
        Some(read) => (
            membership_given(ctx, &caller.user_id, &payload.conversation_id, read.cached).await?,
            read.last_sequence,
        ),
        None => (
            membership(ctx, &caller.user_id, &payload.conversation_id).await?,
            None,
        ),
    };
    if conversation.kind != ConversationKind::Agent {
        // Between people the server stores only what it cannot read.
        messaging::e2ee::Envelope::parse(&payload.body.content)?;
        if payload.body.location.is_some() {
            return Err(Error::invalid(
                "between people a location travels inside the encrypted content",
            ));
        }
    }
    check_references(ctx, caller, &payload).await?;
    let receiver_id = match conversation.kind {
        ConversationKind::Group => None,
        _ => conversation
            .recipients_of(&caller.user_id)
            .next()
            .map(str::to_string),
    };
    let inserted = ctx
        .store
        .insert_message(NewMessage {
            idempotency_key,
            conversation_id: payload.conversation_id.clone(),
            sender_id: caller.user_id.clone(),
            receiver_id,
            body: payload.body.clone(),
            client_timestamp: payload.timestamp,
            last_sequence_hint,
        })
        .await?;
    let message = &inserted.message;
    tracing::info!(
        user = %hashed_id(&caller.user_id),
        message_id = %message.message_id,
        sequence_number = message.sequence_number,
        duplicate = inserted.duplicate,
        "message stored"
    );
    let agent = route_agent(ctx, &conversation, &caller.user_id).await?;
    // Start waiting for the agent before it can possibly answer (the event goes out below).
    let mut unavailable_agent = None;
    if !inserted.duplicate
        && let Some(agent_id) = &agent
    {
        // Soft state: without it the user only misses the "did not answer" notice.
        unavailable_agent = await_agent(ctx, &conversation, message, agent_id)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "agent wait not recorded");
                None
            });
    }
    let ack = ServerFrame::MessageAck {
        client_message_id,
        payload: MessageAckPayload {
            message_id: message.message_id.clone(),
            sequence_number: message.sequence_number,
            status: MessageStatus::Sent,
            timestamp: message.timestamp.timestamp_millis(),
        },
    };
    // A retry of a message out of the outbox (its fan-out done and swept) needs no second
    // announcement; one still marked is announced again, and the store function skips a
    // fan-out already done.
    if message.fanout_due_at.is_some()
        && let Err(e) = messaging::outbox::announce_stored(
            ctx,
            message,
            agent.as_deref(),
            Some(&caller.connection_id),
        )
        .await
    {
        // Stored and acknowledged: the outbox sweeper publishes it later.
        tracing::warn!(message_id = %message.message_id, error = %e, "publish failed; left to the outbox");
    }
    if let Some(name) = unavailable_agent
        && let Err(e) = messaging::system_messages::post_system_message(
            ctx,
            &conversation,
            &format!("agent-unavailable/{}", message.message_id),
            &format!(
                "{name} is unavailable right now. Your message is saved and will be answered when it is back."
            ),
        )
        .await
    {
        // The message is stored: its ack must not turn into an error for a notice.
        tracing::warn!(message_id = %message.message_id, error = %e, "agent-unavailable notice not posted");
    }
    Ok(ack)
}

fn validate(payload: &OutgoingMessage, idempotency_key: &str, max_content: usize) -> Result<()> {
    if idempotency_key.trim().is_empty() || idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Error::invalid(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    if payload.conversation_id.trim().is_empty() {
        return Err(Error::invalid("conversation_id is required"));
    }
    if payload.body.content.len() > max_content {
        return Err(Error::client(
            ErrorCode::PayloadTooLarge,
            format!("content exceeds {max_content} bytes"),
        ));
    }
    let kind = payload.body.message_type;
    if kind == MessageType::System {
        return Err(Error::invalid(
            "system messages are written by the server only",
        ));
    }
    if kind.is_media() && payload.body.media_url.as_deref().is_none_or(str::is_empty) {
        return Err(Error::invalid(format!(
            "{kind:?} messages need media_url (the media id from the presign API)"
        )));
    }
    if !kind.is_media() && payload.body.media_url.is_some() {
        return Err(Error::invalid("media_url is only for media messages"));
    }
    if kind == MessageType::Location {
        match &payload.body.location {
            Some(l)
                if (-90.0..=90.0).contains(&l.latitude)
                    && (-180.0..=180.0).contains(&l.longitude) => {}
            Some(_) => return Err(Error::invalid("location coordinates are out of range")),
            None if !payload.body.content.is_empty() => {} // coordinates inside the encrypted content
            None => return Err(Error::invalid("location messages need coordinates")),
        }
    }
    if kind == MessageType::Reaction && payload.body.reply_to_message_id.is_none() {
        return Err(Error::invalid(
            "reactions need reply_to_message_id (the message reacted to)",
        ));
    }
    if kind == MessageType::Text
        && payload.body.content.is_empty()
        && payload.body.forwarded_from.is_none()
    {
        return Err(Error::invalid("text messages need content"));
    }
    Ok(())
}

/// The media, the replied-to message and the forwarded message a send names must be real and
/// the sender's to use.
async fn check_references(
    ctx: &Context,
    caller: &ConnectionInfo,
    payload: &OutgoingMessage,
) -> Result<()> {
    if payload.body.message_type.is_media()
        && let Some(media_id) = &payload.body.media_url
    {
        // `media_url` names an upload of this conversation that passed its checks.
        match ctx.store.media(media_id).await? {
            Some(m)
                if m.conversation_id == payload.conversation_id && m.state == MediaState::Ready => {
            }
            Some(m) if m.conversation_id == payload.conversation_id => {
                return Err(Error::invalid(
                    "the media is not ready: complete its upload first",
                ));
            }
            _ => {
                return Err(Error::invalid(
                    "media_url is not a media id of this conversation",
                ));
            }
        }
    }
    if let Some(reply_to) = &payload.body.reply_to_message_id {
        let target = ctx.store.message(reply_to).await?;
        if target.is_none_or(|m| m.conversation_id != payload.conversation_id) {
            return Err(Error::invalid(
                "reply_to_message_id is not a message of this conversation",
            ));
        }
    }
    if let Some(origin) = &payload.body.forwarded_from {
        membership(ctx, &caller.user_id, &origin.conversation_id)
            .await
            .map_err(|_| Error::forbidden("you cannot forward from that conversation"))?;
        let original = ctx.store.message(&origin.message_id).await?;
        if original.is_none_or(|m| m.conversation_id != origin.conversation_id) {
            return Err(Error::invalid(
                "forwarded_from does not name an existing message",
            ));
        }
    }
    Ok(())
}

/// The message goes to an agent (the broker routes it by the `agentid` extension): wait for its
/// answer, so that a silent agent leads to a timeout notice (see the agent-response function's
/// sweep). Returns the agent's name when it is offline, for the caller to tell the user.
async fn await_agent(
    ctx: &Context,
    conversation: &Conversation,
    message: &StoredMessage,
    agent_id: &str,
) -> Result<Option<String>> {
    let now = messaging::clock::now_ms();
    let agent = ctx.store.agent(agent_id).await?;
    let online = agent
        .as_ref()
        .and_then(|a| a.last_heartbeat_at)
        .is_some_and(|at| {
            now - at.timestamp_millis() <= ctx.settings.agent_offline_after.as_millis() as i64
        });
    if !online {
        return Ok(Some(
            agent
                .map(|a| a.name)
                .unwrap_or_else(|| agent_id.to_string()),
        ));
    }
    ctx.realtime
        .await_agent(
            &AgentWait {
                conversation_id: conversation.conversation_id.clone(),
                message_id: message.message_id.clone(),
                agent_id: agent_id.to_string(),
                user_id: message.sender_id.clone(),
            },
            now + ctx.settings.agent_timeout.as_millis() as i64,
        )
        .await?;
    Ok(None)
}
