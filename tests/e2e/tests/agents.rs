//! Agents as first-class participants, through the local stack: streamed answers, the run's
//! state, cancel, and the agent's side of it (an HTTP subscriber that records what the broker
//! delivers to it, publishing its events through the broker ingress like any agent).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use cloudevents::{AttributesReader, Event};
use e2e::{WAIT, client, conversation, stack_with, user};
use local_stack::stack::RunningStack;
use messaging::client::{Client, ClientEvent};
use messaging::events::{EventPublisher, HttpBroker, event_data, new_event};
use messaging::model::{
    Agent, AgentCancel, AgentDelta, AgentProgress, AgentResponse, ConversationKind, ProgressKind,
    event_types,
};
use messaging::protocol::{AgentRunPayload, MessageType, RunDetail, RunState};
use mongodb::bson::DateTime;

const AGENT: &str = "streamer";

/// The agent's inbox: every event the broker delivers to it.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Event>>>);

impl Inbox {
    async fn serve() -> (Self, String) {
        let inbox = Self::default();
        let state = inbox.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
                        Ok(event) => {
                            state.0.lock().unwrap().push(event);
                            StatusCode::ACCEPTED
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (inbox, url)
    }

    fn of_type(&self, ty: &str) -> Vec<Event> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.ty() == ty)
            .cloned()
            .collect()
    }
}

/// A stack whose broker delivers agent `streamer`'s messages and cancels to `inbox`, with a
/// 1 s progress interval (so a silent run shows quickly) and a long agent timeout.
async fn streaming_stack() -> (RunningStack, Inbox) {
    streaming_stack_with(|_| {}).await
}

/// [`streaming_stack`], with `more` settings.
async fn streaming_stack_with(
    more: impl FnOnce(&mut local_stack::stack::StackConfig),
) -> (RunningStack, Inbox) {
    let (inbox, url) = Inbox::serve().await;
    let triggers = std::env::temp_dir().join(format!("{}.toml", testkit::unique_name("triggers")));
    std::fs::write(
        &triggers,
        format!(
            r#"
[[trigger]]
name = "streamer"
subscriber = "{url}"
filter.attributes = {{ type = "messaging.message.received", agentid = "{AGENT}" }}
delivery = {{ retry = 3, backoff_policy = "linear", backoff_delay_ms = 20 }}

[[trigger]]
name = "streamer-cancel"
subscriber = "{url}"
filter.attributes = {{ type = "agent.cancel", agentid = "{AGENT}" }}
delivery = {{ retry = 3, backoff_policy = "linear", backoff_delay_ms = 20 }}
"#
        ),
    )
    .unwrap();
    let stack = stack_with(|c| {
        c.extra_triggers = vec![triggers];
        c.settings.agent_progress_interval = Duration::from_secs(1);
        c.settings.agent_timeout = Duration::from_secs(60);
        c.settings.delta_gap_wait = Duration::from_millis(500);
        more(c);
    })
    .await;
    stack
        .ctx
        .store
        .upsert_agent(&Agent {
            agent_id: AGENT.into(),
            name: "Streamer".into(),
            description: "test agent".into(),
            capabilities: vec![],
            categories: vec![],
            examples: vec![],
            avatar_url: None,
            endpoint: None,
            last_heartbeat_at: Some(DateTime::now()),
            created_at: DateTime::now(),
        })
        .await
        .unwrap();
    (stack, inbox)
}

/// The agent's side: publishes through the broker ingress, as an agent does.
struct AgentSide {
    broker: HttpBroker,
    conversation: String,
    user: String,
    run: String,
}

impl AgentSide {
    async fn publish<T: serde::Serialize>(&self, ty: &str, data: &T) {
        let event = new_event(ty, "/agents/streamer", data, &[]).unwrap();
        self.broker.publish(event).await.unwrap();
    }

    async fn delta(&self, index: u32, text: &str) {
        let delta = AgentDelta {
            run_id: self.run.clone(),
            conversation_id: self.conversation.clone(),
            user_id: self.user.clone(),
            agent_id: AGENT.into(),
            index,
            text: text.into(),
            timestamp: messaging::clock::now_ms(),
        };
        self.publish(event_types::AGENT_DELTA, &delta).await;
    }

    async fn progress(&self, state: RunState, step: Option<&str>, percent: Option<u8>) {
        self.progress_said_at(state, step, percent, messaging::clock::now_ms())
            .await
    }

