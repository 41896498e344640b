//! An in-process CloudEvents broker with Knative Broker/Trigger semantics.
//!
//! In production the functions publish to a Knative Broker and receive events through Triggers;
//! on a laptop this module plays that role. Events come in over HTTP (`POST /`, binary or
//! structured mode) or in-process through [`EventPublisher`](messaging::events::EventPublisher); every [`Trigger`] whose [`Filter`]
//! matches gets its own delivery, either to an in-process function ([`EventHandler`], subscriber
//! `fn:NAME`) or to an HTTP subscriber (binary mode POST). A subscriber may answer with a reply
//! event, which re-enters the broker. Failed deliveries are retried with linear or exponential
//! backoff ([`DeliverySpec`]); when that is not allowed or not enough, the event becomes a
//! [`DeadLetter`] carrying the `knativeerror*` extensions, kept in memory (`GET /dead-letters`,
//! replayable) and posted to a dead-letter sink when one is configured. Delivery is at least
//! once: every accepted event ends either delivered or dead-lettered, across restarts too when
//! the broker has a [`crate::journal`] (the local stack keeps one under its data directory).
//!
//! Event data is never logged: it is end-to-end-encrypted message content.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cloudevents::binding::reqwest::RequestBuilderExt;
use cloudevents::{AttributesReader, Event};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// How long one delivery attempt (HTTP request or function call) may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many bytes of a failure's response body or message go into `knativeerrordata`.
const ERROR_DATA_LIMIT: usize = 1024;
/// Attempts at posting one dead letter to a sink before giving up (with a warning).
const SINK_ATTEMPTS: u32 = 3;
/// A `Retry-After` larger than this is capped, so that a bogus header cannot park a delivery.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// The CloudEvents structured-mode content type.
const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Prefix of the extensions that describe a failed delivery.
const ERROR_EXTENSION_PREFIX: &str = "knativeerror";

/// The broker's configuration: its triggers and an optional global dead-letter sink.
///
/// Parsed from a TOML file with `[[trigger]]` tables, or built in code:
///
/// ```toml
/// dead_letter_sink = "http://127.0.0.1:9000/dlq"   # optional
///
/// [[trigger]]
/// name = "store"
/// subscriber = "fn:store"
/// filter.attributes = { type = "messaging.message.received" }
/// delivery = { retry = 3, backoff_policy = "linear", backoff_delay_ms = 100 }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BrokerConfig {
    /// The triggers, in the order they are declared.
    #[serde(default, rename = "trigger")]
    pub triggers: Vec<Trigger>,
    /// A URL that receives every dead letter whose trigger has no sink of its own, in addition to
    /// the in-memory list.
    #[serde(default)]
    pub dead_letter_sink: Option<String>,
}

impl BrokerConfig {
    /// Parses and validates a TOML configuration.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text).context("invalid broker configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read broker configuration {}", path.display()))?;
        Self::from_toml(&text)
            .with_context(|| format!("in broker configuration {}", path.display()))
    }

    /// Checks what serde cannot: trigger names are present and unique, subscribers are `fn:NAME`
    /// or HTTP(S) URLs, sinks are HTTP(S) URLs.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for trigger in &self.triggers {
            anyhow::ensure!(!trigger.name.is_empty(), "a trigger has an empty name");
            anyhow::ensure!(
                names.insert(trigger.name.as_str()),
                "duplicate trigger name {:?}",
                trigger.name
            );
            match Subscriber::parse(&trigger.subscriber) {
                Subscriber::Function("") => {
                    anyhow::bail!("trigger {:?}: empty function name", trigger.name)
                }
                Subscriber::Invalid => anyhow::bail!(
                    "trigger {:?}: subscriber {:?} is neither fn:NAME nor an http(s) URL",
                    trigger.name,
                    trigger.subscriber
                ),
                _ => {}
            }
            if let Some(sink) = &trigger.delivery.dead_letter_sink {
                anyhow::ensure!(
                    is_http_url(sink),
                    "trigger {:?}: dead_letter_sink {sink:?} is not an http(s) URL",
                    trigger.name
                );
            }
        }
        if let Some(sink) = &self.dead_letter_sink {
            anyhow::ensure!(
                is_http_url(sink),
                "dead_letter_sink {sink:?} is not an http(s) URL"
            );
        }
        Ok(())
    }
}

