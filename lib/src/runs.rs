//! Agent runs: an agent's answer as it is generated (`agent.delta`), the run's visible state
//! (`agent.progress` with a `run_id`), its end (`agent.response` with the `run_id`), and a
//! participant's `cancel`.
//!
//! A run lives in Redis only, until its final answer is stored as a message in MongoDB like any
//! other: nothing of a stream is written to MongoDB, and everything here expires
//! ([`RUN_TTL`] after its last change). Per run there is a hash (agent, who is answered, who
//! sees it, state, step, percent, next index, ...), the text so far (a string appended to) and
//! the pieces that arrived ahead of a missing one.
//!
//! Rules, the same in the AsyncAPI document:
//! - each (run, index) counts once; pieces are passed on in index order whatever order they
//!   arrive in; a piece ahead of a missing one is held, and when the gap is older than
//!   `delta_gap_wait` (1 s) the missing pieces are skipped: the devices then get the whole text
//!   so far (a snapshot);
//! - a run is created by its first delta or progress, `working` unless told; `completed`,
//!   `failed` and `cancelled` are final: whatever the agent sends for a run afterwards is
//!   dropped (acknowledged, not retried), so a cancelled run never grows again;
//! - a cancelled run leaves no message: its devices keep what they showed, marked cancelled;
//! - every human participant of the conversation sees the run (`agent_run`, `message_delta`),
//!   and any of them may cancel it;
//! - a run the agent has said nothing about for `agent_progress_interval` (30 s) is shown as
//!   stalled; the agent timeout notice still follows after `AGENT_TIMEOUT_SECS`.
//!
//! [`RunStore`] is the port (Redis, atomic per run with Lua); the functions below are what the
//! agent-response and message functions call.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use crate::fanout::send_to_user;
use crate::model::{AgentCancel, AgentDelta, Conversation, event_types};
use crate::protocol::{AgentRunPayload, MessageDeltaPayload, RunDetail, RunState, ServerFrame};
use crate::realtime::RedisState;

/// A run's keys expire this long after its last change.
pub const RUN_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest text of one `message_delta` frame: frames stay far below API Gateway's 32 KB.
pub const MAX_DELTA_FRAME_TEXT: usize = 8 * 1024;
/// Most pieces held ahead of a gap; more are dropped (the final answer has them all).
const MAX_HELD: usize = 10_000;

/// Which run: a conversation and the agent's run id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunKey {
    /// Conversation.
    pub conversation_id: String,
    /// The agent's run id.
    pub run_id: String,
}

impl RunKey {
    /// The key of `run_id` in `conversation_id`.
    pub fn new(conversation_id: impl Into<String>, run_id: impl Into<String>) -> Self {
        Self {
            conversation_id: conversation_id.into(),
            run_id: run_id.into(),
        }
    }

    /// As a member of the indexes (`conversation\x1frun`).
    fn member(&self) -> String {
        format!("{}\u{1f}{}", self.conversation_id, self.run_id)
    }

    fn from_member(member: &str) -> Option<Self> {
        let (conversation, run) = member.split_once('\u{1f}')?;
        Some(Self::new(conversation, run))
    }
}

/// Who a run belongs to, recorded when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOwners {
    /// The agent.
    pub agent_id: String,
    /// The user being answered.
    pub user_id: String,
    /// The human participants who see the run.
    pub audience: Vec<String>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run as devices see it.
    pub run: AgentRunPayload,
    /// Whose.
    pub owners: RunOwners,
    /// Index of the next piece expected.
    pub next_index: u32,
    /// Since when pieces wait for a missing one, ms.
    pub gap_since: Option<i64>,
}

impl RunRecord {
    /// Which run.
    pub fn key(&self) -> RunKey {
        RunKey::new(&self.run.conversation_id, &self.run.run_id)
    }

    /// The `agent_run` frame of this record.
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::AgentRun {
            payload: self.run.clone(),
        }
    }
}

/// What became of a piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The run is over (its final state): the piece is dropped.
    Closed(RunState),
    /// Already had it.
    Duplicate,
    /// Held until the missing pieces before it arrive (or the wait is over).
    Held {
        /// The piece created the run.
        created: bool,
    },
    /// Pieces `from_index..` are now in order (a skipped one is empty).
    Appended {
        /// First index.
        from_index: u32,
        /// The pieces, from `from_index` on.
        pieces: Vec<String>,
        /// The piece created the run.
        created: bool,
    },
    /// The answer would pass the content limit: refused.
    TooLarge,
    /// The index is further ahead of the next expected one than pieces are ever held.
    TooFarAhead,
}

