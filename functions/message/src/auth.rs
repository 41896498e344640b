//! `auth`: authenticate a connection opened without a token (the seeds' flow), or confirm the
//! identity of one opened with a token, then deliver what is pending.
//!
//! A failed `auth` is answered with the seeds' `auth_error` frame. A connection may
//! authenticate again (after Redis lost its record, its frames get `unauthenticated`), but never
//! as someone else than its authorizer identity or earlier `auth`.

use messaging::context::Context;
use messaging::error::ErrorCode;
use messaging::identity::{DEFAULT_DEVICE, Identity};
use messaging::protocol::{AuthPayload, ServerFrame};
use messaging::realtime::ConnectionInfo;
use messaging::{Error, Result};

/// Handles an `auth` frame of `connection_id` (whose authorizer identity, if any, is `identity`).
pub async fn auth(
    ctx: &Context,
    connection_id: &str,
    connected_at: i64,
    identity: Option<&Identity>,
    payload: AuthPayload,
) -> Result<Option<ServerFrame>> {
    let claims = match ctx.jwt.verify(&payload.auth_token) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::info!(connection_id, code = ?e.code(), "auth refused");
            return Ok(Some(ServerFrame::AuthError {
                error: e.public_message(),
                code: Some(e.code()),
            }));
        }
    };
    if let Some(claimed) = &payload.user_id
        && claimed != &claims.sub
    {
        return Ok(Some(ServerFrame::AuthError {
            error: "user_id does not match the token".into(),
            code: Some(ErrorCode::Forbidden),
        }));
    }
    if identity.is_some_and(|i| i.user_id != claims.sub) {
        return Err(Error::forbidden(
            "this connection is authenticated as another user",
        ));
    }
    if let (Some(asked), Some(bound)) = (&payload.device_id, &claims.device_id)
        && asked != bound
    {
        // A token issued to a device authenticates that device only.
        return Ok(Some(ServerFrame::AuthError {
            error: format!("this token belongs to device {bound}"),
            code: Some(ErrorCode::Forbidden),
        }));
    }
    let device_id = payload
        .device_id
        .or(claims.device_id.clone())
        .or(identity.map(|i| i.device_id.clone()))
        .unwrap_or_else(|| DEFAULT_DEVICE.into());
    messaging::ids::check("device_id", &device_id)?;
    match ctx.realtime.connection(connection_id).await? {
        Some(c) if c.user_id != claims.sub => {
            return Err(Error::forbidden(
                "this connection is authenticated as another user",
            ));
        }
        Some(_) => {}
        None => {
            // API Gateway's `connectedAt`, so the lifetime sweep knows the connection's age.
            messaging::connections::register(
                ctx,
                connection_id,
                &claims.sub,
                &device_id,
                connected_at,
            )
            .await?
        }
    }
    let caller = ConnectionInfo {
        connection_id: connection_id.to_string(),
        user_id: claims.sub,
        device_id,
        connected_at: 0,
    };
    ctx.realtime
        .rate_limit(
            "frames",
            &caller.user_id,
            ctx.settings.frame_limit,
            messaging::clock::now_ms(),
        )
        .await?
        .check()?;
    crate::sync::deliver_pending(ctx, &caller, Default::default()).await
}
