//! The broker over real sockets: ingress, triggers, replies, retries, dead letters, replay.
//!
//! The broker's router and every HTTP subscriber or dead-letter sink are real axum servers on
//! 127.0.0.1:0. Backoff delays are 10 ms, and tests wait with `Broker::idle`, not sleeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cloudevents::binding::reqwest::RequestBuilderExt;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use local_stack::broker::{
    BackoffPolicy, Broker, BrokerConfig, DeadLetter, DeliverySpec, EventHandler, Filter,
    HandlerError, Trigger,
};
use messaging::events::EventPublisher;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An event with JSON data and extensions.
fn event(ty: &str, id: &str, extensions: &[(&str, &str)]) -> Event {
    let mut builder = EventBuilderV10::new()
        .id(id)
        .ty(ty)
        .source("urn:test:broker")
        .data(
            "application/json",
            json!({ "ciphertext": "b3BhcXVl", "n": 1 }),
        );
    for (name, value) in extensions {
        builder = builder.extension(name, *value);
    }
    builder.build().expect("valid event")
}

/// Serves a router on a free loopback port; returns its base URL (no trailing slash).
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    format!("http://{address}")
}

/// The broker served over HTTP.
struct Running {
    broker: Arc<Broker>,
    url: String,
    http: reqwest::Client,
}

async fn start(config: BrokerConfig, functions: HashMap<String, Arc<dyn EventHandler>>) -> Running {
    let broker = Broker::new(config, functions);
    let url = serve(Arc::clone(&broker).router()).await;
    Running {
        broker,
        url,
        http: reqwest::Client::new(),
    }
}

impl Running {
    /// POSTs an event in binary mode to the ingress; returns the status.
    async fn send(&self, event: Event) -> StatusCode {
        let response = self
            .http
            .post(format!("{}/", self.url))
            .event(event)
            .expect("encode")
            .send()
            .await
            .expect("send");
        response.status()
    }

    /// Waits until no delivery is in flight (fails instead of hanging).
    async fn settle(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.broker.idle())
            .await
            .expect("the broker did not become idle");
    }

    async fn dead_letters(&self) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/dead-letters", self.url))
            .send()
            .await
            .expect("GET /dead-letters");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON array")
    }

    async fn replay(&self, id: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/dead-letters/{id}/replay", self.url))
            .send()
            .await
            .expect("POST replay")
    }
}

fn trigger(name: &str, filter: Filter, subscriber: &str) -> Trigger {
    Trigger {
        name: name.to_owned(),
        filter,
        subscriber: subscriber.to_owned(),
        delivery: fast_delivery(5),
    }
}

fn fast_delivery(retry: u32) -> DeliverySpec {
    DeliverySpec {
        retry,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay_ms: 10,
        dead_letter_sink: None,
    }
}

fn exact(pairs: &[(&str, &str)]) -> Filter {
    Filter {
        attributes: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Filter::default()
    }
}

fn prefix(pairs: &[(&str, &str)]) -> Filter {
    Filter {
        prefix: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Filter::default()
    }
}

fn config(triggers: Vec<Trigger>) -> BrokerConfig {
    BrokerConfig {
        triggers,
        dead_letter_sink: None,
    }
}

/// What an HTTP subscriber (or sink) received: headers and the decoded event.
type Received = Arc<Mutex<Vec<(HeaderMap, Event)>>>;

/// An HTTP subscriber that records every request and answers with `respond(attempt, event)`
/// (attempt counts from 1).
struct HttpSubscriber {
    url: String,
    received: Received,
}

impl HttpSubscriber {
    async fn start(
        respond: impl Fn(usize, &Event) -> Response + Clone + Send + Sync + 'static,
    ) -> Self {
        let received: Received = Arc::default();
        let seen = Arc::clone(&received);
        let router = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = Arc::clone(&seen);
                let respond = respond.clone();
                async move {
                    let event = match cloudevents::binding::http::to_event(&headers, body.to_vec())
                    {
                        Ok(event) => event,
                        Err(e) => {
                            return (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                                .into_response();
                        }
                    };
                    let attempt = {
                        let mut seen = seen.lock().expect("lock");
                        seen.push((headers, event.clone()));
                        seen.len()
                    };
                    respond(attempt, &event)
                }
            }),
        );
        let base = serve(router).await;
        Self {
            url: format!("{base}/"),
            received,
        }
    }

    /// Always answers `status` with `body`.
    async fn answering(status: StatusCode, body: &'static str) -> Self {
        Self::start(move |_, _| (status, body).into_response()).await
    }

    fn events(&self) -> Vec<Event> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, event)| event.clone())
            .collect()
    }

    fn headers(&self) -> Vec<HeaderMap> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .map(|(headers, _)| headers.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }
}

