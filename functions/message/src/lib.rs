//! `$default` and the typed routes: every frame a client sends after connecting.
//!
//! One handler serves all client frames (API Gateway routes them by `type`; the local stack and
//! AWS may send any of them here). Each frame is parsed, checked against the connection's
//! authentication and the user's rate limits, and answered with frames posted back through the
//! management API. Errors never drop the connection: the client gets an `error` frame with a
//! stable code and, for sends, its `client_message_id`.
//!
//! Sending (`message`) is where the guarantees live: validate, check membership, store exactly
//! once with an atomically allocated sequence number (see `messaging::store`), publish
//! `messaging.message.received`, and only then `message_ack`. A retried send republishes the event
//! (consumers dedupe) and answers with the original ack, so a crash anywhere after the insert
//! still ends with the message delivered once the client retries.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use messaging::context::Context;
use messaging::delivery::{batch_frames, post, send_to_user};
use messaging::error::ErrorCode;
use messaging::model::{Conversation, ConversationKind, NewMessage, StoredMessage};
use messaging::protocol::{
    AuthPayload, AuthSuccessPayload, ClientFrame, DeliveredMessage, DeliveryReceiptPayload,
    MAX_FRAME_BYTES, MessageAckPayload, MessageStatus, MessageType, OutgoingMessage,
    PresencePayload, ReadReceiptPayload, ServerFrame, TypingPayload, TypingState,
    parse_client_frame,
};
use messaging::realtime::{AgentWait, ConnectionInfo, RateLimit};
use messaging::telemetry::hashed_id;
use messaging::websocket::{connection_id, ok};
use messaging::{Error, Result};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Most message ids in one `read_receipt`.
pub const MAX_RECEIPT_IDS: usize = 500;
/// Most users in one `presence` query.
pub const MAX_PRESENCE_IDS: usize = 100;

/// Handles one frame. Always answers 200: the outcome travels as frames to the client.
pub async fn handle(
    ctx: &Context,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Ok(connection_id) = connection_id(&event) else {
        return messaging::websocket::response(400, "missing connectionId");
    };
    let body = event.body.as_deref().unwrap_or_default();
    let body = if event.is_base64_encoded {
        // API Gateway only base64-encodes binary frames, which the protocol does not use.
        ""
    } else {
        body
    };
    let client_message_id = peek_client_message_id(body);
    if let Err(e) = on_frame(ctx, connection_id, body).await {
        if e.is_server_fault() {
            tracing::error!(connection_id, error = %e, "frame failed");
        } else {
            tracing::info!(connection_id, code = ?e.code(), "frame refused");
        }
        // The connection may be gone already; nothing more to do then.
        let _ = post(ctx, connection_id, &e.to_frame(client_message_id)).await;
    }
    ok()
}

/// The `client_message_id` of a frame, if it has one, even when the frame is otherwise invalid.
fn peek_client_message_id(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("client_message_id")?
        .as_str()
        .map(str::to_string)
}

async fn on_frame(ctx: &Context, connection_id: &str, body: &str) -> Result<()> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(Error::client(
            ErrorCode::PayloadTooLarge,
            "frame exceeds 128 KB",
        ));
    }
    let frame = parse_client_frame(body)?;
    let connection = ctx.realtime.connection(connection_id).await?;
    let connection = match (frame, connection) {
        (ClientFrame::Auth { payload }, _) => return auth(ctx, connection_id, payload).await,
        (_, None) => {
            return Err(Error::client(
                ErrorCode::Unauthenticated,
                "authenticate first: connect with ?token= or send an `auth` frame",
            ));
        }
        (frame, Some(connection)) => (frame, connection),
    };
    let (frame, conn) = connection;
    // One round trip for every budget this frame counts against.
    let mut budgets = vec![("frames", ctx.settings.frame_limit)];
    if matches!(frame, ClientFrame::Message { .. }) {
        budgets.push(("send", ctx.settings.send_limit));
    }
    let decisions = ctx
        .realtime
        .rate_limits(&conn.user_id, &budgets, messaging::clock::now_ms())
        .await?;
    for decision in decisions {
        decision.check()?;
    }
    match frame {
        ClientFrame::Auth { .. } => unreachable!("handled above"),
        ClientFrame::Message {
            client_message_id,
            idempotency_key,
            payload,
        } => send(ctx, &conn, client_message_id, idempotency_key, payload).await,
        ClientFrame::DeliveryAck { message_id, .. } => {
            receipts(ctx, &conn, vec![message_id], MessageStatus::Delivered).await
        }
        ClientFrame::ReadReceipt { message_ids, .. } => {
            receipts(ctx, &conn, message_ids, MessageStatus::Read).await
        }
        ClientFrame::Heartbeat { .. } => {
            let now = messaging::clock::now_ms();
            ctx.realtime.touch(&conn, now).await?;
            reply(ctx, &conn, &ServerFrame::HeartbeatAck { server_time: now }).await
        }
        ClientFrame::Retransmit {
            conversation_id,
            from_sequence,
            to_sequence,
        } => retransmit(ctx, &conn, &conversation_id, from_sequence, to_sequence).await,
        ClientFrame::Typing {
            conversation_id,
            state,
        } => typing(ctx, &conn, &conversation_id, state).await,
        ClientFrame::Sync { since } => sync(ctx, &conn, since).await,
        ClientFrame::Presence { user_ids } => presence(ctx, &conn, user_ids).await,
    }
}

