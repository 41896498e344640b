//! The EventBridge adapter of the events port: entries, envelopes, the adapter choice, and the
//! real AWS SDK client against a local PutEvents endpoint.

use std::sync::{Arc, Mutex};

use aws_sdk_eventbridge::config::{BehaviorVersion, Credentials, Region};
use axum::http::HeaderMap;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use messaging::eventbridge::{
    EventBridgePublisher, EventsTarget, event_from_invocation, events_target, to_detail, to_entry,
};
use messaging::events::{EventPublisher, new_event};
use messaging::model::event_types;
use serde_json::{Value, json};

fn message_event(agent: Option<&str>) -> cloudevents::Event {
    let extensions: Vec<(&str, &str)> = agent
        .map(|a| vec![(event_types::AGENT_ID_EXTENSION, a)])
        .unwrap_or_default();
    new_event(
        event_types::MESSAGE_RECEIVED,
        "/messaging",
        &json!({"message_id": "m1", "conversation_id": "c1", "content": "opaque"}),
        &extensions,
    )
    .unwrap()
}

#[test]
fn entry_carries_the_cloudevent_in_structured_json_with_the_agentid_visible() {
    let event = message_event(Some("helper"));
    let entry = to_entry(&event, "messaging-events").unwrap();
    assert_eq!(entry.event_bus_name(), Some("messaging-events"));
    assert_eq!(entry.source(), Some("/messaging"));
    assert_eq!(entry.detail_type(), Some(event_types::MESSAGE_RECEIVED));
    assert!(entry.time().is_some());
    let detail: Value = serde_json::from_str(entry.detail().unwrap()).unwrap();
    assert_eq!(detail["specversion"], "1.0");
    assert_eq!(detail["id"], event.id());
    assert_eq!(detail["type"], event_types::MESSAGE_RECEIVED);
    assert_eq!(detail["source"], "/messaging");
    // A rule filters agents with {"detail": {"agentid": ["helper"]}}.
    assert_eq!(detail["agentid"], "helper");
    assert_eq!(detail["data"]["message_id"], "m1");
}

#[test]
fn json_data_received_as_bytes_is_written_as_json() {
    let event = EventBuilderV10::new()
        .id("e1")
        .ty("agent.response")
        .source("/agents/helper")
        .data("application/json", br#"{"response":"hi"}"#.to_vec())
        .build()
        .unwrap();
    let detail = to_detail(&event).unwrap();
    assert_eq!(detail["data"], json!({"response": "hi"}));
    assert!(detail.get("data_base64").is_none());
    // Non-JSON bytes stay base64.
    let binary = EventBuilderV10::new()
        .id("e2")
        .ty("x")
        .source("/s")
        .data("application/octet-stream", vec![0u8, 159, 146, 150])
        .build()
        .unwrap();
    assert!(to_detail(&binary).unwrap().get("data_base64").is_some());
}

#[test]
fn oversized_events_are_refused_before_the_call() {
    let big = "x".repeat(300 * 1024);
    let event = new_event("agent.response", "/a", &json!({ "response": big }), &[]).unwrap();
    let error = to_entry(&event, "bus").unwrap_err();
    assert_eq!(error.code(), messaging::ErrorCode::PayloadTooLarge);
}

#[test]
fn an_eventbridge_envelope_yields_its_cloudevent() {
    let event = message_event(Some("helper"));
    let envelope = json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": event_types::MESSAGE_RECEIVED,
        "source": "/messaging",
        "account": "111122223333",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": to_detail(&event).unwrap(),
    });
    let parsed = event_from_invocation(envelope).unwrap();
    assert_eq!(parsed.id(), event.id());
    assert_eq!(parsed.ty(), event_types::MESSAGE_RECEIVED);
    assert_eq!(parsed.source(), "/messaging");
    assert_eq!(
        parsed
            .extension(event_types::AGENT_ID_EXTENSION)
            .map(|v| v.to_string()),
        Some("helper".to_string())
    );
    let data: Value = messaging::events::event_data(&parsed).unwrap();
    assert_eq!(data["conversation_id"], "c1");
}

#[test]
fn a_bare_structured_cloudevent_is_accepted_for_direct_invokes_and_schedules() {
    let payload = json!({
        "specversion": "1.0",
        "id": "exec-1",
        "type": "messaging.agent.sweep",
        "source": "/aws/scheduler",
        "datacontenttype": "application/json",
        "data": {}
    });
    let event = event_from_invocation(payload).unwrap();
    assert_eq!(event.ty(), "messaging.agent.sweep");
    assert_eq!(event.id(), "exec-1");
}

#[test]
fn envelopes_that_do_not_carry_a_matching_cloudevent_are_invalid() {
    let not_cloudevent = json!({
        "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}
    });
    let error = event_from_invocation(not_cloudevent).unwrap_err();
    assert_eq!(error.code(), messaging::ErrorCode::InvalidRequest);

    let event = message_event(None);
    let mismatched = json!({
        "detail-type": "agent.response", "source": "/messaging", "detail": to_detail(&event).unwrap()
    });
    let error = event_from_invocation(mismatched).unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");

    let error = event_from_invocation(json!({"hello": "world"})).unwrap_err();
    assert_eq!(error.code(), messaging::ErrorCode::InvalidRequest);
    let error = event_from_invocation(json!("text")).unwrap_err();
    assert_eq!(error.code(), messaging::ErrorCode::InvalidRequest);
}

