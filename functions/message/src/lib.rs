//! `$default` and the typed routes: every frame a client sends after connecting.
//!
//! One handler serves all client frames (API Gateway routes them by `type`; the local stack and
//! AWS may send any of them here). Each frame is parsed, attributed to its sender, checked
//! against the sender's rate limits, and answered. The answer (`message_ack`, `heartbeat_ack`,
//! `presence`, an `error`, the last frame of a `sync`) is the integration's response body, which
//! API Gateway's route response (`$default`, two-way routes) sends to the client: no
//! management-API post, no SigV4 signing, and an answer even when the management API is
//! unreachable. Frames before the last of a multi-frame answer are posted through the
//! management API first, so the client sees them in order. Errors never drop the connection:
//! the client gets an `error` frame with a stable code and, for sends, its
//! `client_message_id`. Every frame is answered within `Settings::frame_timeout` (a result, or
//! `unavailable` with `retry_after`), never silence.
//!
//! Who sent a frame: the identity the `$connect` authorizer gave the connection, carried in
//! `requestContext.authorizer` (no Redis lookup; a connection Redis lost is registered again by
//! its next frame), or for connections that authenticated with an `auth` frame, their record in
//! Redis (`unauthenticated` when it is gone: the client sends `auth` again).
//!
//! One module per frame: [`auth`], [`send`] (`message`), [`receipts`] (`delivery_ack`,
//! `read_receipt`), [`heartbeat`], [`retransmit`], [`typing`], [`sync`], [`presence`],
//! [`cancel`], [`to_device`] (`to_device`, `to_device_ack`).

#![warn(missing_docs)]

pub mod auth;
pub mod cancel;
pub mod heartbeat;
pub mod presence;
pub mod receipts;
pub mod retransmit;
pub mod send;
pub mod sync;
pub mod to_device;
pub mod typing;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use messaging::context::Context;
use messaging::error::ErrorCode;
use messaging::fanout::post;
use messaging::identity::Identity;
use messaging::protocol::{
    ClientFrame, MAX_FRAME_BYTES, MessageStatus, ServerFrame, parse_client_frame,
};
use messaging::realtime::{ConnectionInfo, SendingTo};
use messaging::websocket::{connection_id, ok};
use messaging::{Error, Result};

/// Handles one frame. Always answers 200, with the frame that answers the client as the body
/// (the route response; empty when a frame has no answer, such as `delivery_ack`).
pub async fn handle(
    ctx: &Context,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Ok(connection_id) = connection_id(&event) else {
        return messaging::websocket::response(400, "missing connectionId");
    };
    let connection_id = connection_id.to_string();
    let body = match (&event.body, event.is_base64_encoded) {
        // API Gateway only base64-encodes binary frames, which the protocol does not use.
        (_, true) | (None, _) => "",
        (Some(body), false) => body.as_str(),
    };
    let limit = ctx.settings.frame_timeout;
    let outcome =
        match tokio::time::timeout(limit, on_frame(ctx, &event, &connection_id, body)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::timeout("frame", limit)),
        };
    let answer = match outcome {
        Ok(answer) => answer,
        Err(e) => {
            if e.is_server_fault() {
                tracing::error!(connection_id, error = %e, "frame failed");
            } else {
                tracing::info!(connection_id, code = ?e.code(), "frame refused");
            }
            // Only an error needs it: a frame is parsed a second time only when refused.
            Some(e.to_frame(peek_client_message_id(body)))
        }
    };
    let mut response = ok();
    if let Some(frame) = answer {
        match serde_json::to_string(&frame) {
            Ok(text) => response.body = Some(Body::Text(text)),
            Err(e) => tracing::error!(connection_id, error = %e, "answer not serialized"),
        }
    }
    response
}

/// The `client_message_id` of a frame, if it has one, even when the frame is otherwise invalid.
fn peek_client_message_id(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("client_message_id")?
        .as_str()
        .map(str::to_string)
}

