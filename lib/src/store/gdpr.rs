//! Personal data: the export of everything stored about a user, and erasure.

use async_trait::async_trait;

use super::*;

/// Personal data: the export of everything stored about a user, and erasure.
#[async_trait]
pub trait GdprStore: Send + Sync {
    /// Everything stored about a user, for the data export; `None` when the user does not exist.
    async fn user_data(&self, user_id: &str) -> Result<Option<UserData>>;
    /// Erases a user: profile, password, tokens, devices, codes and agent conversations are
    /// deleted; 1:1 conversations stay for the other person and messages they sent stay in
    /// conversations, both attributed to `tombstone` instead of the user (also in system
    /// messages); they leave every group; their receipts and read markers are removed.
    async fn erase_user(&self, user_id: &str, tombstone: &str) -> Result<Erasure>;
}

#[async_trait]
impl GdprStore for MongoStore {
    async fn user_data(&self, user_id: &str) -> Result<Option<UserData>> {
        self.deadline_long(async move {
            let Some(user) = self.user(user_id).await? else {
                return Ok(None);
            };
            let has_password = self.password_hash(user_id).await?.is_some();
            let sessions: Vec<RefreshToken> = self
                .refresh_tokens()
                .find(doc! {"user_id": user_id})
                .sort(doc! {"created_at": 1})
                .await?
                .try_collect()
                .await?;
            let devices = self.devices_of(user_id).await?;
            let conversations = self.conversations_of(user_id).await?;
            let messages: Vec<StoredMessage> = self
                .messages()
                .find(doc! {"sender_id": user_id})
                .sort(doc! {"conversation_id": 1, "sequence_number": 1})
                .await?
                .try_collect()
                .await?;
            let media: Vec<Media> = self
                .db
                .collection::<Media>(collections::MEDIA)
                .find(doc! {"uploader_id": user_id})
                .await?
                .try_collect()
                .await?;
            Ok(Some(UserData {
                user,
                has_password,
                sessions,
                devices,
                conversations,
                messages,
                media,
            }))
        })
        .await
    }

    async fn erase_user(&self, user_id: &str, tombstone: &str) -> Result<Erasure> {
        self.deadline_long(async move {
            let mut report = Erasure::default();
            let user = self.user(user_id).await?;
            let swap = |ids: &[String]| -> Vec<String> {
                ids.iter()
                    .map(|p| if p == user_id { tombstone } else { p.as_str() })
                    .map(str::to_string)
                    .collect()
            };
            for MemberConversation { conversation, .. } in self.conversations_of(user_id).await? {
                let id = conversation.conversation_id.as_str();
                let mut unset = doc! {
                    format!("read_up_to.{user_id}"): "",
                    format!("member_state.{user_id}"): "",
                };
                let set = match conversation.kind {
                    ConversationKind::Agent => {
                        report.messages_deleted += self.delete_conversation_data(id).await?;
                        report.conversations_deleted += 1;
                        continue;
                    }
                    ConversationKind::Direct => {
                        unset.insert("pair_key", "");
                        report.conversations_anonymised += 1;
                        doc! {
                            "participants": swap(&conversation.participants),
                            "admins": swap(&conversation.admins),
                        }
                    }
                    ConversationKind::Group => {
                        let participants: Vec<String> = conversation
                            .participants
                            .iter()
                            .filter(|p| *p != user_id)
                            .cloned()
                            .collect();
                        let mut admins: Vec<String> = conversation
                            .admins
                            .iter()
                            .filter(|a| *a != user_id)
                            .cloned()
                            .collect();
                        if admins.is_empty()
                            && let Some(first) = participants.first()
                        {
                            admins.push(first.clone());
                        }
                        doc! {"participants": participants, "admins": admins}
                    }
                };
                self.conversation_docs()
                    .update_one(
                        doc! {"conversation_id": id},
                        doc! {"$set": set, "$unset": unset},
                    )
                    .await?;
            }
            self.conversation_docs()
                .update_many(
                    doc! {"last_message.sender_id": user_id},
                    doc! {"$set": {"last_message.sender_id": tombstone}},
                )
                .await?;

            // Messages they sent stay, attributed to the tombstone (keys re-scoped to it).
            let sent: Vec<Document> = self
                .db
                .collection::<Document>(collections::MESSAGES)
                .find(doc! {"sender_id": user_id})
                .projection(doc! {"message_id": 1, "idempotency_key": 1})
                .await?
                .try_collect()
                .await?;
            let scope = format!("{user_id}/");
            for m in &sent {
                let message_id = m.get_str("message_id").unwrap_or_default();
                let key = m.get_str("idempotency_key").unwrap_or_default();
                let key = format!("{tombstone}/{}", key.strip_prefix(&scope).unwrap_or(key));
                self.messages()
                    .update_one(
                        doc! {"message_id": message_id},
                        doc! {"$set": {"sender_id": tombstone, "idempotency_key": key}},
                    )
                    .await?;
            }
            report.messages_anonymised = sent.len() as u64;
            self.messages()
                .update_many(
                    doc! {"receiver_id": user_id},
                    doc! {"$set": {"receiver_id": tombstone}},
                )
                .await?;
            for field in ["delivered_to", "read_by"] {
                self.messages()
                    .update_many(doc! {field: user_id}, doc! {"$pull": {field: user_id}})
                    .await?;
            }
            // System messages name users by id: name the tombstone instead.
            let mentions: Vec<StoredMessage> = self
                .messages()
                .find(doc! {"type": "system", "content": {"$regex": regex_escape(user_id)}})
                .await?
                .try_collect()
                .await?;
            for m in mentions {
                self.messages()
                    .update_one(
                        doc! {"message_id": &m.message_id},
                        doc! {"$set": {"content": m.body.content.replace(user_id, tombstone)}},
                    )
                    .await?;
            }
            self.db
                .collection::<Document>(collections::MEDIA)
                .update_many(
                    doc! {"uploader_id": user_id},
                    doc! {"$set": {"uploader_id": tombstone}},
                )
                .await?;

            // What their devices received.
            self.device_cursors()
                .delete_many(doc! {"user_id": user_id})
                .await?;

            // Account records.
            let mut destinations = Vec::new();
            if let Some(user) = &user {
                if let Some(phone) = &user.phone {
                    destinations.push(format!("phone:{phone}"));
                }
                if let Some(email) = &user.email {
                    destinations.push(format!("email:{email}"));
                }
            }
            self.codes()
                .delete_many(doc! {"$or": [
                    {"_id": {"$in": &destinations}},
                    {"user_id": user_id},
                ]})
                .await?;
            self.db
                .collection::<Document>(collections::CODE_OUTBOX)
                .delete_many(doc! {"destination": {"$in": &destinations}})
                .await?;
            self.credentials().delete_one(doc! {"_id": user_id}).await?;
            self.refresh_tokens()
                .delete_many(doc! {"user_id": user_id})
                .await?;
            self.devices()
                .delete_many(doc! {"user_id": user_id})
                .await?;
            // End-to-end encryption: the user's device keys, one-time keys and queues, and the
            // key material they sent that is still queued for others.
            for collection in [
                collections::DEVICE_KEYS,
                collections::ONE_TIME_KEYS,
                collections::TO_DEVICE,
            ] {
                self.db
                    .collection::<Document>(collection)
                    .delete_many(doc! {"user_id": user_id})
                    .await?;
            }
            self.db
                .collection::<Document>(collections::TO_DEVICE)
                .delete_many(doc! {"sender_id": user_id})
                .await?;
            self.users().delete_one(doc! {"user_id": user_id}).await?;
            Ok(report)
        })
        .await
    }
}
