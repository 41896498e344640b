//! Connections: registering a device's connection, forgetting it, and the presence that follows.
//!
//! A connection is registered by `$connect` (identity from the authorizer or the token), by an
//! `auth` frame, or again by any frame of a connection Redis has lost (the identity rides on every
//! frame, see [`crate::identity`]). It is forgotten by `$disconnect` or when the gateway answers
//! 410 for it. A user's first connection makes them online, their last one offline (with
//! `last_seen` saved to MongoDB).

use crate::context::Context;
use crate::error::Result;
use crate::model::PresenceChanged;
use crate::model::event_types;
use crate::protocol::PresenceStatus;
use crate::realtime::ConnectionInfo;
use crate::telemetry::hashed_id;

/// Records an authenticated connection and announces the user online if it is their first.
pub async fn register(
    ctx: &Context,
    connection_id: &str,
    user_id: &str,
    device_id: &str,
    connected_at: i64,
) -> Result<()> {
    let connected_at = if connected_at > 0 {
        connected_at
    } else {
        crate::clock::now_ms()
    };
    let connections = ctx
        .realtime
        .register_connection(&ConnectionInfo {
            connection_id: connection_id.to_string(),
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            connected_at,
        })
        .await?;
    tracing::info!(connection_id, user = %hashed_id(user_id), "connection registered");
    // Atomic with the registration: of two devices connecting at once, only one announces.
    if connections == 1 {
        publish_presence(ctx, user_id, PresenceStatus::Online, connected_at).await;
    }
    Ok(())
}

/// Removes a connection the gateway says is gone, exactly as a `$disconnect` would.
pub async fn forget_stale(ctx: &Context, connection_id: &str) -> Result<()> {
    forget_connection(ctx, connection_id).await?;
    tracing::info!(connection_id, "stale connection pruned after 410");
    Ok(())
}

/// Forgets one connection (`$disconnect`, or a 410 from the gateway). When it was its user's
/// last, the user goes offline: presence in Redis, `last_seen` in MongoDB, `presence.changed`.
/// Returns what was removed (`None` when the connection was unknown: never authenticated, or
/// already forgotten).
pub async fn forget_connection(
    ctx: &Context,
    connection_id: &str,
) -> Result<Option<crate::realtime::RemovedConnection>> {
    let Some(removed) = ctx.realtime.remove_connection(connection_id).await? else {
        return Ok(None);
    };
    if removed.remaining == 0 {
        let now = crate::clock::now_ms();
        ctx.realtime.set_offline(&removed.user_id, now).await?;
        ctx.store
            .set_last_seen(&removed.user_id, mongodb::bson::DateTime::from_millis(now))
            .await?;
        publish_presence(ctx, &removed.user_id, PresenceStatus::Offline, now).await;
    }
    Ok(Some(removed))
}

/// Announces a user's presence change with `presence.changed`. Best effort: presence is soft
/// state, so a lost announcement is logged, never an error for the caller.
pub async fn publish_presence(ctx: &Context, user_id: &str, status: PresenceStatus, at_ms: i64) {
    let data = PresenceChanged {
        user_id: user_id.to_string(),
        status,
        last_seen: at_ms,
    };
    let published = match crate::events::new_event(
        event_types::PRESENCE_CHANGED,
        &ctx.settings.event_source,
        &data,
        &[],
    ) {
        Ok(event) => ctx.events.publish(event).await,
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        tracing::warn!(error = %e, "presence.changed not published");
    }
}
