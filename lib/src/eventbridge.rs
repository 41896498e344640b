//! The events port on AWS: CloudEvents carried in Amazon EventBridge events.
//!
//! Every CloudEvent becomes one EventBridge entry: `Source` = the CloudEvent `source`,
//! `DetailType` = the CloudEvent `type`, `Detail` = the whole CloudEvent in structured JSON
//! (`specversion`, `id`, `type`, `source`, `time`, `datacontenttype`, `data`, and every extension
//! as a top-level member). An EventBridge rule therefore filters on
//! `{"detail-type": ["messaging.message.received"]}` or, for agents, on
//! `{"detail": {"agentid": ["AGENT_ID"]}}`, which is the Knative Trigger filter on the `agentid`
//! extension attribute in EventBridge form.
//!
//! On the way in, [`event_from_invocation`] reads what a Lambda function is invoked with: an
//! EventBridge event whose `detail` is a structured CloudEvent (rules), or a bare structured
//! CloudEvent (direct invokes, EventBridge Scheduler with a JSON input).
//!
//! [`publisher_from_env`] picks the adapter: EventBridge when `EVENT_BUS_NAME` is set, else the
//! HTTP broker at `BROKER_URL` (Knative, the local stack).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use cloudevents::{AttributesReader, Data, Event};
use serde_json::Value;

use crate::config::{BrokerConfig, ConfigError, Env, Source};
use crate::error::{Error, Result};
use crate::events::{EventPublisher, HttpBroker};

/// Largest EventBridge entry (Source, DetailType, Detail, Resources together): 256 KiB.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// Attempts at putting one entry when EventBridge reports it as failed (throttling, internal).
const PUT_ATTEMPTS: u32 = 3;

/// The events port over EventBridge `PutEvents`.
#[derive(Clone, Debug)]
pub struct EventBridgePublisher {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgePublisher {
    /// Publishes to the event bus `bus` (name or ARN) with the given AWS configuration.
    pub fn new(config: &aws_config::SdkConfig, bus: impl Into<String>) -> Self {
        Self::from_client(aws_sdk_eventbridge::Client::new(config), bus)
    }

    /// Publishes with an existing client (custom endpoint, tests).
    pub fn from_client(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }

    /// The event bus events go to.
    pub fn bus(&self) -> &str {
        &self.bus
    }
}

/// The CloudEvent in structured JSON, as it goes into `Detail`.
///
/// JSON data that arrived as bytes (HTTP binary mode) is written as a JSON `data` member rather
/// than `data_base64`, so rules and people can read it.
pub fn to_detail(event: &Event) -> Result<Value> {
    let mut readable = event.clone();
    if let Some(Data::Binary(bytes)) = event.data()
        && is_json_content_type(event.datacontenttype())
        && let Ok(value) = serde_json::from_slice::<Value>(bytes)
    {
        readable.set_data_unchecked(value);
    }
    serde_json::to_value(&readable).map_err(|e| Error::dependency("cloudevent", e))
}

/// The EventBridge entry for `event` on `bus`.
pub fn to_entry(event: &Event, bus: &str) -> Result<PutEventsRequestEntry> {
    let detail = to_detail(event)?;
    let detail = serde_json::to_string(&detail).map_err(|e| Error::dependency("cloudevent", e))?;
    let source = event.source().to_string();
    let detail_type = event.ty().to_string();
    let size = source.len() + detail_type.len() + detail.len();
    if size > MAX_ENTRY_BYTES {
        return Err(Error::client(
            crate::ErrorCode::PayloadTooLarge,
            format!(
                "event {} is {size} bytes, over EventBridge's {MAX_ENTRY_BYTES}",
                event.id()
            ),
        ));
    }
    let mut entry = PutEventsRequestEntry::builder()
        .event_bus_name(bus)
        .source(source)
        .detail_type(detail_type)
        .detail(detail);
    if let Some(time) = event.time() {
        entry = entry.time(aws_sdk_eventbridge::primitives::DateTime::from_millis(
            time.timestamp_millis(),
        ));
    }
    Ok(entry.build())
}

/// Reads a structured-mode CloudEvent (the JSON of an EventBridge `detail`).
pub fn from_detail(detail: Value) -> Result<Event> {
    serde_json::from_value(detail)
        .map_err(|e| Error::invalid(format!("not a structured CloudEvent: {e}")))
}

/// The CloudEvent a Lambda function was invoked with: the `detail` of an EventBridge event
/// (which must be a structured CloudEvent), or a bare structured CloudEvent.
pub fn event_from_invocation(payload: Value) -> Result<Event> {
    let is_envelope = payload
        .as_object()
        .is_some_and(|o| o.contains_key("detail-type") && o.contains_key("detail"));
    if is_envelope {
        let envelope: aws_lambda_events::event::eventbridge::EventBridgeEvent<Value> =
            serde_json::from_value(payload)
                .map_err(|e| Error::invalid(format!("not an EventBridge event: {e}")))?;
        let event = from_detail(envelope.detail)?;
        if event.ty() != envelope.detail_type {
            return Err(Error::invalid(format!(
                "EventBridge detail-type {:?} does not match the CloudEvent type {:?}",
                envelope.detail_type,
                event.ty()
            )));
        }
        return Ok(event);
    }
    if payload.get("specversion").is_some() {
        return from_detail(payload);
    }
    Err(Error::invalid(
        "expected an EventBridge event carrying a CloudEvent, or a structured CloudEvent",
    ))
}

fn is_json_content_type(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|content_type| {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        media == "application/json" || media.ends_with("+json")
    })
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, event: Event) -> Result<()> {
        let entry = to_entry(&event, &self.bus)?;
        let mut last = String::new();
        for attempt in 0..PUT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * 4u64.pow(attempt - 1))).await;
            }
            // The SDK retries transport failures itself; this loop retries entries EventBridge
            // accepted the call for but failed (throttling, internal errors).
            let output = self
                .client
                .put_events()
                .entries(entry.clone())
                .send()
                .await
                .map_err(|e| {
                    Error::dependency(
                        "eventbridge",
                        aws_sdk_eventbridge::error::DisplayErrorContext(e),
                    )
                })?;
            if output.failed_entry_count() == 0 {
                return Ok(());
            }
            let failure = output.entries().first();
            let code = failure.and_then(|f| f.error_code()).unwrap_or("unknown");
            let message = failure.and_then(|f| f.error_message()).unwrap_or_default();
            last = format!("{code}: {message}");
            if !matches!(
                code,
                "ThrottlingException" | "InternalFailure" | "InternalException"
            ) {
                break;
            }
        }
        Err(Error::dependency(
            "eventbridge",
            format!("PutEvents failed for event {}: {last}", event.id()),
        ))
    }
}