/// A change of a run's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunChange {
    /// New state.
    pub state: RunState,
    /// Step (kept until changed), percent, question or reason.
    pub detail: RunDetail,
    /// The stored answer (`completed`).
    pub message_id: Option<String>,
    /// Its sequence number.
    pub sequence_number: Option<u64>,
    /// When the agent said it (its `agent.progress` timestamp): events reach the platform in
    /// any order, so a change the agent made before the last applied one is stale.
    pub said_at: Option<i64>,
}

impl RunChange {
    /// A change to `state` and nothing else.
    pub fn to(state: RunState) -> Self {
        Self {
            state,
            detail: RunDetail::default(),
            message_id: None,
            sequence_number: None,
            said_at: None,
        }
    }
}

/// The bounds a streamed answer is kept within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Longest whole answer, in bytes (the message content limit).
    pub max_bytes: usize,
    /// How long a missing piece is waited for before it is skipped.
    pub gap_wait: Duration,
}

/// What a state change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Applied: the record after it (`created` when the change started the run).
    Changed {
        /// The run now (boxed: it is much larger than the other answers).
        record: Box<RunRecord>,
        /// The change created the run.
        created: bool,
    },
    /// The run was already over, in this state: nothing changed.
    AlreadyFinal(RunState),
    /// No such run (only for changes that need one, such as a cancel).
    Unknown,
    /// The agent said something newer already: nothing changed.
    Stale,
}

/// The port: agent runs in Redis.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Applies a piece of `key`'s answer (creating the run, owned by `owners`, if new).
    async fn apply_delta(
        &self,
        key: &RunKey,
        owners: &RunOwners,
        index: u32,
        text: &str,
        now_ms: i64,
        limits: StreamLimits,
    ) -> Result<DeltaOutcome>;
    /// Changes a run's state; `create` makes the run (owned by `owners`) if it does not exist.
    async fn change_run(
        &self,
        key: &RunKey,
        owners: Option<&RunOwners>,
        change: &RunChange,
        now_ms: i64,
    ) -> Result<Transition>;
    /// The run, if it exists.
    async fn run_record(&self, key: &RunKey) -> Result<Option<RunRecord>>;
    /// The run's pieces so far, by index (a skipped one is empty).
    async fn run_pieces(&self, key: &RunKey) -> Result<Vec<String>>;
    /// The unfinished runs `user_id` sees.
    async fn runs_of_user(&self, user_id: &str) -> Result<Vec<RunRecord>>;
    /// Runs unchanged since `before_ms` (at most `limit`, oldest first), for the sweep.
    async fn quiet_runs(&self, before_ms: i64, limit: usize) -> Result<Vec<RunKey>>;
    /// Takes a run out of the sweep's index until it changes again (it is over, gone, or shown
    /// as stalled already).
    async fn retire_run(&self, key: &RunKey) -> Result<()>;
    /// Skips the missing pieces of a run whose gap is older than `gap_wait`.
    async fn skip_gap(&self, key: &RunKey, now_ms: i64, gap_wait: Duration)
    -> Result<DeltaOutcome>;
    /// Marks a run stalled; false if it was already, or is over.
    async fn mark_stalled(&self, key: &RunKey) -> Result<bool>;
}

// ---- the service ----

fn audience(conversation: &Conversation, agent_id: &str) -> Vec<String> {
    conversation
        .participants
        .iter()
        .filter(|p| p.as_str() != agent_id)
        .cloned()
        .collect()
}

fn check_run_id(run_id: &str) -> Result<()> {
    if run_id.is_empty() || run_id.chars().count() > 128 || run_id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "run_id must be 1 to 128 characters without control characters",
        ));
    }
    Ok(())
}

/// Sends `frame` to every device of the run's audience.
async fn tell(ctx: &Context, audience: &[String], frame: &ServerFrame) -> Result<()> {
    for user in audience {
        send_to_user(ctx, user, frame, None).await?;
    }
    Ok(())
}

/// Longest text of one `agent.delta`: a piece always fits a frame.
pub const MAX_DELTA_TEXT: usize = 4 * 1024;