async fn reply(ctx: &Context, conn: &ConnectionInfo, frame: &ServerFrame) -> Result<()> {
    post(ctx, &conn.connection_id, frame).await.map(|_| ())
}

async fn limit(ctx: &Context, scope: &str, user_id: &str, limit: RateLimit) -> Result<()> {
    ctx.realtime
        .rate_limit(scope, user_id, limit, messaging::clock::now_ms())
        .await?
        .check()
        .map(|_| ())
}

/// A conversation the user takes part in; `not_found` / `forbidden` otherwise.
async fn membership(ctx: &Context, user_id: &str, conversation_id: &str) -> Result<Conversation> {
    let conversation = messaging::conversations::routing(ctx, conversation_id)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("conversation {conversation_id} does not exist"))
        })?;
    if !conversation.has_participant(user_id) {
        return Err(Error::forbidden(
            "you are not a participant of this conversation",
        ));
    }
    Ok(conversation)
}

async fn auth(ctx: &Context, connection_id: &str, payload: AuthPayload) -> Result<()> {
    let claims = ctx.jwt.verify(&payload.auth_token).inspect_err(|e| {
        tracing::info!(connection_id, code = ?e.code(), "auth refused");
    });
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            // The seeds answer a failed auth with `auth_error`.
            let frame = ServerFrame::AuthError {
                error: e.public_message(),
                code: Some(e.code()),
            };
            post(ctx, connection_id, &frame).await?;
            return Ok(());
        }
    };
    if let Some(claimed) = &payload.user_id
        && claimed != &claims.sub
    {
        let frame = ServerFrame::AuthError {
            error: "user_id does not match the token".into(),
            code: Some(ErrorCode::Forbidden),
        };
        post(ctx, connection_id, &frame).await?;
        return Ok(());
    }
    let device_id = payload
        .device_id
        .or(claims.device_id.clone())
        .unwrap_or_else(|| "default".into());
    let existing = ctx.realtime.connection(connection_id).await?;
    match existing {
        Some(c) if c.user_id != claims.sub => {
            return Err(Error::forbidden(
                "this connection is authenticated as another user",
            ));
        }
        Some(_) => {}
        None => {
            fn_connect::register(ctx, connection_id, &claims.sub, &device_id, 0).await?;
        }
    }
    let conn = ConnectionInfo {
        connection_id: connection_id.to_string(),
        user_id: claims.sub,
        device_id,
        connected_at: 0,
    };
    limit(ctx, "frames", &conn.user_id, ctx.settings.frame_limit).await?;
    deliver_pending(ctx, &conn, BTreeMap::new()).await
}

async fn sync(ctx: &Context, conn: &ConnectionInfo, since: BTreeMap<String, u64>) -> Result<()> {
    deliver_pending(ctx, conn, since).await
}

