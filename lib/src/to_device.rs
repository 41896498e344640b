//! Device-to-device messages (end-to-end encryption's key material): storing, delivering,
//! listing and acknowledging a device's queue, for the `to_device` frames of the message
//! function and the key directory's HTTP routes (agents, which have no WebSocket).
//!
//! A message carries Olm ciphertext for a device of the sender's contacts (people and agents it
//! shares a conversation with) or of the sender's own user. Every message is stored in its
//! device's queue in MongoDB first (`crate::store::ToDeviceStore`), then posted to that
//! device's live connections; [`send`] returning means all of them are stored. A post that
//! fails is answered `unavailable`: the sender sends the same messages again (same
//! `message_id`s: nothing is stored twice) and the posts are made again. A device that is
//! offline reads its queue on `auth`/`sync` or over HTTP ([`pending`]); it acknowledges by
//! sequence number, and the content of what it acknowledged is deleted (a retry arriving after
//! that delivers nothing).

use std::collections::{BTreeMap, BTreeSet};

use crate::context::Context;
use crate::e2ee::OlmEnvelope;
use crate::fanout::{PostOutcome, post};
use crate::protocol::{OutgoingToDevice, ServerFrame, ToDeviceItem, ToDevicePayload};
use crate::{Error, Result};

/// Most messages sent at once.
pub const MAX_TO_DEVICE_MESSAGES: usize = 100;
/// Most sequence numbers acknowledged at once.
pub const MAX_TO_DEVICE_ACKS: usize = 1000;
/// Most queued messages read at once (`auth`/`sync`, or one HTTP page).
pub const MAX_PENDING_TO_DEVICE: usize = 1000;
/// Budget of one delivered `to_device` frame's messages, in bytes (under the 128 KB frame).
const FRAME_BUDGET_BYTES: usize = 96 * 1024;

/// Stores `messages` from `sender_id`'s device `sender_device` and delivers them to the
/// receiving devices' live connections; `unavailable` when one could not be reached (send the
/// same messages again).
pub async fn send(
    ctx: &Context,
    sender_id: &str,
    sender_device: &str,
    messages: &[OutgoingToDevice],
) -> Result<()> {
    if messages.is_empty() || messages.len() > MAX_TO_DEVICE_MESSAGES {
        return Err(Error::invalid(format!(
            "messages must hold 1 to {MAX_TO_DEVICE_MESSAGES} messages"
        )));
    }
    for message in messages {
        if message.message_id.is_empty() || message.message_id.len() > 128 {
            return Err(Error::invalid("message_id must be 1 to 128 bytes"));
        }
        crate::ids::check("user_id", &message.user_id)?;
        crate::ids::check("device_id", &message.device_id)?;
        if message.content.len() > ctx.settings.max_content_bytes {
            return Err(Error::client(
                crate::ErrorCode::PayloadTooLarge,
                format!("content exceeds {} bytes", ctx.settings.max_content_bytes),
            ));
        }
        OlmEnvelope::parse(&message.content)?;
    }
    // Key material goes only to contacts (or one's own devices): not a way to reach strangers.
    let users: BTreeSet<&str> = messages.iter().map(|m| m.user_id.as_str()).collect();
    for user in users {
        if !crate::conversations::is_contact(ctx, sender_id, user).await? {
            return Err(Error::not_found(format!(
                "user {user} shares no conversation with you"
            )));
        }
    }
    let stored = ctx
        .store
        .queue_to_device(sender_id, sender_device, messages, crate::clock::now_ms())
        .await?;
    let mut per_device: BTreeMap<(String, String), Vec<ToDeviceItem>> = BTreeMap::new();
    // What a device acknowledged already (a late retry) is not delivered again.
    for record in stored.into_iter().filter(|r| r.acked_at.is_none()) {
        per_device
            .entry((record.user_id, record.device_id))
            .or_default()
            .push(record.item);
    }
    let posts = per_device
        .into_iter()
        .map(|((user, device), items)| async move {
            let connections = ctx.realtime.device_connections(&user, &device).await?;
            let mut failed = false;
            for frame in frames(items) {
                for connection in &connections {
                    failed |= post(ctx, connection, &frame).await? == PostOutcome::Failed;
                }
            }
            Ok::<bool, Error>(failed)
        });
    let mut failed = false;
    for outcome in futures::future::join_all(posts).await {
        failed |= outcome?;
    }
    if failed {
        return Err(Error::retry_later(
            "gateway",
            "stored, but not every device could be reached: send the same messages again",
            std::time::Duration::from_secs(1),
        ));
    }
    Ok(())
}

/// Deletes what `user_id`'s device `device_id` acknowledged.
pub async fn ack(ctx: &Context, user_id: &str, device_id: &str, sequences: &[u64]) -> Result<()> {
    if sequences.is_empty() || sequences.len() > MAX_TO_DEVICE_ACKS {
        return Err(Error::invalid(format!(
            "sequences must hold 1 to {MAX_TO_DEVICE_ACKS} numbers"
        )));
    }
    ctx.store
        .ack_to_device(user_id, device_id, sequences)
        .await?;
    Ok(())
}

/// The device's queue, oldest first, at most [`MAX_PENDING_TO_DEVICE`], and whether more
/// are queued behind them.
pub async fn pending(
    ctx: &Context,
    user_id: &str,
    device_id: &str,
) -> Result<(Vec<ToDeviceItem>, bool)> {
    let mut items = ctx
        .store
        .pending_to_device(user_id, device_id, MAX_PENDING_TO_DEVICE + 1)
        .await?;
    let more = items.len() > MAX_PENDING_TO_DEVICE;
    items.truncate(MAX_PENDING_TO_DEVICE);
    Ok((items, more))
}

/// `items` in `to_device` frames, each under the frame budget.
pub fn frames(items: Vec<ToDeviceItem>) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for item in items {
        let item_size = item.content.len() + 256;
        if !batch.is_empty() && size + item_size > FRAME_BUDGET_BYTES {
            frames.push(ServerFrame::ToDevice {
                payload: ToDevicePayload {
                    messages: std::mem::take(&mut batch),
                },
            });
            size = 0;
        }
        size += item_size;
        batch.push(item);
    }
    if !batch.is_empty() {
        frames.push(ServerFrame::ToDevice {
            payload: ToDevicePayload { messages: batch },
        });
    }
    frames
}
