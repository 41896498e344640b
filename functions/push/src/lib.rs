//! Push notifications (`messaging.notification` to FCM, APNs or a webhook): not built yet.
//!
//! Every event is refused with a `not_implemented` error (HTTP 501 semantics), so the broker
//! dead-letters it with that reason instead of pretending it was delivered.

#![warn(missing_docs)]

use cloudevents::{AttributesReader, Event};

/// Refuses the event: push delivery is not implemented yet.
pub async fn handle(event: Event) -> messaging::Result<()> {
    Err(messaging::Error::not_implemented(&format!(
        "push delivery of {} event {}",
        event.ty(),
        event.id()
    )))
}

#[cfg(test)]
mod tests {
    use cloudevents::{EventBuilder, EventBuilderV10};

    #[tokio::test]
    async fn every_event_is_refused_as_not_implemented() {
        let event = EventBuilderV10::new()
            .id("n1")
            .ty("messaging.notification")
            .source("/test")
            .build()
            .unwrap();
        let error = super::handle(event).await.unwrap_err();
        assert_eq!(error.code(), messaging::ErrorCode::NotImplemented);
        assert_eq!(error.http_status(), 501);
    }
}
