//! `heartbeat`: keeps the connection's and the user's presence records alive, answered with
//! `heartbeat_ack` and the server's clock.

use messaging::Result;
use messaging::context::Context;
use messaging::protocol::ServerFrame;
use messaging::realtime::ConnectionInfo;

use crate::reply;

/// Answers a heartbeat.
pub async fn heartbeat(ctx: &Context, caller: &ConnectionInfo) -> Result<()> {
    let now = messaging::clock::now_ms();
    // Presence is soft state: a heartbeat is answered even when it cannot be refreshed.
    if let Err(e) = ctx.realtime.touch(caller, now).await {
        tracing::warn!(error = %e, "heartbeat: presence not refreshed");
    }
    reply(ctx, caller, &ServerFrame::HeartbeatAck { server_time: now }).await
}