/// An in-process function that records events and may reply or fail.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    reply_type: Option<&'static str>,
    /// Statuses to fail with, in order, before succeeding.
    failures: Arc<Mutex<Vec<u16>>>,
    panic: bool,
}

impl Recorder {
    fn replying(reply_type: &'static str) -> Self {
        Self {
            reply_type: Some(reply_type),
            ..Self::default()
        }
    }

    fn failing(statuses: &[u16]) -> Self {
        Self {
            failures: Arc::new(Mutex::new(statuses.to_vec())),
            ..Self::default()
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.events().iter().map(|e| e.id().to_owned()).collect();
        ids.sort();
        ids
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: Event) -> Result<Option<Event>, HandlerError> {
        self.events.lock().expect("lock").push(event.clone());
        assert!(!self.panic, "the function panics");
        let failure = {
            let mut failures = self.failures.lock().expect("lock");
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        if let Some(status) = failure {
            return Err(HandlerError {
                status,
                message: format!("failing with {status}"),
                retry_after: None,
            });
        }
        Ok(self
            .reply_type
            .map(|ty| event_from(ty, &format!("reply-to-{}", event.id()))))
    }
}

fn event_from(ty: &str, id: &str) -> Event {
    event(ty, id, &[])
}

fn functions(list: &[(&str, &Recorder)]) -> HashMap<String, Arc<dyn EventHandler>> {
    list.iter()
        .map(|(name, recorder)| {
            let handler: Arc<dyn EventHandler> = Arc::new((*recorder).clone());
            ((*name).to_owned(), handler)
        })
        .collect()
}

fn extension(event: &Event, name: &str) -> Option<String> {
    event.extension(name).map(ToString::to_string)
}

/// The event with JSON data as a JSON value: binary mode decodes `application/json` data as
/// bytes, so compare events after this.
fn normalized(event: &Event) -> Event {
    let mut event = event.clone();
    if let Some(cloudevents::Data::Binary(bytes)) = event.data() {
        let value: Value = serde_json::from_slice(bytes).expect("JSON data");
        event.set_data_unchecked(value);
    }
    event
}

fn decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

// ---------------------------------------------------------------------------------------------
// Ingress
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn binary_and_structured_ingress_are_accepted_and_delivered() {
    let subscriber = HttpSubscriber::answering(StatusCode::OK, "").await;
    let stack = start(
        config(vec![trigger("all", Filter::default(), &subscriber.url)]),
        HashMap::new(),
    )
    .await;

    let binary = event("test.binary", "b-1", &[("agentid", "agent-1")]);
    let response = stack
        .http
        .post(format!("{}/", stack.url))
        .event(binary.clone())
        .expect("encode")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.bytes().await.expect("body").is_empty());

    let structured = event("test.structured", "s-1", &[]);
    let response = stack
        .http
        .post(format!("{}/", stack.url))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&structured).expect("serialize"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.bytes().await.expect("body").is_empty());

    stack.settle().await;
    let mut received: Vec<Event> = subscriber.events().iter().map(normalized).collect();
    received.sort_by(|a, b| a.id().cmp(b.id()));
    assert_eq!(received, vec![binary, structured]);
    // Deliveries go out in binary mode.
    for headers in subscriber.headers() {
        assert_eq!(headers.get("ce-specversion").expect("binary mode"), "1.0");
    }
    assert_eq!(stack.broker.delivered_count(), 2);
}

