//! `$connect`: authenticate the WebSocket upgrade and register the connection.
//!
//! The JWT comes from `?token=` (browsers cannot set headers on a WebSocket upgrade) or from
//! `Authorization: Bearer`. A bad or expired token rejects the upgrade with 401 and a reason; a
//! valid token for another user than `?user_id=` with 403. A connection without any token is
//! let in unauthenticated: it must send `auth` first (the seeds' flow), and the message function
//! refuses everything else until then. Nothing can be posted to a connection during `$connect`,
//! so this function only records state: the connection (one of possibly many devices of the
//! user) and presence online, announced with `presence.changed` when it is the user's first.

#![warn(missing_docs)]

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use messaging::context::Context;
use messaging::delivery::publish_presence;
use messaging::protocol::PresenceStatus;
use messaging::realtime::ConnectionInfo;
use messaging::telemetry::hashed_id;
use messaging::websocket::{bearer_token, connection_id, error_response, ok, query};
use messaging::{Error, Result};

/// Handles one `$connect` event.
pub async fn handle(
    ctx: &Context,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    match connect(ctx, &event).await {
        Ok(()) => ok(),
        Err(e) => {
            if e.is_server_fault() {
                tracing::error!(error = %e, "connect failed");
            } else {
                tracing::info!(code = ?e.code(), "connect refused");
            }
            error_response(&e)
        }
    }
}

async fn connect(ctx: &Context, event: &ApiGatewayWebsocketProxyRequest) -> Result<()> {
    let connection_id = connection_id(event)?;
    let Some(token) = bearer_token(event) else {
        tracing::info!(
            connection_id,
            "unauthenticated connection; awaiting auth frame"
        );
        return Ok(());
    };
    let claims = ctx.jwt.verify(token)?;
    if let Some(claimed) = query(event, "user_id")
        && claimed != claims.sub
    {
        return Err(Error::forbidden("user_id does not match the token"));
    }
    let device_id = query(event, "device_id")
        .map(str::to_string)
        .or(claims.device_id.clone())
        .unwrap_or_else(|| "default".into());
    register(
        ctx,
        connection_id,
        &claims.sub,
        &device_id,
        event.request_context.connected_at,
    )
    .await
}

/// Records an authenticated connection and announces the user online if it is their first.
/// Shared with the message function's `auth` frame.
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
        messaging::clock::now_ms()
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