/// `message_delta` frames for pieces `from_index..`, as few as fit under the frame limit, each
/// covering whole pieces. With `snapshot`, the first frame replaces what a device has (the
/// pieces must then start at 0) and the others append.
pub fn delta_frames(
    key: &RunKey,
    agent_id: &str,
    from_index: u32,
    pieces: &[String],
    snapshot: bool,
) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    let mut start = from_index;
    let mut text = String::new();
    let mut end = from_index;
    let mut flush = |text: &mut String, start: &mut u32, end: u32| {
        frames.push(ServerFrame::MessageDelta {
            payload: MessageDeltaPayload {
                conversation_id: key.conversation_id.clone(),
                run_id: key.run_id.clone(),
                agent_id: agent_id.to_string(),
                from_index: *start,
                to_index: end,
                text: std::mem::take(text),
                snapshot: snapshot && *start == 0,
            },
        });
        *start = end;
    };
    for piece in pieces {
        if end > start && text.len() + piece.len() > MAX_DELTA_FRAME_TEXT {
            flush(&mut text, &mut start, end);
        }
        text.push_str(piece);
        end += 1;
    }
    if end > start || (snapshot && pieces.is_empty()) {
        flush(&mut text, &mut start, end);
    }
    frames
}

/// An `agent.delta`: checked against the conversation (the caller verified the agent is its
/// agent), applied, and passed on to the devices in order.
pub async fn on_delta(
    ctx: &Context,
    conversation: &Conversation,
    delta: &AgentDelta,
) -> Result<()> {
    check_run_id(&delta.run_id)?;
    if delta.text.len() > MAX_DELTA_TEXT {
        return Err(Error::client(
            ErrorCode::PayloadTooLarge,
            format!("a delta is at most {MAX_DELTA_TEXT} bytes: split it"),
        ));
    }
    let key = RunKey::new(&conversation.conversation_id, &delta.run_id);
    let owners = RunOwners {
        agent_id: delta.agent_id.clone(),
        user_id: delta.user_id.clone(),
        audience: audience(conversation, &delta.agent_id),
    };
    let now = crate::clock::now_ms();
    let outcome = ctx
        .realtime
        .apply_delta(
            &key,
            &owners,
            delta.index,
            &delta.text,
            now,
            StreamLimits {
                max_bytes: ctx.settings.max_content_bytes,
                gap_wait: ctx.settings.delta_gap_wait,
            },
        )
        .await?;
    match outcome {
        DeltaOutcome::Closed(state) => {
            tracing::info!(run = %delta.run_id, state = state.as_str(), "delta of a finished run dropped");
            Ok(())
        }
        DeltaOutcome::Duplicate => Ok(()),
        DeltaOutcome::Held { created } => {
            if created {
                announce(ctx, &key).await?;
            }
            Ok(())
        }
        DeltaOutcome::TooFarAhead => Err(Error::invalid(format!(
            "delta {} of run {} is more than {MAX_HELD} ahead of the next one expected",
            delta.index, delta.run_id
        ))),
        DeltaOutcome::TooLarge => Err(Error::client(
            ErrorCode::PayloadTooLarge,
            format!(
                "run {} would pass {} bytes",
                delta.run_id, ctx.settings.max_content_bytes
            ),
        )),
        DeltaOutcome::Appended {
            from_index,
            pieces,
            created,
        } => {
            if created {
                announce(ctx, &key).await?;
            }
            // The agent is alive: its answer deadline moves, as with progress.
            ctx.realtime
                .extend_agent_waits(
                    &conversation.conversation_id,
                    now + ctx.settings.agent_timeout.as_millis() as i64,
                )
                .await?;
            for frame in &delta_frames(&key, &owners.agent_id, from_index, &pieces, false) {
                tell(ctx, &owners.audience, frame).await?;
            }
            Ok(())
        }
    }
}

/// Tells the audience about a run that just began (or changed).
async fn announce(ctx: &Context, key: &RunKey) -> Result<()> {
    if let Some(record) = ctx.realtime.run_record(key).await? {
        tell(ctx, &record.owners.audience, &record.frame()).await?;
    }
    Ok(())
}

/// A run's state from `agent.progress`: created if new; `completed` is refused (it comes with
/// the answer); a finished run does not change, nor one the agent said something newer about.
/// True when the change was applied.
pub async fn on_progress(
    ctx: &Context,
    conversation: &Conversation,
    run_id: &str,
    agent_id: &str,
    user_id: &str,
    change: RunChange,
) -> Result<bool> {
    check_run_id(run_id)?;
    if change.state == RunState::Completed || change.state == RunState::Cancelled {
        return Err(Error::invalid(
            "agent.progress cannot complete or cancel a run: send agent.response to complete it",
        ));
    }
    let detail = &change.detail;
    if detail
        .step
        .as_ref()
        .is_some_and(|s| s.chars().count() > 200)
        || detail
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > 2000)
        || detail.percent.is_some_and(|p| p > 100)
    {
        return Err(Error::invalid(
            "step is at most 200 characters, reason 2000, percent 0 to 100",
        ));
    }
    let key = RunKey::new(&conversation.conversation_id, run_id);
    let owners = RunOwners {
        agent_id: agent_id.to_string(),
        user_id: user_id.to_string(),
        audience: audience(conversation, agent_id),
    };
    let now = crate::clock::now_ms();
    match ctx
        .realtime
        .change_run(&key, Some(&owners), &change, now)
        .await?
    {
        Transition::Changed { record, .. } => {
            tell(ctx, &record.owners.audience, &record.frame()).await?;
            Ok(true)
        }
        Transition::AlreadyFinal(state) => {
            tracing::info!(run = %run_id, state = state.as_str(), "progress of a finished run dropped");
            Ok(false)
        }
        Transition::Stale => {
            tracing::info!(run = %run_id, "progress older than the run's last change dropped");
            Ok(false)
        }
        Transition::Unknown => Ok(false),
    }
}

