//! `heartbeat`: keeps the connection's and the user's presence records alive, answered with
//! `heartbeat_ack` and the server's clock. With an authorizer identity the refresh rides on the
//! frame's one Redis round trip (`frame_budget`), and the answer is the route response, so an
//! idle connection costs one round trip per heartbeat and no management-API post.

use messaging::Result;
use messaging::context::Context;
use messaging::protocol::ServerFrame;
use messaging::realtime::ConnectionInfo;

/// The answer to a heartbeat. `refreshed`: the frame's budget round trip already refreshed the
/// connection's and the presence TTLs (authorizer identity); otherwise they are refreshed here.
pub async fn heartbeat(
    ctx: &Context,
    caller: &ConnectionInfo,
    refreshed: bool,
) -> Result<ServerFrame> {
    let now = messaging::clock::now_ms();
    // Presence is soft state: a heartbeat is answered even when it cannot be refreshed.
    if !refreshed && let Err(e) = ctx.realtime.touch(caller, now).await {
        tracing::warn!(error = %e, "heartbeat: presence not refreshed");
    }
    Ok(ServerFrame::HeartbeatAck { server_time: now })
}