    /// A progress the agent made at `timestamp` (its clock).
    async fn progress_said_at(
        &self,
        state: RunState,
        step: Option<&str>,
        percent: Option<u8>,
        timestamp: i64,
    ) {
        let progress = AgentProgress {
            conversation_id: self.conversation.clone(),
            user_id: self.user.clone(),
            agent_id: AGENT.into(),
            kind: ProgressKind::Typing,
            timestamp,
            run_id: Some(self.run.clone()),
            state: Some(state),
            detail: RunDetail {
                step: step.map(str::to_string),
                percent,
                reason: None,
            },
        };
        self.publish(event_types::AGENT_PROGRESS, &progress).await;
    }

    async fn respond(&self, text: &str) {
        let response = AgentResponse {
            idempotency_key: format!("run/{}", self.run),
            conversation_id: self.conversation.clone(),
            user_id: self.user.clone(),
            agent_id: AGENT.into(),
            response: text.into(),
            in_reply_to: None,
            message_type: MessageType::Text,
            timestamp: messaging::clock::now_ms(),
            run_id: Some(self.run.clone()),
        };
        self.publish(event_types::AGENT_RESPONSE, &response).await;
    }
}

/// A user in a conversation with the agent, and the agent's side of one run.
async fn scene(stack: &RunningStack) -> (String, String, AgentSide) {
    let alice = user(stack, "alice").await;
    let conv = conversation(
        stack,
        ConversationKind::Agent,
        &[&alice, AGENT],
        Some(AGENT),
    )
    .await;
    let side = AgentSide {
        broker: HttpBroker::new(&stack.broker_url),
        conversation: conv.clone(),
        user: alice.clone(),
        run: uuid::Uuid::new_v4().to_string(),
    };
    (alice, conv, side)
}