/// Whether the answer of run `run_id` may be stored: false when the run was cancelled or
/// failed (the answer is dropped).
pub async fn may_complete(ctx: &Context, conversation_id: &str, run_id: &str) -> Result<bool> {
    let key = RunKey::new(conversation_id, run_id);
    Ok(match ctx.realtime.run_record(&key).await? {
        Some(record) => !matches!(record.run.state, RunState::Cancelled | RunState::Failed),
        None => true,
    })
}

/// The run ends with its stored answer.
pub async fn on_completed(
    ctx: &Context,
    conversation: &Conversation,
    run_id: &str,
    agent_id: &str,
    user_id: &str,
    message_id: &str,
    sequence_number: u64,
) -> Result<()> {
    let key = RunKey::new(&conversation.conversation_id, run_id);
    let owners = RunOwners {
        agent_id: agent_id.to_string(),
        user_id: user_id.to_string(),
        audience: audience(conversation, agent_id),
    };
    let change = RunChange {
        message_id: Some(message_id.to_string()),
        sequence_number: Some(sequence_number),
        ..RunChange::to(RunState::Completed)
    };
    let now = crate::clock::now_ms();
    if let Transition::Changed { record, .. } = ctx
        .realtime
        .change_run(&key, Some(&owners), &change, now)
        .await?
    {
        tell(ctx, &record.owners.audience, &record.frame()).await?;
    }
    Ok(())
}

/// A participant's `cancel`: the run ends `cancelled` for every device and the agent gets
/// `agent.cancel`. `conflict` when the run is already over, `not_found` when there is no such
/// run in the conversation (the caller checked membership).
pub async fn cancel(ctx: &Context, user_id: &str, key: &RunKey) -> Result<()> {
    check_run_id(&key.run_id)?;
    let now = crate::clock::now_ms();
    let record = match ctx
        .realtime
        .change_run(key, None, &RunChange::to(RunState::Cancelled), now)
        .await?
    {
        Transition::Changed { record, .. } => record,
        Transition::AlreadyFinal(state) => {
            return Err(Error::client(
                ErrorCode::Conflict,
                format!("run {} is already {}", key.run_id, state.as_str()),
            ));
        }
        // A cancel carries no agent time: never stale.
        Transition::Unknown | Transition::Stale => {
            return Err(Error::not_found(format!(
                "no run {} in conversation {}",
                key.run_id, key.conversation_id
            )));
        }
    };
    let data = AgentCancel {
        run_id: key.run_id.clone(),
        conversation_id: key.conversation_id.clone(),
        agent_id: record.owners.agent_id.clone(),
        cancelled_by: user_id.to_string(),
        timestamp: now,
    };
    // The event id names the run: a retried cancel is one event for the agent.
    let event = crate::events::new_event_with_id(
        &format!("cancel/{}/{}", key.conversation_id, key.run_id),
        event_types::AGENT_CANCEL,
        &ctx.settings.event_source,
        &data,
        &[(
            event_types::AGENT_ID_EXTENSION,
            record.owners.agent_id.as_str(),
        )],
    )?;
    ctx.events.publish(event).await?;
    ctx.realtime
        .clear_typing(&key.conversation_id, &record.owners.agent_id)
        .await?;
    tell(ctx, &record.owners.audience, &record.frame()).await
}

/// The frames that bring a device that just connected up to date with the unfinished runs its
/// user sees: each run's state, then its text so far.
pub async fn catch_up_frames(ctx: &Context, user_id: &str) -> Result<Vec<ServerFrame>> {
    let mut frames = Vec::new();
    for record in ctx.realtime.runs_of_user(user_id).await? {
        frames.push(record.frame());
        if record.next_index > 0 {
            let pieces = ctx.realtime.run_pieces(&record.key()).await?;
            frames.extend(delta_frames(
                &record.key(),
                &record.owners.agent_id,
                0,
                &pieces,
                true,
            ));
        }
    }
    Ok(frames)
}