async fn on_frame(
    ctx: &Context,
    event: &ApiGatewayWebsocketProxyRequest,
    connection_id: &str,
    body: &str,
) -> Result<Option<ServerFrame>> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(Error::client(
            ErrorCode::PayloadTooLarge,
            "frame exceeds 128 KB",
        ));
    }
    let frame = parse_client_frame(body)?;
    let identity = Identity::of_event(event);
    if let ClientFrame::Auth { payload } = frame {
        return auth::auth(
            ctx,
            connection_id,
            event.request_context.connected_at,
            identity.as_ref(),
            payload,
        )
        .await;
    }
    // A group member's `delivery_ack` notes its receipt in the frame's one round trip.
    let receipt = match (&frame, &identity) {
        (
            ClientFrame::DeliveryAck {
                conversation_id: Some(conversation_id),
                sequence_number: Some(sequence_number),
                ..
            },
            Some(identity),
        ) => receipts::group_note(ctx, &identity.user_id, conversation_id, *sequence_number).await,
        _ => None,
    };
    let Caller {
        info: caller,
        refreshed,
        receipt,
        conversation,
    } = caller(
        ctx,
        connection_id,
        event.request_context.connected_at,
        identity,
        &frame,
        receipt.as_ref(),
    )
    .await?;
    match frame {
        ClientFrame::Auth { .. } => unreachable!("handled above"),
        ClientFrame::Message {
            client_message_id,
            idempotency_key,
            payload,
        } => send::send(
            ctx,
            &caller,
            client_message_id,
            idempotency_key,
            payload,
            conversation,
        )
        .await
        .map(Some),
        ClientFrame::DeliveryAck {
            message_id,
            conversation_id,
            sequence_number,
            ..
        } => receipts::delivery_ack(
            ctx,
            &caller,
            message_id,
            conversation_id,
            sequence_number,
            receipt,
        )
        .await
        .map(|()| None),
        ClientFrame::ReadReceipt { message_ids, .. } => {
            receipts::receipts(ctx, &caller, message_ids, MessageStatus::Read)
                .await
                .map(|()| None)
        }
        ClientFrame::Heartbeat { .. } => heartbeat::heartbeat(ctx, &caller, refreshed)
            .await
            .map(Some),
        ClientFrame::Retransmit {
            conversation_id,
            from_sequence,
            to_sequence,
        } => {
            retransmit::retransmit(ctx, &caller, &conversation_id, from_sequence, to_sequence).await
        }
        ClientFrame::Typing {
            conversation_id,
            state,
        } => typing::typing(ctx, &caller, &conversation_id, state)
            .await
            .map(|()| None),
        ClientFrame::Sync { since } => sync::deliver_pending(ctx, &caller, since).await,
        ClientFrame::Presence { user_ids } => presence::presence(ctx, &caller, user_ids).await,
        ClientFrame::Cancel {
            conversation_id,
            run_id,
        } => cancel::cancel(ctx, &caller, &conversation_id, &run_id)
            .await
            .map(|()| None),
        ClientFrame::ToDevice { messages } => {
            to_device::to_device(ctx, &caller, messages).await.map(Some)
        }
        ClientFrame::ToDeviceAck { sequences } => {
            to_device::ack(ctx, &caller, sequences).await.map(|()| None)
        }
    }
}

/// Who sent a frame, and what its one Redis round trip did besides.
struct Caller {
    /// The sender's connection.
    info: ConnectionInfo,
    /// The round trip refreshed the connection's and the user's presence (a heartbeat: one
    /// round trip and its answer).
    refreshed: bool,
    /// The round trip noted a group receipt: whose turn it is to send it.
    receipt: Option<messaging::group_receipts::ReceiptTurn>,
    /// What the round trip read about a `message` frame's conversation: its cached routing
    /// fields and last-number hint (`None`: not read; see
    /// `messaging::conversations::membership_given` and `MessageStore::insert_message`).
    conversation: Option<SendingTo>,
}

