//! `presence`: the online state and last-seen time of people one shares a conversation with
//! (and nobody else's).

use messaging::context::Context;
use messaging::protocol::{PresencePayload, ServerFrame};
use messaging::realtime::ConnectionInfo;
use messaging::{Error, Result};

use crate::answer;

/// Most users in one `presence` query.
pub const MAX_PRESENCE_IDS: usize = 100;

/// Answers a `presence` frame, one `presence` frame per user asked about (all of them, or an
/// error and none when one is not someone the caller shares a conversation with).
pub async fn presence(
    ctx: &Context,
    caller: &ConnectionInfo,
    user_ids: Vec<String>,
) -> Result<Option<ServerFrame>> {
    if user_ids.is_empty() || user_ids.len() > MAX_PRESENCE_IDS {
        return Err(Error::invalid(format!(
            "user_ids must name 1 to {MAX_PRESENCE_IDS} users"
        )));
    }
    let mut frames = Vec::with_capacity(user_ids.len());
    for user_id in user_ids {
        // Presence is visible only to people one shares a conversation with.
        if !messaging::conversations::is_contact(ctx, &caller.user_id, &user_id).await? {
            return Err(Error::forbidden(format!(
                "you share no conversation with {user_id}"
            )));
        }
        let p = ctx.realtime.presence(&user_id).await?;
        frames.push(ServerFrame::Presence {
            payload: PresencePayload {
                user_id,
                status: p.status,
                last_seen: p.last_seen,
            },
        });
    }
    answer(ctx, caller, frames).await
}