/// A subscription: events matching `filter` go to `subscriber`, with `delivery` as retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Unique name, used in logs and dead letters.
    pub name: String,
    /// Which events this trigger wants; the default matches every event.
    #[serde(default)]
    pub filter: Filter,
    /// `fn:NAME` for a function registered under `NAME` with [`Broker::new`], or an
    /// `http://` / `https://` URL that receives the event in binary mode.
    pub subscriber: String,
    /// Retries, backoff and dead-letter sink.
    #[serde(default)]
    pub delivery: DeliverySpec,
}

/// A Knative trigger filter. Attribute names are CloudEvents attribute names (`type`, `source`,
/// `id`, `subject`, `specversion`, `datacontenttype`, ...) or extension names (`agentid`).
///
/// An event matches when every entry matches; an empty filter matches every event. As in
/// Knative, an empty value in `attributes` matches any value, even a missing attribute.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Exact matches: the event's attribute must equal the value.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Prefix matches: the event's attribute must exist and start with the value.
    #[serde(default)]
    pub prefix: BTreeMap<String, String>,
}

impl Filter {
    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &Event) -> bool {
        let exact = self.attributes.iter().all(|(name, wanted)| {
            wanted.is_empty() || attribute(event, name).is_some_and(|value| &value == wanted)
        });
        exact
            && self.prefix.iter().all(|(name, prefix)| {
                attribute(event, name).is_some_and(|value| value.starts_with(prefix.as_str()))
            })
    }
}

/// Delivery options of a trigger (Knative `DeliverySpec`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySpec {
    /// Retries after the first attempt (default 5).
    pub retry: u32,
    /// How the delay grows between retries (default exponential).
    pub backoff_policy: BackoffPolicy,
    /// The base delay in milliseconds (default 200).
    pub backoff_delay_ms: u64,
    /// A URL that receives this trigger's dead letters (instead of the global sink).
    pub dead_letter_sink: Option<String>,
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            retry: 5,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay_ms: 200,
            dead_letter_sink: None,
        }
    }
}

impl DeliverySpec {
    /// The delay before retry number `n` (starting at 1), before any `Retry-After`.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = Duration::from_millis(self.backoff_delay_ms);
        let factor = match self.backoff_policy {
            BackoffPolicy::Linear => n.max(1),
            BackoffPolicy::Exponential => 2u32.saturating_pow(n.saturating_sub(1)),
        };
        base.saturating_mul(factor)
    }
}

/// How the retry delay grows.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    /// `backoff_delay * n` before retry `n`.
    Linear,
    /// `backoff_delay * 2^(n-1)` before retry `n`.
    Exponential,
}

/// An in-process subscriber: one of the project's functions.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles one event; `Ok(Some(reply))` sends a reply event back into the broker.
    async fn handle(&self, event: Event) -> Result<Option<Event>, HandlerError>;
}

/// A failed function call. `status` follows HTTP semantics, so functions and HTTP subscribers
/// share the retry rules: 404, 408, 409, 429 and 5xx are retried, other statuses are not.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct HandlerError {
    /// The HTTP-like status of the failure.
    pub status: u16,
    /// What went wrong (it becomes `knativeerrordata`: no secrets, no message content).
    pub message: String,
    /// How long to wait before retrying, when the function knows (like an HTTP
    /// subscriber's `Retry-After`).
    pub retry_after: Option<Duration>,
}

/// An event whose delivery failed for good.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// This dead letter's id (for replay).
    pub id: String,
    /// The trigger whose delivery failed.
    pub trigger: String,
    /// The event in structured JSON, with the `knativeerrordest`, `knativeerrorcode` and
    /// `knativeerrordata` extensions.
    pub event: serde_json::Value,
    /// The last status: an HTTP status, a function's [`HandlerError::status`], or 0 for a
    /// network error or timeout.
    pub error_code: u16,
    /// The last response body or error message, truncated to 1024 bytes (lossy UTF-8; the
    /// exact bytes are base64-encoded in `knativeerrordata`).
    pub error_data: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When the event was dead-lettered (RFC 3339).
    pub at: String,
}

/// A dead letter and what replaying it needs.
struct DeadRecord {
    letter: DeadLetter,
    /// The trigger to replay to (`None`: it no longer exists).
    trigger: Option<usize>,
    event: Event,
}

