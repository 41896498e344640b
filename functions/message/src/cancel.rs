//! `cancel`: a participant stops an agent's run. The run ends `cancelled` on every device, the
//! agent gets `agent.cancel`, and whatever it sends for the run afterwards is dropped (see
//! `messaging::runs`).

use messaging::Result;
use messaging::context::Context;
use messaging::conversations::membership;
use messaging::realtime::ConnectionInfo;
use messaging::runs::{self, RunKey};

/// Handles a `cancel` frame: members only; `not_found` for a run the conversation does not
/// have, `conflict` for a run already over. Its answer is the `agent_run` frame.
pub async fn cancel(
    ctx: &Context,
    caller: &ConnectionInfo,
    conversation_id: &str,
    run_id: &str,
) -> Result<()> {
    membership(ctx, &caller.user_id, conversation_id).await?;
    runs::cancel(ctx, &caller.user_id, &RunKey::new(conversation_id, run_id)).await
}
