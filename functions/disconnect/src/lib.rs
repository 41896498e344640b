//! `$disconnect`: forget the connection; when it was the user's last, the user goes offline.
//!
//! Only the closing connection is removed (the user's other devices stay). When none remain,
//! presence turns offline in Redis, `last_seen` is saved to MongoDB, and `presence.changed` is
//! published. API Gateway delivers `$disconnect` at most once and not always (a crashed gateway
//! node skips it), which is why a 410 on a later post prunes a connection as well.

#![warn(missing_docs)]

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use messaging::Result;
use messaging::context::Context;
use messaging::model::{PresenceChanged, event_types};
use messaging::protocol::PresenceStatus;
use messaging::telemetry::hashed_id;
use messaging::websocket::{connection_id, error_response, ok};
use mongodb::bson::DateTime;

/// Handles one `$disconnect` event.
pub async fn handle(
    ctx: &Context,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    match disconnect(ctx, &event).await {
        Ok(()) => ok(),
        Err(e) => {
            tracing::error!(error = %e, "disconnect failed");
            error_response(&e)
        }
    }
}

async fn disconnect(ctx: &Context, event: &ApiGatewayWebsocketProxyRequest) -> Result<()> {
    let connection_id = connection_id(event)?;
    let Some(removed) = ctx.realtime.remove_connection(connection_id).await? else {
        // Never authenticated, or already pruned after a 410.
        return Ok(());
    };
    tracing::info!(
        connection_id,
        user = %hashed_id(&removed.user_id),
        remaining = removed.remaining,
        status = event.request_context.disconnect_status_code,
        "connection closed"
    );
    if removed.remaining > 0 {
        return Ok(());
    }
    let now = messaging::clock::now_ms();
    ctx.realtime.set_offline(&removed.user_id, now).await?;
    ctx.store
        .set_last_seen(&removed.user_id, DateTime::from_millis(now))
        .await?;
    let event = messaging::events::new_event(
        event_types::PRESENCE_CHANGED,
        &ctx.settings.event_source,
        &PresenceChanged {
            user_id: removed.user_id.clone(),
            status: PresenceStatus::Offline,
            last_seen: now,
        },
        &[],
    )?;
    if let Err(e) = ctx.events.publish(event).await {
        tracing::warn!(error = %e, "presence.changed not published");
    }
    Ok(())
}
