//! `to_device` and `to_device_ack`: key material between devices (end-to-end encryption).
//!
//! A `to_device` frame carries Olm ciphertext for devices of the sender's contacts (people it
//! shares a conversation with) or of the sender's own user. Every message is stored in its
//! device's queue in MongoDB first (`messaging::store::ToDeviceStore`), then posted to that
//! device's live connections; the answer `to_device_sent` means all of them are stored. A post
//! that fails is answered `unavailable`: the sender sends the same frame again (same
//! `message_id`s: nothing is stored twice) and the posts are made again. A device that is
//! offline gets its queue on `auth`/`sync` ([`pending_frames`]); it acknowledges by sequence
//! number, and the content of what it acknowledged is deleted (a retry arriving after that
//! delivers nothing).

use std::collections::{BTreeMap, BTreeSet};

use messaging::context::Context;
use messaging::e2ee::OlmEnvelope;
use messaging::fanout::{PostOutcome, post};
use messaging::protocol::{OutgoingToDevice, ServerFrame, ToDeviceItem, ToDevicePayload};
use messaging::realtime::ConnectionInfo;
use messaging::{Error, Result};

/// Most messages in one `to_device` frame.
pub const MAX_TO_DEVICE_MESSAGES: usize = 100;
/// Most sequence numbers in one `to_device_ack`.
pub const MAX_TO_DEVICE_ACKS: usize = 1000;
/// Most queued messages delivered per `auth`/`sync`.
pub const MAX_PENDING_TO_DEVICE: usize = 1000;
/// Budget of one delivered `to_device` frame's messages, in bytes (under the 128 KB frame).
const FRAME_BUDGET_BYTES: usize = 96 * 1024;

/// Stores and delivers a `to_device` frame's messages; answers `to_device_sent`.
pub async fn to_device(
    ctx: &Context,
    caller: &ConnectionInfo,
    messages: Vec<OutgoingToDevice>,
) -> Result<ServerFrame> {
    if messages.is_empty() || messages.len() > MAX_TO_DEVICE_MESSAGES {
        return Err(Error::invalid(format!(
            "messages must hold 1 to {MAX_TO_DEVICE_MESSAGES} messages"
        )));
    }
    for message in &messages {
        if message.message_id.is_empty() || message.message_id.len() > 128 {
            return Err(Error::invalid("message_id must be 1 to 128 bytes"));
        }
        messaging::ids::check("user_id", &message.user_id)?;
        messaging::ids::check("device_id", &message.device_id)?;
        if message.content.len() > ctx.settings.max_content_bytes {
            return Err(Error::client(
                messaging::ErrorCode::PayloadTooLarge,
                format!("content exceeds {} bytes", ctx.settings.max_content_bytes),
            ));
        }
        OlmEnvelope::parse(&message.content)?;
    }
    // Key material goes only to contacts (or one's own devices): not a way to reach strangers.
    let users: BTreeSet<&str> = messages.iter().map(|m| m.user_id.as_str()).collect();
    for user in users {
        if user != caller.user_id && !ctx.store.share_conversation(&caller.user_id, user).await? {
            return Err(Error::not_found(format!(
                "user {user} shares no conversation with you"
            )));
        }
    }
    let stored = ctx
        .store
        .queue_to_device(
            &caller.user_id,
            &caller.device_id,
            &messages,
            messaging::clock::now_ms(),
        )
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
    let outcomes = futures::future::join_all(posts).await;
    let mut failed = false;
    for outcome in outcomes {
        failed |= outcome?;
    }
    if failed {
        return Err(Error::retry_later(
            "gateway",
            "stored, but not every device could be reached: send the same frame again",
            std::time::Duration::from_secs(1),
        ));
    }
    Ok(ServerFrame::ToDeviceSent {
        message_ids: messages.into_iter().map(|m| m.message_id).collect(),
    })
}

/// Deletes what the caller's device acknowledged.
pub async fn ack(ctx: &Context, caller: &ConnectionInfo, sequences: Vec<u64>) -> Result<()> {
    if sequences.is_empty() || sequences.len() > MAX_TO_DEVICE_ACKS {
        return Err(Error::invalid(format!(
            "sequences must hold 1 to {MAX_TO_DEVICE_ACKS} numbers"
        )));
    }
    ctx.store
        .ack_to_device(&caller.user_id, &caller.device_id, &sequences)
        .await?;
    Ok(())
}

/// The caller's device's queue as `to_device` frames, oldest first (for `auth` and `sync`).
pub async fn pending_frames(ctx: &Context, caller: &ConnectionInfo) -> Result<Vec<ServerFrame>> {
    let items = ctx
        .store
        .pending_to_device(&caller.user_id, &caller.device_id, MAX_PENDING_TO_DEVICE)
        .await?;
    Ok(frames(items))
}

/// `items` in `to_device` frames, each under the frame budget.
fn frames(items: Vec<ToDeviceItem>) -> Vec<ServerFrame> {
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
