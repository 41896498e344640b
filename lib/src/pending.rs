//! What a device has not received yet, and how many messages its user has not read, computed
//! from MongoDB alone.
//!
//! `auth` and `sync` answer from here, so a crash, a lost event or an empty Redis changes nothing
//! a user sees. For every conversation of the user, the device gets the messages above a floor:
//!
//! 1. the number the client says it has (`sync`'s `since`), when it names the conversation;
//! 2. else the device's watermark in MongoDB (advanced by its `delivery_ack`s and
//!    `read_receipt`s, see [`crate::store::DeliveryStore`]);
//! 3. else, for a device that has never received anything in that conversation, the user's read
//!    marker: **a new device gets what its user has not read**; read history is paged through
//!    the HTTP API (`GET /v1/conversations/{id}/messages`).
//!
//! History the user cleared ("delete for me") is never delivered again, whatever the floor. The
//! answer is ordered by conversation, then sequence number, and capped ([`Pending::has_more`]:
//! the client syncs again from what it got). Unread counts come from the same documents as the
//! HTTP API's (`MemberState::unread`), so the two always agree.
//!
//! Cost: three MongoDB round trips (the user's conversations, the device's watermarks, the
//! messages), whatever the number of conversations.

use std::collections::{BTreeMap, HashMap};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::StoredMessage;

/// What a device is owed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    /// Messages the user has not read, over all their conversations.
    pub unread_count: u64,
    /// Messages to deliver, grouped by conversation, ascending within each.
    pub messages: BTreeMap<String, Vec<StoredMessage>>,
    /// More messages wait than were returned: ask again from what was received.
    pub has_more: bool,
}

/// Computes what `device_id` of `user_id` has not received (at most `limit` messages), given
/// what the client says it has (`since`: conversation -> last sequence number seen).
///
/// `since` may only name the user's conversations: any other is `forbidden`, whether it exists
/// or not.
pub async fn pending(
    ctx: &Context,
    user_id: &str,
    device_id: &str,
    since: &BTreeMap<String, u64>,
    limit: usize,
) -> Result<Pending> {
    let conversations = ctx.store.conversations_of(user_id).await?;
    if let Some(stranger) = since.keys().find(|id| {
        !conversations
            .iter()
            .any(|c| &c.conversation.conversation_id == *id)
    }) {
        return Err(Error::forbidden(format!(
            "you are not a participant of conversation {stranger}"
        )));
    }
    let cursors: HashMap<String, u64> = ctx.store.cursors(user_id, device_id).await?;
    let mut unread_count = 0;
    let mut floors = Vec::with_capacity(conversations.len());
    for mc in &conversations {
        let id = &mc.conversation.conversation_id;
        unread_count += mc.state.unread(&mc.conversation, user_id);
        let read = mc
            .conversation
            .read_up_to
            .get(user_id)
            .copied()
            .unwrap_or(0);
        let floor = since
            .get(id)
            .or_else(|| cursors.get(id))
            .copied()
            .unwrap_or(read)
            .max(mc.state.cleared_up_to);
        floors.push((id.clone(), floor));
    }
    let mut found = ctx.store.messages_after(&floors, limit + 1).await?;
    let has_more = found.len() > limit;
    found.truncate(limit);
    let mut messages: BTreeMap<String, Vec<StoredMessage>> = BTreeMap::new();
    for m in found {
        messages
            .entry(m.conversation_id.clone())
            .or_default()
            .push(m);
    }
    Ok(Pending {
        unread_count,
        messages,
        has_more,
    })
}
