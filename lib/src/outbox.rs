//! The outbox: every acknowledged message is fanned out and notified, even if every process dies
//! right after its ack.
//!
//! A message is stored with its pending after-commit work (`fanout_due_at`, in the same write, see
//! [`crate::store::messages`]) and announced with `messaging.message.received`
//! ([`announce_stored`]: [`publish_received`], and the conversation's last-number hint for the
//! next send). The store function does the work and records it done in Redis (a
//! [`FANOUT_SCOPE`] work claim, kept a day). The outbox mark is not cleared message by message:
//! [`sweep`] takes the marks that are overdue, clears at once those whose fan-out Redis says is
//! done (one MongoDB write per [`CLEAR_BATCH`] messages instead of one per message), and
//! publishes the event again for the others: a crash before publishing, a broker that lost the
//! event, a consumer that kept failing, or a fan-out Redis forgot (it came back empty: the
//! message is fanned out again, and devices drop what they already have by its number).
//! Consumers dedupe on the event id (the message id), so a message announced twice is fanned
//! out once.
//!
//! The sweep runs on a schedule: every second in the local stack, an EventBridge schedule on AWS
//! (`messaging.outbox.sweep` to the store function), a CronJob posting that event to the Broker
//! on Knative.

use std::time::{Duration, Instant};

use mongodb::bson::DateTime;

use crate::context::Context;
use crate::error::Result;
use crate::model::{MessageReceived, StoredMessage, event_types};
use crate::realtime::SequenceHint;

/// CloudEvent type of the scheduled outbox sweep (consumed by the store function).
pub const SWEEP_EVENT: &str = "messaging.outbox.sweep";
/// Most messages one sweep re-publishes (the next sweep takes the rest).
pub const SWEEP_BATCH: usize = 200;
/// Most overdue outbox marks one round of a sweep looks at to clear those whose fan-out is done.
pub const CLEAR_BATCH: usize = 1000;
/// How long one sweep keeps taking rounds of [`CLEAR_BATCH`]: a backlog (a minute of messages
/// between two EventBridge schedules, or an outage) is cleared over several sweeps, not in one
/// that outlives its function's timeout.
pub const CLEAR_BUDGET: Duration = Duration::from_secs(5);
/// Scope of the fan-out work claims in Redis (`RealtimeState::claim_work_for_users`): the store function
/// claims and finishes a message's fan-out there, the sweep reads which are done.
pub const FANOUT_SCOPE: &str = "fanout";

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

/// How long [`announce_stored`] waits for the last-number hint to be noted: it is soft state,
/// so a slow or stalled Redis delays a `message_ack` by this much at most, not by its deadline.
pub const HINT_PATIENCE: Duration = Duration::from_millis(100);

/// Announces a message its caller just stored: [`publish_received`], and beside it (at the
/// same time, so no latency is added) raises the conversation's last-number hint in Redis to
/// the message's number, so that the next send there, from any process, inserts without
/// reading the conversation's newest number first (`MessageStore::insert_message`). The hint
/// is soft state, waited for [`HINT_PATIENCE`] at most: not noting it only costs that next send
/// a read, and is logged.
pub async fn announce_stored(
    ctx: &Context,
    message: &StoredMessage,
    agent: Option<&str>,
    sent_on: Option<&str>,
) -> Result<()> {
    let hint = async {
        let stored = SequenceHint {
            conversation_id: &message.conversation_id,
            sequence_number: message.sequence_number,
        };
        match tokio::time::timeout(HINT_PATIENCE, ctx.realtime.note_last_sequence(stored)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "last-number hint not noted"),
            Err(_) => tracing::warn!("last-number hint not noted in time"),
        }
    };
    let (published, ()) = tokio::join!(publish_received(ctx, message, agent, sent_on), hint);
    published
}

/// What one [`sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Outbox marks cleared because their fan-out was done.
    pub cleared: u64,
    /// Messages whose `messaging.message.received` was published again.
    pub republished: usize,
}

/// Sweeps the outbox at `now_ms`: clears every overdue mark whose fan-out Redis records as done
/// (rounds of [`CLEAR_BATCH`] for at most [`CLEAR_BUDGET`]) and re-publishes
/// `messaging.message.received` for the overdue messages that are not done (at most
/// [`SWEEP_BATCH`]). Safe to run concurrently: each overdue message is taken by one sweeper.
/// Fails, publishing nothing, while Redis cannot say what is done (the next sweep tries again).
pub async fn sweep(ctx: &Context, now_ms: i64) -> Result<Swept> {
    let now = DateTime::from_millis(now_ms);
    let started = Instant::now();
    let mut swept = Swept::default();
    let undone = loop {
        let overdue = ctx.store.overdue_fanout_ids(now, CLEAR_BATCH).await?;
        let done_flags = ctx.realtime.work_done(FANOUT_SCOPE, &overdue).await?;
        let done: Vec<String> = overdue
            .iter()
            .zip(done_flags)
            .filter(|(_, done)| *done)
            .map(|(id, _)| id.clone())
            .collect();
        swept.cleared += ctx.store.fanouts_done(&done).await?;
        let undone = overdue.len() - done.len();
        // A short round was the last; a round of nothing done would find the same again.
        if overdue.len() < CLEAR_BATCH || done.is_empty() || started.elapsed() > CLEAR_BUDGET {
            break undone;
        }
    };
    if undone == 0 {
        return Ok(swept);
    }
    let overdue = ctx.store.overdue_fanouts(now, SWEEP_BATCH).await?;
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
        swept.republished += 1;
        tracing::warn!(
            message_id = %message.message_id,
            sequence_number = message.sequence_number,
            "fan-out overdue: event published again"
        );
    }
    Ok(swept)
}

/// The event id of a message's `messaging.message.received`: the message id, so every consumer
/// dedupes redeliveries and re-publications alike.
pub fn received_event_id(message: &StoredMessage) -> &str {
    &message.message_id
}