#[test]
fn the_adapter_is_eventbridge_when_a_bus_is_named_else_the_http_broker() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        events_target(&env(&[
            ("EVENT_BUS_NAME", "messaging-events"),
            ("BROKER_URL", "http://broker/")
        ]))
        .unwrap(),
        EventsTarget::EventBridge("messaging-events".into())
    );
    assert_eq!(
        events_target(&env(&[("BROKER_URL", "http://broker/")])).unwrap(),
        EventsTarget::Http("http://broker/".into())
    );
    let missing = events_target(&env(&[])).unwrap_err();
    assert!(
        missing.to_string().contains("EVENT_BUS_NAME or BROKER_URL"),
        "{missing}"
    );
    assert!(events_target(&env(&[("EVENT_BUS_NAME", "has space")])).is_err());
    assert!(events_target(&env(&[("BROKER_URL", "ftp://x")])).is_err());
}

/// A local stand-in for the EventBridge PutEvents endpoint (awsJson1_1): records the entries and
/// fails the first `throttle` calls' entries with ThrottlingException.
#[derive(Default)]
struct FakeEventBridge {
    calls: Mutex<Vec<(HeaderMap, Value)>>,
    throttle: Mutex<u32>,
}

async fn start_fake(fake: Arc<FakeEventBridge>) -> String {
    use axum::response::IntoResponse;
    let router = axum::Router::new().route(
        "/",
        axum::routing::post(
            |axum::extract::State(fake): axum::extract::State<Arc<FakeEventBridge>>,
             headers: HeaderMap,
             body: axum::body::Bytes| async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let n = body["Entries"].as_array().map(|e| e.len()).unwrap_or(0);
                fake.calls.lock().unwrap().push((headers, body));
                let throttled = {
                    let mut t = fake.throttle.lock().unwrap();
                    let throttled = *t > 0;
                    *t = t.saturating_sub(1);
                    throttled
                };
                let entries: Vec<Value> = (0..n)
                    .map(|i| {
                        if throttled {
                            json!({"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"})
                        } else {
                            json!({"EventId": format!("id-{i}")})
                        }
                    })
                    .collect();
                let out = json!({
                    "FailedEntryCount": if throttled { n } else { 0 },
                    "Entries": entries,
                });
                (
                    [("content-type", "application/x-amz-json-1.1")],
                    out.to_string(),
                )
                    .into_response()
            },
        ),
    );
    let router = router.with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn client(url: &str) -> aws_sdk_eventbridge::Client {
    let config = aws_sdk_eventbridge::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .endpoint_url(url)
        .build();
    aws_sdk_eventbridge::Client::from_conf(config)
}

#[tokio::test]
async fn the_sdk_client_puts_one_entry_per_event() {
    let fake = Arc::new(FakeEventBridge::default());
    let url = start_fake(fake.clone()).await;
    let publisher = EventBridgePublisher::from_client(client(&url), "messaging-events");
    let event = message_event(Some("helper"));
    publisher.publish(event.clone()).await.unwrap();

    let calls = fake.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    let (headers, body) = &calls[0];
    assert_eq!(
        headers.get("x-amz-target").unwrap().to_str().unwrap(),
        "AWSEvents.PutEvents"
    );
    assert!(headers.contains_key("authorization"), "requests are signed");
    let entries = body["Entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["EventBusName"], "messaging-events");
    assert_eq!(entries[0]["Source"], "/messaging");
    assert_eq!(entries[0]["DetailType"], event_types::MESSAGE_RECEIVED);
    let detail: Value = serde_json::from_str(entries[0]["Detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["id"], event.id());
    assert_eq!(detail["agentid"], "helper");
}

#[tokio::test]
async fn throttled_entries_are_retried_with_the_same_event() {
    let fake = Arc::new(FakeEventBridge::default());
    *fake.throttle.lock().unwrap() = 2;
    let url = start_fake(fake.clone()).await;
    let publisher = EventBridgePublisher::from_client(client(&url), "bus");
    let event = message_event(None);
    publisher.publish(event.clone()).await.unwrap();
    let calls = fake.calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    let ids: Vec<String> = calls
        .iter()
        .map(|(_, body)| {
            let detail: Value =
                serde_json::from_str(body["Entries"][0]["Detail"].as_str().unwrap()).unwrap();
            detail["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| id == event.id()));
}

#[tokio::test]
async fn persistent_failures_are_reported_as_unavailable() {
    let fake = Arc::new(FakeEventBridge::default());
    *fake.throttle.lock().unwrap() = 100;
    let url = start_fake(fake.clone()).await;
    let publisher = EventBridgePublisher::from_client(client(&url), "bus");
    let error = publisher.publish(message_event(None)).await.unwrap_err();
    assert_eq!(error.code(), messaging::ErrorCode::Unavailable);
    assert!(error.to_string().contains("ThrottlingException"), "{error}");
    assert_eq!(fake.calls.lock().unwrap().len(), 3);
}
