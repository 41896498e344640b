//! The outbox: every acknowledged message is fanned out and notified, even if every process dies
//! right after its ack.
//!
//! A message is stored with its pending after-commit work (`fanout_due_at`, in the same write, see
//! [`crate::store::messages`]) and announced with `messaging.message.received`
//! ([`publish_received`]). The store function does the work and clears the mark. When the event is
//! lost (a crash before publishing, a broker that lost it, a consumer that kept failing),
//! [`sweep`] finds the message overdue and publishes the event again; consumers dedupe on the
//! event id (the message id), so a message announced twice is fanned out once.
//!
//! The sweep runs on a schedule: every second in the local stack, an EventBridge schedule on AWS
//! (`messaging.outbox.sweep` to the store function), a PingSource on Knative.

use mongodb::bson::DateTime;

use crate::context::Context;
use crate::error::Result;
use crate::model::{MessageReceived, StoredMessage, event_types};

/// CloudEvent type of the scheduled outbox sweep (consumed by the store function).
pub const SWEEP_EVENT: &str = "messaging.outbox.sweep";
/// Most messages one sweep re-publishes (the next sweep takes the rest).
pub const SWEEP_BATCH: usize = 200;

/// Publishes `messaging.message.received` for a stored message, with the message id as the
/// event id (consumers dedupe on it) and, when `agent` is given, the `agentid` extension that
/// Triggers filter on. `sent_on` is the connection that sent it, when one did: the fan-out
/// skips it (its `message_ack` told it).
pub async fn publish_received(
    ctx: &Context,
    message: &StoredMessage,
    agent: Option<&str>,
    sent_on: Option<&str>,
) -> Result<()> {
    let data = MessageReceived::from_stored(message, sent_on.map(crate::telemetry::hashed_id));
    let extensions: Vec<(&str, &str)> = match agent {
        Some(a) => vec![(event_types::AGENT_ID_EXTENSION, a)],
        None => vec![],
    };
    let event = crate::events::new_event_with_id(
        received_event_id(message),
        event_types::MESSAGE_RECEIVED,
        &ctx.settings.event_source,
        &data,
        &extensions,
    )?;
    ctx.events.publish(event).await
}

/// Re-publishes `messaging.message.received` for every message whose fan-out is overdue at
/// `now_ms` (at most [`SWEEP_BATCH`]); returns how many. Safe to run concurrently: each overdue
/// message is taken by one sweeper.
pub async fn sweep(ctx: &Context, now_ms: i64) -> Result<usize> {
    let overdue = ctx
        .store
        .overdue_fanouts(DateTime::from_millis(now_ms), SWEEP_BATCH)
        .await?;
    let mut published = 0;
    for message in &overdue {
        let agent = match crate::conversations::routing(ctx, &message.conversation_id).await? {
            Some(conversation) => {
                crate::agent_routing::route_agent(ctx, &conversation, &message.sender_id).await?
            }
            // Deleted since: nothing to fan out.
            None => {
                ctx.store.fanout_done(&message.message_id).await?;
                continue;
            }
        };
        publish_received(ctx, message, agent.as_deref(), None).await?;
        published += 1;
        tracing::warn!(
            message_id = %message.message_id,
            sequence_number = message.sequence_number,
            "fan-out overdue: event published again"
        );
    }
    Ok(published)
}

/// The event id of a message's `messaging.message.received`: the message id, so every consumer
/// dedupes redeliveries and re-publications alike.
pub fn received_event_id(message: &StoredMessage) -> &str {
    &message.message_id
}
