//! Publishing CloudEvents to the broker (Knative Broker ingress, the local stack's broker).
//!
//! Events go out in HTTP binary mode (attributes in `ce-*` headers, data as the JSON body), which
//! every Knative component and the local stack accept. Publishing is at least once: a failed POST
//! is retried with the same event id, and consumers dedupe on (`source`, `id`) or on the payload's
//! idempotency key.

use std::time::Duration;

use async_trait::async_trait;
use cloudevents::binding::reqwest::RequestBuilderExt;
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use serde::Serialize;

use crate::error::{Error, Result};

/// The events port.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes one event; returns once the broker accepted it.
    async fn publish(&self, event: Event) -> Result<()>;
}

/// Builds a CloudEvent with a fresh id, the current time, JSON data and optional extensions.
pub fn new_event<T: Serialize>(
    event_type: &str,
    source: &str,
    data: &T,
    extensions: &[(&str, &str)],
) -> Result<Event> {
    new_event_with_id(
        &uuid::Uuid::now_v7().to_string(),
        event_type,
        source,
        data,
        extensions,
    )
}

/// Like [`new_event`] with a chosen id: an event derived from a stored fact (a message id) keeps
/// the same id on every retry, so consumers can dedupe it.
pub fn new_event_with_id<T: Serialize>(
    id: &str,
    event_type: &str,
    source: &str,
    data: &T,
    extensions: &[(&str, &str)],
) -> Result<Event> {
    let json = serde_json::to_value(data).map_err(|e| Error::dependency("event data", e))?;
    let mut builder = EventBuilderV10::new()
        .id(id)
        .ty(event_type)
        .source(source)
        .time(chrono::Utc::now())
        .data("application/json", json);
    for (name, value) in extensions {
        builder = builder.extension(name, *value);
    }
    builder
        .build()
        .map_err(|e| Error::dependency("cloudevent", e))
}

/// Reads an event's JSON data as `T`.
pub fn event_data<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T> {
    use cloudevents::AttributesReader;
    let data = event
        .data()
        .ok_or_else(|| Error::invalid(format!("event {} has no data", event.id())))?;
    let parsed = match data {
        cloudevents::Data::Json(v) => serde_json::from_value(v.clone()),
        cloudevents::Data::String(s) => serde_json::from_str(s),
        cloudevents::Data::Binary(b) => serde_json::from_slice(b),
    };
    parsed.map_err(|e| Error::invalid(format!("event {} data: {e}", event.id())))
}

/// The adapter: HTTP POST in binary mode to the broker ingress URL.
#[derive(Clone, Debug)]
pub struct HttpBroker {
    client: reqwest::Client,
    url: String,
}

impl HttpBroker {
    /// Publishes to `url` (e.g. Knative's `http://broker-ingress.knative-eventing.svc/NS/default`).
    pub fn new(url: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client with a timeout always builds");
        Self {
            client,
            url: url.into(),
        }
    }
}

#[async_trait]
impl EventPublisher for HttpBroker {
    async fn publish(&self, event: Event) -> Result<()> {
        let _timer = crate::metrics::time(crate::metrics::Stage::BrokerPublish);
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(attempt - 1))).await;
            }
            let request = self
                .client
                .post(&self.url)
                .event(event.clone())
                .map_err(|e| Error::dependency("broker", e))?;
            match request.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    return Err(Error::dependency(
                        "broker",
                        format!("rejected with {status}: {body}"),
                    ));
                }
                Ok(resp) => last = format!("status {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::dependency(
            "broker",
            format!("publish failed after 3 attempts: {last}"),
        ))
    }
}
