//! `messaging.message.received`: the after-commit work of a stored message;
//! `messaging.outbox.sweep`: the schedule that makes sure that work always happens; and
//! `messaging.connections.sweep`: the schedule that tells connections nearing the WebSocket
//! API's lifetime limit to migrate (`messaging::migration`).
//!
//! The message is already durable in MongoDB when this runs, with its fan-out marked due in the
//! outbox (`messaging::outbox`); this function makes it reach people. In order, each step
//! idempotent so a redelivered or re-published event changes nothing:
//!
//! 1. conversation metadata: highest sequence number, last-message preview (no content), the
//!    sender's read marker (unread counts are `last_sequence_number - read_up_to[user]`);
//! 2. live fan-out to every connection of every participant (the sender's other devices too;
//!    not the connection it was sent on, whose `message_ack` carried it), once per message: a Redis claim with a lease stops redeliveries from sending it twice, and
//!    a fan-out that died midway is redone when its lease is over; a 410 prunes only that
//!    connection;
//! 3. recipients no connection took it for get a `messaging.notification` (push), with an event
//!    id derived from the message and a hash of the user, so a redelivery is deduped downstream
//!    and no personal data rides in event ids;
//! 4. the fan-out is recorded done in Redis (the claim above); the outbox mark stays until the
//!    sweep clears the done ones in batches (`messaging::outbox::sweep`): one write per
//!    thousand messages instead of one per message.
//!
//! What each device has received is not decided here: devices acknowledge messages, and `auth`
//! and `sync` deliver from MongoDB whatever a device has not acknowledged. Agents are not
//! delivered to here: the broker routes the same event to the conversation's agent by its
//! `agentid` extension.

#![warn(missing_docs)]

use std::time::Duration;

use cloudevents::{AttributesReader, Event};
use messaging::context::Context;
use messaging::events::event_data;
use messaging::fanout::send_to_connections;
use messaging::model::{LastMessage, MessageReceived, Notification, event_types};
use messaging::outbox::FANOUT_SCOPE;
use messaging::protocol::{DeliveredMessage, MessageStatus, ServerFrame};
use messaging::realtime::WorkClaim;
use messaging::system_messages::SYSTEM_SENDER;
use messaging::telemetry::hashed_id;
use messaging::{Error, Result};
use mongodb::bson::DateTime;

/// How long one fan-out may take before another delivery of its event takes it over (a fan-out
/// that died midway is redone, never skipped).
pub const FANOUT_LEASE: Duration = Duration::from_secs(20);

/// What one event led to (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Recipients with at least one connection that took the frame.
    pub delivered: Vec<String>,
    /// Recipients notified by push instead.
    pub notified: Vec<String>,
    /// True when this event had been fanned out before (redelivery).
    pub duplicate: bool,
    /// Messages a sweep published again (for `messaging.outbox.sweep`).
    pub republished: usize,
    /// Outbox marks a sweep cleared because their fan-out was done (`messaging.outbox.sweep`).
    pub cleared: u64,
    /// Connections told to migrate (for `messaging.connections.sweep`).
    pub migrated: usize,
}

/// Handles one `messaging.message.received`, `messaging.outbox.sweep` or
/// `messaging.connections.sweep` event.
pub async fn handle(ctx: &Context, event: Event) -> Result<FanOut> {
    match event.ty() {
        event_types::MESSAGE_RECEIVED => received(ctx, event_data(&event)?).await,
        messaging::outbox::SWEEP_EVENT => {
            let swept = messaging::outbox::sweep(ctx, messaging::clock::now_ms()).await?;
            Ok(FanOut {
                republished: swept.republished,
                cleared: swept.cleared,
                ..FanOut::default()
            })
        }
        messaging::migration::SWEEP_EVENT => Ok(FanOut {
            migrated: messaging::migration::sweep(ctx, messaging::clock::now_ms()).await?,
            ..FanOut::default()
        }),
        other => Err(Error::invalid(format!(
            "store consumes {}, {} and {}, not {other}",
            event_types::MESSAGE_RECEIVED,
            messaging::outbox::SWEEP_EVENT,
            messaging::migration::SWEEP_EVENT,
        ))),
    }
}

