//! `to_device` and `to_device_ack`: key material between devices (end-to-end encryption), over
//! the caller's connection. What is stored, delivered and deleted is `messaging::to_device`'s
//! (the key directory's HTTP routes serve agents the same way): here the connection names the
//! sending device, and `to_device_sent` answers once every message is stored.

use messaging::Result;
use messaging::context::Context;
use messaging::protocol::{OutgoingToDevice, ServerFrame};
use messaging::realtime::ConnectionInfo;

/// Stores and delivers a `to_device` frame's messages; answers `to_device_sent`.
pub async fn to_device(
    ctx: &Context,
    caller: &ConnectionInfo,
    messages: Vec<OutgoingToDevice>,
) -> Result<ServerFrame> {
    messaging::to_device::send(ctx, &caller.user_id, &caller.device_id, &messages).await?;
    Ok(ServerFrame::ToDeviceSent {
        message_ids: messages.into_iter().map(|m| m.message_id).collect(),
    })
}

/// Deletes what the caller's device acknowledged.
pub async fn ack(ctx: &Context, caller: &ConnectionInfo, sequences: Vec<u64>) -> Result<()> {
    messaging::to_device::ack(ctx, &caller.user_id, &caller.device_id, &sequences).await
}

/// The caller's device's queue as `to_device` frames, oldest first (for `auth` and `sync`).
pub async fn pending_frames(ctx: &Context, caller: &ConnectionInfo) -> Result<Vec<ServerFrame>> {
    // What lies beyond the first page comes with the next `sync`, once these are acknowledged.
    let (items, _more) =
        messaging::to_device::pending(ctx, &caller.user_id, &caller.device_id).await?;
    Ok(messaging::to_device::frames(items))
}
