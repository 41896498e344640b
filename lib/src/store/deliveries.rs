//! What each device has received: for every user, device and conversation, the highest sequence
//! number that device acknowledged (a watermark in `device_cursors`).
//!
//! This is the truth `auth` and `sync` compute pending messages from (see [`crate::pending`]), so
//! a crash, a lost event or an empty Redis changes nothing a user sees. Watermarks only move
//! forward (`$max`): acknowledgements may arrive late, twice or out of order. Clients detect and
//! fill gaps below their own highest number (`retransmit`), so a watermark is the right summary
//! of a device's state. Per device, not per user: a phone that was offline gets everything its
//! user's laptop already received.

use async_trait::async_trait;

use super::*;

/// What each device has received.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Moves a device's watermark in a conversation forward to `sequence_number` (never back).
    async fn advance_cursor(
        &self,
        user_id: &str,
        device_id: &str,
        conversation_id: &str,
        sequence_number: u64,
    ) -> Result<()>;
    /// A device's watermarks: conversation id -> highest sequence number acknowledged.
    async fn cursors(&self, user_id: &str, device_id: &str) -> Result<HashMap<String, u64>>;
    /// For every user with a device cursor in a conversation, the highest number any of their
    /// devices acknowledged there (what a group's delivered status is computed from).
    async fn delivered_marks(&self, conversation_id: &str) -> Result<HashMap<String, u64>>;
}

#[async_trait]
impl DeliveryStore for MongoStore {
    async fn advance_cursor(
        &self,
        user_id: &str,
        device_id: &str,
        conversation_id: &str,
        sequence_number: u64,
    ) -> Result<()> {
        self.deadline(async move {
            let filter = doc! {
                "user_id": user_id,
                "device_id": device_id,
                "conversation_id": conversation_id,
            };
            let update = doc! {
                "$max": {"delivered_up_to": messages::seq(sequence_number)},
                "$set": {"updated_at": DateTime::now()},
            };
            // Two first acknowledgements at once may both try to create the cursor: the loser
            // of the unique index updates the winner's.
            for _ in 0..2 {
                match self
                    .device_cursors()
                    .update_one(filter.clone(), update.clone())
                    .upsert(true)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if is_duplicate_key(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            self.device_cursors().update_one(filter, update).await?;
            Ok(())
        })
        .await
    }

    async fn cursors(&self, user_id: &str, device_id: &str) -> Result<HashMap<String, u64>> {
        self.deadline(async move {
            let found: Vec<Document> = self
                .device_cursors()
                .find(doc! {"user_id": user_id, "device_id": device_id})
                .projection(doc! {"conversation_id": 1, "delivered_up_to": 1})
                .await?
                .try_collect()
                .await?;
            Ok(found
                .iter()
                .filter_map(|d| {
                    let conversation = d.get_str("conversation_id").ok()?.to_string();
                    Some((conversation, up_to(d)?))
                })
                .collect())
        })
        .await
    }

    async fn delivered_marks(&self, conversation_id: &str) -> Result<HashMap<String, u64>> {
        self.deadline(async move {
            let found: Vec<Document> = self
                .device_cursors()
                .find(doc! {"conversation_id": conversation_id})
                .projection(doc! {"user_id": 1, "delivered_up_to": 1})
                .await?
                .try_collect()
                .await?;
            let mut marks: HashMap<String, u64> = HashMap::new();
            for d in &found {
                let (Ok(user), Some(up_to)) = (d.get_str("user_id"), up_to(d)) else {
                    continue;
                };
                let mark = marks.entry(user.to_string()).or_default();
                *mark = (*mark).max(up_to);
            }
            Ok(marks)
        })
        .await
    }
}

impl MongoStore {
    pub(super) fn device_cursors(&self) -> Collection<Document> {
        self.db.collection(collections::DEVICE_CURSORS)
    }
}

/// A cursor document's `delivered_up_to`.
fn up_to(cursor: &Document) -> Option<u64> {
    match cursor.get("delivered_up_to")? {
        mongodb::bson::Bson::Int64(n) => u64::try_from(*n).ok(),
        mongodb::bson::Bson::Int32(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}
