//! Connection migration: telling a client to move to a new connection before its current one
//! ends, so that no connection is ever cut unannounced.
//!
//! Two things end a connection the client did not ask to end. A gateway replica that shuts down
//! (rolling update, scale-down) sends `migration` itself to every connection it holds (the
//! local stack's gateway, `drain`). And API Gateway cuts every connection after 2 hours: for
//! that, [`sweep`] runs on a schedule (AWS: EventBridge Scheduler every minute, CloudEvent
//! [`SWEEP_EVENT`] to the store function; the local stack: every second) and tells every
//! connection that connected more than `connection_max_age - migration_notice` ago to move,
//! with the time of the cut as its deadline. Connections are found through a sorted set by
//! `connected_at` that registration fills (so it is rebuilt with the connections themselves
//! when Redis comes back empty: each live connection registers again on its next frame, with
//! API Gateway's own `connectedAt`).
//!
//! The client opens its new connection, syncs, then closes the old one (make-before-break, see
//! the client library); while both are open both receive, and sequence numbers drop repeats.
//! No `session_token` is sent: only the api function holds the signing key, and a client whose
//! access token expired refreshes it (`POST /v1/auth/refresh`) before reconnecting.

use futures::StreamExt;

use crate::context::Context;
use crate::error::Result;
use crate::fanout::PostOutcome;
use crate::protocol::{MigrationPayload, MigrationReason, ServerFrame};

/// CloudEvent type of the scheduled lifetime sweep.
pub const SWEEP_EVENT: &str = "messaging.connections.sweep";

/// Connections told per round trip to Redis.
const BATCH: usize = 500;
/// Posts in flight at once.
const CONCURRENT_POSTS: usize = 32;

/// The `migration` frame for a connection the server closes at `deadline` (ms since the epoch).
pub fn frame(new_endpoint: &str, reason: MigrationReason, deadline: i64) -> ServerFrame {
    ServerFrame::Migration {
        payload: MigrationPayload {
            new_endpoint: new_endpoint.to_string(),
            session_token: None,
            reason,
            deadline,
        },
    }
}

/// Tells every connection nearing its maximum lifetime to migrate; returns how many took the
/// frame. A connection that is gone (410) is forgotten, as everywhere.
pub async fn sweep(ctx: &Context, now_ms: i64) -> Result<usize> {
    let max_age = ctx.settings.connection_max_age.as_millis() as i64;
    let notice = (ctx.settings.migration_notice.as_millis() as i64).min(max_age);
    let cutoff = now_ms - (max_age - notice);
    let mut told = 0;
    let mut retry = Vec::new();
    loop {
        let due = ctx
            .realtime
            .take_connections_older_than(cutoff, BATCH)
            .await?;
        let batch = due.len();
        let outcomes: Vec<(String, i64, Result<PostOutcome>)> = futures::stream::iter(due)
            .map(|(connection_id, connected_at)| async move {
                let deadline = (connected_at + max_age).max(now_ms);
                let frame = frame(
                    &ctx.settings.websocket_url,
                    MigrationReason::Lifetime,
                    deadline,
                );
                let outcome = crate::fanout::post(ctx, &connection_id, &frame).await;
                (connection_id, connected_at, outcome)
            })
            .buffer_unordered(CONCURRENT_POSTS)
            .collect()
            .await;
        for (connection_id, connected_at, outcome) in outcomes {
            match outcome {
                Ok(PostOutcome::Delivered) => told += 1,
                Ok(PostOutcome::Gone) => {}
                // Not told (throttled, a network failure, the prune after a 410 failed): the
                // next sweep tries again while the connection has time left.
                Ok(PostOutcome::Failed) | Err(_) => {
                    if connected_at + max_age > now_ms {
                        retry.push((connection_id, connected_at));
                    }
                }
            }
        }
        if batch < BATCH {
            break;
        }
    }
    // Put back after the loop, or this sweep would take them again at once.
    for (connection_id, connected_at) in retry {
        if let Err(e) = ctx
            .realtime
            .track_connection_age(&connection_id, connected_at)
            .await
        {
            tracing::warn!(connection_id, error = %e, "migration notice not requeued");
        }
    }
    if told > 0 {
        tracing::info!(told, "connections near their lifetime told to migrate");
    }
    Ok(told)
}
