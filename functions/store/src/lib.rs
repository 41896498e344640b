//! `messaging.message.received`: the after-commit work of a stored message.
//!
//! The message is already durable in MongoDB when this runs; this function makes it reach
//! people. In order, each step idempotent so a redelivered event changes nothing:
//!
//! 1. conversation metadata: highest sequence number, last-message preview (no content), the
//!    sender's read marker (unread counts are `last_sequence_number - read_up_to[user]`);
//! 2. every human recipient's inbox gets the message id (a sorted-set add, so at most once; the
//!    client's `delivery_ack` removes it), which is what makes offline delivery work;
//! 3. live fan-out to every connection of every recipient, once per message (a Redis marker
//!    stops redeliveries from sending it twice); a 410 prunes only that connection;
//! 4. recipients no connection took it for get a `messaging.notification` (push), with an event
//!    id derived from message and user so a redelivery is deduped downstream.
//!
//! Agents are not delivered to here: the broker routes the same event to the conversation's agent
//! by its `agentid` extension.

#![warn(missing_docs)]

use cloudevents::{AttributesReader, Event};
use messaging::context::Context;
use messaging::delivery::{SYSTEM_SENDER, send_to_user};
use messaging::events::event_data;
use messaging::model::{LastMessage, MessageReceived, Notification, event_types};
use messaging::protocol::{DeliveredMessage, MessageStatus, ServerFrame};
use messaging::{Error, Result};
use mongodb::bson::DateTime;

/// What one event led to (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Recipients with at least one connection that took the frame.
    pub delivered: Vec<String>,
    /// Recipients notified by push instead.
    pub notified: Vec<String>,
    /// True when this event had been fanned out before (redelivery).
    pub duplicate: bool,
}

/// Handles one `messaging.message.received` event.
pub async fn handle(ctx: &Context, event: Event) -> Result<FanOut> {
    if event.ty() != event_types::MESSAGE_RECEIVED {
        return Err(Error::invalid(format!(
            "store consumes {}, not {}",
            event_types::MESSAGE_RECEIVED,
            event.ty()
        )));
    }
    let data: MessageReceived = event_data(&event)?;
    let conversation = messaging::conversations::routing(ctx, &data.conversation_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("conversation {}", data.conversation_id)))?;
    let at = DateTime::from_millis(data.timestamp);
    ctx.store
        .record_message(
            &LastMessage {
                message_id: data.message_id.clone(),
                sequence_number: data.sequence_number,
                sender_id: data.sender_id.clone(),
                message_type: data.message_type,
                at,
            },
            &conversation.conversation_id,
        )
        .await?;

    let recipients: Vec<String> = conversation
        .recipients_of(&data.sender_id)
        .filter(|r| conversation.agent_id.as_deref() != Some(*r))
        .map(str::to_string)
        .collect();
    ctx.realtime
        .inbox_push_many(&recipients, &data.message_id, data.timestamp)
        .await?;

    if !ctx.realtime.claim_once("fanout", &data.message_id).await? {
        tracing::info!(message_id = %data.message_id, "fan-out already done; redelivery ignored");
        return Ok(FanOut {
            duplicate: true,
            ..FanOut::default()
        });
    }
    match fan_out(ctx, &data, &recipients).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            // Let the broker's retry do the fan-out again.
            ctx.realtime
                .release_once("fanout", &data.message_id)
                .await?;
            Err(e)
        }
    }
}

async fn fan_out(ctx: &Context, data: &MessageReceived, recipients: &[String]) -> Result<FanOut> {
    let mut outcome = FanOut::default();
    let frame = ServerFrame::Message {
        payload: DeliveredMessage {
            message_id: data.message_id.clone(),
            sequence_number: data.sequence_number,
            sender_id: Some(data.sender_id.clone()),
            receiver_id: data.receiver_id.clone(),
            conversation_id: Some(data.conversation_id.clone()),
            content: data.content.clone(),
            message_type: Some(data.message_type),
            media_url: data.media_url.clone(),
            reply_to_message_id: data.reply_to_message_id.clone(),
            forwarded_from: data.forwarded_from.clone(),
            location: data.location.clone(),
            timestamp: data.timestamp,
            status: Some(MessageStatus::Sent),
        },
    };
    let sends = recipients
        .iter()
        .map(|r| async { (r.clone(), send_to_user(ctx, r, &frame, None).await) });
    // The sender's devices get it too, so every device of every participant sees the whole
    // conversation, gap-free (the sending device dedupes it against its ack).
    let own = async {
        if data.sender_id == SYSTEM_SENDER {
            return Ok(0);
        }
        send_to_user(ctx, &data.sender_id, &frame, None).await
    };
    let (results, own) = futures::join!(futures::future::join_all(sends), own);
    own?;
    for (recipient, result) in results {
        if result? > 0 {
            outcome.delivered.push(recipient);
        } else {
            outcome.notified.push(recipient);
        }
    }
    for user_id in &outcome.notified {
        let badge = ctx.realtime.inbox_len(user_id).await?;
        let note = Notification {
            user_id: user_id.clone(),
            conversation_id: data.conversation_id.clone(),
            message_id: data.message_id.clone(),
            sender_id: data.sender_id.clone(),
            sender_name: None,
            message_type: data.message_type,
            badge,
        };
        let event = messaging::events::new_event_with_id(
            &format!("{}:{}", data.message_id, user_id),
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
