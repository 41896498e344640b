//! Each device's queue of `to_device` messages (key material, end-to-end encrypted), in
//! `to_device`: MongoDB is the truth, as for messages.
//!
//! A message is numbered from its device's counter (in its `device_keys` record) when stored,
//! delivered in that order until the device acknowledges it; then its content is deleted and
//! a tombstone (ids, sequence number, time) stays until [`TO_DEVICE_RETENTION`] has passed, as
//! unacknowledged ones do. The sender's `message_id` makes a retry idempotent: a message
//! stored before is returned again (to be delivered again if still unacknowledged), never
//! stored twice, and a retry that comes after the device acknowledged finds the tombstone and
//! delivers nothing. A
//! sequence number lost to a crash between numbering and storing is a hole, not a problem:
//! devices acknowledge by number, not by watermark.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::*;
use crate::protocol::{OutgoingToDevice, ToDeviceItem};

/// Default of [`super::StoreOptions::max_queued_to_device`]: a device's queue beyond this many
/// unacknowledged messages refuses more (`rate_limited`) until the device catches up.
pub const MAX_QUEUED_TO_DEVICE: u64 = 10_000;
/// Unacknowledged `to_device` messages are kept this long.
pub const TO_DEVICE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A stored `to_device` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToDeviceRecord {
    /// Receiving user.
    pub user_id: String,
    /// Receiving device.
    pub device_id: String,
    /// What the device is given.
    #[serde(flatten)]
    pub item: ToDeviceItem,
    /// When it was stored (the retention's clock).
    pub created_at: DateTime,
    /// When its device acknowledged it (its content is gone then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_at: Option<DateTime>,
}

/// Each device's `to_device` queue.
#[async_trait]
pub trait ToDeviceStore: Send + Sync {
    /// Stores `messages` from `sender_id`'s device `sender_device_id`, each numbered in its
    /// device's queue; a message stored before under the same sender and `message_id` is
    /// returned as it is (with `acked_at` when its device has it already). `not_found` when a
    /// receiving device published no keys.
    async fn queue_to_device(
        &self,
        sender_id: &str,
        sender_device_id: &str,
        messages: &[OutgoingToDevice],
        now_ms: i64,
    ) -> Result<Vec<ToDeviceRecord>>;
    /// A device's queue, oldest first, at most `limit`.
    async fn pending_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<ToDeviceItem>>;
    /// Deletes the content of what the device acknowledged; returns how many it was.
    async fn ack_to_device(&self, user_id: &str, device_id: &str, sequences: &[u64])
    -> Result<u64>;
}

#[async_trait]
impl ToDeviceStore for MongoStore {
    async fn queue_to_device(
        &self,
        sender_id: &str,
        sender_device_id: &str,
        messages: &[OutgoingToDevice],
        now_ms: i64,
    ) -> Result<Vec<ToDeviceRecord>> {
        self.deadline(futures::future::try_join_all(
            messages
                .iter()
                .map(|m| self.queue_one(sender_id, sender_device_id, m, now_ms)),
        ))
        .await
    }

    async fn pending_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<ToDeviceItem>> {
        self.deadline(async move {
            let records: Vec<ToDeviceRecord> = self
                .to_device()
                .find(doc! {"user_id": user_id, "device_id": device_id, "acked_at": {"$exists": false}})
                .sort(doc! {"sequence": 1})
                .limit(limit as i64)
                .await?
                .try_collect()
                .await?;
            Ok(records.into_iter().map(|r| r.item).collect())
        })
        .await
    }

    async fn ack_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        sequences: &[u64],
    ) -> Result<u64> {
        self.deadline(async move {
            let numbers: Vec<i64> = sequences.iter().map(|n| messages::seq(*n)).collect();
            let acked = self
                .to_device()
                .update_many(
                    doc! {
                        "user_id": user_id,
                        "device_id": device_id,
                        "sequence": {"$in": numbers},
                        "acked_at": {"$exists": false},
                    },
                    doc! {"$set": {"acked_at": DateTime::now(), "content": ""}},
                )
                .await?;
            Ok(acked.modified_count)
        })
        .await
    }
}

impl MongoStore {
    fn to_device(&self) -> Collection<ToDeviceRecord> {
        self.db.collection(collections::TO_DEVICE)
    }

    async fn queue_one(
        &self,
        sender_id: &str,
        sender_device_id: &str,
        message: &OutgoingToDevice,
        now_ms: i64,
    ) -> Result<ToDeviceRecord> {
        let same = doc! {
            "user_id": &message.user_id,
            "device_id": &message.device_id,
            "sender_id": sender_id,
            "message_id": &message.message_id,
        };
        if let Some(stored) = self.to_device().find_one(same.clone()).await? {
            return Ok(stored);
        }
        let queued = self
            .to_device()
            .count_documents(doc! {
                "user_id": &message.user_id,
                "device_id": &message.device_id,
                "acked_at": {"$exists": false},
            })
            .await?;
        let limit = self.options.max_queued_to_device;
        if queued >= limit {
            return Err(Error::client(
                crate::ErrorCode::RateLimited,
                format!(
                    "device {} of user {} has {limit} messages waiting: try later",
                    message.device_id, message.user_id
                ),
            ));
        }
        // A number a deleted and published-again device used before may still be taken (a
        // send that raced the deletion): take the next one.
        for _ in 0..3 {
            let numbered = self
                .device_keys()
                .find_one_and_update(
                    doc! {"user_id": &message.user_id, "device_id": &message.device_id},
                    doc! {"$inc": {"to_device_sequence": 1_i64}},
                )
                .return_document(ReturnDocument::After)
                .await?
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "device {} of user {} has published no keys",
                        message.device_id, message.user_id
                    ))
                })?;
            let record = ToDeviceRecord {
                user_id: message.user_id.clone(),
                device_id: message.device_id.clone(),
                item: ToDeviceItem {
                    sequence: numbered.to_device_sequence.max(0) as u64,
                    message_id: message.message_id.clone(),
                    sender_id: sender_id.to_string(),
                    sender_device_id: sender_device_id.to_string(),
                    content: message.content.clone(),
                    timestamp: now_ms,
                },
                created_at: DateTime::now(),
                acked_at: None,
            };
            match self.to_device().insert_one(&record).await {
                Ok(_) => return Ok(record),
                Err(e) if is_duplicate_key(&e) => {
                    // The same retry raced this one (the first stored wins), or the number
                    // was taken (numbered again).
                    if let Some(stored) = self.to_device().find_one(same.clone()).await? {
                        return Ok(stored);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::dependency(
            "mongodb",
            "no free to_device sequence number",
        ))
    }
}