/// `auth_success`, then what the user has not received: for each conversation in `since`,
/// everything after the given sequence number; for the rest, the inbox. In sequence order per
/// conversation. The inbox keeps each id until the client's `delivery_ack`.
async fn deliver_pending(
    ctx: &Context,
    conn: &ConnectionInfo,
    since: BTreeMap<String, u64>,
) -> Result<()> {
    let cap = ctx.settings.max_sync_messages;
    let inbox_ids = ctx.realtime.inbox_peek(&conn.user_id, cap).await?;
    let unread = ctx.realtime.inbox_len(&conn.user_id).await?;
    reply(
        ctx,
        conn,
        &ServerFrame::AuthSuccess {
            payload: AuthSuccessPayload {
                user_id: Some(conn.user_id.clone()),
                session_id: conn.connection_id.clone(),
                server_time: messaging::clock::now_ms(),
                unread_count: unread,
            },
        },
    )
    .await?;

    let mut by_conversation: BTreeMap<String, Vec<StoredMessage>> = BTreeMap::new();
    for (conversation_id, last_seen) in &since {
        membership(ctx, &conn.user_id, conversation_id).await?;
        let messages = ctx
            .store
            .messages_in_range(conversation_id, last_seen + 1, u64::MAX >> 1, cap)
            .await?;
        by_conversation.insert(conversation_id.clone(), messages);
    }
    let from_inbox = ctx.store.messages_by_ids(&inbox_ids).await?;
    // Ids whose message no longer exists (retention expired) would stay in the inbox forever.
    let existing: std::collections::HashSet<&str> =
        from_inbox.iter().map(|m| m.message_id.as_str()).collect();
    let stale: Vec<String> = inbox_ids
        .iter()
        .filter(|id| !existing.contains(id.as_str()))
        .cloned()
        .collect();
    if !stale.is_empty() {
        ctx.realtime.inbox_remove(&conn.user_id, &stale).await?;
    }
    for message in from_inbox {
        // Conversations named in `since` were read by range already.
        if since.contains_key(&message.conversation_id) {
            continue;
        }
        by_conversation
            .entry(message.conversation_id.clone())
            .or_default()
            .push(message);
    }
    for (conversation_id, mut messages) in by_conversation {
        if messages.is_empty() {
            continue;
        }
        messages.sort_by_key(|m| m.sequence_number);
        messages.dedup_by_key(|m| m.sequence_number);
        let delivered: Vec<DeliveredMessage> =
            messages.iter().map(StoredMessage::to_delivered).collect();
        for frame in batch_frames(&conversation_id, delivered) {
            reply(ctx, conn, &frame).await?;
        }
    }
    Ok(())
}