/// Who sent a frame, with the frame counted against their budgets (one Redis round trip that
/// also refreshes presence for a heartbeat, notes `receipt` and, for a `message`, reads its
/// conversation's cached routing fields and last-number hint: with the conversation cached, a
/// send to a person makes no other Redis round trip before its ack, and with the hint fresh, one
/// MongoDB round trip, whichever process stored the conversation's last message).
///
/// With an authorizer identity, Redis is only asked for the budgets and whether the connection
/// is still registered (if not, it is registered again with API Gateway's `connectedAt`, so
/// fan-out finds it and the lifetime sweep knows its age); a Redis outage then lets the frame
/// through unmetered rather than refusing everyone. Without one, the connection's record in
/// Redis is the identity.
async fn caller(
    ctx: &Context,
    connection_id: &str,
    connected_at: i64,
    identity: Option<Identity>,
    frame: &ClientFrame,
    receipt: Option<&messaging::group_receipts::ReceiptNote>,
) -> Result<Caller> {
    let mut budgets = vec![("frames", ctx.settings.frame_limit)];
    if matches!(frame, ClientFrame::Message { .. }) {
        budgets.push(("send", ctx.settings.send_limit));
    }
    let now = messaging::clock::now_ms();
    let Some(identity) = identity else {
        let connection = ctx
            .realtime
            .connection(connection_id)
            .await?
            .ok_or_else(|| {
                Error::client(
                    ErrorCode::Unauthenticated,
                    "authenticate first: connect with ?token= or send an `auth` frame",
                )
            })?;
        for decision in ctx
            .realtime
            .rate_limits(&connection.user_id, &budgets, now)
            .await?
        {
            decision.check()?;
        }
        return Ok(Caller {
            info: connection,
            refreshed: false,
            receipt: None,
            conversation: None,
        });
    };
    let caller = ConnectionInfo {
        connection_id: connection_id.to_string(),
        user_id: identity.user_id,
        device_id: identity.device_id,
        connected_at,
    };
    let heartbeat = matches!(frame, ClientFrame::Heartbeat { .. });
    let sending_to = match frame {
        ClientFrame::Message { payload, .. } => Some(payload.conversation_id.as_str()),
        _ => None,
    };
    let mut refreshed = false;
    let mut noted = None;
    let mut conversation = None;
    match ctx
        .realtime
        .frame_budget(&caller, &budgets, heartbeat, receipt, sending_to, now)
        .await
    {
        Ok(budget) => {
            refreshed = heartbeat;
            noted = budget.receipt;
            conversation = budget.sending_to;
            for decision in budget.decisions {
                decision.check()?;
            }
            if !budget.registered {
                // Redis lost this connection (restarted empty, evicted): the frame says who it
                // is, so fan-out can find it again; and what the fan-out could not bring it
                // meanwhile is delivered now, from MongoDB.
                messaging::connections::register(
                    ctx,
                    connection_id,
                    &caller.user_id,
                    &caller.device_id,
                    connected_at,
                )
                .await?;
                if let Err(e) = sync::deliver_missed(ctx, &caller).await {
                    tracing::warn!(error = %e, "missed messages not delivered after re-registration");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate limits unavailable: frame let through unmetered");
        }
    }
    Ok(Caller {
        info: caller,
        refreshed,
        receipt: noted,
        conversation,
    })
}

/// Answers with `frames`, in order: every frame but the last is posted to the caller's
/// connection through the management API, the last is returned to travel as the route response
/// (after the posts, so the client sees them in order).
pub(crate) async fn answer(
    ctx: &Context,
    caller: &ConnectionInfo,
    mut frames: Vec<ServerFrame>,
) -> Result<Option<ServerFrame>> {
    let last = frames.pop();
    for frame in &frames {
        post(ctx, &caller.connection_id, frame).await?;
    }
    Ok(last)
}