/// Skips gaps older than the wait and shows runs silent for longer than the progress interval
/// as stalled; returns how many runs it changed.
pub async fn sweep(ctx: &Context, now_ms: i64) -> Result<usize> {
    let wait = ctx.settings.delta_gap_wait;
    let quiet = ctx
        .realtime
        .quiet_runs(now_ms - wait.as_millis() as i64, 100)
        .await?;
    let mut changed = 0;
    for key in quiet {
        let record = match ctx.realtime.run_record(&key).await? {
            Some(record) if !record.run.state.is_final() => record,
            _ => {
                ctx.realtime.retire_run(&key).await?;
                continue;
            }
        };
        if record.gap_since.is_some()
            && let DeltaOutcome::Appended {
                from_index, pieces, ..
            } = ctx.realtime.skip_gap(&key, now_ms, wait).await?
        {
            for frame in delta_frames(&key, &record.owners.agent_id, from_index, &pieces, false) {
                tell(ctx, &record.owners.audience, &frame).await?;
            }
            changed += 1;
        }
        let silent_since = now_ms - ctx.settings.agent_progress_interval.as_millis() as i64;
        if record.run.updated_at <= silent_since {
            if ctx.realtime.mark_stalled(&key).await?
                && let Some(record) = ctx.realtime.run_record(&key).await?
            {
                tell(ctx, &record.owners.audience, &record.frame()).await?;
                changed += 1;
            }
            // Nothing more to do until the agent says something (which indexes it again).
            ctx.realtime.retire_run(&key).await?;
        }
    }
    Ok(changed)
}

// ---- Redis ----

/// The Lua both stream scripts share (KEYS: run, pieces, held): what ends a run, the lowest held
/// index, moving consecutive held pieces into the stream, and the gap's bookkeeping.
macro_rules! stream_prelude {
    () => {
        r#"
local run, list, held = KEYS[1], KEYS[2], KEYS[3]
local function is_over(state)
  return state == 'completed' or state == 'failed' or state == 'cancelled'
end
local function first_held()
  local first = nil
  for _, k in ipairs(redis.call('HKEYS', held)) do
    local n = tonumber(k)
    if not first or n < first then first = n end
  end
  return first
end
-- Moves the held pieces from `nxt` on, while consecutive, into `pieces`; the next index.
local function take_held(nxt, pieces)
  while true do
    local t = redis.call('HGET', held, nxt)
    if not t then break end
    table.insert(pieces, t)
    redis.call('HDEL', held, nxt)
    nxt = nxt + 1
  end
  return nxt
end
local function size(pieces)
  local n = 0
  for _, p in ipairs(pieces) do n = n + #p end
  return n
end
-- A gap remains while pieces are held.
local function mark_gap(now)
  if redis.call('HLEN', held) == 0 then redis.call('HDEL', run, 'gap_since')
  else redis.call('HSET', run, 'gap_since', now) end
end
local function appended(from, created, pieces)
  local reply = {'append', from, created}
  for _, p in ipairs(pieces) do table.insert(reply, p) end
  return reply
end
"#
    };
}

/// Applies a piece; returns `{status, ...}` (see [`DeltaOutcome`]). KEYS: run, pieces (a list:
/// position = index), held.
const APPLY_DELTA: &str = concat!(
    stream_prelude!(),
    r#"
local index, piece, now = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local ttl, max_bytes, gap_wait, max_held = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local state = redis.call('HGET', run, 'state')
local created = 0
if not state then
  redis.call('HSET', run, 'agent', ARGV[4], 'user', ARGV[5], 'audience', ARGV[6],
    'state', 'working', 'next', 0, 'bytes', 0, 'updated', now)
  state = 'working'
  created = 1
end
if is_over(state) then return {'closed', state} end
local nxt = tonumber(redis.call('HGET', run, 'next'))
if index < nxt then return {'dup'} end
if index > nxt + max_held then return {'too_far'} end
local from = nxt
local pieces = {}
if index > nxt then
  redis.call('HSETNX', held, index, piece)
  local since = tonumber(redis.call('HGET', run, 'gap_since'))
  if not since then
    redis.call('HSET', run, 'gap_since', now)
    since = now
  end
  redis.call('HSET', run, 'updated', now, 'stalled', 0)
  redis.call('PEXPIRE', run, ttl); redis.call('PEXPIRE', held, ttl)
  if now - since < gap_wait then return {'held', created} end
  -- Waited long enough: the missing pieces are skipped (empty).
  local first = first_held()
  for i = nxt, first - 1 do table.insert(pieces, '') end
  nxt = take_held(first, pieces)
else
  table.insert(pieces, piece)
  nxt = take_held(index + 1, pieces)
end
local bytes = tonumber(redis.call('HGET', run, 'bytes') or '0') + size(pieces)
if bytes > max_bytes then return {'too_large'} end
redis.call('RPUSH', list, unpack(pieces))
redis.call('HSET', run, 'next', nxt, 'bytes', bytes, 'updated', now, 'stalled', 0)
mark_gap(now)
redis.call('PEXPIRE', run, ttl); redis.call('PEXPIRE', list, ttl); redis.call('PEXPIRE', held, ttl)
return appended(from, created, pieces)
"#
);

