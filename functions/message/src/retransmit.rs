//! `retransmit`: a client found a gap and asks for a range again. The answer comes from MongoDB,
//! in order, in `messages` frames under the frame limit; numbers in the range that have no
//! message (deleted by retention or a conversation delete) are listed as `missing` so the client
//! stops waiting for them. History the user cleared is never sent again (it is `missing` to
//! them).

use messaging::context::Context;
use messaging::fanout::batch_frames;
use messaging::model::StoredMessage;
use messaging::protocol::ServerFrame;
use messaging::realtime::ConnectionInfo;
use messaging::{Error, Result};

use crate::answer;

/// Answers a `retransmit` of `from..=to` in `conversation_id`.
pub async fn retransmit(
    ctx: &Context,
    caller: &ConnectionInfo,
    conversation_id: &str,
    from: u64,
    to: u64,
) -> Result<Option<ServerFrame>> {
    if from == 0 || from > to {
        return Err(Error::invalid("need 1 <= from_sequence <= to_sequence"));
    }
    let cap = ctx.settings.max_retransmit_range;
    if to - from >= cap {
        return Err(Error::invalid(format!(
            "range of {} messages exceeds the limit of {cap}; ask in smaller ranges",
            (to - from).saturating_add(1)
        )));
    }
    messaging::conversations::membership(ctx, &caller.user_id, conversation_id).await?;
    let member = ctx
        .store
        .member_conversation(conversation_id, &caller.user_id)
        .await?
        .ok_or_else(|| Error::forbidden("you are not a participant of this conversation"))?;
    // Cleared history ("delete for me") is gone for this user on every path: reported missing.
    let asked_from = from;
    let from = from.max(member.state.cleared_up_to.saturating_add(1));
    let highest = ctx.store.last_sequence(conversation_id).await?;
    let messages = if from <= to {
        ctx.store
            .messages_in_range(conversation_id, from, to, cap as usize)
            .await?
    } else {
        Vec::new()
    };
    let present: std::collections::HashSet<u64> =
        messages.iter().map(|m| m.sequence_number).collect();
    // Numbers at or below the conversation's highest that have no message will never get one.
    let missing: Vec<u64> = (asked_from..=to.min(highest))
        .filter(|s| !present.contains(s))
        .collect();
    let delivered = messages.iter().map(StoredMessage::to_delivered).collect();
    let mut frames = batch_frames(conversation_id, delivered);
    if let Some(ServerFrame::Messages { payload }) = frames.last_mut() {
        payload.missing = missing;
    }
    answer(ctx, caller, frames).await
}
