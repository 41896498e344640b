//! Messages the server writes itself (`system`): what happened in a conversation ("the agent did
//! not answer", "alice added bob"), in the clear, never anything a participant wrote.

use crate::context::Context;
use crate::error::Result;
use crate::model::{Conversation, StoredMessage};

/// Sender id of messages the server writes itself.
pub const SYSTEM_SENDER: &str = "system";

/// Stores a `system` message in a conversation (once per `key`) and fans it out like any other.
/// System messages are written by the server in the clear: they tell people what happened
/// ("the agent did not answer"), never anything a participant wrote.
pub async fn post_system_message(
    ctx: &Context,
    conversation: &Conversation,
    key: &str,
    text: &str,
) -> Result<StoredMessage> {
    let inserted = ctx
        .store
        .insert_message(crate::model::NewMessage {
            idempotency_key: key.to_string(),
            conversation_id: conversation.conversation_id.clone(),
            sender_id: SYSTEM_SENDER.to_string(),
            receiver_id: None,
            body: crate::protocol::MessageBody::of(crate::protocol::MessageType::System, text),
            client_timestamp: crate::clock::now_ms(),
            last_sequence_hint: None,
        })
        .await?;
    crate::outbox::announce_stored(ctx, &inserted.message, None, None).await?;
    Ok(inserted.message)
}
