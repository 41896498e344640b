//! The agent SDK: what a new agent needs to answer people, stream its answer as it is
//! generated, show what it is doing, ask a question, and stop when a participant cancels.
//!
//! An agent implements [`Agent`] (one method: answer a message through a [`Run`]) and hands
//! it to [`serve`]: an HTTP CloudEvents subscriber on `$PORT` (Knative, the local stack, any
//! container behind an EventBridge API destination), or a Lambda function invoked by an
//! EventBridge rule (the same binary, when `AWS_LAMBDA_RUNTIME_API` is set). Events go out
//! through the deployment's broker (`BROKER_URL`) or event bus (`EVENT_BUS_NAME`).
//!
//! ```no_run
//! use messaging::agent::{Agent, AgentHost, Run, serve};
//! use messaging::model::MessageReceived;
//!
//! struct Echo;
//!
//! #[async_trait::async_trait]
//! impl Agent for Echo {
//!     async fn answer(&self, message: MessageReceived, run: Run) -> messaging::Result<()> {
//!         run.working(Some("thinking"), None).await?;
//!         for word in message.body.content.split_inclusive(' ') {
//!             run.delta(word).await?; // fails once a participant cancelled: stop there
//!         }
//!         run.finish().await
//!     }
//! }
//!
//! # async fn main_() -> anyhow::Result<()> {
//! serve(AgentHost::from_env("echo").await?, Echo).await
//! # }
//! ```
//!
//! What the SDK does for the agent: one run per message (the run id is the message id, so a
//! redelivered message is the same run); ignores its own messages, system messages and
//! redeliveries of a message it is answering; numbers deltas; answers the HTTP delivery at once
//! (the run goes on in the background, within EventBridge API destinations' 5 s); notices
//! `agent.cancel` and makes the run's next call fail with `conflict`. On Lambda the run is
//! answered within the invocation and a cancel reaching another instance is not seen by the
//! run: the platform still drops everything the run sends after it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cloudevents::{AttributesReader, Event};
use tokio::sync::watch;

use crate::e2ee::Envelope;
use crate::e2ee::agent_device::{AgentDevice, Opened};
use crate::error::{Error, ErrorCode, Result};
use crate::events::{EventPublisher, event_data, new_event, new_event_with_id};
use crate::model::{
    AgentCancel, AgentDelta, AgentProgress, AgentResponse, MessageReceived, ProgressKind,
    event_types,
};
use crate::protocol::{MessageType, RunDetail, RunState};

/// How many answered message ids a host remembers, to ignore redeliveries.
const REMEMBERED: usize = 10_000;
/// Most text in one sealed streamed piece: sealed, it stays under the 4 KB of a delta.
const SEALED_PIECE: usize = 2048;

/// `text` in pieces of at most `limit` bytes, cut at character boundaries.
fn split_at_most(text: &str, limit: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + limit.max(4)).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

/// An agent: answers a user's message through a [`Run`].
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Answers `message`. Returning an error fails the run (the user sees `failed` with the
    /// error's message) unless the run already ended.
    async fn answer(&self, message: MessageReceived, run: Run) -> Result<()>;
}

/// What an agent can make of a delivered message (see [`AgentHost::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Readable (opened in place when it was sealed); the answer is sealed when it was.
    Readable {
        /// The message was sealed, and so is the answer.
        sealed: bool,
    },
    /// The agent cannot read it; its run fails with this reason.
    Refused(String),
}

/// Where an agent publishes, its device when it is encrypted, and the runs it has going.
pub struct AgentHost {
    agent_id: String,
    source: String,
    publisher: Arc<dyn EventPublisher>,
    /// The agent's device: messages are opened and answers sealed (see
    /// [`crate::e2ee::agent_device`]); `None` for an agent without keys (plaintext).
    device: Option<Arc<AgentDevice>>,
    /// Runs going on, by run id: the sender of their cancellation.
    runs: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Message ids answered lately, to ignore redeliveries.
    answered: Mutex<Remembered>,
}