fn validate(payload: &OutgoingMessage, idempotency_key: &str, max_content: usize) -> Result<()> {
    if idempotency_key.trim().is_empty() || idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Error::invalid(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    if payload.conversation_id.trim().is_empty() {
        return Err(Error::invalid("conversation_id is required"));
    }
    if payload.content.len() > max_content {
        return Err(Error::client(
            ErrorCode::PayloadTooLarge,
            format!("content exceeds {max_content} bytes"),
        ));
    }
    let kind = payload.message_type;
    if kind == MessageType::System {
        return Err(Error::invalid(
            "system messages are written by the server only",
        ));
    }
    if kind.is_media() && payload.media_url.as_deref().is_none_or(str::is_empty) {
        return Err(Error::invalid(format!(
            "{kind:?} messages need media_url (the media id from the presign API)"
        )));
    }
    if !kind.is_media() && payload.media_url.is_some() {
        return Err(Error::invalid("media_url is only for media messages"));
    }
    if kind == MessageType::Location {
        match &payload.location {
            Some(l)
                if (-90.0..=90.0).contains(&l.latitude)
                    && (-180.0..=180.0).contains(&l.longitude) => {}
            Some(_) => return Err(Error::invalid("location coordinates are out of range")),
            None if !payload.content.is_empty() => {} // coordinates inside the encrypted content
            None => return Err(Error::invalid("location messages need coordinates")),
        }
    }
    if kind == MessageType::Reaction && payload.reply_to_message_id.is_none() {
        return Err(Error::invalid(
            "reactions need reply_to_message_id (the message reacted to)",
        ));
    }
    if kind == MessageType::Text && payload.content.is_empty() && payload.forwarded_from.is_none() {
        return Err(Error::invalid("text messages need content"));
    }
    Ok(())
}

async fn send(
    ctx: &Context,
    conn: &ConnectionInfo,
    client_message_id: Option<String>,
    idempotency_key: String,
    payload: OutgoingMessage,
) -> Result<()> {
    validate(&payload, &idempotency_key, ctx.settings.max_content_bytes)?;
    let conversation = membership(ctx, &conn.user_id, &payload.conversation_id).await?;
    if payload.message_type.is_media()
        && let Some(media_id) = &payload.media_url
    {
        // `media_url` names an upload of this conversation that passed its checks.
        let media = ctx.store.media(media_id).await?;
        match media {
            Some(m)
                if m.conversation_id == payload.conversation_id
                    && m.state == messaging::model::MediaState::Ready => {}
            Some(m) if m.conversation_id == payload.conversation_id => {
                return Err(Error::invalid(
                    "the media is not ready: complete its upload first",
                ));
            }
            _ => {
                return Err(Error::invalid(
                    "media_url is not a media id of this conversation",
                ));
            }
        }
    }
    if let Some(reply_to) = &payload.reply_to_message_id {
        let target = ctx.store.message(reply_to).await?;
        if target.is_none_or(|m| m.conversation_id != payload.conversation_id) {
            return Err(Error::invalid(
                "reply_to_message_id is not a message of this conversation",
            ));
        }
    }
    if let Some(origin) = &payload.forwarded_from {
        membership(ctx, &conn.user_id, &origin.conversation_id)
            .await
            .map_err(|_| Error::forbidden("you cannot forward from that conversation"))?;
        let original = ctx.store.message(&origin.message_id).await?;
        if original.is_none_or(|m| m.conversation_id != origin.conversation_id) {
            return Err(Error::invalid(
                "forwarded_from does not name an existing message",
            ));
        }
    }
    let receiver_id = match conversation.kind {
        ConversationKind::Group => None,
        _ => conversation
            .recipients_of(&conn.user_id)
            .next()
            .map(str::to_string),
    };
    let inserted = ctx
        .store
        .insert_message(NewMessage {
            idempotency_key,
            conversation_id: payload.conversation_id.clone(),
            sender_id: conn.user_id.clone(),
            receiver_id,
            message_type: payload.message_type,
            content: payload.content,
            media_url: payload.media_url,
            reply_to_message_id: payload.reply_to_message_id,
            forwarded_from: payload.forwarded_from,
            location: payload.location,
            client_timestamp: payload.timestamp,
        })
        .await?;
    let message = &inserted.message;
    tracing::info!(
        user = %hashed_id(&conn.user_id),
        message_id = %message.message_id,
        sequence_number = message.sequence_number,
        duplicate = inserted.duplicate,
        "message stored"
    );
    let agent = messaging::delivery::route_agent(ctx, &conversation, &conn.user_id).await?;
    // Start waiting for the agent before it can possibly answer (the event goes out next).
    let mut unavailable_agent = None;
    if !inserted.duplicate
        && let Some(agent_id) = &agent
    {
        unavailable_agent = await_agent(ctx, &conversation, message, agent_id).await?;
    }
    messaging::delivery::publish_received(ctx, message, agent.as_deref()).await?;
    reply(
        ctx,
        conn,
        &ServerFrame::MessageAck {
            client_message_id,
            payload: MessageAckPayload {
                message_id: message.message_id.clone(),
                sequence_number: message.sequence_number,
                status: MessageStatus::Sent,
                timestamp: message.timestamp.timestamp_millis(),
            },
        },
    )
    .await?;
    if let Some(name) = unavailable_agent {
        messaging::delivery::post_system_message(
            ctx,
            &conversation,
            &format!("agent-unavailable/{}", message.message_id),
            &format!(
                "{name} is unavailable right now. Your message is saved and will be answered when it is back."
            ),
        )
        .await?;
    }
    Ok(())
}

/// The message goes to an agent (the broker routes it by the `agentid` extension): wait for its
/// answer, so that a silent agent leads to a timeout notice (see the agent-response function's
/// sweep). Returns the agent's name when it is offline, for the caller to tell the user.
async fn await_agent(
    ctx: &Context,
    conversation: &Conversation,
    message: &StoredMessage,
    agent_id: &str,
) -> Result<Option<String>> {
    let now = messaging::clock::now_ms();
    let agent = ctx.store.agent(agent_id).await?;
    let online = agent
        .as_ref()
        .and_then(|a| a.last_heartbeat_at)
        .is_some_and(|at| {
            now - at.timestamp_millis() <= ctx.settings.agent_offline_after.as_millis() as i64
        });
    if !online {
        return Ok(Some(
            agent
                .map(|a| a.name)
                .unwrap_or_else(|| agent_id.to_string()),
        ));
    }
    ctx.realtime
        .await_agent(
            &AgentWait {
                conversation_id: conversation.conversation_id.clone(),
                message_id: message.message_id.clone(),
                agent_id: agent_id.to_string(),
                user_id: message.sender_id.clone(),
            },
            now + ctx.settings.agent_timeout.as_millis() as i64,
        )
        .await?;
    Ok(None)
}

async fn receipts(
    ctx: &Context,
    conn: &ConnectionInfo,
    message_ids: Vec<String>,
    status: MessageStatus,
) -> Result<()> {
    if message_ids.is_empty() {
        return Err(Error::invalid("message_ids must not be empty"));
    }
    if message_ids.len() > MAX_RECEIPT_IDS {
        return Err(Error::invalid(format!(
            "at most {MAX_RECEIPT_IDS} message ids per receipt"
        )));
    }
    let mut message_ids = message_ids;
    message_ids.sort();
    message_ids.dedup();
    // Ids still in the user's inbox were addressed to them: that authorizes the receipt without
    // reading the messages (the common case costs no MongoDB read). The others (acknowledged
    // before, or received through sync or retransmit) are checked in full.
    let removed = ctx
        .realtime
        .inbox_remove(&conn.user_id, &message_ids)
        .await?;
    if removed < message_ids.len() as u64 {
        let messages = ctx.store.messages_by_ids(&message_ids).await?;
        if messages.len() != message_ids.len() {
            return Err(Error::not_found("some message ids do not exist"));
        }
        let mut checked = std::collections::HashSet::new();
        for m in &messages {
            if checked.insert(m.conversation_id.clone()) {
                membership(ctx, &conn.user_id, &m.conversation_id).await?;
            }
        }
    }
    let updated = ctx
        .store
        .record_receipts(&message_ids, &conn.user_id, status)
        .await?;
    if status == MessageStatus::Read {
        let mut highest: HashMap<&str, u64> = HashMap::new();
        for m in &updated {
            let h = highest.entry(m.conversation_id.as_str()).or_default();
            *h = (*h).max(m.sequence_number);
        }
        for (conversation_id, seq) in highest {
            ctx.store
                .advance_read_marker(conversation_id, &conn.user_id, seq)
                .await?;
        }
    }
    // Aggregate status: delivered (read) once every recipient has it.
    let mut conversations: HashMap<String, Option<Conversation>> = HashMap::new();
    let mut complete = Vec::new();
    let mut by_sender: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for m in &updated {
        if m.sender_id == conn.user_id || m.sender_id == messaging::delivery::SYSTEM_SENDER {
            continue;
        }
        if !conversations.contains_key(&m.conversation_id) {
            let c = messaging::conversations::routing(ctx, &m.conversation_id).await?;
            conversations.insert(m.conversation_id.clone(), c);
        }
        let recipients = conversations
            .get(&m.conversation_id)
            .and_then(Option::as_ref)
            .map(|c| c.participants.len().saturating_sub(1))
            .unwrap_or(1)
            .max(1);
        let count = match status {
            MessageStatus::Read => m.read_by.len(),
            _ => m.delivered_to.len(),
        };
        if count >= recipients && m.status < status {
            complete.push(m.message_id.clone());
        }
        by_sender
            .entry(m.sender_id.as_str())
            .or_default()
            .push(m.message_id.clone());
    }
    if !complete.is_empty() {
        // Moving to `read` also passes `delivered`: one update.
        ctx.store.advance_status(&complete, status).await?;
    }
    let now = messaging::clock::now_ms();
    for (sender, ids) in by_sender {
        let frame = match status {
            MessageStatus::Read => ServerFrame::ReadReceipt {
                payload: ReadReceiptPayload {
                    message_ids: ids,
                    read_by: conn.user_id.clone(),
                    timestamp: now,
                },
            },
            _ => ServerFrame::DeliveryAck {
                payload: DeliveryReceiptPayload {
                    message_ids: ids,
                    delivered_to: conn.user_id.clone(),
                    timestamp: now,
                },
            },
        };
        send_to_user(ctx, sender, &frame, None).await?;
    }
    Ok(())
}

async fn retransmit(
    ctx: &Context,
    conn: &ConnectionInfo,
    conversation_id: &str,
    from: u64,
    to: u64,
) -> Result<()> {
    if from == 0 || from > to {
        return Err(Error::invalid("need 1 <= from_sequence <= to_sequence"));
    }
    let cap = ctx.settings.max_retransmit_range;
    if to - from + 1 > cap {
        return Err(Error::invalid(format!(
            "range of {} messages exceeds the limit of {cap}; ask in smaller ranges",
            to - from + 1
        )));
    }
    membership(ctx, &conn.user_id, conversation_id).await?;
    // The highest sequence number moves with every message: read it from the store.
    let conversation = ctx
        .store
        .conversation(conversation_id)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("conversation {conversation_id} does not exist"))
        })?;
    let messages = ctx
        .store
        .messages_in_range(conversation_id, from, to, cap as usize)
        .await?;
    // Numbers at or below the conversation's highest that have no message will never get one.
    let present: std::collections::HashSet<u64> =
        messages.iter().map(|m| m.sequence_number).collect();
    let highest = conversation
        .last_sequence_number
        .max(messages.last().map(|m| m.sequence_number).unwrap_or(0));
    let missing: Vec<u64> = (from..=to.min(highest))
        .filter(|s| !present.contains(s))
        .collect();
    let delivered = messages.iter().map(StoredMessage::to_delivered).collect();
    let mut frames = batch_frames(conversation_id, delivered);
    if let Some(ServerFrame::Messages { payload }) = frames.last_mut() {
        payload.missing = missing;
    }
    for frame in frames {
        reply(ctx, conn, &frame).await?;
    }
    Ok(())
}

