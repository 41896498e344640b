//! Every Redis key name and TTL, in one place.
//!
//! All keys start with a configurable prefix (`REDIS_KEY_PREFIX`, default `msg:`) so that several
//! deployments or test cases can share one Redis. Per-user keys put the user id in a hash tag
//! (`{u:ID}`) so that a user's keys live on one Redis Cluster slot and can be updated in one
//! `MULTI` transaction.

use std::time::Duration;

/// Presence expires unless refreshed by a heartbeat (seeds: 5 minutes).
pub const PRESENCE_TTL: Duration = Duration::from_secs(5 * 60);
/// A connection record outlives API Gateway's 2 h connection limit only by a margin; heartbeats
/// refresh it, and `$disconnect` or a 410 removes it.
pub const CONNECTION_TTL: Duration = Duration::from_secs(2 * 3600 + 10 * 60);
/// A typing indicator disappears on its own after this long without a new `start`.
pub const TYPING_TTL: Duration = Duration::from_secs(6);

/// Group receipts nobody sent (their sender died) are dropped after this long: they are also
/// recorded in MongoDB, and the next receipt of the conversation sends everything newer.
pub const PENDING_RECEIPTS_TTL: Duration = Duration::from_secs(3600);

/// How long "already done" markers of at-least-once events are kept.
pub const ONCE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a conversation's last-number hint ([`Keys::sequence_hint`]) is kept after it was
/// last noted: far below any message retention (a day at least), so no message above the hint
/// can have expired while it is trusted (a send above an expired number would not collide).
pub const SEQUENCE_HINT_TTL: Duration = Duration::from_secs(10 * 60);

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `msg:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash `connection_id -> {user_id, device_id, connected_at, ...}`.
    pub fn connection(&self, connection_id: &str) -> String {
        format!("{}conn:{connection_id}", self.prefix)
    }

    /// Sorted set of connection ids scored by `connected_at` (ms), for the sweep that migrates
    /// connections nearing their maximum lifetime (see `migration`). A connection leaves it when
    /// it is told to migrate or is forgotten.
    pub fn connections_by_age(&self) -> String {
        format!("{}conns:by-age", self.prefix)
    }

    /// Hash `replica tag -> {management_url, websocket_url, heartbeat, draining}` of the WebSocket
    /// gateway replicas (the Kubernetes edge), refreshed by each replica's heartbeat.
    pub fn gateway_replicas(&self) -> String {
        format!("{}gateway:replicas", self.prefix)
    }

    /// Set of a user's live connection ids (multi-device).
    pub fn user_connections(&self, user_id: &str) -> String {
        format!("{}{{u:{user_id}}}:conns", self.prefix)
    }

    /// Hash `{status, last_seen}` of a user.
    pub fn presence(&self, user_id: &str) -> String {
        format!("{}{{u:{user_id}}}:presence", self.prefix)
    }

    /// Sorted set of users typing in a conversation, scored by expiry time (ms).
    pub fn typing(&self, conversation_id: &str) -> String {
        format!("{}typing:{conversation_id}", self.prefix)
    }

    /// "Already done" marker of event `id` in `scope` (dedupe of redelivered events).
    pub fn once(&self, scope: &str, id: &str) -> String {
        format!("{}once:{scope}:{id}", self.prefix)
    }

    /// Sorted set of messages waiting for an agent's answer, scored by deadline (ms).
    pub fn agent_waits(&self) -> String {
        format!("{}agent-waits", self.prefix)
    }

    /// Hash of an agent run's state (see `runs`).
    pub fn run(&self, conversation_id: &str, run_id: &str) -> String {
        format!("{}run:{{r:{conversation_id}:{run_id}}}", self.prefix)
    }

    /// The pieces of a run's answer so far: a list whose position is the piece's index.
    pub fn run_text(&self, conversation_id: &str, run_id: &str) -> String {
        format!("{}run:{{r:{conversation_id}:{run_id}}}:text", self.prefix)
    }

    /// Pieces of a run that arrived ahead of a missing one, by index.
    pub fn run_held(&self, conversation_id: &str, run_id: &str) -> String {
        format!("{}run:{{r:{conversation_id}:{run_id}}}:held", self.prefix)
    }

    /// Sorted set of unfinished runs (`conversation\x1frun`), scored by last change (ms): the
    /// sweep finds gaps to skip and silent runs here.
    pub fn active_runs(&self) -> String {
        format!("{}runs:active", self.prefix)
    }

    /// Set of the unfinished runs a user sees (`conversation\x1frun`), for devices that
    /// connect mid-stream.
    pub fn user_runs(&self, user_id: &str) -> String {
        format!("{}{{u:{user_id}}}:runs", self.prefix)
    }

    /// Set of the waits of one conversation (members of [`Keys::agent_waits`]).
    pub fn agent_waits_of(&self, conversation_id: &str) -> String {
        format!("{}agent-waits:{conversation_id}", self.prefix)
    }

    /// Group receipts not yet sent to the senders: a sorted set per conversation and kind
    /// (`delivered`, `read`) of members scored by the highest sequence number concerned. The
    /// `{c:ID}` hash tag keeps a conversation's receipt keys on one Cluster slot (one script).
    pub fn pending_receipts(&self, conversation_id: &str, kind: &str) -> String {
        format!("{}{{c:{conversation_id}}}:receipts:{kind}", self.prefix)
    }

    /// The lowest sequence number the receipts waiting in a conversation concern.
    pub fn receipts_low(&self, conversation_id: &str) -> String {
        format!("{}{{c:{conversation_id}}}:receipts:low", self.prefix)
    }

    /// Set while a conversation's receipts were just sent: receipts arriving meanwhile wait for
    /// the interval's end (see `ServerFrame::Receipts`).
    pub fn receipts_sent(&self, conversation_id: &str) -> String {
        format!("{}{{c:{conversation_id}}}:receipts:sent", self.prefix)
    }

    /// Set while one invocation has promised to send a conversation's waiting receipts when
    /// the interval ends.
    pub fn receipts_due(&self, conversation_id: &str) -> String {
        format!("{}{{c:{conversation_id}}}:receipts:due", self.prefix)
    }

    /// `SCAN` pattern of every key of one user (all share the `{u:ID}:` hash tag); glob
    /// characters in the id are escaped.
    pub fn user_keys_pattern(&self, user_id: &str) -> String {
        let mut escaped = String::with_capacity(user_id.len());
        for c in user_id.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        format!("{}{{u:{escaped}}}:*", self.prefix)
    }

    /// A cached value (e.g. `conversation:ID`, a conversation's routing fields).
    pub fn cache(&self, name: &str) -> String {
        format!("{}cache:{name}", self.prefix)
    }

    /// Sorted set holding one member, `last`, scored by the highest sequence number its
    /// inserters stored in a conversation (`ZADD GT`: it never goes down): the next send's
    /// starting point without a MongoDB read, whichever process sends (see
    /// `MessageStore::insert_message`). Only a hint: too low costs the send a retry; it is never
    /// above a number stored in the database it describes, which is why Redis must be flushed
    /// after MongoDB is restored from a backup (see the runbook in `docs/DESIGN.md`).
    pub fn sequence_hint(&self, conversation_id: &str) -> String {
        format!("{}seq:{conversation_id}", self.prefix)
    }

    /// Token bucket of one rate limit of one subject (a hash `{tokens, at}`).
    pub fn rate_limit(&self, scope: &str, subject: &str) -> String {
        format!("{}{{u:{subject}}}:rl:{scope}", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("msg:")
    }
}
