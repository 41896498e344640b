//! Real-time state in Redis: connections (multi-device), presence, typing, rate limits, caches.
//!
//! This is the only place that talks to Redis. Everything here is soft state that can be lost
//! without losing a message or changing what a user sees: MongoDB holds every message and what
//! every device has received; a lost connection record is re-registered by the connection's next
//! frame (its identity rides on every frame, see `crate::identity`). Each operation is one round trip: writes that touch several keys are sent
//! as one `MULTI`/`EXEC` pipeline, so a crash never leaves half an update. The adapter counts its
//! round trips ([`RedisState::round_trips`]) so benchmarks can report them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::group_receipts::{ReceiptNote, ReceiptTurn};
use crate::keys::{CONNECTION_TTL, Keys, ONCE_TTL, PRESENCE_TTL, SEQUENCE_HINT_TTL};
use crate::protocol::PresenceStatus;

/// A live WebSocket connection of a user's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// API Gateway connection id.
    pub connection_id: String,
    /// Authenticated user.
    pub user_id: String,
    /// Device (several per user).
    pub device_id: String,
    /// Connect time, milliseconds since the epoch.
    pub connected_at: i64,
}

/// What remains after a connection is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedConnection {
    /// Owner of the removed connection.
    pub user_id: String,
    /// Connections the user still has.
    pub remaining: u64,
}

/// A user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Online or offline.
    pub status: PresenceStatus,
    /// Last activity, milliseconds since the epoch, when known.
    pub last_seen: Option<i64>,
}

/// Outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead; this many requests remain in the window.
    Allowed {
        /// Requests left in the current window.
        remaining: u64,
    },
    /// Refused until the window ends.
    Limited {
        /// Seconds until the window resets.
        retry_after_secs: u64,
    },
}

impl RateDecision {
    /// The requests left, or `rate_limited` (with its wait) when refused: the one place a
    /// decision becomes the error clients see.
    pub fn check(self) -> Result<u64> {
        match self {
            Self::Allowed { remaining } => Ok(remaining),
            Self::Limited { retry_after_secs } => {
                Err(crate::error::Error::RateLimited { retry_after_secs })
            }
        }
    }
}

/// A rate limit: at most `max` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub max: u64,
    /// Window length.
    pub window: Duration,
}

/// Where a piece of at-least-once work stands (see [`RealtimeState::claim_work`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkClaim {
    /// This caller does the work.
    Claimed,
    /// Another caller is doing it (or died doing it): ask again after `retry_after`, when its
    /// lease runs out.
    InProgress {
        /// What is left of the other caller's lease.
        retry_after: Duration,
    },
    /// It was done.
    Done,
}

/// A message an agent has yet to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentWait {
    /// Conversation.
    pub conversation_id: String,
    /// The user's message.
    pub message_id: String,
    /// The agent expected to answer.
    pub agent_id: String,
    /// The user waiting.
    pub user_id: String,
}

impl AgentWait {
    fn encode(&self) -> String {
        [
            self.conversation_id.as_str(),
            &self.message_id,
            &self.agent_id,
            &self.user_id,
        ]
        .join("\u{1f}")
    }

    fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split('\u{1f}');
        Some(Self {
            conversation_id: parts.next()?.to_string(),
            message_id: parts.next()?.to_string(),
            agent_id: parts.next()?.to_string(),
            user_id: parts.next()?.to_string(),
        })
    }
}

