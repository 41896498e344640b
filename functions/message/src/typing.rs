//! `typing`: forwarded to the other participants' devices (never to an agent), kept in Redis
//! with a short expiry, never stored.

use messaging::Result;
use messaging::context::Context;
use messaging::conversations::membership;
use messaging::fanout::send_to_user;
use messaging::protocol::{ServerFrame, TypingPayload, TypingState};
use messaging::realtime::ConnectionInfo;

/// Handles a `typing` frame.
pub async fn typing(
    ctx: &Context,
    caller: &ConnectionInfo,
    conversation_id: &str,
    state: TypingState,
) -> Result<()> {
    let conversation = membership(ctx, &caller.user_id, conversation_id).await?;
    let now = messaging::clock::now_ms();
    match state {
        TypingState::Start => {
            let until = now + messaging::keys::TYPING_TTL.as_millis() as i64;
            ctx.realtime
                .set_typing(conversation_id, &caller.user_id, until)
                .await?
        }
        TypingState::Stop => {
            ctx.realtime
                .clear_typing(conversation_id, &caller.user_id)
                .await?
        }
    }
    let frame = ServerFrame::Typing {
        payload: TypingPayload {
            conversation_id: conversation_id.to_string(),
            user_id: caller.user_id.clone(),
            state,
        },
    };
    for recipient in conversation.recipients_of(&caller.user_id) {
        if conversation.agent_id.as_deref() == Some(recipient) {
            continue;
        }
        send_to_user(ctx, recipient, &frame, None).await?;
    }
    Ok(())
}