#[tokio::test]
async fn invalid_events_are_rejected_with_400() {
    let stack = start(config(vec![]), HashMap::new()).await;

    // Plain JSON, no ce-* headers.
    let response = stack
        .http
        .post(format!("{}/", stack.url))
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );

    // Structured mode without an id.
    let response = stack
        .http
        .post(format!("{}/", stack.url))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","type":"t","source":"urn:x"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "invalid_request");

    // Structured mode that is not JSON at all.
    let response = stack
        .http
        .post(format!("{}/", stack.url))
        .header("content-type", "application/cloudevents+json")
        .body("not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Binary mode with a bad specversion.
    let response = stack
        .http
        .post(format!("{}/", stack.url))
        .header("ce-specversion", "9.9")
        .header("ce-id", "1")
        .header("ce-type", "t")
        .header("ce-source", "urn:x")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn healthz_answers_ok() {
    let stack = start(config(vec![]), HashMap::new()).await;
    let response = stack
        .http
        .get(format!("{}/healthz", stack.url))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "ok");
}

// ---------------------------------------------------------------------------------------------
// Filters and function subscribers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn filters_select_the_triggers() {
    let by_type = Recorder::default();
    let by_agent = Recorder::default();
    let by_prefix = Recorder::default();
    let by_both = Recorder::default();
    let never = Recorder::default();
    let all = Recorder::default();
    let triggers = vec![
        trigger(
            "by-type",
            exact(&[("type", "messaging.message.received")]),
            "fn:by-type",
        ),
        trigger("by-agent", exact(&[("agentid", "agent-7")]), "fn:by-agent"),
        trigger(
            "by-prefix",
            prefix(&[("type", "messaging.")]),
            "fn:by-prefix",
        ),
        trigger(
            "by-both",
            Filter {
                attributes: exact(&[("source", "urn:test:broker")]).attributes,
                prefix: prefix(&[("agentid", "agent-")]).prefix,
            },
            "fn:by-both",
        ),
        trigger("never", exact(&[("type", "nothing.matches")]), "fn:never"),
        trigger("all", Filter::default(), "fn:all"),
    ];
    let stack = start(
        config(triggers),
        functions(&[
            ("by-type", &by_type),
            ("by-agent", &by_agent),
            ("by-prefix", &by_prefix),
            ("by-both", &by_both),
            ("never", &never),
            ("all", &all),
        ]),
    )
    .await;

    let e1 = event(
        "messaging.message.received",
        "e1",
        &[("agentid", "agent-7")],
    );
    let e2 = event("messaging.notification", "e2", &[("agentid", "agent-9")]);
    let e3 = event("other.thing", "e3", &[]);
    for e in [&e1, &e2, &e3] {
        assert_eq!(stack.send(e.clone()).await, StatusCode::ACCEPTED);
    }
    stack.settle().await;

    assert_eq!(by_type.ids(), ["e1"]);
    assert_eq!(by_agent.ids(), ["e1"]);
    assert_eq!(by_prefix.ids(), ["e1", "e2"]);
    assert_eq!(by_both.ids(), ["e1", "e2"]);
    assert!(never.events().is_empty());
    assert_eq!(all.ids(), ["e1", "e2", "e3"]);
    // The function gets the event as sent, extensions included.
    let delivered = by_agent.events().remove(0);
    assert_eq!(normalized(&delivered), e1);
    assert_eq!(extension(&delivered, "agentid").as_deref(), Some("agent-7"));
    assert_eq!(stack.broker.delivered_count(), 9);
    assert!(stack.broker.dead_letters().is_empty());
}

#[tokio::test]
async fn function_subscriber_receives_in_process_publishes() {
    let store = Recorder::default();
    let stack = start(
        config(vec![trigger(
            "store",
            exact(&[("type", "messaging.message.received")]),
            "fn:store",
        )]),
        functions(&[("store", &store)]),
    )
    .await;

    let sent = event("messaging.message.received", "p-1", &[]);
    let publisher: &dyn EventPublisher = stack.broker.as_ref();
    publisher.publish(sent.clone()).await.expect("publish");
    stack.settle().await;

    assert_eq!(store.events(), vec![sent]);
    assert_eq!(stack.broker.delivered_count(), 1);
}