/// Changes a run's state. KEYS: run. ARGV: state, step, percent, reason, message_id, seq, now,
/// ttl, create (0/1), agent, user, audience. Returns `{'changed', created}`, `{'final', state}`
/// or `{'unknown'}`.
const CHANGE_RUN: &str = r#"
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
local created = 0
if not state then
  if ARGV[9] ~= '1' then return {'unknown'} end
  redis.call('HSET', run, 'agent', ARGV[10], 'user', ARGV[11], 'audience', ARGV[12], 'next', 0)
  created = 1
elseif state == 'completed' or state == 'failed' or state == 'cancelled' then
  return {'final', state}
end
if ARGV[13] ~= '' then
  local said = tonumber(redis.call('HGET', run, 'said_at') or '-1')
  if tonumber(ARGV[13]) < said then return {'stale'} end
  redis.call('HSET', run, 'said_at', ARGV[13])
end
redis.call('HSET', run, 'state', ARGV[1], 'updated', ARGV[7], 'stalled', 0)
if ARGV[2] ~= '' then redis.call('HSET', run, 'step', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', run, 'percent', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', run, 'reason', ARGV[4]) else redis.call('HDEL', run, 'reason') end
if ARGV[5] ~= '' then redis.call('HSET', run, 'message_id', ARGV[5], 'seq', ARGV[6]) end
redis.call('PEXPIRE', run, ARGV[8])
return {'changed', created}
"#;

/// Skips a gap older than the wait. KEYS: run, pieces, held. ARGV: now, gap_wait, ttl.
const SKIP_GAP: &str = concat!(
    stream_prelude!(),
    r#"
local now, gap_wait = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HGET', run, 'state')
if not state or is_over(state) then return {'none'} end
local since = tonumber(redis.call('HGET', run, 'gap_since'))
if not since or now - since < gap_wait then return {'none'} end
local first = first_held()
if not first then redis.call('HDEL', run, 'gap_since'); return {'none'} end
local nxt = tonumber(redis.call('HGET', run, 'next'))
local from = nxt
local pieces = {}
for i = nxt, first - 1 do table.insert(pieces, '') end
nxt = take_held(first, pieces)
redis.call('RPUSH', list, unpack(pieces))
redis.call('HINCRBY', run, 'bytes', size(pieces))
redis.call('HSET', run, 'next', nxt, 'updated', now)
mark_gap(now)
redis.call('PEXPIRE', run, ARGV[3]); redis.call('PEXPIRE', list, ARGV[3])
return appended(from, 0, pieces)
"#
);

/// Marks a run stalled. KEYS: run. Returns 1 when it changed.
const MARK_STALLED: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'completed' or state == 'failed' or state == 'cancelled' then return 0 end
-- Waiting for the user is not the agent's silence.
if state == 'input_required' then return 0 end
if redis.call('HGET', KEYS[1], 'stalled') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'stalled', 1)
return 1
"#;

