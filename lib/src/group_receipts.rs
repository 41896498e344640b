//! Group receipts, coalesced: members' `delivery_ack`s and `read_receipt`s reach the senders as
//! one `receipts` frame per conversation and interval, not one frame per member.
//!
//! A message to a group of 100 is acknowledged by 99 devices within milliseconds. Told one by
//! one, its sender's devices would get 99 frames (and the functions would make 99 connection
//! lookups and ~200 posts). Instead each receipt is noted in Redis (a sorted set per
//! conversation and kind, each member scored by the highest sequence number concerned) in the
//! same round trip as the frame's rate limits, and the script that notes it also says whose turn
//! it is to send:
//!
//! - the first receipt after a quiet interval sends at once ([`ReceiptTurn::SendNow`]), and
//!   starts an interval of [`RECEIPTS_INTERVAL_MS`];
//! - the first receipt within that interval promises to send when it ends
//!   ([`ReceiptTurn::SendAfter`]: its invocation waits for the rest of the interval, then takes
//!   what has gathered and starts the next interval);
//! - every other receipt only adds itself ([`ReceiptTurn::Nothing`]).
//!
//! So a sender sees the first member's tick at once and everyone else's at most one interval
//! later, in at most one frame per interval per conversation. Sending takes the waiting
//! receipts in one `MULTI` (a receipt noted meanwhile either goes with them or finds no promise
//! and takes its own turn), asks MongoDB at once for the messages concerned, the members'
//! device cursors and their read markers (three queries), and looks up the senders'
//! connections (one round trip).
//!
//! What a member received and read is recorded in MongoDB before it is noted here (their
//! devices' watermarks in `device_cursors`, their read marker on the conversation), and a
//! group message's status (`delivered`, `read`: every recipient has it) is computed from those
//! when the receipts are sent, in a few queries per interval rather than a write per member and
//! message (group messages keep no `delivered_to`/`read_by` lists). So this is soft state: a
//! sender that dies before sending, or a Redis that restarts empty, only delays ticks and
//! status until the conversation's next receipt.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::context::Context;
use crate::error::Result;
use crate::fanout::send_each;
use crate::keys::PENDING_RECEIPTS_TTL;
use crate::model::Conversation;
use crate::protocol::{
    MemberMark, MessageStatus, RECEIPTS_INTERVAL_MS, ReceiptsPayload, ServerFrame,
};
use crate::realtime::{RedisState, next_value};
use crate::store::messages::MessageState;
use crate::system_messages::SYSTEM_SENDER;

/// The interval receipts of one conversation are gathered over.
pub const INTERVAL: Duration = Duration::from_millis(RECEIPTS_INTERVAL_MS);

/// How long a send waits for a cursor write still in flight, and how many times.
const CURSOR_WAIT: Duration = Duration::from_millis(40);
const CURSOR_WAITS: usize = 3;

/// Which receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    /// A device of the member received messages.
    Delivered,
    /// The member read messages.
    Read,
}

impl ReceiptKind {
    fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// One member's receipt for messages `low..=up_to` of a group conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptNote {
    /// The group.
    pub conversation_id: String,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The member.
    pub user_id: String,
    /// Lowest sequence number concerned (whose senders are told).
    pub low: u64,
    /// Highest sequence number concerned.
    pub up_to: u64,
}

impl ReceiptNote {
    /// A device of `user_id` received message `sequence_number` of the group (a `delivery_ack`).
    pub fn delivered(conversation_id: &str, user_id: &str, sequence_number: u64) -> Self {
        Self {
            conversation_id: conversation_id.to_string(),
            kind: ReceiptKind::Delivered,
            user_id: user_id.to_string(),
            low: sequence_number,
            up_to: sequence_number,
        }
    }
}

/// Whose turn it is to send a conversation's waiting receipts, as the note's script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptTurn {
    /// This receipt opens an interval: send now.
    SendNow,
    /// This receipt promised to send when the current interval ends, this long from now.
    SendAfter(Duration),
    /// Someone else sends it.
    Nothing,
}

/// The script's answer, decoded: -1 now, -2 nothing, else milliseconds to wait.
pub(crate) fn turn_from(answer: i64) -> ReceiptTurn {
    match answer {
        -1 => ReceiptTurn::SendNow,
        n if n >= 0 => ReceiptTurn::SendAfter(Duration::from_millis(n as u64)),
        _ => ReceiptTurn::Nothing,
    }
}

/// Receipts taken to be sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingReceipts {
    /// Members and the highest sequence number their devices acknowledged.
    pub delivered: Vec<MemberMark>,
    /// Members and the highest sequence number they read.
    pub read: Vec<MemberMark>,
    /// Lowest sequence number any of them concerned.
    pub low: Option<u64>,
}

impl PendingReceipts {
    /// Nothing was waiting.
    pub fn is_empty(&self) -> bool {
        self.delivered.is_empty() && self.read.is_empty()
    }
}

