//! `$disconnect`: forget the connection; when it was the user's last, the user goes offline.
//!
//! Only the closing connection is removed (the user's other devices stay). When none remain,
//! presence turns offline in Redis, `last_seen` is saved to MongoDB, and `presence.changed` is
//! published. API Gateway delivers `$disconnect` at most once and not always (a crashed gateway
//! node skips it), which is why a 410 on a later post prunes a connection as well.

#![warn(missing_docs)]

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use messaging::Result;
use messaging::connections::forget_connection;
use messaging::context::Context;
use messaging::telemetry::hashed_id;
use messaging::websocket::{connection_id, error_response, ok};

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
    // Only the connection's end is a DISCONNECT; a frame that names the route must not
    // unregister a live connection.
    if event.request_context.event_type.as_deref() != Some("DISCONNECT") {
        return Err(messaging::Error::invalid(
            "$disconnect handles DISCONNECT events only",
        ));
    }
    // `None`: never authenticated, or already pruned after a 410.
    if let Some(removed) = forget_connection(ctx, connection_id).await? {
        tracing::info!(
            connection_id,
            user = %hashed_id(&removed.user_id),
            remaining = removed.remaining,
            status = event.request_context.disconnect_status_code,
            "connection closed"
        );
    }
    Ok(())
}