async fn received(ctx: &Context, data: MessageReceived) -> Result<FanOut> {
    let Some(conversation) = messaging::conversations::routing(ctx, &data.conversation_id).await?
    else {
        // Deleted since the message was stored (its messages went with it): nothing to do.
        tracing::info!(message_id = %data.message_id, "conversation gone; fan-out dropped");
        ctx.store.fanout_done(&data.message_id).await?;
        return Ok(FanOut::default());
    };
    ctx.store
        .record_message(
            &LastMessage {
                message_id: data.message_id.clone(),
                sequence_number: data.sequence_number,
                sender_id: data.sender_id.clone(),
                message_type: data.body.message_type,
                at: DateTime::from_millis(data.timestamp),
            },
            &conversation.conversation_id,
        )
        .await?;
    let recipients: Vec<String> = conversation
        .recipients_of(&data.sender_id)
        .filter(|r| conversation.agent_id.as_deref() != Some(*r))
        .map(str::to_string)
        .collect();

    // The sender's devices get it too, so every device of every participant sees the whole
    // conversation, gap-free. The claim and every connection of every one of them: one round
    // trip.
    let mut users = recipients.clone();
    if data.sender_id != SYSTEM_SENDER {
        users.push(data.sender_id.clone());
    }
    let (claim, connections) = ctx
        .realtime
        .claim_work_for_users(FANOUT_SCOPE, &data.message_id, FANOUT_LEASE, &users)
        .await?;
    match claim {
        WorkClaim::Claimed => {}
        WorkClaim::Done => {
            tracing::info!(message_id = %data.message_id, "fan-out already done; redelivery ignored");
            ctx.store.fanout_done(&data.message_id).await?;
            return Ok(FanOut {
                duplicate: true,
                ..FanOut::default()
            });
        }
        WorkClaim::InProgress { retry_after } => {
            // Someone is fanning it out, or died doing it: try again once its lease is over
            // (the broker retries then; failing that, the outbox sweep).
            return Err(Error::retry_later(
                "fan-out",
                format!("message {} is being fanned out", data.message_id),
                retry_after,
            ));
        }
    }
    let outcome = match fan_out(ctx, &data, &recipients, &connections).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // Let the broker's retry (or the outbox sweep) do the fan-out again.
            ctx.realtime
                .release_work(FANOUT_SCOPE, &data.message_id)
                .await?;
            return Err(e);
        }
    };
    // Done: the sweep clears the outbox mark with others once it is overdue.
    ctx.realtime
        .finish_work(FANOUT_SCOPE, &data.message_id)
        .await?;
    Ok(outcome)
}

/// Posts the message to `connections` (per user: the recipients', then the sender's unless a
/// system message) and notifies the recipients none of whose connections took it.
async fn fan_out(
    ctx: &Context,
    data: &MessageReceived,
    recipients: &[String],
    connections: &[Vec<String>],
) -> Result<FanOut> {
    let mut outcome = FanOut::default();
    let frame = ServerFrame::Message {
        payload: DeliveredMessage {
            message_id: data.message_id.clone(),
            sequence_number: data.sequence_number,
            sender_id: Some(data.sender_id.clone()),
            receiver_id: data.receiver_id.clone(),
            conversation_id: Some(data.conversation_id.clone()),
            body: data.body.clone(),
            timestamp: data.timestamp,
            status: Some(MessageStatus::Sent),
        },
    };
    // Every connection but the one it was sent on, whose `message_ack` carried it.
    let sender = recipients.len();
    let sent_on = data.sent_on.as_deref();
    let delivered = send_to_connections(ctx, connections, |user, connection| {
        let skip = user == sender && sent_on.is_some_and(|digest| hashed_id(connection) == digest);
        (!skip).then_some(&frame)
    })
    .await?;
    for (recipient, taken) in recipients.iter().zip(delivered) {
        if taken > 0 {
            outcome.delivered.push(recipient.clone());
        } else {
            outcome.notified.push(recipient.clone());
        }
    }
    for user_id in &outcome.notified {
        let note = Notification {
            user_id: user_id.clone(),
            conversation_id: data.conversation_id.clone(),
            message_id: data.message_id.clone(),
            sender_id: data.sender_id.clone(),
            sender_name: None,
            message_type: data.body.message_type,
            badge: unread_count(ctx, user_id).await?,
        };
        let event = messaging::events::new_event_with_id(
            &notification_event_id(&data.message_id, user_id),
            event_types::NOTIFICATION,
            &ctx.settings.event_source,
            &note,
            &[],
        )?;
        ctx.events.publish(event).await?;
    }
    tracing::info!(
        message_id = %data.message_id,
        delivered = outcome.delivered.len(),
        notified = outcome.notified.len(),
        "fan-out done"
    );
    Ok(outcome)
}

/// The id of the notification event of `message_id` for `user_id`: stable (redeliveries are
/// deduped by it) and free of personal data (a hash of the user id, never the id itself).
pub fn notification_event_id(message_id: &str, user_id: &str) -> String {
    format!("{message_id}:{}", hashed_id(user_id))
}

/// A user's unread messages over all their conversations (the badge), from MongoDB: the same
/// count as `auth_success` and the HTTP API.
async fn unread_count(ctx: &Context, user_id: &str) -> Result<u64> {
    Ok(ctx
        .store
        .conversations_of(user_id)
        .await?
        .iter()
        .map(|mc| mc.state.unread(&mc.conversation, user_id))
        .sum())
}

#[cfg(test)]
mod tests {
    #[test]
    fn notification_event_ids_carry_no_user_id() {
        let id = super::notification_event_id("01h-message", "alice@example.com");
        assert!(id.starts_with("01h-message:"));
        assert!(!id.contains("alice"), "{id}");
        assert_eq!(
            id,
            super::notification_event_id("01h-message", "alice@example.com")
        );
    }
}
