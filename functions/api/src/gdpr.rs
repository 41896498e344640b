//! Personal data: the export of everything stored about the caller, and the erasure of their
//! account.
//!
//! Erasure keeps other people's conversations whole: the user leaves every group (members see a
//! system message that an account was deleted), messages they sent stay with their sequence
//! numbers but are attributed to a fresh random `deleted-user-…` id that nothing links to the
//! person (also in their 1:1 conversations and in system messages that named them), and their
//! receipts and read markers go. Everything else is deleted: profile, password, refresh tokens,
//! push devices, pending codes, agent conversations with their messages, and the Redis state
//! (inbox, presence, connection records, rate-limit counters), and their live WebSocket
//! connections are closed. Dead letters (kept 30 days for operators) are not searched.

use messaging::model::ConversationKind;
use messaging::telemetry::hashed_id;
use messaging::{Error, Result};
use serde_json::json;

use crate::Api;
use crate::groups::leave_group;
use crate::views::{
    DeviceView, ErrorBody, ExportArchive, ExportConversation, MediaRecord, MessageView, Profile,
    SessionView, ms, wire_name,
};
use axum::extract::State;
use messaging::http::{Caller, Reply};

/// Prefix of the ids that replace erased users.
pub const DELETED_USER_PREFIX: &str = "deleted-user-";

/// Everything stored about the caller, as one JSON document.
#[utoipa::path(
    operation_id = "exportMe",
    get, path = "/v1/me/export", tag = "profile", security(("bearer" = [])),
    responses(
        (status = 200, description = "The archive", body = ExportArchive),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "The account no longer exists", body = ErrorBody),
    )
)]
pub(crate) async fn export_me(State(ref api): State<Api>, caller: Caller) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let data = api
        .ctx
        .store
        .user_data(user_id)
        .await?
        .ok_or_else(|| Error::not_found("the account no longer exists"))?;
    let conversations = data
        .conversations
        .iter()
        .map(|mc| {
            let c = &mc.conversation;
            ExportConversation {
                conversation_id: c.conversation_id.clone(),
                kind: wire_name(&c.kind),
                participants: c.participants.clone(),
                role: if c.admins.iter().any(|a| a == user_id) {
                    "admin".into()
                } else {
                    "member".into()
                },
                name: c.name.clone(),
                description: c.description.clone(),
                agent_id: c.agent_id.clone(),
                created_at: ms(c.created_at),
                read_up_to: c.read_up_to.get(user_id).copied().unwrap_or(0),
                pinned: mc.state.pinned,
                archived: mc.state.archived,
                deleted: mc.state.deleted,
                cleared_up_to: mc.state.cleared_up_to,
            }
        })
        .collect();
    Reply::ok(&ExportArchive {
        format: "messaging-export/1".into(),
        exported_at: messaging::clock::now_ms(),
        profile: Profile::from(&data.user),
        has_password: data.has_password,
        sessions: data.sessions.iter().map(SessionView::from).collect(),
        devices: data.devices.iter().map(DeviceView::from).collect(),
        conversations,
        messages_sent: data.messages.iter().map(MessageView::from).collect(),
        media: data.media.iter().map(MediaRecord::from).collect(),
    })
}

/// Delete the caller's account and personal data (see the module docs for what stays).
#[utoipa::path(
    operation_id = "deleteMe",
    delete, path = "/v1/me", tag = "profile", security(("bearer" = [])),
    responses(
        (status = 204, description = "Erased; the access token is useless from now on"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 404, description = "The account no longer exists", body = ErrorBody),
    )
)]
pub(crate) async fn delete_me(State(ref api): State<Api>, caller: Caller) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let store = &api.ctx.store;
    if store.user(user_id).await?.is_none() {
        return Err(Error::not_found("the account no longer exists"));
    }
    let tombstone = format!("{DELETED_USER_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let memberships = store.conversations_of(user_id).await?;
    // Their conversations' cached routing names them: drop it once they are gone.
    let touched: Vec<String> = memberships
        .iter()
        .map(|mc| mc.conversation.conversation_id.clone())
        .collect();
    for mc in memberships {
        if mc.conversation.kind == ConversationKind::Group {
            leave_group(
                api,
                &mc.conversation.conversation_id,
                user_id,
                json!({"event": "account_deleted", "user": tombstone}),
            )
            .await?;
        }
    }
    let erasure = store.erase_user(user_id, &tombstone).await?;
    for conversation_id in &touched {
        messaging::conversations::changed(&api.ctx, conversation_id).await?;
    }
    let connections = api.ctx.realtime.forget_user(user_id).await?;
    for connection_id in &connections {
        if let Err(e) = api.ctx.gateway.close(connection_id).await {
            tracing::info!(connection_id, error = %e, "closing an erased user's connection failed");
        }
    }
    tracing::info!(
        user = %hashed_id(user_id),
        conversations_deleted = erasure.conversations_deleted,
        conversations_anonymised = erasure.conversations_anonymised,
        messages_anonymised = erasure.messages_anonymised,
        messages_deleted = erasure.messages_deleted,
        connections_closed = connections.len(),
        "account erased"
    );
    Reply::no_content()
}