/// Where group receipts wait (Redis).
#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Notes a receipt (one round trip) and says whose turn it is to send.
    async fn note_receipt(&self, note: &ReceiptNote) -> Result<ReceiptTurn>;
    /// Takes every receipt waiting in a conversation and starts a new interval (one `MULTI`).
    async fn take_receipts(&self, conversation_id: &str) -> Result<PendingReceipts>;
}

/// KEYS: pending (this kind), sent, due, low. ARGV: member, up_to, low, interval ms, ttl s.
/// `ZADD GT` keeps each member's highest number; `low` the lowest number of the interval.
const NOTE: &str = r"
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local low = tonumber(redis.call('GET', KEYS[4]) or '-1')
if low < 0 or tonumber(ARGV[3]) < low then
  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[5])
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[4]) then
  return -1
end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[4]) * 2 + 5000) then
  local left = redis.call('PTTL', KEYS[2])
  if left < 0 then left = 0 end
  return left
end
return -2
";

impl RedisState {
    /// Appends the note's script to a pipeline (a frame's one round trip, see
    /// `RealtimeState::frame_budget`); its reply is a [`turn_from`] code.
    pub(crate) fn note_receipt_cmd(&self, pipe: &mut redis::Pipeline, note: &ReceiptNote) {
        let keys = self.keys();
        // EVAL rather than EVALSHA: a Redis that restarted empty has forgotten loaded scripts.
        pipe.cmd("EVAL")
            .arg(NOTE)
            .arg(4)
            .arg(keys.pending_receipts(&note.conversation_id, note.kind.name()))
            .arg(keys.receipts_sent(&note.conversation_id))
            .arg(keys.receipts_due(&note.conversation_id))
            .arg(keys.receipts_low(&note.conversation_id))
            .arg(&note.user_id)
            .arg(note.up_to)
            .arg(note.low)
            .arg(INTERVAL.as_millis() as u64)
            .arg(PENDING_RECEIPTS_TTL.as_secs());
    }
}

#[async_trait]
impl ReceiptStore for RedisState {
    async fn note_receipt(&self, note: &ReceiptNote) -> Result<ReceiptTurn> {
        let mut pipe = redis::pipe();
        self.note_receipt_cmd(&mut pipe, note);
        let reply: Vec<redis::Value> = pipe.query_async(&mut self.conn()).await?;
        Ok(turn_from(next_value(&mut reply.into_iter())?))
    }

    async fn take_receipts(&self, conversation_id: &str) -> Result<PendingReceipts> {
        let keys = self.keys();
        let delivered = keys.pending_receipts(conversation_id, ReceiptKind::Delivered.name());
        let read = keys.pending_receipts(conversation_id, ReceiptKind::Read.name());
        let low = keys.receipts_low(conversation_id);
        // Scores are doubles on the wire (RESP3); sequence numbers fit them exactly.
        let (delivered, read, low): (Vec<(String, f64)>, Vec<(String, f64)>, Option<u64>) =
            redis::pipe()
                .atomic()
                .zrange_withscores(&delivered, 0, -1)
                .zrange_withscores(&read, 0, -1)
                .get(&low)
                .del(&[&delivered, &read, &low])
                .ignore()
                .del(keys.receipts_due(conversation_id))
                .ignore()
                .cmd("SET")
                .arg(keys.receipts_sent(conversation_id))
                .arg(1)
                .arg("PX")
                .arg(INTERVAL.as_millis() as u64)
                .ignore()
                .query_async(&mut self.conn())
                .await?;
        let marks = |list: Vec<(String, f64)>| {
            list.into_iter()
                .map(|(user_id, up_to)| MemberMark {
                    user_id,
                    up_to: up_to as u64,
                })
                .collect()
        };
        Ok(PendingReceipts {
            delivered: marks(delivered),
            read: marks(read),
            low,
        })
    }
}

/// Notes a group member's receipt on its own (a `read_receipt`; a `delivery_ack` notes it in
/// its frame's round trip) and sends the conversation's receipts if it is this one's turn.
pub async fn note(ctx: &Context, conversation: &Conversation, note: &ReceiptNote) -> Result<()> {
    let turn = ctx.realtime.note_receipt(note).await?;
    take_turn(ctx, conversation, turn).await
}

/// Acts on a [`ReceiptTurn`]: sends now, after waiting out the interval, or not at all.
pub async fn take_turn(
    ctx: &Context,
    conversation: &Conversation,
    turn: ReceiptTurn,
) -> Result<()> {
    match turn {
        ReceiptTurn::Nothing => return Ok(()),
        ReceiptTurn::SendNow => {}
        ReceiptTurn::SendAfter(wait) => tokio::time::sleep(wait.min(INTERVAL)).await,
    }
    send(ctx, conversation).await.map(|_| ())
}