/// The real-time state port.
#[async_trait]
pub trait RealtimeState:
    crate::runs::RunStore + crate::group_receipts::ReceiptStore + Send + Sync
{
    /// Records a connection and marks its user online.
    /// Returns how many connections the user has now (1: they just came online).
    async fn register_connection(&self, connection: &ConnectionInfo) -> Result<u64>;
    /// The connection record, if it is live.
    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionInfo>>;
    /// Forgets one connection (only that one) and says how many the user has left.
    /// Returns `None` when the connection was unknown.
    async fn remove_connection(&self, connection_id: &str) -> Result<Option<RemovedConnection>>;
    /// All live connection ids of a user.
    async fn user_connections(&self, user_id: &str) -> Result<Vec<String>>;
    /// [`RealtimeState::user_connections`] of several users in one round trip (a group's
    /// fan-out), in the order of `user_ids`.
    async fn connections_of_users(&self, user_ids: &[String]) -> Result<Vec<Vec<String>>>;
    /// The live connections of one device of a user (where its `to_device` messages go).
    async fn device_connections(&self, user_id: &str, device_id: &str) -> Result<Vec<String>>;
    /// Heartbeat: refreshes the connection's and the presence TTLs.
    async fn touch(&self, connection: &ConnectionInfo, now_ms: i64) -> Result<()>;
    /// A user's presence (offline when nothing is recorded).
    async fn presence(&self, user_id: &str) -> Result<Presence>;
    /// Marks a user offline with a last-seen time.
    async fn set_offline(&self, user_id: &str, last_seen_ms: i64) -> Result<()>;
    /// Records that a user is typing in a conversation until `until_ms`.
    async fn set_typing(&self, conversation_id: &str, user_id: &str, until_ms: i64) -> Result<()>;
    /// Records that a user stopped typing.
    async fn clear_typing(&self, conversation_id: &str, user_id: &str) -> Result<()>;
    /// Users typing in a conversation at `now_ms`.
    async fn typing_users(&self, conversation_id: &str, now_ms: i64) -> Result<Vec<String>>;
    /// Claims work `id` in `scope` (the handling of an at-least-once event) for `lease`: the
    /// first caller gets [`WorkClaim::Claimed`]; while it works, others get
    /// [`WorkClaim::InProgress`]; once it called [`RealtimeState::finish_work`], others get
    /// [`WorkClaim::Done`] for a day. A claimer that dies without finishing loses the claim when
    /// the lease runs out, so a redelivery redoes the work instead of skipping it.
    async fn claim_work(&self, scope: &str, id: &str, lease: Duration) -> Result<WorkClaim>;
    /// [`RealtimeState::claim_work`] and [`RealtimeState::connections_of_users`] in one round
    /// trip: a fan-out's claim and where it would go (the connections read right after the
    /// claim, of use only when it is [`WorkClaim::Claimed`]). When a connection set cannot be
    /// read, the claim taken is given back before the error; when the round trip itself fails,
    /// a claim it took is held until its lease ends, as with `claim_work`.
    async fn claim_work_for_users(
        &self,
        scope: &str,
        id: &str,
        lease: Duration,
        user_ids: &[String],
    ) -> Result<(WorkClaim, Vec<Vec<String>>)>;
    /// Raises a conversation's last-number hint to a number just stored there (never lowers
    /// it), for [`crate::keys::SEQUENCE_HINT_TTL`] (see [`SequenceHint`]).
    async fn note_last_sequence(&self, stored: SequenceHint<'_>) -> Result<()>;
    /// A conversation's last-number hint (see [`SequenceHint`]; `None`: none noted within
    /// [`crate::keys::SEQUENCE_HINT_TTL`]). A `message` frame reads it in its one round trip
    /// instead ([`RealtimeState::frame_budget`]).
    async fn last_sequence(&self, conversation_id: &str) -> Result<Option<u64>>;
    /// The claimed work is done: redeliveries skip it for a day.
    async fn finish_work(&self, scope: &str, id: &str) -> Result<()>;
    /// The claimed work failed: the next delivery may claim it at once.
    async fn release_work(&self, scope: &str, id: &str) -> Result<()>;
    /// Which of `ids` in `scope` were finished ([`RealtimeState::finish_work`]) within the
    /// last day, in the order given, in one round trip. Work never claimed, still in progress
    /// or forgotten (Redis came back empty) is not done.
    async fn work_done(&self, scope: &str, ids: &[String]) -> Result<Vec<bool>>;
    /// Starts waiting for an agent's answer until `deadline_ms`.
    async fn await_agent(&self, wait: &AgentWait, deadline_ms: i64) -> Result<()>;
    /// The agent showed progress in a conversation: push its deadlines to `deadline_ms`.
    async fn extend_agent_waits(&self, conversation_id: &str, deadline_ms: i64) -> Result<()>;
    /// The agent answered in a conversation: stop waiting there.
    async fn agent_answered(&self, conversation_id: &str) -> Result<()>;
    /// Removes and returns up to `limit` connections that connected at or before `cutoff_ms`,
    /// with their `connected_at` (each to one caller only), for the sweep that migrates
    /// connections nearing their maximum lifetime.
    async fn take_connections_older_than(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>>;
    /// Puts a connection back among those the lifetime sweep looks at (a migration notice that
    /// could not be posted is tried again by the next sweep).
    async fn track_connection_age(&self, connection_id: &str, connected_at: i64) -> Result<()>;
    /// Removes and returns up to `limit` waits whose deadline passed (each to one caller only).
    async fn take_expired_agent_waits(&self, now_ms: i64, limit: usize) -> Result<Vec<AgentWait>>;
    /// Counts one request of `subject` against `limit` in scope `scope`.
    async fn rate_limit(
        &self,
        scope: &str,
        subject: &str,
        limit: RateLimit,
        now_ms: i64,
    ) -> Result<RateDecision>;
    /// Counts one request of `subject` against several limits at once (one round trip); the
    /// decisions come back in the order of `limits`. A request refused by any limit counts
    /// against none.
    async fn rate_limits(
        &self,
        subject: &str,
        limits: &[(&str, RateLimit)],
        now_ms: i64,
    ) -> Result<Vec<RateDecision>>;
    /// [`RealtimeState::rate_limits`] for a frame of `caller`'s connection, and in the same
    /// round trip whether that connection is registered (a frame of a connection Redis lost
    /// registers it again), with `touch` what [`RealtimeState::touch`] does (a heartbeat: one
    /// round trip in all), with `receipt` what
    /// [`crate::group_receipts::ReceiptStore::note_receipt`] does (a group member's
    /// `delivery_ack`: one round trip in all), and with `sending_to`, a `message` frame's
    /// conversation, what the send needs before its insert: the conversation's cached routing
    /// fields ([`RealtimeState::cache_get`] of [`crate::conversations::cache_name`]) and its
    /// [`SequenceHint`].
    async fn frame_budget(
        &self,
        caller: &ConnectionInfo,
        limits: &[(&str, RateLimit)],
        touch: bool,
        receipt: Option<&ReceiptNote>,
        sending_to: Option<&str>,
        now_ms: i64,
    ) -> Result<FrameBudget>;
    /// A cached value (see [`crate::keys::Keys::cache`]), if present.
    async fn cache_get(&self, name: &str) -> Result<Option<String>>;
    /// Caches a value for `ttl`.
    async fn cache_put(&self, name: &str, value: &str, ttl: Duration) -> Result<()>;
    /// Drops a cached value.
    async fn cache_delete(&self, name: &str) -> Result<()>;
    /// Forgets everything held about a user (account deletion): their connection records,
    /// presence and rate-limit counters. Returns the connection ids they had, for the
    /// caller to close.
    async fn forget_user(&self, user_id: &str) -> Result<Vec<String>>;
}

/// What a frame's one round trip said (see [`RealtimeState::frame_budget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameBudget {
    /// One decision per limit, in order.
    pub decisions: Vec<RateDecision>,
    /// Whether the connection is registered.
    pub registered: bool,
    /// Who sends the group receipt that was noted, when one was.
    pub receipt: Option<ReceiptTurn>,
    /// What was read for the conversation a `message` frame sends to (`None`: not asked).
    pub sending_to: Option<SendingTo>,
}

/// What a `message` frame's round trip read about its conversation (see
/// [`RealtimeState::frame_budget`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendingTo {
    /// The conversation's cached routing fields (`None`: not cached).
    pub cached: Option<String>,
    /// The conversation's last-number hint: the highest number its inserters noted within
    /// [`crate::keys::SEQUENCE_HINT_TTL`] (`None`: none, Redis forgot it, or the key could not be
    /// read).
    pub last_sequence: Option<u64>,
}

