//! What a notification says. Never the message: content is end-to-end encrypted and the server
//! cannot read it. A notification carries who wrote (display name), where (conversation id),
//! which message, what kind ("Photo"), and the badge (the user's total unread); apps fetch the
//! message itself over the WebSocket when they open or sync.

use std::collections::BTreeMap;

use messaging::model::{Notification, event_types};
use messaging::protocol::MessageType;

/// A notification ready for any provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// The CloudEvent id (also the webhook's `webhook-id`).
    pub event_id: String,
    /// Title: the sender's display name, or a generic title when unknown.
    pub title: String,
    /// Body: what kind of message arrived, never its content.
    pub body: String,
    /// Badge: the user's total unread.
    pub badge: u64,
    /// Background (silent) notification: no alert, wakes the app to sync.
    pub silent: bool,
    /// The notification's fields, as strings (FCM data, APNs custom keys).
    pub data: BTreeMap<String, String>,
    /// The notification as sent (webhook).
    pub notification: Notification,
}

/// Generic title when the sender's name is unknown.
pub const GENERIC_TITLE: &str = "New message";

/// The body line for a kind of message.
pub fn body_for(message_type: MessageType) -> &'static str {
    match message_type {
        MessageType::Text => "New message",
        MessageType::Image => "Photo",
        MessageType::Video => "Video",
        MessageType::Audio => "Audio",
        MessageType::Voice => "Voice message",
        MessageType::Document => "Document",
        MessageType::Location => "Location",
        MessageType::Reaction => "Reacted to a message",
        MessageType::System => "Conversation updated",
    }
}

fn wire_name(message_type: MessageType) -> String {
    serde_json::to_value(message_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Payload {
    /// The payload of `notification` (whose `sender_name` is already resolved, if it can be).
    pub fn new(event_id: &str, notification: &Notification, silent: bool) -> Self {
        let mut data = BTreeMap::new();
        data.insert("type".into(), event_types::NOTIFICATION.to_string());
        data.insert(
            "conversation_id".into(),
            notification.conversation_id.clone(),
        );
        data.insert("message_id".into(), notification.message_id.clone());
        data.insert("sender_id".into(), notification.sender_id.clone());
        if let Some(name) = &notification.sender_name {
            data.insert("sender_name".into(), name.clone());
        }
        data.insert("message_type".into(), wire_name(notification.message_type));
        data.insert("badge".into(), notification.badge.to_string());
        Self {
            event_id: event_id.to_string(),
            title: notification
                .sender_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| GENERIC_TITLE.into()),
            body: body_for(notification.message_type).into(),
            badge: notification.badge,
            silent,
            data,
            notification: notification.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_sender_and_the_kind_only() {
        let n = Notification {
            user_id: "u".into(),
            conversation_id: "c".into(),
            message_id: "m".into(),
            sender_id: "s".into(),
            sender_name: Some("Alice".into()),
            message_type: MessageType::Voice,
            badge: 3,
        };
        let p = Payload::new("e1", &n, false);
        assert_eq!(p.title, "Alice");
        assert_eq!(p.body, "Voice message");
        assert_eq!(p.data["message_type"], "voice");
        assert_eq!(p.data["badge"], "3");
        assert_eq!(p.data["type"], "messaging.notification");
        let anonymous = Notification {
            sender_name: None,
            ..n
        };
        let p = Payload::new("e1", &anonymous, true);
        assert_eq!(p.title, GENERIC_TITLE);
        assert!(!p.data.contains_key("sender_name"));
    }
}