/// The broker. Cheap to share: every method takes `&self` or `&Arc<Self>`.
pub struct Broker {
    config: BrokerConfig,
    functions: HashMap<String, Arc<dyn EventHandler>>,
    journal: Option<crate::journal::Journal>,
    /// Simulated subscriber outages: trigger name -> until when its deliveries fail with 503.
    outages: Mutex<HashMap<String, Instant>>,
    client: reqwest::Client,
    dead: Mutex<Vec<DeadRecord>>,
    in_flight: AtomicUsize,
    idle: Notify,
    delivered: AtomicU64,
    me: Weak<Broker>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("triggers", &self.config.triggers.len())
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("in_flight", &self.in_flight.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Creates a broker with its triggers and the in-process functions, keyed by the `NAME` of
    /// `fn:NAME` subscribers. Nothing runs until an event comes in.
    pub fn new(
        config: BrokerConfig,
        functions: HashMap<String, Arc<dyn EventHandler>>,
    ) -> Arc<Self> {
        Self::build(config, functions, None)
    }

    /// Like [`Broker::new`], keeping accepted deliveries and dead letters in `journal` (see
    /// [`crate::journal`]); call [`Broker::recover`] once every subscriber is up to deliver what
    /// a previous run left.
    pub fn with_journal(
        config: BrokerConfig,
        functions: HashMap<String, Arc<dyn EventHandler>>,
        journal: crate::journal::Journal,
    ) -> Arc<Self> {
        Self::build(config, functions, Some(journal))
    }

    fn build(
        config: BrokerConfig,
        functions: HashMap<String, Arc<dyn EventHandler>>,
        journal: Option<crate::journal::Journal>,
    ) -> Arc<Self> {
        for trigger in &config.triggers {
            match Subscriber::parse(&trigger.subscriber) {
                Subscriber::Function(name) if !functions.contains_key(name) => tracing::warn!(
                    trigger = %trigger.name,
                    subscriber = %trigger.subscriber,
                    "no function is registered under this name: deliveries will fail with 404"
                ),
                Subscriber::Invalid => tracing::warn!(
                    trigger = %trigger.name,
                    subscriber = %trigger.subscriber,
                    "subscriber is neither fn:NAME nor an http(s) URL: deliveries will be dead-lettered"
                ),
                _ => {}
            }
        }
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot build the HTTP client with options, using defaults");
                reqwest::Client::new()
            });
        Arc::new_cyclic(|me| Self {
            config,
            functions,
            journal,
            outages: Mutex::new(HashMap::new()),
            client,
            dead: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            delivered: AtomicU64::new(0),
            me: me.clone(),
        })
    }

    /// Accepts an event: every matching trigger gets a delivery in its own task, recorded in the
    /// journal first when there is one. Returns at once; a journal that cannot be written is
    /// logged and the deliveries go ahead in memory (use [`Broker::accept`] to refuse instead).
    pub async fn ingest(self: &Arc<Self>, event: Event) {
        if let Err(e) = self.accept(event).await {
            tracing::error!(error = %e, "broker journal: event delivered without being recorded");
        }
    }

    /// [`Broker::ingest`], failing when the journal cannot record the deliveries (then nothing
    /// is delivered and the publisher should retry): what the ingress answers 202 after.
    pub async fn accept(self: &Arc<Self>, event: Event) -> std::io::Result<()> {
        let mut matched = 0usize;
        let mut deliveries = Vec::new();
        for (index, trigger) in self.config.triggers.iter().enumerate() {
            if trigger.filter.matches(&event) {
                matched += 1;
                let recorded = match &self.journal {
                    Some(journal) => Some(journal.add_pending(&trigger.name, &event)?),
                    None => None,
                };
                deliveries.push((index, recorded));
            }
        }
        for (index, recorded) in deliveries {
            self.spawn_delivery(index, event.clone(), recorded);
        }
        if matched == 0 {
            // As in Knative: an event no trigger wants is accepted and dropped, but not silently.
            tracing::info!(
                event_type = %event.ty(),
                event_id = %event.id(),
                "event accepted, no trigger matches it"
            );
        } else {
            tracing::debug!(
                event_type = %event.ty(),
                event_id = %event.id(),
                triggers = matched,
                "event accepted"
            );
        }
        Ok(())
    }

    /// Delivers what a previous run of this broker accepted and did not finish, and lists its
    /// dead letters again (see [`crate::journal`]). Deliveries for a trigger that no longer
    /// exists become dead letters.
    pub async fn recover(self: &Arc<Self>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let dead = journal.dead();
        let pending = journal.pending();
        {
            let mut list = self.dead_list();
            for entry in dead {
                let trigger = self.trigger_index(&entry.letter.trigger);
                list.push(DeadRecord {
                    letter: entry.letter,
                    trigger,
                    event: entry.event,
                });
            }
        }
        if !pending.is_empty() {
            tracing::warn!(
                count = pending.len(),
                "broker journal: delivering what a previous run accepted"
            );
        }
        for entry in pending {
            match self.trigger_index(&entry.trigger) {
                Some(index) => self.spawn_delivery(index, entry.event, Some(entry.id)),
                None => {
                    tracing::error!(trigger = %entry.trigger, "broker journal: the trigger no longer exists");
                    journal.remove_pending(&entry.id);
                }
            }
        }
    }

    fn trigger_index(&self, name: &str) -> Option<usize> {
        self.config.triggers.iter().position(|t| t.name == name)
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_list()
            .iter()
            .map(|record| record.letter.clone())
            .collect()
    }

    /// Re-delivers dead letter `id` to its trigger only (without the `knativeerror*`
    /// extensions) and removes it from the list. Returns false if there is no such dead letter.
    pub async fn replay(self: &Arc<Self>, id: &str) -> bool {
        let record = {
            let mut dead = self.dead_list();
            match dead.iter().position(|record| record.letter.id == id) {
                Some(position) => dead.remove(position),
                None => return false,
            }
        };
        let mut event = record.event;
        strip_error_extensions(&mut event);
        tracing::info!(
            dead_letter = %id,
            trigger = %record.letter.trigger,
            event_type = %event.ty(),
            event_id = %event.id(),
            "replaying dead letter"
        );
        let Some(index) = record.trigger else {
            tracing::warn!(dead_letter = %id, "its trigger no longer exists: dropped");
            if let Some(journal) = &self.journal {
                journal.remove_dead(id);
            }
            return true;
        };
        let recorded = match &self.journal {
            Some(journal) => {
                let recorded = journal.add_pending(&record.letter.trigger, &event).ok();
                journal.remove_dead(id);
                recorded
            }
            None => None,
        };
        self.spawn_delivery(index, event, recorded);
        true
    }

    /// The HTTP API: `POST /` (ingress, binary or structured mode), `GET /dead-letters`,
    /// `POST /dead-letters/{id}/replay`, `POST /admin/triggers/{name}/outage` (fault injection)
    /// and `GET /healthz`.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/", post(ingress))
            .route("/dead-letters", get(list_dead_letters))
            .route("/dead-letters/{id}/replay", post(replay_dead_letter))
            .route("/admin/triggers/{name}/outage", post(simulate_outage))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }

    /// Waits until no delivery is in flight (replies and dead-letter posts included).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// How many deliveries succeeded since the broker started.
    pub fn delivered_count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// The dead-letter list; a poisoned lock is recovered (the list stays consistent).
    fn dead_list(&self) -> MutexGuard<'_, Vec<DeadRecord>> {
        self.dead
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts delivering `event` to trigger `index` in a task counted by [`Broker::idle`].
    /// `recorded` is the delivery's journal entry, removed once it is over.
    fn spawn_delivery(self: &Arc<Self>, index: usize, event: Event, recorded: Option<String>) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(self));
        tokio::spawn(async move {
            let broker = Arc::clone(&guard.0);
            broker.deliver(index, event).await;
            if let (Some(journal), Some(id)) = (&broker.journal, recorded) {
                journal.remove_pending(&id);
            }
            drop(guard);
        });
    }

    /// Delivers with retries, then re-ingests the reply or dead-letters the event.
    async fn deliver(self: &Arc<Self>, index: usize, event: Event) {
        let Some(trigger) = self.config.triggers.get(index) else {
            return;
        };
        let spec = &trigger.delivery;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = Instant::now();
            let outcome = self.attempt(trigger, &event).await;
            messaging::metrics::record(messaging::metrics::Stage::EventDelivery, started.elapsed());
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match outcome {
                Outcome::Delivered { status, reply } => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        trigger = %trigger.name,
                        subscriber = %trigger.subscriber,
                        event_type = %event.ty(),
                        event_id = %event.id(),
                        status,
                        attempt,
                        duration_ms,
                        reply = reply.is_some(),
                        "event delivered"
                    );
                    if let Some(reply) = reply {
                        self.ingest(*reply).await;
                    }
                    return;
                }
                Outcome::Failed(failure) => {
                    let retry = failure.retryable() && attempt <= spec.retry;
                    tracing::warn!(
                        trigger = %trigger.name,
                        subscriber = %trigger.subscriber,
                        event_type = %event.ty(),
                        event_id = %event.id(),
                        status = failure.status,
                        attempt,
                        duration_ms,
                        retry,
                        "delivery failed"
                    );
                    if !retry {
                        self.dead_letter(index, trigger, event, failure, attempt)
                            .await;
                        return;
                    }
                    let mut delay = spec.backoff(attempt);
                    if let Some(after) = failure.retry_after {
                        delay = delay.max(after);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Makes every delivery to trigger `name` fail with 503 for `duration`, as if its subscriber
    /// were down (fault injection for testing the delivery guarantees: retries, dead letters,
    /// the outbox; not a Knative feature). False when there is no such trigger.
    pub fn simulate_outage(&self, name: &str, duration: Duration) -> bool {
        if self.trigger_index(name).is_none() {
            return false;
        }
        self.outages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Instant::now() + duration);
        tracing::warn!(
            trigger = name,
            seconds = duration.as_secs_f64(),
            "simulated subscriber outage"
        );
        true
    }

    fn in_outage(&self, name: &str) -> bool {
        self.outages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// One delivery attempt.
    async fn attempt(&self, trigger: &Trigger, event: &Event) -> Outcome {
        if self.in_outage(&trigger.name) {
            return Outcome::Failed(Failure::new(
                503,
                "subscriber unavailable (simulated outage)",
            ));
        }
        match Subscriber::parse(&trigger.subscriber) {
            Subscriber::Function(name) => self.call_function(name, event).await,
            Subscriber::Http(url) => self.post_event(url, event).await,
            Subscriber::Invalid => Outcome::Failed(Failure::permanent(
                0,
                format!(
                    "subscriber {:?} is neither fn:NAME nor an http(s) URL",
                    trigger.subscriber
                ),
            )),
        }
    }

    /// Calls an in-process function, in its own task so that a panic is a 500, not a lost event.
    async fn call_function(&self, name: &str, event: &Event) -> Outcome {
        let Some(handler) = self.functions.get(name).cloned() else {
            return Outcome::Failed(Failure::new(404, format!("no function named {name:?}")));
        };
        let event = event.clone();
        let mut task = tokio::spawn(async move { handler.handle(event).await });
        match tokio::time::timeout(DELIVERY_TIMEOUT, &mut task).await {
            Ok(Ok(Ok(reply))) => Outcome::Delivered {
                status: 200,
                reply: reply.map(Box::new),
            },
            Ok(Ok(Err(error))) => Outcome::Failed(Failure {
                retry_after: error.retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
                ..Failure::new(error.status, error.message)
            }),
            Ok(Err(join)) => {
                Outcome::Failed(Failure::new(500, format!("function {name} failed: {join}")))
            }
            Err(_) => {
                task.abort();
                Outcome::Failed(Failure::new(
                    0,
                    format!(
                        "function {name} timed out after {}s",
                        DELIVERY_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }

    /// POSTs the event in binary mode to an HTTP subscriber.
    async fn post_event(&self, url: &str, event: &Event) -> Outcome {
        let request = match self.client.post(url).event(event.clone()) {
            Ok(request) => request,
            Err(e) => {
                return Outcome::Failed(Failure::permanent(0, format!("cannot encode event: {e}")));
            }
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Outcome::Failed(Failure::new(0, crate::error_chain(&e))),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) if (200..300).contains(&status) => {
                return Outcome::Failed(Failure::new(
                    0,
                    format!("reading the response: {}", crate::error_chain(&e)),
                ));
            }
            Err(_) => Bytes::new(),
        };
        if !(200..300).contains(&status) {
            let retry_after = if status == 429 || status == 503 {
                retry_after(&headers)
            } else {
                None
            };
            return Outcome::Failed(Failure {
                status,
                data: body.to_vec(),
                retry_after,
                permanent: false,
            });
        }
        if status != 200 || !carries_event(&headers) {
            return Outcome::Delivered {
                status,
                reply: None,
            };
        }
        match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
            Ok(reply) => Outcome::Delivered {
                status,
                reply: Some(Box::new(reply)),
            },
            Err(e) => Outcome::Failed(Failure::permanent(
                502,
                format!("the subscriber replied with an invalid CloudEvent: {e}"),
            )),
        }
    }

    /// Records a dead letter and posts it to the trigger's sink, or else the global one.
    async fn dead_letter(
        &self,
        index: usize,
        trigger: &Trigger,
        event: Event,
        failure: Failure,
        attempts: u32,
    ) {
        let data = &failure.data[..failure.data.len().min(ERROR_DATA_LIMIT)];
        let mut failed = event.clone();
        failed.set_extension("knativeerrordest", trigger.subscriber.as_str());
        failed.set_extension("knativeerrorcode", failure.status.to_string());
        failed.set_extension("knativeerrordata", BASE64.encode(data));
        let json = serde_json::to_value(readable(&failed)).unwrap_or_else(
            |e| serde_json::json!({ "id": event.id(), "type": event.ty(), "error": e.to_string() }),
        );
        let letter = DeadLetter {
            id: uuid::Uuid::now_v7().to_string(),
            trigger: trigger.name.clone(),
            event: json,
            error_code: failure.status,
            error_data: String::from_utf8_lossy(data).into_owned(),
            attempts,
            at: chrono::Utc::now().to_rfc3339(),
        };
        tracing::error!(
            dead_letter = %letter.id,
            trigger = %trigger.name,
            subscriber = %trigger.subscriber,
            event_type = %event.ty(),
            event_id = %event.id(),
            status = failure.status,
            attempts,
            "event dead-lettered"
        );
        if let Some(journal) = &self.journal
            && let Err(e) = journal.add_dead(&letter, &event)
        {
            tracing::error!(error = %e, "broker journal: dead letter kept in memory only");
        }
        self.dead_list().push(DeadRecord {
            letter,
            trigger: Some(index),
            event,
        });
        let sink = trigger
            .delivery
            .dead_letter_sink
            .as_deref()
            .or(self.config.dead_letter_sink.as_deref());
        if let Some(sink) = sink {
            self.post_to_sink(sink, &trigger.delivery, failed).await;
        }
    }

    /// Posts a dead letter to a sink, a few times at most.
    async fn post_to_sink(&self, sink: &str, spec: &DeliverySpec, event: Event) {
        let mut last_error = String::new();
        for attempt in 1..=SINK_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(spec.backoff(attempt - 1)).await;
            }
            let request = match self.client.post(sink).event(event.clone()) {
                Ok(request) => request,
                Err(e) => {
                    last_error = format!("cannot encode event: {e}");
                    break;
                }
            };
            match request.send().await {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => last_error = format!("status {}", response.status()),
                Err(e) => last_error = crate::error_chain(&e),
            }
        }
        tracing::warn!(
            sink,
            event_type = %event.ty(),
            event_id = %event.id(),
            error = %last_error,
            "cannot post a dead letter to its sink (it stays in GET /dead-letters)"
        );
    }
}

#[async_trait]
impl messaging::events::EventPublisher for Broker {
    /// In-process ingress: the event is accepted as by `POST /`.
    async fn publish(&self, event: Event) -> messaging::Result<()> {
        let broker = self
            .me
            .upgrade()
            .ok_or_else(|| messaging::Error::dependency("broker", "the broker is shut down"))?;
        broker
            .accept(event)
            .await
            .map_err(|e| messaging::Error::dependency("broker journal", e))
    }
}

/// Counts a delivery task for [`Broker::idle`], even if the task panics.
struct InFlight(Arc<Broker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Where a trigger delivers.
enum Subscriber<'a> {
    Function(&'a str),
    Http(&'a str),
    Invalid,
}

impl<'a> Subscriber<'a> {
    fn parse(subscriber: &'a str) -> Self {
        if let Some(name) = subscriber.strip_prefix("fn:") {
            Self::Function(name)
        } else if is_http_url(subscriber) {
            Self::Http(subscriber)
        } else {
            Self::Invalid
        }
    }
}

/// The result of one attempt.
enum Outcome {
    Delivered {
        status: u16,
        reply: Option<Box<Event>>,
    },
    Failed(Failure),
}

/// A failed attempt.
struct Failure {
    /// HTTP status, function status, or 0 for network errors.
    status: u16,
    /// Response body or error message.
    data: Vec<u8>,
    /// A `Retry-After` from a 429 or 503.
    retry_after: Option<Duration>,
    /// Never retried, whatever the status (the attempt cannot succeed).
    permanent: bool,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            data: message.into().into_bytes(),
            retry_after: None,
            permanent: false,
        }
    }

    fn permanent(status: u16, message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            ..Self::new(status, message)
        }
    }

    /// Knative's retry rule: network errors, 404, 408, 409, 429 and 5xx.
    fn retryable(&self) -> bool {
        !self.permanent && matches!(self.status, 0 | 404 | 408 | 409 | 429 | 500..=599)
    }
}

/// The value of an attribute or extension, as a string.
fn attribute(event: &Event, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    event
        .iter()
        .find(|(attribute, _)| *attribute == name)
        .map(|(_, value)| value.to_string())
}

/// Removes the extensions added when the event was dead-lettered.
fn strip_error_extensions(event: &mut Event) {
    let names: Vec<String> = event
        .iter_extensions()
        .filter(|(name, _)| name.starts_with(ERROR_EXTENSION_PREFIX))
        .map(|(name, _)| name.to_owned())
        .collect();
    for name in names {
        event.remove_extension(&name);
    }
}

/// The event as it should read in structured JSON: JSON data that arrived as bytes (binary
/// mode) becomes a JSON `data` member instead of `data_base64`. Deliveries keep the bytes as
/// they came.
fn readable(event: &Event) -> Event {
    let is_json = event.datacontenttype().is_some_and(|content_type| {
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        media_type == "application/json" || media_type.ends_with("+json")
    });
    let mut readable = event.clone();
    if let (true, Some(cloudevents::Data::Binary(bytes))) = (is_json, event.data())
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
    {
        readable.set_data_unchecked(value);
    }
    readable
}

/// Whether a response carries a CloudEvent (binary or structured mode).
fn carries_event(headers: &HeaderMap) -> bool {
    headers.contains_key(cloudevents::binding::http::SPEC_VERSION_HEADER)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with(STRUCTURED_CONTENT_TYPE)
            })
}