/// Takes a conversation's waiting receipts, moves the group status of the messages they
/// concern (delivered once every recipient's devices acknowledged them, read once every
/// recipient read them: from the device cursors and read markers in MongoDB, the truth), and
/// sends each sender of those messages one `receipts` frame (without their own marks) on every
/// connection. Returns how many connections took one.
pub async fn send(ctx: &Context, conversation: &Conversation) -> Result<usize> {
    let mut pending = ctx
        .realtime
        .take_receipts(&conversation.conversation_id)
        .await?;
    // Marks of someone who is no longer (or never was) a member are not passed on.
    pending
        .delivered
        .retain(|m| conversation.has_participant(&m.user_id));
    pending
        .read
        .retain(|m| conversation.has_participant(&m.user_id));
    if pending.is_empty() {
        return Ok(0);
    }
    let high = pending
        .delivered
        .iter()
        .chain(&pending.read)
        .map(|m| m.up_to)
        .max()
        .unwrap_or(0);
    let low = pending.low.unwrap_or(high).min(high);
    let id = &conversation.conversation_id;
    let (concerned, delivered, current) = futures::try_join!(
        ctx.store.unread_between(id, low, high),
        ctx.store.delivered_marks(id),
        ctx.store.conversation(id),
    )?;
    // A `delivery_ack` notes its receipt (in its frame's round trip) just before it writes its
    // device cursor: a receipt noted a moment before this send may still be writing it. Give
    // those writes a moment, so the status below counts them.
    let mut delivered = delivered;
    for _ in 0..CURSOR_WAITS {
        let behind = pending
            .delivered
            .iter()
            .any(|m| delivered.get(&m.user_id).copied().unwrap_or(0) < m.up_to);
        if !behind {
            break;
        }
        tokio::time::sleep(CURSOR_WAIT).await;
        delivered = ctx.store.delivered_marks(id).await?;
    }
    let read = current.map(|c| c.read_up_to).unwrap_or_default();
    advance_statuses(ctx, conversation, &concerned, &delivered, &read).await?;
    let mut senders: Vec<String> = concerned
        .iter()
        .map(|m| m.sender_id.clone())
        .filter(|s| s != SYSTEM_SENDER && conversation.has_participant(s))
        .collect();
    senders.sort();
    senders.dedup();
    let timestamp = crate::clock::now_ms();
    let frames: Vec<Option<ServerFrame>> = senders
        .iter()
        .map(|sender| {
            let others = |marks: &[MemberMark]| -> Vec<MemberMark> {
                marks
                    .iter()
                    .filter(|m| &m.user_id != sender)
                    .cloned()
                    .collect()
            };
            let payload = ReceiptsPayload {
                conversation_id: conversation.conversation_id.clone(),
                delivered: others(&pending.delivered),
                read: others(&pending.read),
                timestamp,
            };
            (!payload.delivered.is_empty() || !payload.read.is_empty())
                .then_some(ServerFrame::Receipts { payload })
        })
        .collect();
    let taken = send_each(ctx, &senders, |i, _| frames[i].as_ref()).await?;
    Ok(taken.iter().sum())
}

/// Moves each concerned message to `delivered` or `read` once every recipient (every member
/// but its sender and the conversation's agent) has it: a read marker counts as delivery too.
async fn advance_statuses(
    ctx: &Context,
    conversation: &Conversation,
    concerned: &[MessageState],
    delivered: &HashMap<String, u64>,
    read: &std::collections::BTreeMap<String, u64>,
) -> Result<()> {
    let mut now_read = Vec::new();
    let mut now_delivered = Vec::new();
    for m in concerned {
        let mut recipients = conversation
            .participants
            .iter()
            .filter(|p| **p != m.sender_id && conversation.agent_id.as_deref() != Some(p.as_str()))
            .peekable();
        if recipients.peek().is_none() {
            continue;
        }
        let read_mark = |user: &String| read.get(user).copied().unwrap_or(0);
        let (mut all_read, mut all_delivered) = (true, true);
        for user in recipients {
            let has_read = read_mark(user) >= m.sequence_number;
            all_read &= has_read;
            all_delivered &=
                has_read || delivered.get(user).copied().unwrap_or(0) >= m.sequence_number;
        }
        if all_read {
            now_read.push(m.message_id.clone());
        } else if all_delivered && m.status < MessageStatus::Delivered {
            now_delivered.push(m.message_id.clone());
        }
    }
    // Moving to `read` also passes `delivered`.
    ctx.store
        .advance_status(&now_read, MessageStatus::Read)
        .await?;
    ctx.store
        .advance_status(&now_delivered, MessageStatus::Delivered)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_answers_decode_into_turns() {
        assert_eq!(turn_from(-1), ReceiptTurn::SendNow);
        assert_eq!(turn_from(-2), ReceiptTurn::Nothing);
        assert_eq!(
            turn_from(120),
            ReceiptTurn::SendAfter(Duration::from_millis(120))
        );
        assert_eq!(turn_from(0), ReceiptTurn::SendAfter(Duration::ZERO));
    }
}
