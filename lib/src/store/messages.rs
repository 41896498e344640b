//! Messages: stored exactly once with their sequence number, read back by range or id, receipts.

use async_trait::async_trait;

use super::*;

/// Messages: stored exactly once with their sequence number, read back by range or id, receipts.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Allocates the next sequence number of a conversation (1, 2, 3, ... without gaps).
    async fn next_sequence(&self, conversation_id: &str) -> Result<u64>;
    /// Stores a message exactly once per `(sender, idempotency_key)`; see the module docs.
    async fn insert_message(&self, message: NewMessage) -> Result<Inserted>;
    /// Messages of a conversation with `from <= sequence_number <= to`, ascending, at most `limit`.
    async fn messages_in_range(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;
    /// One message by id.
    async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>>;
    /// Messages by id (any order; missing ids are skipped).
    async fn messages_by_ids(&self, message_ids: &[String]) -> Result<Vec<StoredMessage>>;
    /// Moves messages' status forward (never backwards); returns how many changed.
    async fn advance_status(&self, message_ids: &[String], status: MessageStatus) -> Result<u64>;
    /// Records that `user_id` received (or read) messages; returns the messages as updated.
    /// The sender's own messages are ignored.
    async fn record_receipts(
        &self,
        message_ids: &[String],
        user_id: &str,
        status: MessageStatus,
    ) -> Result<Vec<StoredMessage>>;
    /// Messages with `from <= sequence_number <= to`, at most `limit`: the lowest ones in
    /// ascending order, or with `newest_first` the highest ones in descending order.
    async fn messages_page(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<StoredMessage>>;
    /// Highest sequence number handed out in a conversation (0 when none).
    async fn last_allocated_sequence(&self, conversation_id: &str) -> Result<u64>;
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn next_sequence(&self, conversation_id: &str) -> Result<u64> {
        self.deadline(async move {
            // `$inc` on an existing counter is atomic everywhere. Creating the counter with an
            // upsert is not safe under concurrency on every MongoDB-wire server (a losing upsert
            // may increment and still answer with no document, which would burn a number), so the
            // counter is created by a plain insert of 0 (a lost race is a harmless E11000) and then
            // incremented. One round trip per allocation; three for a conversation's first.
            for _ in 0..3 {
                let counter = self
                    .counters()
                    .find_one_and_update(
                        doc! {"_id": conversation_id},
                        doc! {
                            "$inc": {"last_sequence_number": 1_i64},
                            "$set": {"updated_at": DateTime::now()},
                        },
                    )
                    .return_document(ReturnDocument::After)
                    .await?;
                if let Some(counter) = counter {
                    return Ok(counter.last_sequence_number);
                }
                let created = self
                    .counters()
                    .insert_one(SequenceCounter {
                        conversation_id: conversation_id.to_string(),
                        last_sequence_number: 0,
                        updated_at: DateTime::now(),
                    })
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e) if is_duplicate_key(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(Error::dependency(
                "mongodb",
                "sequence counter could not be created",
            ))
        })
        .await
    }

    async fn insert_message(&self, new: NewMessage) -> Result<Inserted> {
        self.deadline(async move {
            let key = scoped_key(&new.sender_id, &new.idempotency_key);
            let fingerprint = fingerprint(&new);
            let mut backoff = Duration::from_millis(5);
            let deadline = tokio::time::Instant::now() + CLAIM_LEASE * 2;
            loop {
                let record = IdempotencyRecord {
                    key: key.clone(),
                    message_id: uuid::Uuid::now_v7().to_string(),
                    fingerprint: fingerprint.clone(),
                    conversation_id: new.conversation_id.clone(),
                    lease_until: after(CLAIM_LEASE),
                    created_at: DateTime::now(),
                };
                if self.claim(&record).await? {
                    return self
                        .allocate_and_insert(&new, &key, &fingerprint, &record.message_id)
                        .await;
                }
                let Some(existing) = self.claims().find_one(doc! {"_id": &key}).await? else {
                    // Expired between our insert and our read: claim again.
                    continue;
                };
                if existing.fingerprint != fingerprint {
                    return Err(Error::client(
                        ErrorCode::IdempotencyConflict,
                        "idempotency_key was already used for a different message",
                    ));
                }
                if let Some(message) = self.message_by_key(&key).await? {
                    return Ok(Inserted {
                        message,
                        duplicate: true,
                    });
                }
                if existing.lease_until <= DateTime::now() {
                    // The claimer died before storing the message: take its claim over, atomically,
                    // so that only one retry does.
                    let taken = self
                        .claims()
                        .update_one(
                            doc! {"_id": &key, "lease_until": existing.lease_until},
                            doc! {"$set": {"lease_until": after(CLAIM_LEASE)}},
                        )
                        .await?;
                    if taken.modified_count == 1 {
                        return self
                            .allocate_and_insert(&new, &key, &fingerprint, &existing.message_id)
                            .await;
                    }
                    continue;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::dependency(
                        "mongodb",
                        "timed out waiting for a concurrent send with the same idempotency key",
                    ));
                }
                // The claimer is alive and about to store the message: wait for it.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        })
        .await
    }

    async fn messages_in_range(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            let cursor = self
                .messages()
                .find(doc! {
                    "conversation_id": conversation_id,
                    "sequence_number": {"$gte": from as i64, "$lte": to as i64},
                })
                .sort(doc! {"sequence_number": 1})
                .limit(limit as i64)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>> {
        self.deadline(async move {
            Ok(self
                .messages()
                .find_one(doc! {"message_id": message_id})
                .await?)
        })
        .await
    }

    async fn messages_by_ids(&self, message_ids: &[String]) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            if message_ids.is_empty() {
                return Ok(Vec::new());
            }
            let cursor = self
                .messages()
                .find(doc! {"message_id": {"$in": message_ids}})
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn advance_status(&self, message_ids: &[String], status: MessageStatus) -> Result<u64> {
        self.deadline(async move {
            if message_ids.is_empty() || status == MessageStatus::Sent {
                return Ok(0);
            }
            // Only statuses strictly before the new one may change: never backwards.
            let earlier: Vec<&str> = match status {
                MessageStatus::Delivered => vec!["sent"],
                MessageStatus::Read => vec!["sent", "delivered"],
                MessageStatus::Sent => vec![],
            };
            let status_str = match status {
                MessageStatus::Delivered => "delivered",
                _ => "read",
            };
            let result = self
                .messages()
                .update_many(
                    doc! {"message_id": {"$in": message_ids}, "status": {"$in": earlier}},
                    doc! {"$set": {"status": status_str}},
                )
                .await?;
            Ok(result.modified_count)
        })
        .await
    }

    async fn record_receipts(
        &self,
        message_ids: &[String],
        user_id: &str,
        status: MessageStatus,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            if message_ids.is_empty() || status == MessageStatus::Sent {
                return Ok(Vec::new());
            }
            // Reading implies receiving.
            let update = match status {
                MessageStatus::Read => {
                    doc! {"$addToSet": {"delivered_to": user_id, "read_by": user_id}}
                }
                _ => doc! {"$addToSet": {"delivered_to": user_id}},
            };
            if let [message_id] = message_ids {
                // The common case (one delivery ack): update and read back in one round trip.
                let updated = self
                    .messages()
                    .find_one_and_update(
                        doc! {"message_id": message_id, "sender_id": {"$ne": user_id}},
                        update,
                    )
                    .return_document(ReturnDocument::After)
                    .await?;
                return Ok(updated.into_iter().collect());
            }
            self.messages()
                .update_many(
                    doc! {"message_id": {"$in": message_ids}, "sender_id": {"$ne": user_id}},
                    update,
                )
                .await?;
            self.messages_by_ids(message_ids).await
        })
        .await
    }

    async fn messages_page(
        &self,
        conversation_id: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<StoredMessage>> {
        self.deadline(async move {
            let to = to.min(i64::MAX as u64);
            let cursor = self
                .messages()
                .find(doc! {
                    "conversation_id": conversation_id,
                    "sequence_number": {"$gte": from as i64, "$lte": to as i64},
                })
                .sort(doc! {"sequence_number": if newest_first { -1 } else { 1 }})
                .limit(limit as i64)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }

    async fn last_allocated_sequence(&self, conversation_id: &str) -> Result<u64> {
        self.deadline(async move {
            Ok(self
                .counters()
                .find_one(doc! {"_id": conversation_id})
                .await?
                .map(|c| c.last_sequence_number)
                .unwrap_or(0))
        })
        .await
    }
}

impl MongoStore {
    async fn claim(&self, record: &IdempotencyRecord) -> Result<bool> {
        match self.claims().insert_one(record).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn message_by_key(&self, scoped_key: &str) -> Result<Option<StoredMessage>> {
        Ok(self
            .messages()
            .find_one(doc! {"idempotency_key": scoped_key})
            .await?)
    }

    /// Steps 2 and 3 for the owner of a claim.
    async fn allocate_and_insert(
        &self,
        new: &NewMessage,
        scoped_key: &str,
        fingerprint: &str,
        message_id: &str,
    ) -> Result<Inserted> {
        let sequence_number = self.next_sequence(&new.conversation_id).await?;
        let now = DateTime::now();
        let message = StoredMessage {
            message_id: message_id.to_string(),
            idempotency_key: scoped_key.to_string(),
            fingerprint: fingerprint.to_string(),
            conversation_id: new.conversation_id.clone(),
            sequence_number,
            sender_id: new.sender_id.clone(),
            receiver_id: new.receiver_id.clone(),
            message_type: new.message_type,
            content: new.content.clone(),
            media_url: new.media_url.clone(),
            reply_to_message_id: new.reply_to_message_id.clone(),
            forwarded_from: new.forwarded_from.clone(),
            location: new.location.clone(),
            client_timestamp: new.client_timestamp,
            timestamp: now,
            status: MessageStatus::Sent,
            delivered_to: Vec::new(),
            read_by: Vec::new(),
            created_at: now,
        };
        match self.messages().insert_one(&message).await {
            Ok(_) => Ok(Inserted {
                message,
                duplicate: false,
            }),
            // Someone who took over our claim got there first: theirs is the message.
            Err(e) if is_duplicate_key(&e) => match self.message_by_key(scoped_key).await? {
                Some(message) => Ok(Inserted {
                    message,
                    duplicate: true,
                }),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }
}

/// SHA-256 over every field that makes a send what it is, so a retry can be told from a reuse of
/// the key for something else.
pub fn fingerprint(m: &NewMessage) -> String {
    let mut h = Sha256::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let forwarded = m
        .forwarded_from
        .as_ref()
        .map(|f| format!("{}/{}", f.conversation_id, f.message_id))
        .unwrap_or_default();
    let location = m
        .location
        .as_ref()
        .map(|l| format!("{},{}", l.latitude, l.longitude))
        .unwrap_or_default();
    for part in [
        m.conversation_id.as_str(),
        m.sender_id.as_str(),
        &opt(&m.receiver_id),
        &format!("{:?}", m.message_type),
        m.content.as_str(),
        &opt(&m.media_url),
        &opt(&m.reply_to_message_id),
        &forwarded,
        &location,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The stored form of a client key: scoped by sender.
pub fn scoped_key(sender_id: &str, key: &str) -> String {
    format!("{sender_id}/{key}")
}
