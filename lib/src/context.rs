//! What every messaging function is given: its ports and its settings.
//!
//! The connect, message, disconnect, store and agent-response functions share one [`Context`]:
//! Lambda builds it once per cold start from the environment ([`Context::from_env`]), the local
//! stack builds one and hands it to all of them, tests build one against their own servers.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{JwtConfig, JwtVerifier};
use crate::config::{ConfigError, Env, GatewayConfig, MongoConfig, RedisConfig, Source};
use crate::events::EventPublisher;
use crate::gateway::{ApiGatewayManagement, Gateway};
use crate::realtime::{RateLimit, RealtimeState, RedisState};
use crate::store::{MongoStore, Store};

/// Limits and timings of the messaging functions.
#[derive(Debug, Clone)]
pub struct Settings {
    /// CloudEvents `source` of events this deployment publishes.
    pub event_source: String,
    /// Largest `content` accepted, in bytes (a frame carrying it must stay under 128 KB).
    pub max_content_bytes: usize,
    /// Per-user budget for all frames.
    pub frame_limit: RateLimit,
    /// Per-user budget for sent messages.
    pub send_limit: RateLimit,
    /// Largest range one `retransmit` may ask for.
    pub max_retransmit_range: u64,
    /// Most pending messages delivered per `auth`/`sync` (the client pages with `sync`).
    pub max_sync_messages: usize,
    /// How long an agent may stay silent before the user is told.
    pub agent_timeout: Duration,
    /// A run with no word from its agent for this long is shown as stalled (BR-7: agents
    /// report progress at least every 30 s on long tasks).
    pub agent_progress_interval: Duration,
    /// How long a streamed answer waits for a missing piece before skipping it.
    pub delta_gap_wait: Duration,
    /// Agent used when a message names none and no capability matches.
    pub default_agent: Option<String>,
    /// An agent without a heartbeat for this long is offline.
    pub agent_offline_after: Duration,
    /// Longest a frame's handling may take before the client is told `unavailable` (well inside
    /// API Gateway's 29 s integration limit; each call inside has its own, shorter deadline).
    pub frame_timeout: Duration,
    /// The WebSocket API's maximum connection lifetime (API Gateway: 2 hours); connections are
    /// told to migrate [`Settings::migration_notice`] before it.
    pub connection_max_age: Duration,
    /// How long before the lifetime cut a connection is told to migrate.
    pub migration_notice: Duration,
    /// The public WebSocket address put in `migration` frames (`WEBSOCKET_URL`); empty means
    /// "the address you connected to".
    pub websocket_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            event_source: "/messaging".into(),
            max_content_bytes: 64 * 1024,
            frame_limit: RateLimit {
                max: 600,
                window: Duration::from_secs(60),
            },
            send_limit: RateLimit {
                max: 300,
                window: Duration::from_secs(60),
            },
            max_retransmit_range: 1000,
            max_sync_messages: 1000,
            agent_timeout: Duration::from_secs(60),
            agent_progress_interval: Duration::from_secs(30),
            delta_gap_wait: Duration::from_secs(1),
            default_agent: None,
            agent_offline_after: Duration::from_secs(120),
            frame_timeout: Duration::from_secs(10),
            connection_max_age: Duration::from_secs(2 * 3600),
            migration_notice: Duration::from_secs(5 * 60),
            websocket_url: String::new(),
        }
    }
}

