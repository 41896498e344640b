//! `$connect`: register the WebSocket connection, and the authorizer that runs before it.
//!
//! On AWS a Lambda REQUEST authorizer ([`authorizer`], binary `authorizer`) verifies the JWT from
//! `?token=` (browsers cannot set headers on a WebSocket upgrade) or `Authorization: Bearer`
//! before this function runs; API Gateway refuses a bad token with 401 and a token for another
//! user than `?user_id=` with 403, and passes the identity to this and every later route in
//! `requestContext.authorizer`. Deployed without an authorizer, this function verifies the token
//! itself with the same rules (401 or 403 with a reason).
//!
//! A connection without any token is let in unauthenticated: it must send `auth` first (the
//! seeds' flow), and the message function refuses everything else until then. Nothing can be
//! posted to a connection during `$connect`, so this function only records state: the connection
//! (one of possibly many devices of the user) and presence online.

#![warn(missing_docs)]

pub mod authorizer;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use messaging::context::Context;
use messaging::identity::{DEFAULT_DEVICE, Identity};
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
    // Only a connection's own upgrade is a CONNECT; a frame that names the route is not.
    if event.request_context.event_type.as_deref() != Some("CONNECT") {
        return Err(Error::invalid("$connect handles CONNECT events only"));
    }
    let identity = match Identity::of_event(event) {
        Some(identity) => identity,
        None => match bearer_token(event) {
            None => {
                tracing::info!(
                    connection_id,
                    "unauthenticated connection; awaiting auth frame"
                );
                return Ok(());
            }
            Some(token) => {
                // No authorizer in front (e.g. a gateway configured without one): same rules.
                let claims = ctx.jwt.verify(token)?;
                if let Some(claimed) = query(event, "user_id")
                    && claimed != claims.sub
                {
                    return Err(Error::forbidden("user_id does not match the token"));
                }
                let device_id = query(event, "device_id")
                    .map(str::to_string)
                    .or(claims.device_id.clone())
                    .unwrap_or_else(|| DEFAULT_DEVICE.into());
                messaging::ids::check("device_id", &device_id)?;
                Identity {
                    device_id,
                    user_id: claims.sub,
                }
            }
        },
    };
    messaging::connections::register(
        ctx,
        connection_id,
        &identity.user_id,
        &identity.device_id,
        event.request_context.connected_at,
    )
    .await
}