/// Streamed text seen by a client until `done` says so (or the wait ends).
async fn streamed_until(client: &mut Client, done: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while tokio::time::Instant::now() < deadline {
        match client.next_event_within(WAIT).await {
            Some(ClientEvent::Streaming { text, .. }) => {
                let finished = done(&text);
                seen.push(text);
                if finished {
                    return seen;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    panic!(
        "stream did not finish; last: {:?}",
        seen.last().map(|t| &t[t.len().saturating_sub(80)..])
    );
}

async fn run_state(
    client: &mut Client,
    wanted: impl Fn(&AgentRunPayload) -> bool,
) -> AgentRunPayload {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(ClientEvent::Run(run)) = client.next_event_within(WAIT).await
            && wanted(&run)
        {
            return run;
        }
    }
    panic!("no such agent_run");
}

fn every_text_grows(texts: &[String]) {
    for pair in texts.windows(2) {
        assert!(
            pair[1].starts_with(&pair[0]),
            "the streamed text went back: {:?} then {:?}",
            &pair[0][pair[0].len().saturating_sub(40)..],
            &pair[1][pair[1].len().saturating_sub(40)..]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_delta_stream_arrives_whole_and_in_order_on_every_device_and_is_stored_once() {
    let (stack, _inbox) = streaming_stack().await;
    let (alice, conv, agent) = scene(&stack).await;
    let mut phone = client(&stack, &alice, "phone").await;
    let mut laptop = client(&stack, &alice, "laptop").await;
    let words: Vec<String> = (0..500).map(|i| format!("w{i} ")).collect();
    let whole: String = words.concat();

    agent
        .progress(RunState::Working, Some("search"), Some(10))
        .await;
    let run = run_state(&mut phone, |r| r.detail.step.as_deref() == Some("search")).await;
    assert_eq!(run.state, RunState::Working);
    assert_eq!(run.detail.percent, Some(10));
    assert_eq!(run.agent_id, AGENT);

    for (i, word) in words.iter().enumerate().take(250) {
        agent.delta(i as u32, word).await;
    }
    // A device that connects mid-stream gets the text so far, then the rest.
    let half: String = words[..250].concat();
    let mut tablet = client(&stack, &alice, "tablet").await;
    for (i, word) in words.iter().enumerate().skip(250) {
        agent.delta(i as u32, word).await;
    }
    for device in [&mut phone, &mut laptop] {
        let texts = streamed_until(device, |t| t == whole).await;
        every_text_grows(&texts);
    }
    let texts = streamed_until(&mut tablet, |t| t == whole).await;
    assert!(
        texts[0].starts_with(&words[0]) && texts[0].len() >= half.len().min(10),
        "the late device starts from the beginning: {:?}",
        &texts[0][..texts[0].len().min(40)]
    );
    every_text_grows(&texts);

    agent.respond(&whole).await;
    let done = run_state(&mut phone, |r| r.state == RunState::Completed).await;
    let message_id = done.message_id.expect("the stored answer");
    let stored = stack.ctx.store.message(&message_id).await.unwrap().unwrap();
    assert_eq!(stored.body.content, whole);
    assert_eq!(stored.sender_id, AGENT);
    // Nothing of the stream was stored but that one message.
    stack.settled().await;
    let all = stack
        .ctx
        .store
        .messages_in_range(&conv, 1, 1000, 1000)
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_deltas_change_nothing_and_a_gap_is_skipped_after_the_wait() {
    let (stack, _inbox) = streaming_stack().await;
    let (alice, _conv, agent) = scene(&stack).await;
    let mut phone = client(&stack, &alice, "phone").await;
    for index in [2u32, 0, 1, 1, 4, 3, 0, 5, 2] {
        agent.delta(index, &format!("{index} ")).await;
    }
    let texts = streamed_until(&mut phone, |t| t == "0 1 2 3 4 5 ").await;
    every_text_grows(&texts);

    // 7 never comes: 8 waits for it, then it is skipped.
    agent.delta(6, "6 ").await;
    agent.delta(8, "8 ").await;
    let texts = streamed_until(&mut phone, |t| t == "0 1 2 3 4 5 6 8 ").await;
    every_text_grows(&texts);
    // And a late 7 is a repeat of a skipped piece: nothing changes.
    agent.delta(7, "7 ").await;
    agent.delta(9, "9 ").await;
    let texts = streamed_until(&mut phone, |t| t.ends_with("9 ")).await;
    assert_eq!(texts.last().unwrap(), "0 1 2 3 4 5 6 8 9 ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_stream_everywhere_reaches_the_agent_and_drops_what_comes_after() {
    let (stack, inbox) = streaming_stack().await;
    let (alice, conv, agent) = scene(&stack).await;
    let mut phone = client(&stack, &alice, "phone").await;
    let mut laptop = client(&stack, &alice, "laptop").await;
    for i in 0..10 {
        agent.delta(i, &format!("{i} ")).await;
    }
    streamed_until(&mut phone, |t| t.ends_with("9 ")).await;
    streamed_until(&mut laptop, |t| t.ends_with("9 ")).await;

    phone.cancel(&conv, &agent.run).unwrap();
    for device in [&mut phone, &mut laptop] {
        let run = run_state(device, |r| r.state == RunState::Cancelled).await;
        assert_eq!(run.run_id, agent.run);
    }
    // The agent hears of it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let cancel = loop {
        if let Some(event) = inbox.of_type(event_types::AGENT_CANCEL).first() {
            break event.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no agent.cancel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cancel: AgentCancel = event_data(&cancel).unwrap();
    assert_eq!(cancel.run_id, agent.run);
    assert_eq!(cancel.cancelled_by, alice);
    assert_eq!(
        cancel_event_agent(&inbox),
        Some(AGENT.to_string()),
        "routed by the agentid extension"
    );

    // What the agent sends afterwards is dropped: no more text, no message.
    for i in 10..15 {
        agent.delta(i, &format!("{i} ")).await;
    }
    agent.respond("too late").await;
    stack.settled().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(event) = phone.next_event_within(Duration::from_millis(200)).await {
        assert!(
            !matches!(
                event,
                ClientEvent::Streaming { .. } | ClientEvent::Message(_)
            ),
            "{event:?}"
        );
    }
    let all = stack
        .ctx
        .store
        .messages_in_range(&conv, 1, 1000, 1000)
        .await
        .unwrap();
    assert!(all.is_empty(), "a cancelled run leaves no message: {all:?}");
    // Cancelling again is a conflict.
    phone.cancel(&conv, &agent.run).unwrap();
    match phone.next_event_within(WAIT).await {
        Some(ClientEvent::Error { code, .. }) => {
            assert_eq!(code, messaging::ErrorCode::Conflict)
        }
        other => panic!("{other:?}"),
    }
}

fn cancel_event_agent(inbox: &Inbox) -> Option<String> {
    inbox
        .of_type(event_types::AGENT_CANCEL)
        .first()
        .and_then(|e| {
            e.extension(event_types::AGENT_ID_EXTENSION)
                .map(|v| v.to_string())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_run_is_shown_as_stalled_and_only_participants_may_cancel() {
    let (stack, _inbox) = streaming_stack().await;
    let (alice, conv, agent) = scene(&stack).await;
    let mallory = user(&stack, "mallory").await;
    let mut phone = client(&stack, &alice, "phone").await;
    let mut intruder = client(&stack, &mallory, "phone").await;
    agent
        .progress(RunState::Working, Some("thinking"), None)
        .await;
    run_state(&mut phone, |r| r.state == RunState::Working && !r.stalled).await;
    // The progress interval is 1 s here: then the run is shown as silent.
    let stalled = run_state(&mut phone, |r| r.stalled).await;
    assert_eq!(stalled.state, RunState::Working);

    intruder.cancel(&conv, &agent.run).unwrap();
    match intruder.next_event_within(WAIT).await {
        Some(ClientEvent::Error { code, .. }) => {
            assert_eq!(code, messaging::ErrorCode::Forbidden)
        }
        other => panic!("{other:?}"),
    }
    // The run goes on: the agent answers, and it completes.
    agent.progress(RunState::InputRequired, None, None).await;
    let asked = run_state(&mut phone, |r| r.state == RunState::InputRequired).await;
    assert!(!asked.stalled);
    agent.respond("done").await;
    run_state(&mut phone, |r| r.state == RunState::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_the_user_is_neither_stalled_nor_timed_out_nor_reopened_by_a_stale_progress()
 {
    // Progress interval 1 s (streaming_stack) and an agent timeout of 2 s: both would have
    // fired several times over during the wait below if a question counted as silence.
    let (stack, inbox) =
        streaming_stack_with(|c| c.settings.agent_timeout = Duration::from_secs(2)).await;
    let (alice, conv, mut agent) = scene(&stack).await;
    let mut phone = client(&stack, &alice, "phone").await;
    let ack = phone.send_text(&conv, "repeat something").await.unwrap();
    // The run answering a message is named after it (the SDK's convention).
    agent.run = ack.message_id.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while inbox.of_type(event_types::MESSAGE_RECEIVED).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent got no message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.progress(RunState::Working, None, None).await;
    // Seen before the question is asked: two events published back to back may be handled
    // side by side, and the frame of the first posted after the second's.
    run_state(&mut phone, |r| r.state == RunState::Working).await;
    agent.progress(RunState::InputRequired, None, None).await;
    let asked = run_state(&mut phone, |r| r.state == RunState::InputRequired).await;
    assert!(!asked.stalled);
    // A progress the agent made before its question, reaching the platform after it, is stale.
    agent
        .progress_said_at(
            RunState::Working,
            Some("late"),
            None,
            asked.updated_at - 60_000,
        )
        .await;

    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Some(event) = phone
        .next_event_within(quiet_until.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        match event {
            // A repeat of the same state (a redelivered event, a catch-up) is harmless.
            ClientEvent::Run(run) => assert!(
                run.state == RunState::InputRequired && !run.stalled,
                "the waiting run changed: {run:?}"
            ),
            // Her own message may come back to her device; nothing else may arrive.
            ClientEvent::Message(m) => assert_eq!(
                m.sender_id.as_deref(),
                Some(alice.as_str()),
                "a notice while the agent waits for the user: {m:?}"
            ),
            _ => {}
        }
    }
    // The user's answer is a new message; the agent answers the run.
    agent.respond("done").await;
    run_state(&mut phone, |r| r.state == RunState::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_state_posted_after_a_newer_one_is_ignored_by_the_client() {
    let stack = e2e::stack().await;
    let alice = user(&stack, "alice").await;
    let mut phone = client(&stack, &alice, "phone").await;
    let state = |state: RunState, updated_at: i64| messaging::protocol::ServerFrame::AgentRun {
        payload: AgentRunPayload {
            conversation_id: "c-1".into(),
            run_id: "r-1".into(),
            agent_id: "streamer".into(),
            state,
            detail: Default::default(),
            stalled: false,
            message_id: None,
            sequence_number: None,
            updated_at,
        },
    };
    // Posted out of order, as two events handled side by side may post them.
    for frame in [
        state(RunState::InputRequired, 2_000),
        state(RunState::Working, 1_000),
        state(RunState::Completed, 3_000),
    ] {
        for connection in stack.ctx.realtime.user_connections(&alice).await.unwrap() {
            messaging::fanout::post(&stack.ctx, &connection, &frame)
                .await
                .unwrap();
        }
    }
    let mut shown = Vec::new();
    while shown.last() != Some(&RunState::Completed) {
        match phone.next_event_within(WAIT).await {
            Some(ClientEvent::Run(run)) => shown.push(run.state),
            Some(_) => continue,
            None => panic!("states shown: {shown:?}"),
        }
    }
    assert_eq!(
        shown,
        [RunState::InputRequired, RunState::Completed],
        "the older state never undoes the newer"
    );
}
