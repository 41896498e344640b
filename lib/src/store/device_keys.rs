//! The key directory: each device's published identity keys, its one-time keys and its
//! fallback key (`device_keys`, `one_time_keys`).
//!
//! Claims are atomic: a one-time key is removed by the same operation that hands it out
//! (`findOneAndDelete`), so two concurrent claims never get the same key. When none is left,
//! a claim gets the device's fallback key, which stays until the device publishes another.
//! A device's identity never changes under the same device id: publishing different keys is a
//! conflict until the device's keys are deleted. The device document also carries the counter
//! that numbers the device's `to_device` queue ([`super::ToDeviceStore`]).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::*;
use crate::e2ee::{DeviceKeys, SignedKey};

/// Most one-time keys a device may have stored at once.
pub const MAX_STORED_ONE_TIME_KEYS: u64 = 200;
/// Most devices a user may have in the directory (every sender encrypts for each of them).
pub const MAX_DEVICES_PER_USER: u64 = 32;

/// A device's record in `device_keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceKeyRecord {
    /// The published identity.
    #[serde(flatten)]
    pub keys: DeviceKeys,
    /// The key claims get when no one-time key is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_key: Option<SignedKey>,
    /// Last sequence number given to a `to_device` message for this device.
    #[serde(default)]
    pub to_device_sequence: i64,
    /// First publication.
    pub created_at: DateTime,
}

/// A stored one-time key (`one_time_keys`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OneTimeKeyRecord {
    user_id: String,
    device_id: String,
    #[serde(flatten)]
    key: SignedKey,
    created_at: DateTime,
}

/// What publishing a device's identity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The device is new in the directory (its user's contacts should hear of it).
    New,
    /// The same keys were already published.
    Unchanged,
    /// The device id is published with other keys.
    Conflict,
}

/// A key handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// The key.
    pub key: SignedKey,
    /// True for the fallback key (no one-time key was left).
    pub fallback: bool,
    /// One-time keys the device has left.
    pub remaining: u64,
}

/// The key directory.
#[async_trait]
pub trait KeyDirectoryStore: Send + Sync {
    /// Publishes a device's identity (already verified); `invalid_request` past
    /// [`MAX_DEVICES_PER_USER`].
    async fn publish_device(&self, keys: &DeviceKeys) -> Result<Published>;
    /// Adds one-time keys (already verified; a key id stored before is skipped) and, when
    /// given, replaces the fallback key. Returns how many one-time keys are stored. Refuses
    /// (`invalid_request`) to go over [`MAX_STORED_ONE_TIME_KEYS`].
    async fn add_keys(
        &self,
        user_id: &str,
        device_id: &str,
        one_time_keys: &[SignedKey],
        fallback_key: Option<&SignedKey>,
    ) -> Result<u64>;
    /// A user's published devices.
    async fn device_keys_of(&self, user_id: &str) -> Result<Vec<DeviceKeys>>;
    /// One device's record.
    async fn device_key_record(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<DeviceKeyRecord>>;
    /// Hands out one key of a device (see the module doc); `None` when the device published
    /// nothing or has neither a one-time nor a fallback key.
    async fn claim_key(&self, user_id: &str, device_id: &str) -> Result<Option<ClaimedKey>>;
    /// Removes a device from the directory with its keys and its `to_device` queue; false when
    /// it was not there.
    async fn delete_device_keys(&self, user_id: &str, device_id: &str) -> Result<bool>;
}

#[async_trait]
impl KeyDirectoryStore for MongoStore {
    async fn publish_device(&self, keys: &DeviceKeys) -> Result<Published> {
        self.deadline(async move {
            let record = DeviceKeyRecord {
                keys: keys.clone(),
                fallback_key: None,
                to_device_sequence: 0,
                created_at: DateTime::now(),
            };
            let filter = doc! {"user_id": &keys.user_id, "device_id": &keys.device_id};
            let existing = self.device_keys().find_one(filter.clone()).await?;
            if existing.is_none()
                && self
                    .device_keys()
                    .count_documents(doc! {"user_id": &keys.user_id})
                    .await?
                    >= MAX_DEVICES_PER_USER
            {
                return Err(Error::invalid(format!(
                    "a user has at most {MAX_DEVICES_PER_USER} devices with keys: delete one first (DELETE /v1/keys/{{device_id}})"
                )));
            }
            match self.device_keys().insert_one(&record).await {
                Ok(_) => return Ok(Published::New),
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(e.into()),
            }
            let existing = self.device_keys().find_one(filter).await?;
            Ok(match existing {
                Some(existing) if existing.keys.identity == keys.identity => Published::Unchanged,
                Some(_) => Published::Conflict,
                // Deleted between the two calls: publishing again is the caller's retry.
                None => {
                    return Err(Error::dependency(
                        "mongodb",
                        "device keys changed concurrently",
                    ));
                }
            })
        })
        .await
    }