impl Settings {
    /// Reads `EVENT_SOURCE`, `MAX_CONTENT_BYTES`, `FRAME_RATE_PER_MINUTE`, `SEND_RATE_PER_MINUTE`,
    /// `MAX_RETRANSMIT_RANGE`, `MAX_SYNC_MESSAGES`, `AGENT_TIMEOUT_SECS`,
    /// `AGENT_PROGRESS_INTERVAL_SECS`, `DELTA_GAP_WAIT_MS`, `DEFAULT_AGENT_ID`,
    /// `AGENT_OFFLINE_AFTER_SECS`, `FRAME_TIMEOUT_MS`, `CONNECTION_MAX_AGE_SECS`,
    /// `MIGRATION_NOTICE_SECS`, `WEBSOCKET_URL`.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let d = Self::default();
        let num = |var: &'static str, default: u64| crate::config::parsed(src, var, default);
        let max_content_bytes = num("MAX_CONTENT_BYTES", d.max_content_bytes as u64)? as usize;
        if max_content_bytes > 100 * 1024 {
            return Err(ConfigError::Invalid {
                var: "MAX_CONTENT_BYTES",
                reason: "must leave room for the frame envelope under 128 KB (at most 102400)"
                    .into(),
            });
        }
        Ok(Self {
            event_source: src.get("EVENT_SOURCE").unwrap_or(d.event_source),
            max_content_bytes,
            frame_limit: RateLimit {
                max: num("FRAME_RATE_PER_MINUTE", d.frame_limit.max)?,
                window: Duration::from_secs(60),
            },
            send_limit: RateLimit {
                max: num("SEND_RATE_PER_MINUTE", d.send_limit.max)?,
                window: Duration::from_secs(60),
            },
            max_retransmit_range: num("MAX_RETRANSMIT_RANGE", d.max_retransmit_range)?,
            max_sync_messages: num("MAX_SYNC_MESSAGES", d.max_sync_messages as u64)? as usize,
            agent_timeout: Duration::from_secs(num(
                "AGENT_TIMEOUT_SECS",
                d.agent_timeout.as_secs(),
            )?),
            agent_progress_interval: crate::config::seconds(
                src,
                "AGENT_PROGRESS_INTERVAL_SECS",
                d.agent_progress_interval,
            )?,
            delta_gap_wait: crate::config::millis(src, "DELTA_GAP_WAIT_MS", d.delta_gap_wait)?,
            default_agent: src.get("DEFAULT_AGENT_ID"),
            agent_offline_after: Duration::from_secs(num(
                "AGENT_OFFLINE_AFTER_SECS",
                d.agent_offline_after.as_secs(),
            )?),
            frame_timeout: crate::config::millis(src, "FRAME_TIMEOUT_MS", d.frame_timeout)?,
            connection_max_age: crate::config::seconds(
                src,
                "CONNECTION_MAX_AGE_SECS",
                d.connection_max_age,
            )?,
            migration_notice: crate::config::seconds(
                src,
                "MIGRATION_NOTICE_SECS",
                d.migration_notice,
            )?,
            websocket_url: src.get("WEBSOCKET_URL").unwrap_or(d.websocket_url),
        })
    }
}

/// The ports and settings of the messaging functions.
#[derive(Clone)]
pub struct Context {
    /// Connections, presence, typing, rate limits, caches (Redis).
    pub realtime: Arc<dyn RealtimeState>,
    /// Durable state (MongoDB).
    pub store: Arc<dyn Store>,
    /// Frames to clients (WebSocket management API).
    pub gateway: Arc<dyn Gateway>,
    /// Events to the broker.
    pub events: Arc<dyn EventPublisher>,
    /// Token verification.
    pub jwt: JwtVerifier,
    /// Limits and timings.
    pub settings: Settings,
    /// Conversations' routing fields remembered for receipts (see
    /// [`crate::conversations::membership_for_receipts`]).
    pub routing_memo: Arc<crate::conversations::RoutingMemo>,
}

impl Context {
    /// Builds the context from the environment: connects to Redis and MongoDB, starts checking
    /// (one read, in the background: [`MongoStore::check_schema_at_start`]) that the database
    /// has been migrated for this build, and points the gateway and events adapters at their
    /// endpoints.
    pub async fn from_env() -> anyhow::Result<Self> {
        Self::from_source(&Env).await
    }

    /// Like [`Context::from_env`] with another configuration source.
    pub async fn from_source(src: &impl Source) -> anyhow::Result<Self> {
        let redis = RedisConfig::from_source(src)?;
        let mongo = MongoConfig::from_source(src)?;
        let jwt = JwtConfig::from_source(src)?;
        let gateway = GatewayConfig::from_source(src)?;
        let settings = Settings::from_source(src)?;
        // The three outside systems are reached at once: a cold start waits for the slowest,
        // not for their sum.
        let (realtime, store, aws) = tokio::try_join!(
            async {
                anyhow::Ok(
                    RedisState::connect_with_timeout(&redis.url, &redis.key_prefix, redis.timeout)
                        .await?,
                )
            },
            async {
                let store = MongoStore::connect(&mongo.uri, &mongo.database, mongo.options).await?;
                // Indexes are a deploy-time step (`migrate`): a cold start pays one read, not
                // one round trip per collection, and does not wait for it either.
                anyhow::Ok(store.check_schema_at_start())
            },
            async { anyhow::Ok(crate::aws_sdk::sdk_config().await) },
        )?;
        Ok(Self {
            realtime: Arc::new(realtime),
            store: Arc::new(store),
            gateway: Arc::new(ApiGatewayManagement::new(
                &aws,
                &gateway.endpoint,
                gateway.timeout,
            )),
            // EventBridge when EVENT_BUS_NAME is set (AWS), else the broker at BROKER_URL.
            events: crate::eventbridge::publisher_with(src, &aws)?,
            jwt: JwtVerifier::new(&jwt)?,
            settings,
            routing_memo: Arc::default(),
        })
    }
}