#[tokio::test]
async fn function_reply_reenters_and_reaches_a_second_trigger() {
    let agent = Recorder::replying("agent.response");
    let responses = Recorder::default();
    let stack = start(
        config(vec![
            trigger(
                "agent",
                exact(&[("type", "messaging.message.received")]),
                "fn:agent",
            ),
            trigger(
                "agent-response",
                exact(&[("type", "agent.response")]),
                "fn:agent-response",
            ),
        ]),
        functions(&[("agent", &agent), ("agent-response", &responses)]),
    )
    .await;

    assert_eq!(
        stack
            .send(event("messaging.message.received", "m-1", &[]))
            .await,
        StatusCode::ACCEPTED
    );
    stack.settle().await;

    assert_eq!(agent.ids(), ["m-1"]);
    assert_eq!(responses.ids(), ["reply-to-m-1"]);
    assert_eq!(responses.events()[0].ty(), "agent.response");
    assert_eq!(stack.broker.delivered_count(), 2);
}

#[tokio::test]
async fn function_failures_are_retried_and_a_panic_is_dead_lettered() {
    let flaky = Recorder::failing(&[503, 429]);
    let crashing = Recorder {
        panic: true,
        ..Recorder::default()
    };
    let stack = start(
        config(vec![
            trigger("flaky", exact(&[("type", "flaky")]), "fn:flaky"),
            Trigger {
                delivery: fast_delivery(1),
                ..trigger("crashing", exact(&[("type", "crash")]), "fn:crashing")
            },
        ]),
        functions(&[("flaky", &flaky), ("crashing", &crashing)]),
    )
    .await;

    stack.send(event("flaky", "f-1", &[])).await;
    stack.send(event("crash", "c-1", &[])).await;
    stack.settle().await;

    assert_eq!(flaky.events().len(), 3, "two failures, then success");
    assert_eq!(crashing.events().len(), 2, "first attempt and one retry");
    let dead = stack.broker.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].trigger, "crashing");
    assert_eq!(dead[0].error_code, 500);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].event["knativeerrordest"], "fn:crashing");
    assert_eq!(dead[0].event["knativeerrorcode"], "500");
}

// ---------------------------------------------------------------------------------------------
// HTTP subscribers: replies, retries, dead letters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_reply_event_reenters_but_a_202_does_not() {
    // Answers 200 with a binary-mode reply event.
    let replying = HttpSubscriber::start(|_, event| {
        let reply = event_from("answer.sync", &format!("reply-{}", event.id()));
        (StatusCode::OK, reply).into_response()
    })
    .await;
    // Answers 202 with an event attached: a 202 carries no reply, whatever its body.
    let accepting = HttpSubscriber::start(|_, event| {
        let reply = event_from("answer.async", &format!("reply-{}", event.id()));
        (StatusCode::ACCEPTED, reply).into_response()
    })
    .await;
    // Answers 200 with a plain JSON body: not an event, no reply.
    let plain = HttpSubscriber::answering(StatusCode::OK, r#"{"ok":true}"#).await;
    let answers = Recorder::default();
    let stack = start(
        config(vec![
            trigger("sync", exact(&[("type", "ask.sync")]), &replying.url),
            trigger("async", exact(&[("type", "ask.async")]), &accepting.url),
            trigger("plain", exact(&[("type", "ask.plain")]), &plain.url),
            trigger("answers", prefix(&[("type", "answer.")]), "fn:answers"),
        ]),
        functions(&[("answers", &answers)]),
    )
    .await;

    stack.send(event("ask.sync", "q-1", &[])).await;
    stack.send(event("ask.async", "q-2", &[])).await;
    stack.send(event("ask.plain", "q-3", &[])).await;
    stack.settle().await;

    assert_eq!(replying.count(), 1);
    assert_eq!(accepting.count(), 1);
    assert_eq!(plain.count(), 1);
    assert_eq!(answers.ids(), ["reply-q-1"]);
    assert_eq!(answers.events()[0].ty(), "answer.sync");
    assert!(stack.broker.dead_letters().is_empty());
}

