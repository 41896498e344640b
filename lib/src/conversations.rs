//! Conversation lookups on the hot path, cached in Redis, the one membership check, and the
//! one contact rule ([`is_contact`]).
//!
//! Every frame that names a conversation needs its participants (membership checks, fan-out,
//! agent routing). Reading them from MongoDB each time would cost a round trip per message; the
//! routing fields (kind, participants, admins, agent) are cached in Redis for five minutes
//! instead, and every change to them must call [`changed`]. Fields that move with every
//! message (last sequence number, preview, read markers) are never served from the cache: read
//! the store for those. The cache is only an accelerator: when Redis fails, the lookup reads
//! MongoDB, so sends keep working through a Redis outage.

use std::collections::HashMap;
use std::time::Duration;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::Conversation;

/// How long routing fields stay cached without a change.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// The name a conversation's routing fields are cached under (`RealtimeState::cache_get`), for
/// reading them in a round trip made anyway and passing them to [`membership_given`].
pub fn cache_name(conversation_id: &str) -> String {
    format!("conversation:{conversation_id}")
}

/// The conversation's routing fields (cached); its per-message fields are reset to defaults.
pub async fn routing(ctx: &Context, conversation_id: &str) -> Result<Option<Conversation>> {
    let cached = match ctx.realtime.cache_get(&cache_name(conversation_id)).await {
        Ok(cached) => cached,
        Err(e) => {
            tracing::warn!(error = %e, "conversation cache unavailable: reading MongoDB");
            None
        }
    };
    routing_given(ctx, conversation_id, cached).await
}

/// [`routing`] with the cache already read: `cached` is what it held.
async fn routing_given(
    ctx: &Context,
    conversation_id: &str,
    cached: Option<String>,
) -> Result<Option<Conversation>> {
    if let Some(conversation) =
        cached.and_then(|json| serde_json::from_str::<Conversation>(&json).ok())
    {
        return Ok(Some(conversation));
    }
    let name = cache_name(conversation_id);
    let Some(mut conversation) = ctx.store.conversation(conversation_id).await? else {
        return Ok(None);
    };
    conversation.last_sequence_number = 0;
    conversation.last_message = None;
    conversation.last_message_at = None;
    conversation.read_up_to.clear();
    if let Ok(json) = serde_json::to_string(&conversation)
        && let Err(e) = ctx.realtime.cache_put(&name, &json, CACHE_TTL).await
    {
        tracing::warn!(error = %e, "conversation cache unavailable");
    }
    Ok(Some(conversation))
}

/// The conversation, if `user_id` takes part in it: `not_found` when it does not exist,
/// `forbidden` when they are not a participant. The one membership check of every function.
pub async fn membership(
    ctx: &Context,
    user_id: &str,
    conversation_id: &str,
) -> Result<Conversation> {
    participant(
        routing(ctx, conversation_id).await?,
        user_id,
        conversation_id,
    )
}

/// [`membership`] with the cache already read (`cached`: what it held under
/// [`cache_name`], e.g. read in a frame's one round trip).
pub async fn membership_given(
    ctx: &Context,
    user_id: &str,
    conversation_id: &str,
    cached: Option<String>,
) -> Result<Conversation> {
    let conversation = routing_given(ctx, conversation_id, cached).await?;
    participant(conversation, user_id, conversation_id)
}

/// The membership rule: the conversation exists and `user_id` takes part in it.
fn participant(
    conversation: Option<Conversation>,
    user_id: &str,
    conversation_id: &str,
) -> Result<Conversation> {
    let conversation = conversation.ok_or_else(|| {
        Error::not_found(format!("conversation {conversation_id} does not exist"))
    })?;
    if !conversation.has_participant(user_id) {
        return Err(Error::forbidden(
            "you are not a participant of this conversation",
        ));
    }
    Ok(conversation)
}

/// How long [`RoutingMemo`] trusts what it holds.
pub const MEMO_TTL: Duration = Duration::from_secs(5);
/// Most conversations one [`RoutingMemo`] holds (it starts over when full).
const MEMO_CAPACITY: usize = 10_000;

/// Routing fields remembered in the process for a few seconds, for receipts only: a group
/// message is acknowledged by every member within milliseconds, and each acknowledgement would
/// otherwise read the same cached conversation from Redis. Only a positive answer is trusted
/// (a member added a moment ago is looked up again), and only where a stale one is harmless:
/// a member removed less than [`MEMO_TTL`] ago may still acknowledge what they had received.
/// Sends, typing and everything else use [`membership`].
#[derive(Default)]
pub struct RoutingMemo {
    entries: std::sync::Mutex<HashMap<String, (std::time::Instant, Conversation)>>,
}

impl RoutingMemo {
    fn get(&self, conversation_id: &str) -> Option<Conversation> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(conversation_id)
            .filter(|(at, _)| at.elapsed() < MEMO_TTL)
            .map(|(_, c)| c.clone())
    }

    fn put(&self, conversation: &Conversation) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MEMO_CAPACITY {
            entries.clear();
        }
        entries.insert(
            conversation.conversation_id.clone(),
            (std::time::Instant::now(), conversation.clone()),
        );
    }
}

/// [`membership`] for receipts, answered from the process's [`RoutingMemo`] when it can.
pub async fn membership_for_receipts(
    ctx: &Context,
    user_id: &str,
    conversation_id: &str,
) -> Result<Conversation> {
    if let Some(conversation) = ctx.routing_memo.get(conversation_id)
        && conversation.has_participant(user_id)
    {
        return Ok(conversation);
    }
    let conversation = membership(ctx, user_id, conversation_id).await?;
    ctx.routing_memo.put(&conversation);
    Ok(conversation)
}

/// Whether `me` may see `other`'s profile, presence and keys, and send their devices key
/// material: `other` is `me`, or shares a conversation with `me` (a person or an agent). The one
/// rule for all four; each caller answers a stranger with its own error.
pub async fn is_contact(ctx: &Context, me: &str, other: &str) -> Result<bool> {
    Ok(me == other || ctx.store.share_conversation(me, other).await?)
}

/// Call after changing a conversation's participants, admins, agent or kind (or deleting it).
pub async fn changed(ctx: &Context, conversation_id: &str) -> Result<()> {
    ctx.realtime
        .cache_delete(&cache_name(conversation_id))
        .await
}
