//! `sync` (and the end of `auth`): `auth_success`, then everything the device has not received,
//! computed from MongoDB (see `messaging::pending`), after the device's queued `to_device` messages, in sequence order per conversation, in
//! `messages` frames under the frame limit. When more is waiting than one answer carries, the
//! last frame says `has_more` and the client syncs again from what it got. Then the agent runs
//! still going in the user's conversations: each run's state and its answer so far (a device
//! that connects mid-stream gets the text so far, then the rest as it comes).

use std::collections::BTreeMap;

use messaging::Result;
use messaging::context::Context;
use messaging::fanout::batch_frames;
use messaging::model::StoredMessage;
use messaging::protocol::{AuthSuccessPayload, DeliveredMessage, ServerFrame};
use messaging::realtime::ConnectionInfo;

use crate::answer;
use messaging::fanout::post;

/// Delivers what the caller's device has not acknowledged, without `auth_success`: for a
/// connection registered again after Redis lost it (the fan-out could not find it meanwhile).
pub async fn deliver_missed(ctx: &Context, caller: &ConnectionInfo) -> Result<()> {
    let pending = messaging::pending::pending(
        ctx,
        &caller.user_id,
        &caller.device_id,
        &BTreeMap::new(),
        ctx.settings.max_sync_messages,
    )
    .await?;
    let keys = crate::to_device::pending_frames(ctx, caller).await?;
    for frame in keys.iter().chain(&batches(&pending)) {
        post(ctx, &caller.connection_id, frame).await?;
    }
    Ok(())
}

/// Answers `sync` (`since`: what the client has, per conversation) and completes `auth`:
/// `auth_success`, the pending messages in batches, the runs in progress.
pub async fn deliver_pending(
    ctx: &Context,
    caller: &ConnectionInfo,
    since: BTreeMap<String, u64>,
) -> Result<Option<ServerFrame>> {
    let pending = messaging::pending::pending(
        ctx,
        &caller.user_id,
        &caller.device_id,
        &since,
        ctx.settings.max_sync_messages,
    )
    .await?;
    let mut frames = vec![ServerFrame::AuthSuccess {
        payload: AuthSuccessPayload {
            user_id: Some(caller.user_id.clone()),
            session_id: caller.connection_id.clone(),
            server_time: messaging::clock::now_ms(),
            unread_count: pending.unread_count,
        },
    }];
    // Key material first: the messages that follow may need it.
    frames.extend(crate::to_device::pending_frames(ctx, caller).await?);
    frames.extend(batches(&pending));
    frames.extend(messaging::runs::catch_up_frames(ctx, &caller.user_id).await?);
    answer(ctx, caller, frames).await
}

/// `messages` frames for what is pending, in order; `has_more` on the last when more waits.
fn batches(pending: &messaging::pending::Pending) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    for (conversation_id, messages) in &pending.messages {
        let delivered: Vec<DeliveredMessage> =
            messages.iter().map(StoredMessage::to_delivered).collect();
        frames.extend(batch_frames(conversation_id, delivered));
    }
    if pending.has_more
        && let Some(ServerFrame::Messages { payload }) = frames.last_mut()
    {
        payload.has_more = true;
    }
    frames
}