    async fn add_keys(
        &self,
        user_id: &str,
        device_id: &str,
        one_time_keys: &[SignedKey],
        fallback_key: Option<&SignedKey>,
    ) -> Result<u64> {
        self.deadline(async move {
            let owner = doc! {"user_id": user_id, "device_id": device_id};
            let stored = self.one_time_keys().count_documents(owner.clone()).await?;
            if stored + one_time_keys.len() as u64 > MAX_STORED_ONE_TIME_KEYS {
                return Err(Error::invalid(format!(
                    "a device keeps at most {MAX_STORED_ONE_TIME_KEYS} one-time keys; {stored} are stored"
                )));
            }
            if !one_time_keys.is_empty() {
                let now = DateTime::now();
                let records: Vec<OneTimeKeyRecord> = one_time_keys
                    .iter()
                    .map(|key| OneTimeKeyRecord {
                        user_id: user_id.to_string(),
                        device_id: device_id.to_string(),
                        key: key.clone(),
                        created_at: now,
                    })
                    .collect();
                // Unordered: a key id stored before (a retried upload) fails alone.
                match self.one_time_keys().insert_many(records).ordered(false).await {
                    Ok(_) => {}
                    Err(e) if only_duplicates(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(fallback) = fallback_key {
                let fallback = mongodb::bson::to_bson(fallback).map_err(|e| Error::dependency("bson", e))?;
                self.device_keys()
                    .update_one(owner.clone(), doc! {"$set": {"fallback_key": fallback}})
                    .await?;
            }
            Ok(self.one_time_keys().count_documents(owner).await?)
        })
        .await
    }

    async fn device_keys_of(&self, user_id: &str) -> Result<Vec<DeviceKeys>> {
        self.deadline(async move {
            let records: Vec<DeviceKeyRecord> = self
                .device_keys()
                .find(doc! {"user_id": user_id})
                .sort(doc! {"device_id": 1})
                .await?
                .try_collect()
                .await?;
            Ok(records.into_iter().map(|r| r.keys).collect())
        })
        .await
    }

    async fn device_key_record(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<DeviceKeyRecord>> {
        self.deadline(async move {
            Ok(self
                .device_keys()
                .find_one(doc! {"user_id": user_id, "device_id": device_id})
                .await?)
        })
        .await
    }

    async fn claim_key(&self, user_id: &str, device_id: &str) -> Result<Option<ClaimedKey>> {
        self.deadline(async move {
            let owner = doc! {"user_id": user_id, "device_id": device_id};
            let taken = self
                .one_time_keys()
                .find_one_and_delete(owner.clone())
                .sort(doc! {"created_at": 1})
                .await?;
            let remaining = self.one_time_keys().count_documents(owner.clone()).await?;
            if let Some(taken) = taken {
                return Ok(Some(ClaimedKey {
                    key: taken.key,
                    fallback: false,
                    remaining,
                }));
            }
            let record = self.device_keys().find_one(owner).await?;
            Ok(record.and_then(|r| r.fallback_key).map(|key| ClaimedKey {
                key,
                fallback: true,
                remaining,
            }))
        })
        .await
    }

    async fn delete_device_keys(&self, user_id: &str, device_id: &str) -> Result<bool> {
        self.deadline(async move {
            let owner = doc! {"user_id": user_id, "device_id": device_id};
            // The record last: a deletion that fails half way can be asked again (the record
            // still says the device exists), and no key signed by the old identity outlives it.
            self.one_time_keys().delete_many(owner.clone()).await?;
            self.db
                .collection::<Document>(collections::TO_DEVICE)
                .delete_many(owner.clone())
                .await?;
            let deleted = self.device_keys().delete_one(owner).await?;
            Ok(deleted.deleted_count > 0)
        })
        .await
    }
}

impl MongoStore {
    pub(super) fn device_keys(&self) -> Collection<DeviceKeyRecord> {
        self.db.collection(collections::DEVICE_KEYS)
    }

    fn one_time_keys(&self) -> Collection<OneTimeKeyRecord> {
        self.db.collection(collections::ONE_TIME_KEYS)
    }
}

/// Whether an unordered insert failed only on duplicate keys.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == 11000))
        }
        _ => is_duplicate_key(e),
    }
}