async fn typing(
    ctx: &Context,
    conn: &ConnectionInfo,
    conversation_id: &str,
    state: TypingState,
) -> Result<()> {
    let conversation = membership(ctx, &conn.user_id, conversation_id).await?;
    let now = messaging::clock::now_ms();
    match state {
        TypingState::Start => {
            let until = now + messaging::keys::TYPING_TTL.as_millis() as i64;
            ctx.realtime
                .set_typing(conversation_id, &conn.user_id, until)
                .await?
        }
        TypingState::Stop => {
            ctx.realtime
                .clear_typing(conversation_id, &conn.user_id)
                .await?
        }
    }
    let frame = ServerFrame::Typing {
        payload: TypingPayload {
            conversation_id: conversation_id.to_string(),
            user_id: conn.user_id.clone(),
            state,
        },
    };
    for recipient in conversation.recipients_of(&conn.user_id) {
        if conversation.agent_id.as_deref() == Some(recipient) {
            continue;
        }
        send_to_user(ctx, recipient, &frame, None).await?;
    }
    Ok(())
}

async fn presence(ctx: &Context, conn: &ConnectionInfo, user_ids: Vec<String>) -> Result<()> {
    if user_ids.is_empty() || user_ids.len() > MAX_PRESENCE_IDS {
        return Err(Error::invalid(format!(
            "user_ids must name 1 to {MAX_PRESENCE_IDS} users"
        )));
    }
    for user_id in user_ids {
        // Presence is visible only to people one shares a conversation with.
        if user_id != conn.user_id
            && !ctx
                .store
                .share_conversation(&conn.user_id, &user_id)
                .await?
        {
            return Err(Error::forbidden(format!(
                "you share no conversation with {user_id}"
            )));
        }
        let p = ctx.realtime.presence(&user_id).await?;
        reply(
            ctx,
            conn,
            &ServerFrame::Presence {
                payload: PresencePayload {
                    user_id,
                    status: p.status,
                    last_seen: p.last_seen,
                },
            },
        )
        .await?;
    }
    Ok(())
}
