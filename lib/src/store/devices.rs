//! Push devices: the push token of each of a user's devices.

use async_trait::async_trait;

use super::*;

/// Push devices: the push token of each of a user's devices.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Registers a device's push token (moving the token away from any other user or device).
    async fn upsert_device(&self, device: &DeviceToken) -> Result<()>;
    /// Unregisters a device; false when it was not registered.
    async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool>;
    /// A user's registered devices.
    async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceToken>>;
    /// Removes the push token `token` of a user's device because the push service said it is
    /// no longer valid. Only that exact registration goes: false when the device registered
    /// another token meanwhile, or is gone.
    async fn delete_device_token(
        &self,
        user_id: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool>;
}

#[async_trait]
impl DeviceStore for MongoStore {
    async fn upsert_device(&self, device: &DeviceToken) -> Result<()> {
        self.deadline(async move {
            let platform = mongodb::bson::to_bson(&device.platform)
                .map_err(|e| Error::dependency("bson", e))?;
            for attempt in 0..3 {
                // A token belongs to one user and device at a time: take it away from any other.
                self.devices()
                    .delete_many(doc! {
                        "token": &device.token,
                        "$or": [
                            {"user_id": {"$ne": &device.user_id}},
                            {"device_id": {"$ne": &device.device_id}},
                        ],
                    })
                    .await?;
                let result = self
                    .devices()
                    .update_one(
                        doc! {"user_id": &device.user_id, "device_id": &device.device_id},
                        doc! {
                            "$set": {
                                "platform": platform.clone(),
                                "token": &device.token,
                                "updated_at": device.updated_at,
                            },
                            "$setOnInsert": {"created_at": device.created_at},
                        },
                    )
                    .upsert(true)
                    .await;
                match result {
                    Ok(_) => return Ok(()),
                    Err(e) if is_duplicate_key(&e) && attempt < 2 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            unreachable!("the loop returns on its last attempt")
        })
        .await
    }

    async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool> {
        self.deadline(async move {
            Ok(self
                .devices()
                .delete_one(doc! {"user_id": user_id, "device_id": device_id})
                .await?
                .deleted_count
                == 1)
        })
        .await
    }

    async fn devices_of(&self, user_id: &str) -> Result<Vec<DeviceToken>> {
        self.deadline(async move {
            let cursor = self
                .devices()
                .find(doc! {"user_id": user_id})
                .sort(doc! {"device_id": 1})
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn delete_device_token(
        &self,
        user_id: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool> {
        self.deadline(async move {
            Ok(self
                .devices()
                .delete_one(doc! {"user_id": user_id, "device_id": device_id, "token": token})
                .await?
                .deleted_count
                == 1)
        })
        .await
    }
}