/// A conversation's last-number hint: the sequence number of a message just stored in it, noted
/// by whoever stored it (see [`crate::keys::Keys::sequence_hint`]) so that the next send, from
/// any process, starts there without reading MongoDB. Only what our own inserts stored is
/// noted, never a number from an event: a hint above the truth would leave a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceHint<'a> {
    /// The conversation.
    pub conversation_id: &'a str,
    /// A number stored in it.
    pub sequence_number: u64,
}

/// Default deadline of one Redis round trip (`REDIS_TIMEOUT_MS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// The Redis adapter: one multiplexed, auto-reconnecting connection shared by all tasks.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    keys: Keys,
    round_trips: Arc<AtomicU64>,
    timeout: Duration,
}

impl RedisState {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`), keys under `prefix`, with the default
    /// deadline per round trip.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Self::connect_with_timeout(url, prefix, DEFAULT_TIMEOUT).await
    }

    /// Connects with a deadline for every round trip (and every reconnection attempt): a
    /// stalled or unreachable Redis gives `unavailable` within it, never silence. The
    /// connection is made lazily, so a function starts even while Redis is down and recovers
    /// by itself when it is back.
    pub async fn connect_with_timeout(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix),
            round_trips: Arc::default(),
            timeout,
        })
    }

    /// Key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Round trips made so far (for benchmarks).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// A clone of the underlying connection, for tests and diagnostics.
    pub fn connection_manager(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(crate) fn conn(&self) -> TimedConnection {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        TimedConnection(self.conn.clone(), self.timeout)
    }
}

/// The shared connection: every round trip counted, timed for [`crate::metrics`], and bounded
/// by the deadline (the one place all three happen).
pub(crate) struct TimedConnection(ConnectionManager, Duration);

fn timed_out(limit: Duration) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} ms", limit.as_millis()),
    ))
}

impl redis::aio::ConnectionLike for TimedConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let _timer = crate::metrics::time(crate::metrics::Stage::Redis);
            let limit = self.1;
            tokio::time::timeout(limit, self.0.req_packed_command(cmd))
                .await
                .unwrap_or_else(|_| Err(timed_out(limit)))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let _timer = crate::metrics::time(crate::metrics::Stage::Redis);
            let limit = self.1;
            tokio::time::timeout(limit, self.0.req_packed_commands(cmd, offset, count))
                .await
                .unwrap_or_else(|_| Err(timed_out(limit)))
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

#[async_trait]
impl RealtimeState for RedisState {
    async fn register_connection(&self, c: &ConnectionInfo) -> Result<u64> {
        let conn_key = self.keys.connection(&c.connection_id);
        let set_key = self.keys.user_connections(&c.user_id);
        let presence_key = self.keys.presence(&c.user_id);
        let (connections,): (u64,) = redis::pipe()
            .atomic()
            .hset_multiple(
                &conn_key,
                &[
                    ("user_id", c.user_id.as_str()),
                    ("device_id", c.device_id.as_str()),
                    ("connected_at", &c.connected_at.to_string()),
                ],
            )
            .ignore()
            .expire(&conn_key, secs(CONNECTION_TTL))
            .ignore()
            .sadd(&set_key, &c.connection_id)
            .ignore()
            .expire(&set_key, secs(CONNECTION_TTL))
            .ignore()
            .scard(&set_key)
            .zadd(
                self.keys.connections_by_age(),
                &c.connection_id,
                c.connected_at,
            )
            .ignore()
            .hset_multiple(
                &presence_key,
                &[
                    ("status", "online"),
                    ("last_seen", &c.connected_at.to_string()),
                ],
            )
            .ignore()
            .expire(&presence_key, secs(PRESENCE_TTL))
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(connections)
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<ConnectionInfo>> {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.connection(connection_id))
            .query_async(&mut self.conn())
            .await?;
        Ok(connection_from_fields(connection_id, fields))
    }

    async fn remove_connection(&self, connection_id: &str) -> Result<Option<RemovedConnection>> {
        // One script: read the owner, delete the record, remove it from the owner's set, count
        // what is left. Atomic, so two devices disconnecting at once both see the right count.
        const SCRIPT: &str = r#"
            redis.call('ZREM', KEYS[2], ARGV[2])
            local user = redis.call('HGET', KEYS[1], 'user_id')
            if not user then return false end
            redis.call('DEL', KEYS[1])
            local set = ARGV[1] .. '{u:' .. user .. '}:conns'
            redis.call('SREM', set, ARGV[2])
            return {user, redis.call('SCARD', set)}
        "#;
        let result: Option<(String, u64)> = redis::Script::new(SCRIPT)
            .key(self.keys.connection(connection_id))
            .key(self.keys.connections_by_age())
            .arg(self.keys.prefix())
            .arg(connection_id)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(result.map(|(user_id, remaining)| RemovedConnection { user_id, remaining }))
    }

    async fn user_connections(&self, user_id: &str) -> Result<Vec<String>> {
        let mut all = self.connections_of_users(&[user_id.to_string()]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    async fn connections_of_users(&self, user_ids: &[String]) -> Result<Vec<Vec<String>>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for user_id in user_ids {
            pipe.cmd("SMEMBERS")
                .arg(self.keys.user_connections(user_id));
        }
        let mut all: Vec<Vec<String>> = pipe.query_async(&mut self.conn()).await?;
        for ids in &mut all {
            ids.sort();
        }
        Ok(all)
    }

    async fn device_connections(&self, user_id: &str, device_id: &str) -> Result<Vec<String>> {
        let ids = self.user_connections(user_id).await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET")
                .arg(self.keys.connection(id))
                .arg("device_id");
        }
        let devices: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(ids
            .into_iter()
            .zip(devices)
            .filter(|(_, device)| device.as_deref() == Some(device_id))
            .map(|(id, _)| id)
            .collect())
    }

    async fn touch(&self, c: &ConnectionInfo, now_ms: i64) -> Result<()> {
        let presence_key = self.keys.presence(&c.user_id);
        redis::pipe()
            .atomic()
            .expire(self.keys.connection(&c.connection_id), secs(CONNECTION_TTL))
            .expire(self.keys.user_connections(&c.user_id), secs(CONNECTION_TTL))
            .hset_multiple(
                &presence_key,
                &[("status", "online"), ("last_seen", &now_ms.to_string())],
            )
            .expire(&presence_key, secs(PRESENCE_TTL))
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn presence(&self, user_id: &str) -> Result<Presence> {
        let (status, last_seen): (Option<String>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys.presence(user_id))
            .arg("status")
            .arg("last_seen")
            .query_async(&mut self.conn())
            .await?;
        Ok(Presence {
            status: match status.as_deref() {
                Some("online") => PresenceStatus::Online,
                _ => PresenceStatus::Offline,
            },
            last_seen,
        })
    }

    async fn set_offline(&self, user_id: &str, last_seen_ms: i64) -> Result<()> {
        let key = self.keys.presence(user_id);
        // Offline presence is kept for a day so "last seen" is answered from Redis; MongoDB has it
        // for good.
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("status", "offline"),
                    ("last_seen", &last_seen_ms.to_string()),
                ],
            )
            .expire(&key, 24 * 3600)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn set_typing(&self, conversation_id: &str, user_id: &str, until_ms: i64) -> Result<()> {
        let key = self.keys.typing(conversation_id);
        let ttl_ms = (until_ms - crate::clock::now_ms()).max(1);
        redis::pipe()
            .atomic()
            .zadd(&key, user_id, until_ms)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .arg("GT")
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .arg("NX")
            .ignore()
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn clear_typing(&self, conversation_id: &str, user_id: &str) -> Result<()> {
        redis::cmd("ZREM")
            .arg(self.keys.typing(conversation_id))
            .arg(user_id)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn typing_users(&self, conversation_id: &str, now_ms: i64) -> Result<Vec<String>> {
        let users: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.typing(conversation_id))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut self.conn())
            .await?;
        Ok(users)
    }

    async fn claim_work(&self, scope: &str, id: &str, lease: Duration) -> Result<WorkClaim> {
        let mut pipe = redis::pipe();
        self.claim_cmd(&mut pipe, scope, id, lease);
        let (state,): (i64,) = pipe.query_async(&mut self.conn()).await?;
        Ok(work_claim(state))
    }

    async fn claim_work_for_users(
        &self,
        scope: &str,
        id: &str,
        lease: Duration,
        user_ids: &[String],
    ) -> Result<(WorkClaim, Vec<Vec<String>>)> {
        let mut pipe = redis::pipe();
        self.claim_cmd(&mut pipe, scope, id, lease);
        for user_id in user_ids {
            pipe.cmd("SMEMBERS")
                .arg(self.keys.user_connections(user_id));
        }
        // Each reply on its own: a connection set that cannot be read must not leave this
        // caller holding the claim it just took (redeliveries would wait out the lease).
        let reply: Vec<redis::Value> = pipe.ignore_errors().query_async(&mut self.conn()).await?;
        let mut reply = reply.into_iter();
        let claim = work_claim(next_value(&mut reply)?);
        let connections = user_ids
            .iter()
            .map(|_| {
                next_value::<Vec<String>>(&mut reply).map(|mut ids| {
                    ids.sort();
                    ids
                })
            })
            .collect::<Result<Vec<_>>>();
        match connections {
            Ok(connections) => Ok((claim, connections)),
            Err(e) => {
                if claim == WorkClaim::Claimed {
                    self.release_work(scope, id).await?;
                }
                Err(e)
            }
        }
    }

    async fn note_last_sequence(&self, stored: SequenceHint<'_>) -> Result<()> {
        let key = self.keys.sequence_hint(stored.conversation_id);
        // GT: a slower sender of an earlier number never lowers it. Atomic: a hint whose expiry
        // was lost would outlive what makes it safe.
        redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg("GT")
            .arg(stored.sequence_number)
            .arg(SEQUENCE_HINT_MEMBER)
            .ignore()
            .pexpire(&key, SEQUENCE_HINT_TTL.as_millis() as i64)
            .ignore()
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn last_sequence(&self, conversation_id: &str) -> Result<Option<u64>> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.keys.sequence_hint(conversation_id))
            .arg(SEQUENCE_HINT_MEMBER)
            .query_async(&mut self.conn())
            .await?;
        Ok(hint_number(score))
    }

    async fn finish_work(&self, scope: &str, id: &str) -> Result<()> {
        redis::cmd("SET")
            .arg(self.keys.once(scope, id))
            .arg("done")
            .arg("EX")
            .arg(secs(ONCE_TTL))
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn await_agent(&self, wait: &AgentWait, deadline_ms: i64) -> Result<()> {
        let member = wait.encode();
        let per_conversation = self.keys.agent_waits_of(&wait.conversation_id);
        redis::pipe()
            .atomic()
            .zadd(self.keys.agent_waits(), &member, deadline_ms)
            .sadd(&per_conversation, &member)
            .expire(&per_conversation, 7 * 24 * 3600)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn extend_agent_waits(&self, conversation_id: &str, deadline_ms: i64) -> Result<()> {
        const SCRIPT: &str = r#"
            for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
                redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[1], m)
            end
            return 0
        "#;
        redis::Script::new(SCRIPT)
            .key(self.keys.agent_waits())
            .key(self.keys.agent_waits_of(conversation_id))
            .arg(deadline_ms)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn agent_answered(&self, conversation_id: &str) -> Result<()> {
        const SCRIPT: &str = r#"
            local members = redis.call('SMEMBERS', KEYS[2])
            for _, m in ipairs(members) do redis.call('ZREM', KEYS[1], m) end
            redis.call('DEL', KEYS[2])
            return #members
        "#;
        redis::Script::new(SCRIPT)
            .key(self.keys.agent_waits())
            .key(self.keys.agent_waits_of(conversation_id))
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn take_connections_older_than(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        // Atomic pop: two sweeps never both tell a connection to migrate.
        const SCRIPT: &str = r#"
            local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2], 'WITHSCORES')
            for i = 1, #due, 2 do redis.call('ZREM', KEYS[1], due[i]) end
            return due
        "#;
        Ok(redis::Script::new(SCRIPT)
            .key(self.keys.connections_by_age())
            .arg(cutoff_ms)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await?)
    }

    async fn track_connection_age(&self, connection_id: &str, connected_at: i64) -> Result<()> {
        redis::cmd("ZADD")
            .arg(self.keys.connections_by_age())
            .arg(connected_at)
            .arg(connection_id)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn take_expired_agent_waits(&self, now_ms: i64, limit: usize) -> Result<Vec<AgentWait>> {
        // Atomic pop: two sweepers never both report the same timeout.
        const SCRIPT: &str = r#"
            local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
            for _, m in ipairs(due) do
                redis.call('ZREM', KEYS[1], m)
                local conv = string.match(m, '^([^\31]*)')
                redis.call('SREM', ARGV[3] .. conv, m)
            end
            return due
        "#;
        let due: Vec<String> = redis::Script::new(SCRIPT)
            .key(self.keys.agent_waits())
            .arg(now_ms)
            .arg(limit)
            .arg(self.keys.agent_waits_of(""))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(due.iter().filter_map(|m| AgentWait::decode(m)).collect())
    }

    async fn release_work(&self, scope: &str, id: &str) -> Result<()> {
        redis::cmd("DEL")
            .arg(self.keys.once(scope, id))
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn work_done(&self, scope: &str, ids: &[String]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A pipeline of GETs, not one MGET: the keys are on different Cluster slots.
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.get(self.keys.once(scope, id));
        }
        let states: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(states
            .into_iter()
            .map(|state| state.as_deref() == Some("done"))
            .collect())
    }

    async fn forget_user(&self, user_id: &str) -> Result<Vec<String>> {
        self.forget_user_keys(user_id).await
    }

    async fn rate_limit(
        &self,
        scope: &str,
        subject: &str,
        limit: RateLimit,
        now_ms: i64,
    ) -> Result<RateDecision> {
        let decisions = self.rate_limits(subject, &[(scope, limit)], now_ms).await?;
        Ok(decisions[0])
    }

    async fn rate_limits(
        &self,
        subject: &str,
        limits: &[(&str, RateLimit)],
        now_ms: i64,
    ) -> Result<Vec<RateDecision>> {
        let mut pipe = redis::pipe();
        self.token_buckets(&mut pipe, subject, limits, now_ms);
        let (answer,): (Vec<i64>,) = pipe.query_async(&mut self.conn()).await?;
        Ok(decisions(&answer, limits.len()))
    }

    async fn frame_budget(
        &self,
        caller: &ConnectionInfo,
        limits: &[(&str, RateLimit)],
        touch: bool,
        receipt: Option<&ReceiptNote>,
        sending_to: Option<&str>,
        now_ms: i64,
    ) -> Result<FrameBudget> {
        let mut pipe = redis::pipe();
        self.token_buckets(&mut pipe, &caller.user_id, limits, now_ms);
        pipe.exists(self.keys.connection(&caller.connection_id));
        if touch {
            // After EXISTS: a lost record is not half-recreated by the EXPIREs (they do nothing
            // on a missing key), and the caller registers it again.
            let presence_key = self.keys.presence(&caller.user_id);
            pipe.expire(
                self.keys.connection(&caller.connection_id),
                secs(CONNECTION_TTL),
            )
            .ignore()
            .expire(
                self.keys.user_connections(&caller.user_id),
                secs(CONNECTION_TTL),
            )
            .ignore()
            .hset_multiple(
                &presence_key,
                &[("status", "online"), ("last_seen", &now_ms.to_string())],
            )
            .ignore()
            .expire(&presence_key, secs(PRESENCE_TTL))
            .ignore();
        }
        if let Some(note) = receipt {
            self.note_receipt_cmd(&mut pipe, note);
        }
        if let Some(conversation_id) = sending_to {
            pipe.get(
                self.keys
                    .cache(&crate::conversations::cache_name(conversation_id)),
            )
            .zscore(
                self.keys.sequence_hint(conversation_id),
                SEQUENCE_HINT_MEMBER,
            );
        }
        // Each reply on its own: a cached value or hint that cannot be read (a key of another
        // type) is only not there, and must not cost the frame its budgets.
        let reply: Vec<redis::Value> = pipe.ignore_errors().query_async(&mut self.conn()).await?;
        let mut reply = reply.into_iter();
        let answer: Vec<i64> = next_value(&mut reply)?;
        let registered: bool = next_value(&mut reply)?;
        let receipt = match receipt {
            Some(_) => Some(crate::group_receipts::turn_from(next_value(&mut reply)?)),
            None => None,
        };
        let sending_to = sending_to.map(|_| SendingTo {
            cached: next_value(&mut reply).ok().flatten(),
            last_sequence: hint_number(next_value(&mut reply).ok().flatten()),
        });
        Ok(FrameBudget {
            decisions: decisions(&answer, limits.len()),
            registered,
            receipt,
            sending_to,
        })
    }

    async fn cache_get(&self, name: &str) -> Result<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(self.keys.cache(name))
            .query_async(&mut self.conn())
            .await?)
    }

    async fn cache_put(&self, name: &str, value: &str, ttl: Duration) -> Result<()> {
        redis::cmd("SET")
            .arg(self.keys.cache(name))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn cache_delete(&self, name: &str) -> Result<()> {
        redis::cmd("DEL")
            .arg(self.keys.cache(name))
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }
}

/// Token buckets, all or nothing: each bucket holds up to `max` tokens and refills at `max` per
/// window, continuously, so no burst across a window edge can pass twice the budget (a fixed
/// window could). A request takes one token from every bucket, or from none when any is empty.
/// KEYS: the buckets; ARGV: now (ms), then per bucket its capacity and window (ms). Answers per
/// bucket `1, tokens left` or `0, ms until a token is back`.
const TOKEN_BUCKETS: &str = r#"
    local now = tonumber(ARGV[1])
    local state, ok = {}, true
    for i, key in ipairs(KEYS) do
        local cap = tonumber(ARGV[2 * i])
        local window = tonumber(ARGV[2 * i + 1])
        local saved = redis.call('HMGET', key, 'tokens', 'at')
        local tokens, at = tonumber(saved[1]), tonumber(saved[2])
        if tokens == nil or at == nil then tokens, at = cap, now end
        tokens = math.min(cap, tokens + math.max(0, now - at) * cap / window)
        state[i] = {tokens, cap, window}
        if tokens < 1 then ok = false end
    end
    local answer = {}
    for i, key in ipairs(KEYS) do
        local tokens, cap, window = state[i][1], state[i][2], state[i][3]
        if ok then tokens = tokens - 1 end
        redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now)
        redis.call('PEXPIRE', key, window)
        if tokens >= 0 and ok then
            table.insert(answer, 1)
            table.insert(answer, math.floor(tokens))
        elseif tokens >= 1 then
            -- this bucket had room; another one refused the request
            table.insert(answer, 1)
            table.insert(answer, math.floor(tokens))
        else
            table.insert(answer, 0)
            table.insert(answer, math.ceil((1 - tokens) * window / cap))
        end
    end
    return answer
"#;

/// The next reply of a pipeline, decoded.
pub(crate) fn next_value<T: redis::FromRedisValue>(
    reply: &mut impl Iterator<Item = redis::Value>,
) -> Result<T> {
    Ok(
        redis::from_redis_value(reply.next().unwrap_or(redis::Value::Nil))
            .map_err(redis::RedisError::from)?,
    )
}

/// The one member of a [`Keys::sequence_hint`] sorted set (its score is the number).
const SEQUENCE_HINT_MEMBER: &str = "last";

/// A last-number hint's score as a sequence number (a score no insert could have noted is no
/// hint).
fn hint_number(score: Option<f64>) -> Option<u64> {
    score
        .filter(|n| n.is_finite() && *n >= 1.0 && n.fract() == 0.0)
        .map(|n| n as u64)
}

/// Takes work that is neither done nor claimed (`SET ... working PX lease`); answers 0 when
/// taken, -2 when done, else the milliseconds left of the current claim.
const CLAIM_WORK: &str = r#"
    local state = redis.call('GET', KEYS[1])
    if state == 'done' then return -2 end
    if state then return math.max(1, redis.call('PTTL', KEYS[1])) end
    redis.call('SET', KEYS[1], 'working', 'PX', ARGV[1])
    return 0
"#;

/// What the answer of [`CLAIM_WORK`] means.
fn work_claim(state: i64) -> WorkClaim {
    match state {
        0 => WorkClaim::Claimed,
        -2 => WorkClaim::Done,
        left => WorkClaim::InProgress {
            retry_after: Duration::from_millis(left.max(1) as u64),
        },
    }
}

/// The decisions of [`TOKEN_BUCKETS`]' answer. When another bucket refused, a bucket with room
/// reports its room; the caller refuses the request on the first refusal.
fn decisions(answer: &[i64], buckets: usize) -> Vec<RateDecision> {
    (0..buckets)
        .map(|i| {
            let allowed = answer.get(2 * i).copied().unwrap_or(0) == 1;
            let value = answer.get(2 * i + 1).copied().unwrap_or(0).max(0) as u64;
            if allowed {
                RateDecision::Allowed { remaining: value }
            } else {
                RateDecision::Limited {
                    retry_after_secs: value.div_ceil(1000).max(1),
                }
            }
        })
        .collect()
}

impl RedisState {
    /// The claim of [`RealtimeState::claim_work`], as one command of `pipe` (its answer: see
    /// [`work_claim`]).
    fn claim_cmd(&self, pipe: &mut redis::Pipeline, scope: &str, id: &str, lease: Duration) {
        // EVAL, as the token buckets: a Redis that restarted empty forgot every loaded script.
        pipe.cmd("EVAL")
            .arg(CLAIM_WORK)
            .arg(1)
            .arg(self.keys.once(scope, id))
            .arg(lease.as_millis().max(1) as u64);
    }

    /// Adds the token-bucket script for `limits` of `subject` to `pipe` (one answer: a list).
    fn token_buckets(
        &self,
        pipe: &mut redis::Pipeline,
        subject: &str,
        limits: &[(&str, RateLimit)],
        now_ms: i64,
    ) {
        // EVAL rather than EVALSHA: the script is short, and a Redis that restarted empty has
        // forgotten every loaded script.
        pipe.cmd("EVAL").arg(TOKEN_BUCKETS).arg(limits.len());
        for (scope, _) in limits {
            pipe.arg(self.keys.rate_limit(scope, subject));
        }
        pipe.arg(now_ms);
        for (_, limit) in limits {
            pipe.arg(limit.max)
                .arg(limit.window.as_millis().max(1) as u64);
        }
    }

    async fn forget_user_keys(&self, user_id: &str) -> Result<Vec<String>> {
        let connections = self.user_connections(user_id).await?;
        let mut doomed: Vec<String> = connections
            .iter()
            .map(|c| self.keys.connection(c))
            .collect();
        // Every per-user key shares the `{u:ID}:` hash tag: find them all with one pattern.
        let pattern = self.keys.user_keys_pattern(user_id);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn())
                .await?;
            doomed.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for chunk in doomed.chunks(500) {
            redis::cmd("DEL")
                .arg(chunk)
                .exec_async(&mut self.conn())
                .await?;
        }
        if !connections.is_empty() {
            redis::cmd("ZREM")
                .arg(self.keys.connections_by_age())
                .arg(&connections)
                .exec_async(&mut self.conn())
                .await?;
        }
        Ok(connections)
    }
}

fn connection_from_fields(
    connection_id: &str,
    mut fields: std::collections::HashMap<String, String>,
) -> Option<ConnectionInfo> {
    let user_id = fields.remove("user_id")?;
    Some(ConnectionInfo {
        connection_id: connection_id.to_string(),
        user_id,
        device_id: fields.remove("device_id").unwrap_or_default(),
        connected_at: fields
            .remove("connected_at")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
    })
}