/// The last [`REMEMBERED`] message ids: a set to look them up, a queue to forget the oldest.
#[derive(Default)]
struct Remembered {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Remembered {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`; false when it already was.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
        true
    }
}

impl AgentHost {
    /// A host for agent `agent_id` publishing with `publisher` (events carry the source
    /// `/agents/{agent_id}`).
    pub fn new(agent_id: impl Into<String>, publisher: Arc<dyn EventPublisher>) -> Arc<Self> {
        Self::build(agent_id.into(), publisher, None)
    }

    /// A host for an end-to-end encrypted agent: it opens what people send with `device` and
    /// seals every answer and streamed piece (see the module doc).
    pub fn encrypted(
        agent_id: impl Into<String>,
        publisher: Arc<dyn EventPublisher>,
        device: AgentDevice,
    ) -> Arc<Self> {
        Self::build(agent_id.into(), publisher, Some(Arc::new(device)))
    }

    fn build(
        agent_id: String,
        publisher: Arc<dyn EventPublisher>,
        device: Option<Arc<AgentDevice>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            source: format!("/agents/{agent_id}"),
            agent_id,
            publisher,
            device,
            runs: Mutex::new(HashMap::new()),
            answered: Mutex::default(),
        })
    }

    /// A host publishing where the environment says: EventBridge with `EVENT_BUS_NAME`, else
    /// the broker at `BROKER_URL`; encrypted when `AGENT_TOKEN` is set (see
    /// [`AgentDevice::from_env`]).
    pub async fn from_env(agent_id: impl Into<String>) -> anyhow::Result<Arc<Self>> {
        let agent_id = agent_id.into();
        let publisher = crate::eventbridge::publisher_from_env().await?;
        let device = AgentDevice::from_env(&agent_id).await?;
        if let Some(device) = &device {
            tracing::info!(
                device = device.device_id(),
                safety_code = device.safety_code().await,
                "end-to-end encrypted"
            );
        }
        Ok(Self::build(agent_id, publisher, device.map(Arc::new)))
    }

    /// This agent's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Takes one delivered CloudEvent: a message starts a run (returned, for the caller to
    /// await or spawn; `None` when there is nothing to answer), a cancel stops one. An
    /// encrypted agent's message whose key has not arrived yet is an `unavailable` error:
    /// answer the delivery with it, so it is delivered again.
    pub async fn receive(
        self: &Arc<Self>,
        agent: Arc<dyn Agent>,
        event: &Event,
    ) -> Result<Option<impl Future<Output = ()> + Send + use<>>> {
        match event.ty() {
            event_types::AGENT_CANCEL => {
                let cancel: AgentCancel = event_data(event)?;
                if cancel.agent_id == self.agent_id
                    && let Some(flag) = self.runs.lock().expect("runs lock").get(&cancel.run_id)
                {
                    let _ = flag.send(true);
                    tracing::info!(run = %cancel.run_id, by = %cancel.cancelled_by, "run cancelled");
                }
                Ok(None)
            }
            event_types::MESSAGE_RECEIVED => {
                let mut message: MessageReceived = event_data(event)?;
                if message.sender_id == self.agent_id
                    || message.body.message_type == MessageType::System
                    || self.answered(&message.message_id)
                {
                    return Ok(None);
                }
                let (sealed, refusal) = match self.open(&mut message).await? {
                    Reading::Readable { sealed } => (sealed, None),
                    Reading::Refused(reason) => (false, Some(reason)),
                };
                if !self.first_time(&message.message_id) {
                    return Ok(None);
                }
                let (run, cancelled) = self.start(&message, sealed);
                let host = self.clone();
                let run_id = run.inner.run_id.clone();
                Ok(Some(async move {
                    let outcome = match refusal {
                        Some(reason) => run.fail_with(&reason).await,
                        None => agent.answer(message, run.clone_for_host()).await,
                    };
                    if let Err(e) = outcome
                        && !run.ended()
                        && !*cancelled.borrow()
                    {
                        tracing::warn!(run = %run_id, error = %e, "run failed");
                        let _ = run.fail_with(&e.public_message()).await;
                    }
                    host.runs.lock().expect("runs lock").remove(&run_id);
                }))
            }
            _ => Ok(None),
        }
    }

    /// Opens `message` in place when this agent is encrypted, and says whether its answer is
    /// to be sealed, or why the agent cannot read it (plaintext sent to an encrypted agent,
    /// ciphertext to one without keys, a message that never opens). A key still on its way is
    /// an `unavailable` error: have the message delivered again.
    pub async fn open(&self, message: &mut MessageReceived) -> Result<Reading> {
        let Some(device) = &self.device else {
            if Envelope::parse(&message.body.content).is_ok() {
                return Ok(Reading::Refused(
                    "this agent holds no keys: it cannot read encrypted messages".into(),
                ));
            }
            return Ok(Reading::Readable { sealed: false });
        };
        match device.open(message).await {
            Ok(Opened::Sealed(plaintext)) => {
                message.body.content = plaintext.content;
                Ok(Reading::Readable { sealed: true })
            }
            Ok(Opened::Plaintext) => Ok(Reading::Refused(
                "this agent reads end-to-end encrypted messages only".into(),
            )),
            Err(e) if !e.is_permanent() => Err(e),
            Err(e) => Ok(Reading::Refused(e.public_message())),
        }
    }

    /// Fails the run answering `message` at once with `reason` (a message the agent cannot
    /// read: see [`AgentHost::open`]).
    pub async fn refuse(self: &Arc<Self>, message: &MessageReceived, reason: &str) -> Result<()> {
        let (run, _) = self.start(message, false);
        let failed = run.fail_with(reason).await;
        self.runs.lock().expect("runs lock").remove(run.id());
        failed
    }

    /// The agent's device, when it is encrypted.
    pub fn device(&self) -> Option<&Arc<AgentDevice>> {
        self.device.as_ref()
    }

    fn answered(&self, message_id: &str) -> bool {
        self.answered
            .lock()
            .expect("answered lock")
            .contains(message_id)
    }

    fn first_time(&self, message_id: &str) -> bool {
        self.answered
            .lock()
            .expect("answered lock")
            .insert(message_id)
    }

    fn start(
        self: &Arc<Self>,
        message: &MessageReceived,
        sealed: bool,
    ) -> (Run, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        self.runs
            .lock()
            .expect("runs lock")
            .insert(message.message_id.clone(), tx);
        let run = Run {
            inner: Arc::new(RunInner {
                host: self.clone(),
                run_id: message.message_id.clone(),
                conversation_id: message.conversation_id.clone(),
                user_id: message.sender_id.clone(),
                in_reply_to: message.message_id.clone(),
                next_index: AtomicU32::new(0),
                streamed: Mutex::new(String::new()),
                ended: std::sync::atomic::AtomicBool::new(false),
                cancelled: rx.clone(),
                device: if sealed { self.device.clone() } else { None },
                shared: tokio::sync::OnceCell::new(),
            }),
        };
        (run, rx)
    }
}

struct RunInner {
    host: Arc<AgentHost>,
    run_id: String,
    conversation_id: String,
    user_id: String,
    in_reply_to: String,
    next_index: AtomicU32,
    streamed: Mutex<String>,
    ended: std::sync::atomic::AtomicBool,
    cancelled: watch::Receiver<bool>,
    /// The agent's device when the run's answer is sealed.
    device: Option<Arc<AgentDevice>>,
    /// Set once the conversation's devices have this device's session key.
    shared: tokio::sync::OnceCell<()>,
}

/// One answer in the making: stream it, say what you are doing, ask, reply, or fail. Every
/// call after a participant cancelled the run fails with `conflict` (stop there: the platform
/// drops whatever the run sends anyway).
pub struct Run {
    inner: Arc<RunInner>,
}

impl Run {
    fn clone_for_host(&self) -> Run {
        Run {
            inner: self.inner.clone(),
        }
    }

    /// The run id (the id of the message being answered).
    pub fn id(&self) -> &str {
        &self.inner.run_id
    }

    /// The conversation.
    pub fn conversation_id(&self) -> &str {
        &self.inner.conversation_id
    }

    /// The user being answered.
    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    /// Whether a participant cancelled the run.
    pub fn is_cancelled(&self) -> bool {
        *self.inner.cancelled.borrow()
    }

    /// Resolves when a participant cancels the run (use in `tokio::select!` around long work).
    pub async fn cancelled(&self) {
        let mut rx = self.inner.cancelled.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn ended(&self) -> bool {
        self.inner.ended.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::client(
                ErrorCode::Conflict,
                format!("run {} was cancelled", self.inner.run_id),
            ));
        }
        if self.ended() {
            return Err(Error::client(
                ErrorCode::Conflict,
                format!("run {} is over", self.inner.run_id),
            ));
        }
        Ok(())
    }

    async fn progress(
        &self,
        state: RunState,
        step: Option<&str>,
        percent: Option<u8>,
        reason: Option<&str>,
    ) -> Result<()> {
        let data = AgentProgress {
            conversation_id: self.inner.conversation_id.clone(),
            user_id: self.inner.user_id.clone(),
            agent_id: self.inner.host.agent_id.clone(),
            kind: if state == RunState::Working {
                ProgressKind::Typing
            } else {
                ProgressKind::Idle
            },
            timestamp: crate::clock::now_ms(),
            run_id: Some(self.inner.run_id.clone()),
            state: Some(state),
            detail: RunDetail {
                step: step.map(str::to_string),
                percent,
                reason: reason.map(str::to_string),
            },
        };
        let event = new_event(
            event_types::AGENT_PROGRESS,
            &self.inner.host.source,
            &data,
            &[],
        )?;
        self.inner.host.publisher.publish(event).await
    }

    /// Working, optionally on `step` (a tool's name, a phase) and `percent` of the way. Say it
    /// at least every 30 s on long work: a run silent for longer is shown as stalled.
    pub async fn working(&self, step: Option<&str>, percent: Option<u8>) -> Result<()> {
        self.check()?;
        self.progress(RunState::Working, step, percent, None).await
    }

    /// Needs the user to answer `question` (their next message starts a new run).
    pub async fn input_required(&self, question: &str) -> Result<()> {
        self.check()?;
        self.progress(RunState::InputRequired, None, None, Some(question))
            .await
    }

    /// `text` as it travels: sealed for the conversation when the run is encrypted (its
    /// devices get the session key before the first sealed piece).
    async fn wire(&self, text: &str) -> Result<String> {
        let Some(device) = &self.inner.device else {
            return Ok(text.to_string());
        };
        self.inner
            .shared
            .get_or_try_init(|| async { device.share(&self.inner.conversation_id).await.map(drop) })
            .await?;
        device.seal(&self.inner.conversation_id, text).await
    }

    /// The next piece of the answer (split in pieces of at most 4 KB when longer, as they
    /// travel: sealed pieces hold less text).
    pub async fn delta(&self, text: &str) -> Result<()> {
        self.check()?;
        let limit = if self.inner.device.is_some() {
            SEALED_PIECE
        } else {
            crate::runs::MAX_DELTA_TEXT
        };
        let mut pieces: VecDeque<&str> = split_at_most(text, limit).into();
        while let Some(piece) = pieces.pop_front() {
            let wire = self.wire(piece).await?;
            if wire.len() > crate::runs::MAX_DELTA_TEXT && piece.len() > 1 {
                // Sealed text that escapes badly: in halves.
                let halves = split_at_most(piece, piece.len().div_ceil(2));
                for half in halves.into_iter().rev() {
                    pieces.push_front(half);
                }
                continue;
            }
            let index = self.inner.next_index.fetch_add(1, Ordering::SeqCst);
            let data = AgentDelta {
                run_id: self.inner.run_id.clone(),
                conversation_id: self.inner.conversation_id.clone(),
                user_id: self.inner.user_id.clone(),
                agent_id: self.inner.host.agent_id.clone(),
                index,
                text: wire,
                timestamp: crate::clock::now_ms(),
            };
            // The id names the piece: a retried publish is one delta.
            let event = new_event_with_id(
                &format!("delta/{}/{index}", self.inner.run_id),
                event_types::AGENT_DELTA,
                &self.inner.host.source,
                &data,
                &[],
            )?;
            self.inner.host.publisher.publish(event).await?;
            self.inner
                .streamed
                .lock()
                .expect("streamed lock")
                .push_str(piece);
        }
        Ok(())
    }

    /// Ends the run with `text` as the answer, stored as one message (it replaces what was
    /// streamed).
    pub async fn reply(&self, text: &str) -> Result<()> {
        self.check()?;
        let response = AgentResponse {
            idempotency_key: format!("run/{}", self.inner.run_id),
            conversation_id: self.inner.conversation_id.clone(),
            user_id: self.inner.user_id.clone(),
            agent_id: self.inner.host.agent_id.clone(),
            response: self.wire(text).await?,
            in_reply_to: Some(self.inner.in_reply_to.clone()),
            message_type: MessageType::Text,
            timestamp: crate::clock::now_ms(),
            run_id: Some(self.inner.run_id.clone()),
        };
        let event = new_event_with_id(
            &format!("response/{}", self.inner.run_id),
            event_types::AGENT_RESPONSE,
            &self.inner.host.source,
            &response,
            &[],
        )?;
        self.inner.host.publisher.publish(event).await?;
        self.inner.ended.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Ends the run with what was streamed as the answer.
    pub async fn finish(&self) -> Result<()> {
        let text = self.inner.streamed.lock().expect("streamed lock").clone();
        self.reply(&text).await
    }

    /// Ends the run without an answer; the user sees `reason`.
    pub async fn fail(&self, reason: &str) -> Result<()> {
        self.check()?;
        self.fail_with(reason).await
    }

    async fn fail_with(&self, reason: &str) -> Result<()> {
        self.progress(RunState::Failed, None, None, Some(reason))
            .await?;
        self.inner.ended.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs `agent`: under Lambda (invoked by an EventBridge rule; each run is answered within its
/// invocation) when `AWS_LAMBDA_RUNTIME_API` is set, else as an HTTP CloudEvents subscriber on
/// `$PORT` (8080): `POST /` in binary or structured mode, answered at once while the run goes
/// on, and `GET /healthz`.
pub async fn serve(host: Arc<AgentHost>, agent: impl Agent) -> anyhow::Result<()> {
    let agent: Arc<dyn Agent> = Arc::new(agent);
    match crate::runtime::mode()? {
        crate::runtime::Mode::Lambda => lambda_runtime::run(lambda_runtime::service_fn(
            move |invocation: lambda_runtime::LambdaEvent<serde_json::Value>| {
                let host = host.clone();
                let agent = agent.clone();
                async move {
                    let event = crate::eventbridge::event_from_invocation(invocation.payload)
                        .map_err(lambda_runtime::Diagnostic::from)?;
                    if let Some(run) = host
                        .receive(agent, &event)
                        .await
                        .map_err(lambda_runtime::Diagnostic::from)?
                    {
                        run.await;
                    }
                    Ok::<_, lambda_runtime::Diagnostic>(serde_json::Value::Null)
                }
            },
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}")),
        crate::runtime::Mode::Http(port) => {
            let listener = crate::runtime::listen(port).await?;
            crate::runtime::serve(listener, router(host, agent)).await?;
            Ok(())
        }
    }
}

/// The HTTP subscriber of [`serve`] (to mount elsewhere, e.g. in a test or the local stack).
pub fn router(host: Arc<AgentHost>, agent: Arc<dyn Agent>) -> axum::Router {
    crate::runtime::cloudevent_router(move |event: Event| {
        let host = host.clone();
        let agent = agent.clone();
        async move {
            if let Some(run) = host.receive(agent, &event).await? {
                tokio::spawn(run);
            }
            Ok(None)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_ids_and_forgets_the_oldest() {
        let mut remembered = Remembered::default();
        assert!(remembered.insert("m0"));
        assert!(!remembered.insert("m0"), "a redelivery is seen");
        for i in 1..REMEMBERED {
            assert!(remembered.insert(&format!("m{i}")));
        }
        assert!(remembered.contains("m0"));
        assert!(remembered.insert("one more"));
        assert!(!remembered.contains("m0"), "the oldest is forgotten");
        assert!(remembered.contains("m1"));
        assert_eq!(remembered.ids.len(), REMEMBERED);
        assert_eq!(remembered.order.len(), REMEMBERED);
    }
}