/// The events adapter configured in `src`: EventBridge when `EVENT_BUS_NAME` is set (AWS), else
/// the HTTP broker at `BROKER_URL` (Knative, the local stack).
pub async fn publisher_from_source(src: &impl Source) -> anyhow::Result<Arc<dyn EventPublisher>> {
    Ok(match events_target(src)? {
        EventsTarget::EventBridge(bus) => {
            let aws = crate::aws_sdk::sdk_config().await;
            Arc::new(EventBridgePublisher::new(&aws, bus))
        }
        EventsTarget::Http(url) => Arc::new(HttpBroker::new(url)),
    })
}

/// Like [`publisher_from_source`] with an AWS configuration already loaded (a cold start loads
/// it once).
pub fn publisher_with(
    src: &impl Source,
    aws: &aws_config::SdkConfig,
) -> anyhow::Result<Arc<dyn EventPublisher>> {
    Ok(match events_target(src)? {
        EventsTarget::EventBridge(bus) => Arc::new(EventBridgePublisher::new(aws, bus)),
        EventsTarget::Http(url) => Arc::new(HttpBroker::new(url)),
    })
}

/// [`publisher_from_source`] with the process environment.
pub async fn publisher_from_env() -> anyhow::Result<Arc<dyn EventPublisher>> {
    publisher_from_source(&Env).await
}

/// Which adapter [`publisher_from_source`] picks, without building it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsTarget {
    /// EventBridge, on this bus.
    EventBridge(String),
    /// The HTTP broker at this URL.
    Http(String),
}

/// The adapter choice for `src` (for start-up logs and tests).
pub fn events_target(src: &impl Source) -> Result<EventsTarget, ConfigError> {
    if let Some(bus) = src.get("EVENT_BUS_NAME") {
        let bus = bus.trim().to_string();
        if bus.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                var: "EVENT_BUS_NAME",
                reason: "an event bus name or ARN has no spaces".into(),
            });
        }
        return Ok(EventsTarget::EventBridge(bus));
    }
    BrokerConfig::from_source(src)
        .map(|b| EventsTarget::Http(b.url))
        .map_err(|e| match e {
            ConfigError::Missing(_) => ConfigError::Missing("EVENT_BUS_NAME or BROKER_URL"),
            other => other,
        })
}