/// A `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

fn is_http_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// A JSON error body, `{"error": {"code": ..., "message": ...}}`.
fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// `POST /`: binary or structured mode ingress.
async fn ingress(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return json_error(rejection.status(), "invalid_request", rejection.body_text());
        }
    };
    match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
        Ok(event) => match broker.accept(event).await {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(e) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the event could not be recorded: {e}"),
            ),
        },
        Err(e) => json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("not a valid CloudEvent: {e}"),
        ),
    }
}

/// `POST /admin/triggers/{name}/outage` with `{"seconds": N}`: see [`Broker::simulate_outage`].
async fn simulate_outage(
    State(broker): State<Arc<Broker>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let seconds = match body {
        Ok(Json(value)) => value.get("seconds").and_then(serde_json::Value::as_f64),
        Err(_) => None,
    };
    let Some(seconds) = seconds.filter(|s| (0.0..=3600.0).contains(s)) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected {\"seconds\": 0 to 3600}".into(),
        );
    };
    if broker.simulate_outage(&name, Duration::from_secs_f64(seconds)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no trigger named {name:?}"),
        )
    }
}

/// `GET /dead-letters`.
async fn list_dead_letters(State(broker): State<Arc<Broker>>) -> Json<Vec<DeadLetter>> {
    Json(broker.dead_letters())
}

/// `POST /dead-letters/{id}/replay`.
async fn replay_dead_letter(
    State(broker): State<Arc<Broker>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if broker.replay(&id).await {
        StatusCode::ACCEPTED.into_response()
    } else {
        json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter with id {id:?}"),
        )
    }
}
