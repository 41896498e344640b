//! Conversation lookups on the hot path, cached in Redis.
//!
//! Every frame that names a conversation needs its participants (membership checks, fan-out,
//! agent routing). Reading them from MongoDB each time would cost a round trip per message; the
//! routing fields (kind, participants, admins, agent) are cached in Redis for five minutes
//! instead, and every change to them must call [`changed`]. Fields that move with every
//! message (last sequence number, preview, read markers) are never served from the cache: read
//! the store for those.

use std::time::Duration;

use crate::context::Context;
use crate::error::Result;
use crate::model::Conversation;

/// How long routing fields stay cached without a change.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

fn cache_name(conversation_id: &str) -> String {
    format!("conversation:{conversation_id}")
}

/// The conversation's routing fields (cached); its per-message fields are reset to defaults.
pub async fn routing(ctx: &Context, conversation_id: &str) -> Result<Option<Conversation>> {
    let name = cache_name(conversation_id);
    if let Some(json) = ctx.realtime.cache_get(&name).await?
        && let Ok(conversation) = serde_json::from_str::<Conversation>(&json)
    {
        return Ok(Some(conversation));
    }
    let Some(mut conversation) = ctx.store.conversation(conversation_id).await? else {
        return Ok(None);
    };
    conversation.last_sequence_number = 0;
    conversation.last_message = None;
    conversation.last_message_at = None;
    conversation.read_up_to.clear();
    if let Ok(json) = serde_json::to_string(&conversation) {
        ctx.realtime.cache_put(&name, &json, CACHE_TTL).await?;
    }
    Ok(Some(conversation))
}

/// Call after changing a conversation's participants, admins, agent or kind (or deleting it).
pub async fn changed(ctx: &Context, conversation_id: &str) -> Result<()> {
    ctx.realtime
        .cache_delete(&cache_name(conversation_id))
        .await
}
