//! `delivery_ack` and `read_receipt`: what a device received and what its user read.
//!
//! Both move the device's watermark in MongoDB (what `auth` and `sync` deliver from) and tell
//! the senders' devices. In direct and agent conversations the receipt is recorded on the
//! messages (`delivered_to`, `read_by`, and the status: the receiving user is the only
//! recipient, so one write does both) and told at once (`delivery_ack`, `read_receipt` frames)
//! when it moved the status (a second device's acknowledgement tells nobody again); in groups
//! it is coalesced into one `receipts` frame per interval, which also moves the messages'
//! status from the cursors and read markers (`messaging::group_receipts`; a `delivery_ack`
//! notes its receipt in the frame's one Redis round trip). A read receipt also moves the user's read marker (unread counts).
//! Acknowledging one's own message (echoed from another device) only moves the watermark. Only
//! participants may acknowledge a conversation's messages.

use std::collections::{BTreeMap, HashMap, HashSet};

use messaging::context::Context;
use messaging::conversations::membership_for_receipts;
use messaging::fanout::send_to_user;
use messaging::group_receipts::{ReceiptKind, ReceiptNote, ReceiptTurn};
use messaging::model::{ConversationKind, StoredMessage};
use messaging::protocol::{DeliveryReceiptPayload, MessageStatus, ReadReceiptPayload, ServerFrame};
use messaging::realtime::ConnectionInfo;
use messaging::system_messages::SYSTEM_SENDER;
use messaging::{Error, Result};

/// Most message ids in one `read_receipt`.
pub const MAX_RECEIPT_IDS: usize = 500;

/// The group receipt a `delivery_ack` with its optional fields stands for, when its
/// conversation is a group the caller is a member of (so the frame's round trip can note it).
pub async fn group_note(
    ctx: &Context,
    user_id: &str,
    conversation_id: &str,
    sequence_number: u64,
) -> Option<ReceiptNote> {
    // A failure here is met again, and answered, by the handler.
    let conversation = membership_for_receipts(ctx, user_id, conversation_id)
        .await
        .ok()?;
    (conversation.kind == ConversationKind::Group)
        .then(|| ReceiptNote::delivered(conversation_id, user_id, sequence_number))
}

/// Handles `delivery_ack`. With the optional `conversation_id` and `sequence_number` the
/// message need not be read first; `noted` is the turn the frame's round trip got when it
/// noted the group receipt already.
pub async fn delivery_ack(
    ctx: &Context,
    caller: &ConnectionInfo,
    message_id: String,
    conversation_id: Option<String>,
    sequence_number: Option<u64>,
    noted: Option<ReceiptTurn>,
) -> Result<()> {
    let (Some(conversation_id), Some(sequence_number)) = (conversation_id, sequence_number) else {
        return receipts(ctx, caller, vec![message_id], MessageStatus::Delivered).await;
    };
    let conversation = membership_for_receipts(ctx, &caller.user_id, &conversation_id).await?;
    ctx.store
        .advance_cursor(
            &caller.user_id,
            &caller.device_id,
            &conversation_id,
            sequence_number,
        )
        .await?;
    if conversation.kind == ConversationKind::Group {
        // The cursor is the group's record: the status is computed from the cursors when the
        // receipts are sent (`messaging::group_receipts`).
        let turn = match noted {
            Some(turn) => turn,
            None => {
                ctx.realtime
                    .note_receipt(&ReceiptNote::delivered(
                        &conversation_id,
                        &caller.user_id,
                        sequence_number,
                    ))
                    .await?
            }
        };
        return messaging::group_receipts::take_turn(ctx, &conversation, turn).await;
    }
    let updated = ctx
        .store
        .record_receipts(
            std::slice::from_ref(&message_id),
            Some(&conversation_id),
            &caller.user_id,
            MessageStatus::Delivered,
        )
        .await?;
    tell_senders(
        ctx,
        caller,
        by_sender(caller, &updated),
        MessageStatus::Delivered,
    )
    .await
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
    // Per conversation: the lowest and highest sequence number concerned.
    let mut range: HashMap<&str, (u64, u64)> = HashMap::new();
    for m in &messages {
        let r = range
            .entry(m.conversation_id.as_str())
            .or_insert((m.sequence_number, m.sequence_number));
        r.0 = r.0.min(m.sequence_number);
        r.1 = r.1.max(m.sequence_number);
    }
    let mut conversations = HashMap::new();
    for conversation_id in range.keys() {
        let conversation = membership_for_receipts(ctx, &caller.user_id, conversation_id).await?;
        conversations.insert(conversation_id.to_string(), conversation);
    }
    for (conversation_id, (_, highest)) in &range {
        ctx.store
            .advance_cursor(
                &caller.user_id,
                &caller.device_id,
                conversation_id,
                *highest,
            )
            .await?;
    }
    // Group messages keep no per-member lists: their status comes from cursors and read
    // markers when the group's receipts are sent.
    let others: Vec<String> = messages
        .iter()
        .filter(|m| m.sender_id != caller.user_id)
        .filter(|m| conversations[&m.conversation_id].kind != ConversationKind::Group)
        .map(|m| m.message_id.clone())
        .collect();
    let updated = ctx
        .store
        .record_receipts(&others, None, &caller.user_id, status)
        .await?;
    if status == MessageStatus::Read {
        for (conversation_id, (_, highest)) in &range {
            ctx.store
                .advance_read_marker(conversation_id, &caller.user_id, *highest)
                .await?;
        }
    }
    // Only direct and agent conversations' messages were recorded (and are told at once).
    let by_sender = by_sender(caller, &updated);
    let kind = match status {
        MessageStatus::Read => ReceiptKind::Read,
        _ => ReceiptKind::Delivered,
    };
    for (conversation_id, (low, highest)) in &range {
        let conversation = &conversations[*conversation_id];
        if conversation.kind == ConversationKind::Group {
            let note = ReceiptNote {
                conversation_id: conversation_id.to_string(),
                kind,
                user_id: caller.user_id.clone(),
                low: *low,
                up_to: *highest,
            };
            messaging::group_receipts::note(ctx, conversation, &note).await?;
        }
    }
    tell_senders(ctx, caller, by_sender, status).await
}

/// The messages to tell each sender about (not the caller's own, not system messages; the
/// status moved with the receipt, see `MessageStore::record_receipts`).
fn by_sender(caller: &ConnectionInfo, updated: &[StoredMessage]) -> BTreeMap<String, Vec<String>> {
    let mut by_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for m in updated {
        if m.sender_id == caller.user_id
            || m.sender_id == SYSTEM_SENDER
            || !seen.insert(&m.message_id)
        {
            continue;
        }
        by_sender
            .entry(m.sender_id.clone())
            .or_default()
            .push(m.message_id.clone());
    }
    by_sender
}

/// Tells each sender's devices at once (direct and agent conversations).
async fn tell_senders(
    ctx: &Context,
    caller: &ConnectionInfo,
    by_sender: BTreeMap<String, Vec<String>>,
    status: MessageStatus,
) -> Result<()> {
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
        send_to_user(ctx, &sender, &frame, None).await?;
    }
    Ok(())
}