fn outcome(reply: &[redis::Value]) -> Result<DeltaOutcome> {
    let text = |i: usize| -> String {
        match reply.get(i) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            Some(redis::Value::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    };
    let number = |i: usize| -> i64 { text(i).parse().unwrap_or_default() };
    Ok(match text(0).as_str() {
        "closed" => DeltaOutcome::Closed(RunState::parse(&text(1)).unwrap_or(RunState::Cancelled)),
        "dup" => DeltaOutcome::Duplicate,
        "held" => DeltaOutcome::Held {
            created: number(1) == 1,
        },
        "too_large" => DeltaOutcome::TooLarge,
        "too_far" => DeltaOutcome::TooFarAhead,
        "append" => DeltaOutcome::Appended {
            from_index: number(1) as u32,
            created: number(2) == 1,
            pieces: (3..reply.len()).map(text).collect(),
        },
        "none" => DeltaOutcome::Duplicate,
        other => {
            return Err(Error::dependency(
                "redis",
                format!("unexpected run script reply {other}"),
            ));
        }
    })
}

fn record_from(
    key: &RunKey,
    fields: &std::collections::HashMap<String, String>,
) -> Option<RunRecord> {
    let state = RunState::parse(fields.get("state")?)?;
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
    Some(RunRecord {
        run: AgentRunPayload {
            conversation_id: key.conversation_id.clone(),
            run_id: key.run_id.clone(),
            agent_id: fields.get("agent")?.clone(),
            state,
            detail: RunDetail {
                step: fields.get("step").cloned(),
                percent: number("percent").map(|p| p.clamp(0, 100) as u8),
                reason: fields.get("reason").cloned(),
            },
            stalled: fields.get("stalled").is_some_and(|s| s == "1"),
            message_id: fields.get("message_id").cloned(),
            sequence_number: number("seq").map(|s| s as u64),
            updated_at: number("updated").unwrap_or(0),
        },
        owners: RunOwners {
            agent_id: fields.get("agent")?.clone(),
            user_id: fields.get("user").cloned().unwrap_or_default(),
            audience: fields
                .get("audience")
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default(),
        },
        next_index: number("next").unwrap_or(0) as u32,
        gap_since: number("gap_since"),
    })
}

impl RedisState {
    /// Keeps the indexes of a run up to date: the sweep's, and each viewer's while it is open.
    async fn index_run(
        &self,
        key: &RunKey,
        audience: &[String],
        state: RunState,
        now_ms: i64,
    ) -> Result<()> {
        let keys = self.keys();
        let member = key.member();
        let mut pipe = redis::pipe();
        if state.is_final() {
            pipe.zrem(keys.active_runs(), &member);
            for user in audience {
                pipe.srem(keys.user_runs(user), &member);
            }
        } else {
            pipe.zadd(keys.active_runs(), &member, now_ms);
            for user in audience {
                pipe.sadd(keys.user_runs(user), &member)
                    .expire(keys.user_runs(user), RUN_TTL.as_secs() as i64);
            }
        }
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }
}

/// The keys of a run's stream scripts, in their KEYS order: the run, its pieces, the held ones.
fn stream_keys(keys: &crate::keys::Keys, key: &RunKey) -> Vec<String> {
    let (c, r) = (&key.conversation_id, &key.run_id);
    vec![keys.run(c, r), keys.run_text(c, r), keys.run_held(c, r)]
}

#[async_trait]
impl RunStore for RedisState {
    async fn apply_delta(
        &self,
        key: &RunKey,
        owners: &RunOwners,
        index: u32,
        text: &str,
        now_ms: i64,
        limits: StreamLimits,
    ) -> Result<DeltaOutcome> {
        let reply: Vec<redis::Value> = redis::Script::new(APPLY_DELTA)
            .key(stream_keys(self.keys(), key))
            .arg(index)
            .arg(text)
            .arg(now_ms)
            .arg(&owners.agent_id)
            .arg(&owners.user_id)
            .arg(serde_json::to_string(&owners.audience).unwrap_or_default())
            .arg(RUN_TTL.as_millis() as i64)
            .arg(limits.max_bytes)
            .arg(limits.gap_wait.as_millis() as i64)
            .arg(MAX_HELD)
            .invoke_async(&mut self.conn())
            .await?;
        let outcome = outcome(&reply)?;
        if matches!(
            outcome,
            DeltaOutcome::Appended { .. } | DeltaOutcome::Held { .. }
        ) {
            self.index_run(key, &owners.audience, RunState::Working, now_ms)
                .await?;
        }
        Ok(outcome)
    }

    async fn change_run(
        &self,
        key: &RunKey,
        owners: Option<&RunOwners>,
        change: &RunChange,
        now_ms: i64,
    ) -> Result<Transition> {
        let keys = self.keys();
        let run = keys.run(&key.conversation_id, &key.run_id);
        let reply: Vec<redis::Value> = redis::Script::new(CHANGE_RUN)
            .key(&run)
            .arg(change.state.as_str())
            .arg(change.detail.step.as_deref().unwrap_or_default())
            .arg(
                change
                    .detail
                    .percent
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            )
            .arg(change.detail.reason.as_deref().unwrap_or_default())
            .arg(change.message_id.as_deref().unwrap_or_default())
            .arg(change.sequence_number.unwrap_or_default())
            .arg(now_ms)
            .arg(RUN_TTL.as_millis() as i64)
            .arg(if owners.is_some() { "1" } else { "0" })
            .arg(owners.map(|o| o.agent_id.as_str()).unwrap_or_default())
            .arg(owners.map(|o| o.user_id.as_str()).unwrap_or_default())
            .arg(
                owners
                    .map(|o| serde_json::to_string(&o.audience).unwrap_or_default())
                    .unwrap_or_default(),
            )
            .arg(change.said_at.map(|t| t.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        let word = match reply.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        match word.as_str() {
            "unknown" => Ok(Transition::Unknown),
            "stale" => Ok(Transition::Stale),
            "final" => {
                let state = match reply.get(1) {
                    Some(redis::Value::BulkString(b)) => {
                        RunState::parse(&String::from_utf8_lossy(b)).unwrap_or(RunState::Completed)
                    }
                    _ => RunState::Completed,
                };
                Ok(Transition::AlreadyFinal(state))
            }
            "changed" => {
                let created = matches!(reply.get(1), Some(redis::Value::Int(1)));
                let record = self.run_record(key).await?.ok_or_else(|| {
                    Error::dependency("redis", "a run vanished while it was changed")
                })?;
                self.index_run(key, &record.owners.audience, record.run.state, now_ms)
                    .await?;
                Ok(Transition::Changed {
                    record: Box::new(record),
                    created,
                })
            }
            other => Err(Error::dependency(
                "redis",
                format!("unexpected run script reply {other}"),
            )),
        }
    }

    async fn run_record(&self, key: &RunKey) -> Result<Option<RunRecord>> {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys().run(&key.conversation_id, &key.run_id))
            .query_async(&mut self.conn())
            .await?;
        Ok(record_from(key, &fields))
    }

    async fn run_pieces(&self, key: &RunKey) -> Result<Vec<String>> {
        Ok(redis::cmd("LRANGE")
            .arg(self.keys().run_text(&key.conversation_id, &key.run_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?)
    }

    async fn runs_of_user(&self, user_id: &str) -> Result<Vec<RunRecord>> {
        let index = self.keys().user_runs(user_id);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut self.conn())
            .await?;
        let mut records = Vec::new();
        for member in members {
            let Some(key) = RunKey::from_member(&member) else {
                continue;
            };
            match self.run_record(&key).await? {
                Some(record) if !record.run.state.is_final() => records.push(record),
                _ => {
                    redis::cmd("SREM")
                        .arg(&index)
                        .arg(&member)
                        .exec_async(&mut self.conn())
                        .await?;
                }
            }
        }
        Ok(records)
    }

    async fn quiet_runs(&self, before_ms: i64, limit: usize) -> Result<Vec<RunKey>> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys().active_runs())
            .arg("-inf")
            .arg(before_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| RunKey::from_member(m))
            .collect())
    }

    async fn retire_run(&self, key: &RunKey) -> Result<()> {
        redis::cmd("ZREM")
            .arg(self.keys().active_runs())
            .arg(key.member())
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn skip_gap(
        &self,
        key: &RunKey,
        now_ms: i64,
        gap_wait: Duration,
    ) -> Result<DeltaOutcome> {
        let reply: Vec<redis::Value> = redis::Script::new(SKIP_GAP)
            .key(stream_keys(self.keys(), key))
            .arg(now_ms)
            .arg(gap_wait.as_millis() as i64)
            .arg(RUN_TTL.as_millis() as i64)
            .invoke_async(&mut self.conn())
            .await?;
        outcome(&reply)
    }

    async fn mark_stalled(&self, key: &RunKey) -> Result<bool> {
        let changed: i64 = redis::Script::new(MARK_STALLED)
            .key(self.keys().run(&key.conversation_id, &key.run_id))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(frames: &[ServerFrame]) -> Vec<(u32, u32, usize, bool)> {
        frames
            .iter()
            .map(|f| match f {
                ServerFrame::MessageDelta { payload } => (
                    payload.from_index,
                    payload.to_index,
                    payload.text.len(),
                    payload.snapshot,
                ),
                _ => panic!("not a delta"),
            })
            .collect()
    }

    #[test]
    fn pieces_go_in_frames_under_the_limit_each_covering_whole_pieces() {
        let key = RunKey::new("c", "r");
        let pieces = |n: usize, len: usize| vec!["x".repeat(len); n];
        assert_eq!(
            spans(&delta_frames(&key, "a", 3, &pieces(2, 5), false)),
            [(3, 5, 10, false)]
        );
        // 3 KB pieces: two fit in 8 KB.
        let frames = delta_frames(&key, "a", 0, &pieces(5, 3 * 1024), true);
        assert_eq!(
            spans(&frames),
            [
                (0, 2, 6 * 1024, true),
                (2, 4, 6 * 1024, false),
                (4, 5, 3 * 1024, false)
            ]
        );
        // An empty snapshot still says "nothing yet".
        assert_eq!(
            spans(&delta_frames(&key, "a", 0, &[], true)),
            [(0, 0, 0, true)]
        );
    }
}
