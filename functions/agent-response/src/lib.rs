//! `agent.response`, `agent.progress` and `agent.delta`: what agents say back, streamed or
//! whole, and the watch on silent agents.
//!
//! An agent answers a user's message with `agent.response` (as the HTTP reply to the delivered
//! event, or as a new event). The answer is checked (the agent must be the conversation's agent,
//! the user one of its participants), stored exactly once per the agent's idempotency key with
//! the next sequence number, and published as `messaging.message.received`, so the store
//! function delivers it to the user like any message (without the `agentid` extension: agents
//! never get their own messages back). `agent.progress` becomes a `typing` frame on the user's
//! devices and pushes the agent's answer deadline back (BR-7: progress at least every 30 s).
//! With a `run_id`, progress reports a run's state (`agent_run` frames), `agent.delta` streams
//! the answer as it is generated (`message_delta` frames, see `messaging::runs`), and the
//! response ends the run; a cancelled run's deltas and response are dropped.
//! [`sweep`] turns deadlines that passed into a `system` message telling the user the agent did
//! not answer (and fails the run), skips gaps in streams and shows silent runs as stalled; the
//! local stack runs it every second, on AWS a schedule sends `messaging.agent.sweep`.

#![warn(missing_docs)]

use cloudevents::{AttributesReader, Event};
use messaging::agent_routing::route_agent;
use messaging::context::Context;
use messaging::events::event_data;
use messaging::fanout::send_to_user;
use messaging::model::{
    AgentDelta, AgentProgress, AgentResponse, Conversation, NewMessage, ProgressKind, event_types,
};
use messaging::outbox::announce_stored;
use messaging::protocol::{MessageBody, RunDetail, RunState};
use messaging::protocol::{ServerFrame, TypingPayload, TypingState};
use messaging::runs::{self, RunChange, RunKey};
use messaging::system_messages::post_system_message;
use messaging::{Error, Result};

/// CloudEvent type of the scheduled sweep for silent agents.
pub const SWEEP_EVENT: &str = "messaging.agent.sweep";

/// Handles one `agent.response`, `agent.progress` or `messaging.agent.sweep` event.
pub async fn handle(ctx: &Context, event: Event) -> Result<()> {
    match event.ty() {
        event_types::AGENT_RESPONSE => respond(ctx, event_data(&event)?).await,
        event_types::AGENT_PROGRESS => progress(ctx, event_data(&event)?).await,
        event_types::AGENT_DELTA => delta(ctx, event_data(&event)?).await,
        SWEEP_EVENT => sweep(ctx, messaging::clock::now_ms()).await.map(|_| ()),
        other => Err(Error::invalid(format!(
            "agent-response does not consume {other}"
        ))),
    }
}

/// The conversation, if `agent_id` is its agent and `user_id` one of its participants.
async fn agent_conversation(
    ctx: &Context,
    conversation_id: &str,
    agent_id: &str,
    user_id: &str,
) -> Result<Conversation> {
    // The routing fields (cached in Redis) are all this needs: a streamed answer costs no
    // MongoDB round trip per delta.
    let conversation = messaging::conversations::routing(ctx, conversation_id)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("conversation {conversation_id} does not exist"))
        })?;
    // The agent the conversation's messages are routed to is the one allowed to answer.
    let routed = route_agent(ctx, &conversation, user_id).await?;
    if routed.as_deref() != Some(agent_id) {
        return Err(Error::forbidden(format!(
            "agent {agent_id} is not the agent of conversation {conversation_id}"
        )));
    }
    if !conversation.has_participant(user_id) {
        return Err(Error::forbidden(format!(
            "{user_id} is not a participant of conversation {conversation_id}"
        )));
    }
    Ok(conversation)
}

async fn respond(ctx: &Context, response: AgentResponse) -> Result<()> {
    if response.idempotency_key.trim().is_empty() {
        return Err(Error::invalid("agent.response needs an idempotency_key"));
    }
    if response.response.len() > ctx.settings.max_content_bytes {
        return Err(Error::client(
            messaging::ErrorCode::PayloadTooLarge,
            format!("response exceeds {} bytes", ctx.settings.max_content_bytes),
        ));
    }
    let conversation = agent_conversation(
        ctx,
        &response.conversation_id,
        &response.agent_id,
        &response.user_id,
    )
    .await?;
    if let Some(run_id) = &response.run_id
        && !runs::may_complete(ctx, &conversation.conversation_id, run_id).await?
    {
        // The run was cancelled (or failed): its answer is dropped, acknowledged.
        tracing::info!(run = %run_id, "response of a cancelled run dropped");
        return Ok(());
    }
    let reply_to = match &response.in_reply_to {
        Some(id) => ctx
            .store
            .message(id)
            .await?
            .filter(|m| m.conversation_id == conversation.conversation_id)
            .map(|m| m.message_id),
        None => None,
    };
    // The user's message it answers was stored by another function (another sandbox on AWS):
    // without the conversation's last-number hint the insert would collide on that number,
    // read, and go again. Soft state: without it the store reads the number.
    let last_sequence_hint = ctx
        .realtime
        .last_sequence(&conversation.conversation_id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "last-number hint not read");
            None
        });
    let inserted = ctx
        .store
        .insert_message(NewMessage {
            idempotency_key: response.idempotency_key.clone(),
            conversation_id: conversation.conversation_id.clone(),
            sender_id: response.agent_id.clone(),
            receiver_id: Some(response.user_id.clone()),
            body: MessageBody {
                content: response.response,
                message_type: response.message_type,
                media_url: None,
                reply_to_message_id: reply_to,
                forwarded_from: None,
                location: None,
            },
            client_timestamp: response.timestamp,
            last_sequence_hint,
        })
        .await?;
    ctx.realtime
        .agent_answered(&conversation.conversation_id)
        .await?;
    ctx.realtime
        .clear_typing(&conversation.conversation_id, &response.agent_id)
        .await?;
    // The answer ends the agent's typing on every device, whether or not it said so itself.
    let stop = ServerFrame::Typing {
        payload: TypingPayload {
            conversation_id: conversation.conversation_id.clone(),
            user_id: response.agent_id.clone(),
            state: TypingState::Stop,
        },
    };
    send_to_user(ctx, &response.user_id, &stop, None).await?;
    tracing::info!(
        message_id = %inserted.message.message_id,
        sequence_number = inserted.message.sequence_number,
        duplicate = inserted.duplicate,
        "agent response stored"
    );
    if let Some(run_id) = &response.run_id {
        runs::on_completed(
            ctx,
            &conversation,
            run_id,
            &response.agent_id,
            &response.user_id,
            &inserted.message.message_id,
            inserted.message.sequence_number,
        )
        .await?;
    }
    // Republished on a duplicate too: the first attempt may have died before publishing.
    announce_stored(ctx, &inserted.message, None, None).await
}

