//! `delivery_ack` and `read_receipt`: what a device received and what its user read.
//!
//! Both move the device's watermark in MongoDB (what `auth` and `sync` deliver from), record the
//! receipt on the messages (`delivered_to`, `read_by`, and the aggregate status once every
//! recipient has it), and tell the senders' devices. A read receipt also moves the user's read
//! marker (unread counts). Acknowledging one's own message (echoed from another device) only
//! moves the watermark. Only participants may acknowledge a conversation's messages.

use std::collections::{BTreeMap, HashMap, HashSet};

use messaging::context::Context;
use messaging::conversations::{membership, routing};
use messaging::fanout::send_to_user;
use messaging::model::{Conversation, StoredMessage};
use messaging::protocol::{DeliveryReceiptPayload, MessageStatus, ReadReceiptPayload, ServerFrame};
use messaging::realtime::ConnectionInfo;
use messaging::system_messages::SYSTEM_SENDER;
use messaging::{Error, Result};

/// Most message ids in one `read_receipt`.
pub const MAX_RECEIPT_IDS: usize = 500;

/// Handles `delivery_ack`. With the optional `conversation_id` and `sequence_number` the
/// message need not be read first.
pub async fn delivery_ack(
    ctx: &Context,
    caller: &ConnectionInfo,
    message_id: String,
    conversation_id: Option<String>,
    sequence_number: Option<u64>,
) -> Result<()> {
    if let (Some(conversation_id), Some(sequence_number)) = (conversation_id, sequence_number) {
        membership(ctx, &caller.user_id, &conversation_id).await?;
        ctx.store
            .advance_cursor(
                &caller.user_id,
                &caller.device_id,
                &conversation_id,
                sequence_number,
            )
            .await?;
        let updated = ctx
            .store
            .record_receipts(
                std::slice::from_ref(&message_id),
                Some(&conversation_id),
                &caller.user_id,
                MessageStatus::Delivered,
            )
            .await?;
        return notify_senders(ctx, caller, &updated, MessageStatus::Delivered).await;
    }
    receipts(ctx, caller, vec![message_id], MessageStatus::Delivered).await
}

/// Handles `read_receipt` (and `delivery_ack` without its optional fields).
pub async fn receipts(
    ctx: &Context,
    caller: &ConnectionInfo,
    message_ids: Vec<String>,
    status: MessageStatus,
) -> Result<()> {
    if message_ids.is_empty() {
        return Err(Error::invalid("message_ids must not be empty"));
    }
    if message_ids.len() > MAX_RECEIPT_IDS {
        return Err(Error::invalid(format!(
            "at most {MAX_RECEIPT_IDS} message ids per receipt"
        )));
    }
    let mut message_ids = message_ids;
    message_ids.sort();
    message_ids.dedup();
    let messages = ctx.store.messages_by_ids(&message_ids).await?;
    if messages.len() != message_ids.len() {
        return Err(Error::not_found("some message ids do not exist"));
    }
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for m in &messages {
        let h = highest.entry(m.conversation_id.as_str()).or_default();
        *h = (*h).max(m.sequence_number);
    }
    for conversation_id in highest.keys() {
        membership(ctx, &caller.user_id, conversation_id).await?;
    }
    for (conversation_id, seq) in &highest {
        ctx.store
            .advance_cursor(&caller.user_id, &caller.device_id, conversation_id, *seq)
            .await?;
    }
    let others: Vec<String> = messages
        .iter()
        .filter(|m| m.sender_id != caller.user_id)
        .map(|m| m.message_id.clone())
        .collect();
    let updated = ctx
        .store
        .record_receipts(&others, None, &caller.user_id, status)
        .await?;
    if status == MessageStatus::Read {
        for (conversation_id, seq) in &highest {
            ctx.store
                .advance_read_marker(conversation_id, &caller.user_id, *seq)
                .await?;
        }
    }
    notify_senders(ctx, caller, &updated, status).await
}

/// Moves the aggregate status of messages every recipient has, and tells each sender.
async fn notify_senders(
    ctx: &Context,
    caller: &ConnectionInfo,
    updated: &[StoredMessage],
    status: MessageStatus,
) -> Result<()> {
    let mut conversations: HashMap<String, Option<Conversation>> = HashMap::new();
    let mut complete = Vec::new();
    let mut by_sender: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for m in updated {
        if m.sender_id == caller.user_id
            || m.sender_id == SYSTEM_SENDER
            || !seen.insert(&m.message_id)
        {
            continue;
        }
        if !conversations.contains_key(&m.conversation_id) {
            let c = routing(ctx, &m.conversation_id).await?;
            conversations.insert(m.conversation_id.clone(), c);
        }
        let recipients = conversations
            .get(&m.conversation_id)
            .and_then(Option::as_ref)
            .map(|c| c.participants.len().saturating_sub(1))
            .unwrap_or(1)
            .max(1);
        let count = match status {
            MessageStatus::Read => m.read_by.len(),
            _ => m.delivered_to.len(),
        };
        if count >= recipients && m.status < status {
            complete.push(m.message_id.clone());
        }
        by_sender
            .entry(m.sender_id.as_str())
            .or_default()
            .push(m.message_id.clone());
    }
    if !complete.is_empty() {
        // Moving to `read` also passes `delivered`: one update.
        ctx.store.advance_status(&complete, status).await?;
    }
    let now = messaging::clock::now_ms();
    for (sender, ids) in by_sender {
        let frame = match status {
            MessageStatus::Read => ServerFrame::ReadReceipt {
                payload: ReadReceiptPayload {
                    message_ids: ids,
                    read_by: caller.user_id.clone(),
                    timestamp: now,
                },
            },
            _ => ServerFrame::DeliveryAck {
                payload: DeliveryReceiptPayload {
                    message_ids: ids,
                    delivered_to: caller.user_id.clone(),
                    timestamp: now,
                },
            },
        };
        send_to_user(ctx, sender, &frame, None).await?;
    }
    Ok(())
}
