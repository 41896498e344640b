//! Which agent answers a message (seeds' Agent Gateway): the conversation's own agent, else an
//! online agent of the registry with the conversation's capability, else the default agent.

use crate::context::Context;
use crate::error::Result;
use crate::model::{Conversation, ConversationKind};
use crate::system_messages::SYSTEM_SENDER;

/// The agent that should answer a message `sender_id` wrote in `conversation`, if any
/// (seeds' Agent Gateway): the conversation's own agent; else an online agent of the registry
/// with the conversation's capability; else the configured default agent. Never the sender
/// itself, and never for a server-written message.
pub async fn route_agent(
    ctx: &Context,
    conversation: &Conversation,
    sender_id: &str,
) -> Result<Option<String>> {
    if conversation.kind != ConversationKind::Agent || sender_id == SYSTEM_SENDER {
        return Ok(None);
    }
    let chosen = match (&conversation.agent_id, &conversation.agent_capability) {
        (Some(agent), _) => Some(agent.clone()),
        (None, Some(capability)) => {
            let online_since = mongodb::bson::DateTime::from_millis(
                crate::clock::now_ms() - ctx.settings.agent_offline_after.as_millis() as i64,
            );
            match ctx
                .store
                .agent_with_capability(capability, online_since)
                .await?
            {
                Some(agent) => Some(agent.agent_id),
                None => ctx.settings.default_agent.clone(),
            }
        }
        (None, None) => ctx.settings.default_agent.clone(),
    };
    Ok(chosen.filter(|a| a != sender_id))
}