#[tokio::test]
async fn http_reply_in_structured_mode_reenters() {
    let replying = HttpSubscriber::start(|_, event| {
        let reply = event_from("answer.structured", &format!("reply-{}", event.id()));
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        (
            StatusCode::OK,
            [("content-type", "application/cloudevents+json")],
            body,
        )
            .into_response()
    })
    .await;
    let answers = Recorder::default();
    let stack = start(
        config(vec![
            trigger("ask", exact(&[("type", "ask")]), &replying.url),
            trigger(
                "answers",
                exact(&[("type", "answer.structured")]),
                "fn:answers",
            ),
        ]),
        functions(&[("answers", &answers)]),
    )
    .await;

    stack.send(event("ask", "q-1", &[])).await;
    stack.settle().await;
    assert_eq!(answers.ids(), ["reply-q-1"]);
}

#[tokio::test]
async fn retry_then_success() {
    let subscriber = HttpSubscriber::start(|attempt, _| {
        if attempt <= 2 {
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    let stack = start(
        config(vec![trigger("flaky", Filter::default(), &subscriber.url)]),
        HashMap::new(),
    )
    .await;

    let sent = event("test.retry", "r-1", &[]);
    stack.send(sent.clone()).await;
    stack.settle().await;

    assert_eq!(subscriber.count(), 3, "exactly three attempts");
    assert!(subscriber.events().iter().all(|e| normalized(e) == sent));
    assert!(stack.broker.dead_letters().is_empty());
    assert_eq!(stack.broker.delivered_count(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_when_larger_than_the_backoff() {
    let subscriber = HttpSubscriber::start(|attempt, _| {
        if attempt == 1 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response()
        } else {
            StatusCode::NO_CONTENT.into_response()
        }
    })
    .await;
    let stack = start(
        config(vec![trigger("limited", Filter::default(), &subscriber.url)]),
        HashMap::new(),
    )
    .await;

    let started = std::time::Instant::now();
    stack.send(event("test.limited", "l-1", &[])).await;
    stack.settle().await;

    assert_eq!(subscriber.count(), 2);
    // A lower bound only: the retry waited for Retry-After (1 s), not for the 10 ms backoff.
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert!(stack.broker.dead_letters().is_empty());
}

#[tokio::test]
async fn exhausted_retries_end_in_a_dead_letter_posted_to_the_sink() {
    const BODY: &str = "boom: the database is down";
    let subscriber = HttpSubscriber::answering(StatusCode::INTERNAL_SERVER_ERROR, BODY).await;
    let sink = HttpSubscriber::answering(StatusCode::ACCEPTED, "").await;
    let failing = Trigger {
        delivery: DeliverySpec {
            retry: 2,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay_ms: 10,
            dead_letter_sink: Some(sink.url.clone()),
        },
        ..trigger("failing", Filter::default(), &subscriber.url)
    };
    let stack = start(config(vec![failing]), HashMap::new()).await;

    let sent = event("test.fail", "x-1", &[("agentid", "agent-1")]);
    stack.send(sent.clone()).await;
    stack.settle().await;

    assert_eq!(subscriber.count(), 3, "the first attempt and two retries");

    let dead = stack.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter["trigger"], "failing");
    assert_eq!(letter["error_code"], 500);
    assert_eq!(letter["error_data"], BODY);
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{letter}"
    );
    assert!(
        letter["at"]
            .as_str()
            .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()),
        "{letter}"
    );
    let failed = &letter["event"];
    assert_eq!(failed["id"], "x-1");
    assert_eq!(failed["type"], "test.fail");
    assert_eq!(failed["agentid"], "agent-1");
    assert_eq!(failed["data"], json!({ "ciphertext": "b3BhcXVl", "n": 1 }));
    assert_eq!(failed["knativeerrordest"], subscriber.url.as_str());
    assert_eq!(failed["knativeerrorcode"], "500");
    let data = failed["knativeerrordata"]
        .as_str()
        .expect("knativeerrordata");
    assert_eq!(decode(data), BODY.as_bytes());

    // The sink got the same event, in binary mode, with the extensions.
    assert_eq!(sink.count(), 1);
    let posted = sink.events().remove(0);
    assert_eq!(posted.id(), "x-1");
    assert_eq!(normalized(&posted).data(), sent.data());
    assert_eq!(
        extension(&posted, "knativeerrorcode").as_deref(),
        Some("500")
    );
    assert_eq!(
        extension(&posted, "knativeerrordest").as_deref(),
        Some(subscriber.url.as_str())
    );
    let posted_data = extension(&posted, "knativeerrordata").expect("knativeerrordata");
    assert_eq!(decode(&posted_data), BODY.as_bytes());
    assert!(sink.headers()[0].contains_key("ce-knativeerrorcode"));
}

#[tokio::test]
async fn error_data_is_truncated_to_1024_bytes() {
    let long: &'static str = Box::leak("e".repeat(5000).into_boxed_str());
    let subscriber = HttpSubscriber::answering(StatusCode::BAD_GATEWAY, long).await;
    let stack = start(
        config(vec![Trigger {
            delivery: fast_delivery(0),
            ..trigger("long", Filter::default(), &subscriber.url)
        }]),
        HashMap::new(),
    )
    .await;

    stack.send(event("test.long", "long-1", &[])).await;
    stack.settle().await;

    assert_eq!(subscriber.count(), 1, "retry = 0 means a single attempt");
    let dead = stack.broker.dead_letters();
    assert_eq!(dead.len(), 1);
    let data = dead[0].event["knativeerrordata"].as_str().expect("data");
    assert_eq!(decode(data), vec![b'e'; 1024]);
    assert_eq!(dead[0].error_data.len(), 1024);
    assert_eq!(dead[0].event["knativeerrorcode"], "502");
}

#[tokio::test]
async fn a_400_is_not_retried_and_goes_to_the_global_sink() {
    let subscriber = HttpSubscriber::answering(StatusCode::BAD_REQUEST, "bad payload").await;
    let sink = HttpSubscriber::answering(StatusCode::OK, "").await;
    let stack = start(
        BrokerConfig {
            triggers: vec![trigger("strict", Filter::default(), &subscriber.url)],
            dead_letter_sink: Some(sink.url.clone()),
        },
        HashMap::new(),
    )
    .await;

    stack.send(event("test.bad", "bad-1", &[])).await;
    stack.settle().await;

    assert_eq!(subscriber.count(), 1, "exactly one attempt");
    let dead: Vec<DeadLetter> = stack.broker.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, 400);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].event["knativeerrorcode"], "400");
    let data = dead[0].event["knativeerrordata"].as_str().expect("data");
    assert_eq!(decode(data), b"bad payload");
    assert_eq!(sink.count(), 1);
    assert_eq!(
        extension(&sink.events()[0], "knativeerrorcode").as_deref(),
        Some("400")
    );
}

