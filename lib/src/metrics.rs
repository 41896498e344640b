//! Where the time goes: per-stage counters of calls and time, for benchmarks and operators.
//!
//! Each stage ([`Stage`]) counts how often it ran and for how long, in process-wide atomics
//! (no locks, a few nanoseconds per call). The adapters time their own round trips (Redis,
//! MongoDB, gateway posts, broker publishes); the local stack times route invocations and
//! fan-outs. [`snapshot`] reads everything at once; the benchmark diffs two snapshots to get
//! round trips and time per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A stage of handling a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// One Redis round trip.
    Redis,
    /// One MongoDB round trip.
    Mongo,
    /// One `PostToConnection` (or close) through the management API.
    GatewayPost,
    /// One event published to the broker.
    BrokerPublish,
    /// One WebSocket route invocation (a function handling a frame), end to end.
    RouteInvocation,
    /// One event delivery by the broker to a subscriber, end to end.
    EventDelivery,
}

const STAGES: [Stage; 6] = [
    Stage::Redis,
    Stage::Mongo,
    Stage::GatewayPost,
    Stage::BrokerPublish,
    Stage::RouteInvocation,
    Stage::EventDelivery,
];

impl Stage {
    /// Stable name in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Mongo => "mongodb",
            Self::GatewayPost => "gateway_post",
            Self::BrokerPublish => "broker_publish",
            Self::RouteInvocation => "route_invocation",
            Self::EventDelivery => "event_delivery",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static CALLS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Records one call of `stage` that took `elapsed`.
pub fn record(stage: Stage, elapsed: Duration) {
    CALLS[stage.index()].fetch_add(1, Ordering::Relaxed);
    NANOS[stage.index()].fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
}

/// Times a call of `stage` until dropped.
#[must_use = "the timer records when it is dropped"]
pub struct Timer {
    stage: Stage,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        record(self.stage, self.started.elapsed());
    }
}

/// Starts timing one call of `stage`.
pub fn time(stage: Stage) -> Timer {
    Timer {
        stage,
        started: Instant::now(),
    }
}

/// Calls and total time of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
pub struct StageTotals {
    /// Calls so far.
    pub calls: u64,
    /// Total time, nanoseconds.
    pub nanos: u64,
}

/// Every stage's totals, by name.
pub fn snapshot() -> std::collections::BTreeMap<&'static str, StageTotals> {
    STAGES
        .iter()
        .map(|s| {
            (
                s.name(),
                StageTotals {
                    calls: CALLS[s.index()].load(Ordering::Relaxed),
                    nanos: NANOS[s.index()].load(Ordering::Relaxed),
                },
            )
        })
        .collect()
}