async fn progress(ctx: &Context, progress: AgentProgress) -> Result<()> {
    let conversation = agent_conversation(
        ctx,
        &progress.conversation_id,
        &progress.agent_id,
        &progress.user_id,
    )
    .await?;
    if let Some(run_id) = &progress.run_id {
        let change = RunChange {
            detail: progress.detail.clone(),
            said_at: Some(progress.timestamp),
            ..RunChange::to(progress.state.unwrap_or(RunState::Working))
        };
        let applied = runs::on_progress(
            ctx,
            &conversation,
            run_id,
            &progress.agent_id,
            &progress.user_id,
            change,
        )
        .await?;
        if !applied {
            // The run is over, or the agent said something newer: typing must not restart.
            return Ok(());
        }
    }
    let now = messaging::clock::now_ms();
    // A question for the user, or a failure, is the agent's answer whatever `kind` says: it
    // stops typing, and nobody waits for it any more (a timeout notice now would be false).
    let answered = matches!(
        progress.state,
        Some(RunState::InputRequired | RunState::Failed)
    );
    let state = if progress.kind == ProgressKind::Typing && !answered {
        ctx.realtime
            .set_typing(
                &conversation.conversation_id,
                &progress.agent_id,
                now + messaging::keys::TYPING_TTL.as_millis() as i64,
            )
            .await?;
        // The agent is alive and working: give it another full timeout.
        ctx.realtime
            .extend_agent_waits(
                &conversation.conversation_id,
                now + ctx.settings.agent_timeout.as_millis() as i64,
            )
            .await?;
        TypingState::Start
    } else {
        ctx.realtime
            .clear_typing(&conversation.conversation_id, &progress.agent_id)
            .await?;
        if answered {
            ctx.realtime
                .agent_answered(&conversation.conversation_id)
                .await?;
        }
        TypingState::Stop
    };
    let frame = ServerFrame::Typing {
        payload: TypingPayload {
            conversation_id: conversation.conversation_id.clone(),
            user_id: progress.agent_id.clone(),
            state,
        },
    };
    send_to_user(ctx, &progress.user_id, &frame, None).await?;
    Ok(())
}

async fn delta(ctx: &Context, delta: AgentDelta) -> Result<()> {
    let conversation =
        agent_conversation(ctx, &delta.conversation_id, &delta.agent_id, &delta.user_id).await?;
    runs::on_delta(ctx, &conversation, &delta).await
}

/// Tells users whose agent let its deadline pass (failing the run that answered the message,
/// if any), skips old gaps in streams and shows silent runs as stalled; returns how many
/// notices were posted and runs changed.
pub async fn sweep(ctx: &Context, now_ms: i64) -> Result<usize> {
    let expired = ctx.realtime.take_expired_agent_waits(now_ms, 100).await?;
    let mut posted = runs::sweep(ctx, now_ms).await?;
    for wait in expired {
        let Some(conversation) = ctx.store.conversation(&wait.conversation_id).await? else {
            continue;
        };
        let name = ctx
            .store
            .agent(&wait.agent_id)
            .await?
            .map(|a| a.name)
            .unwrap_or_else(|| wait.agent_id.clone());
        post_system_message(
            ctx,
            &conversation,
            &format!("agent-timeout/{}", wait.message_id),
            &format!(
                "{name} did not answer within {} seconds. Please try again later.",
                ctx.settings.agent_timeout.as_secs()
            ),
        )
        .await?;
        ctx.realtime
            .clear_typing(&wait.conversation_id, &wait.agent_id)
            .await?;
        // A run answering that message (by convention the run id is the message id) failed.
        let key = RunKey::new(&wait.conversation_id, &wait.message_id);
        let change = RunChange {
            detail: RunDetail {
                reason: Some("the agent did not answer in time".into()),
                ..RunDetail::default()
            },
            ..RunChange::to(RunState::Failed)
        };
        if let runs::Transition::Changed { record, .. } =
            ctx.realtime.change_run(&key, None, &change, now_ms).await?
        {
            for user in &record.owners.audience {
                send_to_user(ctx, user, &record.frame(), None).await?;
            }
        }
        posted += 1;
    }
    Ok(posted)
}
