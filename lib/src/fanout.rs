//! Getting frames to connections: one connection, every device of a user, batches under the
//! frame limit.
//!
//! Every function that talks to clients goes through here, so one rule holds everywhere: a post
//! that fails with 410 Gone removes exactly that connection and nothing else (guarantee 5), and
//! a frame too big for one WebSocket message is never attempted. Batches of stored messages are
//! split into `messages` frames that each stay under the 128 KB limit.

use futures::future::join_all;

use crate::context::Context;
use crate::error::Result;
use crate::gateway::GatewayError;
use crate::protocol::{DeliveredMessage, MAX_FRAME_BYTES, MessagesPayload, ServerFrame};

/// What happened to one frame sent to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// The gateway accepted it.
    Delivered,
    /// The connection was gone and has been forgotten.
    Gone,
    /// Another failure (throttled, network); the connection is kept.
    Failed,
}

/// Sends `frame` to one connection; a 410 forgets the connection.
pub async fn post(ctx: &Context, connection_id: &str, frame: &ServerFrame) -> Result<PostOutcome> {
    let body = frame.to_json();
    match ctx.gateway.post(connection_id, body.as_bytes()).await {
        Ok(()) => Ok(PostOutcome::Delivered),
        Err(GatewayError::Gone) => {
            crate::connections::forget_stale(ctx, connection_id).await?;
            Ok(PostOutcome::Gone)
        }
        Err(e) => {
            tracing::warn!(connection_id, error = %e, "post to connection failed");
            Ok(PostOutcome::Failed)
        }
    }
}

/// Sends `frame` to every live connection of `user_id` (except `except`), concurrently.
/// Returns how many connections took it.
pub async fn send_to_user(
    ctx: &Context,
    user_id: &str,
    frame: &ServerFrame,
    except: Option<&str>,
) -> Result<usize> {
    let connections = ctx.realtime.user_connections(user_id).await?;
    let targets: Vec<&String> = connections
        .iter()
        .filter(|c| Some(c.as_str()) != except)
        .collect();
    let outcomes = join_all(targets.iter().map(|c| post(ctx, c, frame))).await;
    let mut delivered = 0;
    for outcome in outcomes {
        if outcome? == PostOutcome::Delivered {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// Sends `frame` to every live connection of each of `user_ids` (but those `skip` names, given
/// the user's index and the connection), concurrently, with one round trip for all their
/// connections. Returns, per user in order, how many connections took it.
pub async fn send_to_users(
    ctx: &Context,
    user_ids: &[String],
    frame: &ServerFrame,
    skip: impl Fn(usize, &str) -> bool,
) -> Result<Vec<usize>> {
    send_each(ctx, user_ids, |user, connection| {
        (!skip(user, connection)).then_some(frame)
    })
    .await
}

/// Sends each of `user_ids` its own frame on every live connection (`frame_of(i, connection)`
/// for the `i`-th user's; `None`: nothing), concurrently, with one round trip for all their
/// connections. Returns, per user in order, how many connections took it.
pub async fn send_each<'a>(
    ctx: &Context,
    user_ids: &[String],
    frame_of: impl Fn(usize, &str) -> Option<&'a ServerFrame>,
) -> Result<Vec<usize>> {
    let connections = ctx.realtime.connections_of_users(user_ids).await?;
    send_to_connections(ctx, &connections, frame_of).await
}

/// [`send_each`] with the users' connections already read (per user, in order), e.g. in the
/// round trip that claimed a fan-out (`RealtimeState::claim_work_for_users`).
pub async fn send_to_connections<'a>(
    ctx: &Context,
    connections: &[Vec<String>],
    frame_of: impl Fn(usize, &str) -> Option<&'a ServerFrame>,
) -> Result<Vec<usize>> {
    let frame_of = &frame_of;
    let posts = connections.iter().enumerate().flat_map(|(user, ids)| {
        ids.iter().filter_map(move |connection| {
            let frame = frame_of(user, connection)?;
            Some(async move { (user, post(ctx, connection, frame).await) })
        })
    });
    let mut delivered = vec![0; connections.len()];
    for (user, outcome) in join_all(posts).await {
        if outcome? == PostOutcome::Delivered {
            delivered[user] += 1;
        }
    }
    Ok(delivered)
}

/// Splits messages of one conversation into `messages` frames of at most 128 KB each, in order.
/// `has_more` is set on every frame but the last.
pub fn batch_frames(conversation_id: &str, messages: Vec<DeliveredMessage>) -> Vec<ServerFrame> {
    // Envelope without messages, plus room for the `has_more` flag and separators.
    let envelope = ServerFrame::Messages {
        payload: MessagesPayload {
            conversation_id: conversation_id.to_string(),
            messages: Vec::new(),
            has_more: true,
            missing: Vec::new(),
        },
    }
    .to_json()
    .len()
        + 16;
    let budget = MAX_FRAME_BYTES - envelope;
    let mut batches: Vec<Vec<DeliveredMessage>> = vec![Vec::new()];
    let mut size = 0;
    for m in messages {
        let len = serde_json::to_string(&m).map(|s| s.len()).unwrap_or(budget) + 1;
        let current = batches.last_mut().expect("never empty");
        if !current.is_empty() && size + len > budget {
            batches.push(Vec::new());
            size = 0;
        }
        size += len;
        batches.last_mut().expect("never empty").push(m);
    }
    let count = batches.len();
    batches
        .into_iter()
        .enumerate()
        .filter(|(i, b)| !b.is_empty() || *i == 0)
        .map(|(i, messages)| ServerFrame::Messages {
            payload: MessagesPayload {
                conversation_id: conversation_id.to_string(),
                messages,
                has_more: i + 1 < count,
                missing: Vec::new(),
            },
        })
        .collect()
}