#[tokio::test]
async fn a_network_error_is_retried_then_dead_lettered_with_code_0() {
    // A port that was free a moment ago: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    drop(listener);
    let stack = start(
        config(vec![Trigger {
            delivery: fast_delivery(2),
            ..trigger("unreachable", Filter::default(), &url)
        }]),
        HashMap::new(),
    )
    .await;

    stack.send(event("test.net", "n-1", &[])).await;
    stack.settle().await;

    let dead = stack.broker.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, 0);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].event["knativeerrorcode"], "0");
    assert!(!dead[0].error_data.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn replay_redelivers_to_that_trigger_only_and_removes_the_entry() {
    // Refuses the first delivery (400: dead-lettered at once), accepts later ones.
    let picky = HttpSubscriber::start(|attempt, _| {
        if attempt == 1 {
            (StatusCode::BAD_REQUEST, "not yet").into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    let other = Recorder::default();
    let stack = start(
        config(vec![
            trigger("picky", Filter::default(), &picky.url),
            trigger("other", Filter::default(), "fn:other"),
        ]),
        functions(&[("other", &other)]),
    )
    .await;

    let sent = event("test.replay", "rp-1", &[]);
    stack.send(sent.clone()).await;
    stack.settle().await;
    assert_eq!(picky.count(), 1);
    assert_eq!(other.events().len(), 1);
    let dead = stack.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let id = dead[0]["id"].as_str().expect("id").to_owned();

    let response = stack.replay(&id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    stack.settle().await;

    assert_eq!(picky.count(), 2, "redelivered to its trigger");
    assert_eq!(other.events().len(), 1, "not to the other trigger");
    let replayed = picky.events().remove(1);
    assert_eq!(
        normalized(&replayed),
        sent,
        "the original event, without knativeerror*"
    );
    assert!(
        picky.headers()[1]
            .keys()
            .all(|name| !name.as_str().starts_with("ce-knativeerror"))
    );
    assert!(stack.dead_letters().await.is_empty());

    // Gone after the replay.
    let response = stack.replay(&id).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn replay_of_an_unknown_id_is_404() {
    let stack = start(config(vec![]), HashMap::new()).await;
    let response = stack.replay("no-such-id").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(!stack.broker.replay("no-such-id").await);
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn toml_config_is_parsed_with_defaults() {
    let config = BrokerConfig::from_toml(
        r#"
        dead_letter_sink = "http://127.0.0.1:9/dlq"

        [[trigger]]
        name = "store"
        subscriber = "fn:store"

        [[trigger]]
        name = "agents"
        subscriber = "http://127.0.0.1:8080/agent"
        filter.attributes = { type = "messaging.message.received", agentid = "demo" }
        filter.prefix = { source = "urn:messaging:" }
        delivery = { retry = 2, backoff_policy = "linear", backoff_delay_ms = 50, dead_letter_sink = "http://127.0.0.1:9/agents-dlq" }

        [[trigger]]
        name = "partial"
        subscriber = "https://example.test/hook"
        [trigger.delivery]
        retry = 1
        "#,
    )
    .expect("valid config");

    assert_eq!(
        config.dead_letter_sink.as_deref(),
        Some("http://127.0.0.1:9/dlq")
    );
    assert_eq!(config.triggers.len(), 3);

    let store = &config.triggers[0];
    assert_eq!(store.name, "store");
    assert_eq!(store.subscriber, "fn:store");
    assert!(store.filter.attributes.is_empty() && store.filter.prefix.is_empty());
    assert_eq!(store.delivery.retry, 5);
    assert_eq!(store.delivery.backoff_policy, BackoffPolicy::Exponential);
    assert_eq!(store.delivery.backoff_delay_ms, 200);
    assert_eq!(store.delivery.dead_letter_sink, None);

    let agents = &config.triggers[1];
    assert_eq!(
        agents.filter.attributes["type"],
        "messaging.message.received"
    );
    assert_eq!(agents.filter.attributes["agentid"], "demo");
    assert_eq!(agents.filter.prefix["source"], "urn:messaging:");
    assert_eq!(agents.delivery.retry, 2);
    assert_eq!(agents.delivery.backoff_policy, BackoffPolicy::Linear);
    assert_eq!(agents.delivery.backoff_delay_ms, 50);
    assert_eq!(
        agents.delivery.dead_letter_sink.as_deref(),
        Some("http://127.0.0.1:9/agents-dlq")
    );

    let partial = &config.triggers[2];
    assert_eq!(partial.delivery.retry, 1);
    assert_eq!(partial.delivery.backoff_policy, BackoffPolicy::Exponential);
    assert_eq!(partial.delivery.backoff_delay_ms, 200);

    let empty = BrokerConfig::from_toml("").expect("empty config");
    assert!(empty.triggers.is_empty() && empty.dead_letter_sink.is_none());
}

#[test]
fn invalid_toml_configs_are_rejected() {
    let cases = [
        // unknown backoff policy
        "[[trigger]]\nname = \"a\"\nsubscriber = \"fn:a\"\ndelivery = { backoff_policy = \"random\" }",
        // missing subscriber
        "[[trigger]]\nname = \"a\"",
        // unsupported subscriber
        "[[trigger]]\nname = \"a\"\nsubscriber = \"ftp://x\"",
        // duplicate names
        "[[trigger]]\nname = \"a\"\nsubscriber = \"fn:a\"\n[[trigger]]\nname = \"a\"\nsubscriber = \"fn:b\"",
        // misspelt delivery option
        "[[trigger]]\nname = \"a\"\nsubscriber = \"fn:a\"\ndelivery = { retries = 3 }",
        // sink that is not a URL
        "dead_letter_sink = \"nowhere\"",
    ];
    for text in cases {
        assert!(BrokerConfig::from_toml(text).is_err(), "accepted: {text}");
    }
}

#[test]
fn config_is_loaded_from_a_file() {
    let path = std::env::temp_dir().join(format!("broker-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "[[trigger]]\nname = \"all\"\nsubscriber = \"fn:all\"\n",
    )
    .expect("write");
    let loaded = BrokerConfig::load(&path);
    let _ = std::fs::remove_file(&path);
    let config = loaded.expect("load");
    assert_eq!(config.triggers.len(), 1);
    assert_eq!(config.triggers[0].delivery.retry, 5);

    let missing = std::env::temp_dir().join(format!("broker-{}.toml", uuid::Uuid::new_v4()));
    assert!(BrokerConfig::load(&missing).is_err());
}

#[test]
fn backoff_follows_the_policy() {
    let mut spec = DeliverySpec {
        backoff_delay_ms: 10,
        ..DeliverySpec::default()
    };
    assert_eq!(spec.backoff(1), Duration::from_millis(10));
    assert_eq!(spec.backoff(2), Duration::from_millis(20));
    assert_eq!(spec.backoff(3), Duration::from_millis(40));
    assert_eq!(spec.backoff(4), Duration::from_millis(80));
    spec.backoff_policy = BackoffPolicy::Linear;
    assert_eq!(spec.backoff(1), Duration::from_millis(10));
    assert_eq!(spec.backoff(3), Duration::from_millis(30));
    // No overflow on absurd retry counts.
    spec.backoff_policy = BackoffPolicy::Exponential;
    assert!(spec.backoff(200) >= spec.backoff(20));
}

// ---------------------------------------------------------------------------------------------
// The journal: a 202 survives a restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn accepted_events_and_dead_letters_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("broker-journal-{}", uuid::Uuid::new_v4()));
    // First run: the subscriber keeps failing (503), so the delivery is still pending when the
    // broker goes away; another trigger's event is dead-lettered at once (400).
    let failing = Recorder::failing(&[503; 100]);
    let refusing = Recorder::failing(&[400]);
    let mut slow = trigger("store", exact(&[("type", "t.keep")]), "fn:store");
    slow.delivery = DeliverySpec {
        retry: 100,
        backoff_policy: BackoffPolicy::Linear,
        backoff_delay_ms: 1_000,
        dead_letter_sink: None,
    };
    let triggers = vec![
        slow,
        trigger("refuse", exact(&[("type", "t.dead")]), "fn:refuse"),
    ];
    {
        let journal = local_stack::journal::Journal::open(&dir).unwrap();
        let broker = Broker::with_journal(
            config(triggers.clone()),
            functions(&[("store", &failing), ("refuse", &refusing)]),
            journal,
        );
        broker.accept(event_from("t.keep", "kept-1")).await.unwrap();
        broker.accept(event_from("t.dead", "dead-1")).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while broker.dead_letters().is_empty() || failing.events().is_empty() {
            assert!(std::time::Instant::now() < deadline, "first attempts");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The process dies here: its tasks and memory are gone, the journal stays.
    }
    // Second run, same directory, a subscriber that works now.
    let working = Recorder::default();
    let journal = local_stack::journal::Journal::open(&dir).unwrap();
    let broker = Broker::with_journal(
        config(triggers),
        functions(&[("store", &working), ("refuse", &refusing)]),
        journal,
    );
    broker.recover().await;
    tokio::time::timeout(Duration::from_secs(10), broker.idle())
        .await
        .unwrap();
    assert_eq!(
        working.ids(),
        ["kept-1"],
        "the accepted event is delivered after the restart"
    );
    let dead = broker.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].trigger, "refuse");
    // Nothing is delivered twice by a third run: the journal holds only the dead letter.
    let journal = local_stack::journal::Journal::open(&dir).unwrap();
    assert!(journal.pending().is_empty());
    assert_eq!(journal.dead().len(), 1);
    // A replayed dead letter leaves the journal.
    assert!(broker.replay(&dead[0].id).await);
    tokio::time::timeout(Duration::from_secs(10), broker.idle())
        .await
        .unwrap();
    assert!(
        local_stack::journal::Journal::open(&dir)
            .unwrap()
            .dead()
            .is_empty()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
