//! Conversations: 1:1, group and agent conversations, their members, per-member state and metadata.

use async_trait::async_trait;

use super::*;

/// Conversations: 1:1, group and agent conversations, their members, per-member state and metadata.
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Stores a new conversation.
    async fn insert_conversation(&self, conversation: &Conversation) -> Result<()>;
    /// One conversation by id.
    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>>;
    /// Updates a conversation after a message was stored: highest sequence number, last-message
    /// preview (only if this message is the newest), and the sender's read marker. Idempotent and
    /// order-independent, so redelivered or reordered events change nothing.
    async fn record_message(&self, last: &LastMessage, conversation_id: &str) -> Result<()>;
    /// Moves a participant's read marker forward to `sequence_number` (never backwards).
    async fn advance_read_marker(
        &self,
        conversation_id: &str,
        user_id: &str,
        sequence_number: u64,
    ) -> Result<()>;
    /// Whether two users (or a user and an agent) share a conversation.
    async fn share_conversation(&self, a: &str, b: &str) -> Result<bool>;
    /// Every conversation `user_id` takes part in, with their own state (any order).
    async fn conversations_of(&self, user_id: &str) -> Result<Vec<MemberConversation>>;
    /// Everyone (people and agents) who shares a conversation with `user_id`, without them.
    async fn contacts_of(&self, user_id: &str) -> Result<Vec<String>>;
    /// One conversation with `user_id`'s own state, if they take part in it.
    async fn member_conversation(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberConversation>>;
    /// Stores a 1:1 or agent conversation unless one with the same `pair_key` exists; returns the
    /// stored one and whether this call created it.
    async fn insert_pair_conversation(
        &self,
        conversation: &Conversation,
        pair_key: &str,
    ) -> Result<(Conversation, bool)>;
    /// A two-party conversation of `kind` between `a` and `b`, however it was created.
    async fn conversation_between(
        &self,
        kind: ConversationKind,
        a: &str,
        b: &str,
    ) -> Result<Option<Conversation>>;
    /// Changes a participant's own state; false when they are not a participant.
    async fn update_member_state(
        &self,
        conversation_id: &str,
        user_id: &str,
        update: &MemberStateUpdate,
    ) -> Result<bool>;
    /// Compare-and-set of a group's members: replaces participants and admins only if they are
    /// still exactly `expected_participants` and `expected_admins`; removed participants lose
    /// their read marker and state. False when someone changed them first.
    async fn replace_group_members(
        &self,
        conversation_id: &str,
        expected_participants: &[String],
        expected_admins: &[String],
        participants: &[String],
        admins: &[String],
    ) -> Result<bool>;
    /// Changes a group's name and/or description (`Some(None)` removes the description).
    async fn update_group_info(
        &self,
        conversation_id: &str,
        name: Option<&str>,
        description: Option<Option<&str>>,
    ) -> Result<bool>;
    /// Deletes a conversation with its messages, media records and device cursors; returns how
    /// many messages went.
    async fn delete_conversation_data(&self, conversation_id: &str) -> Result<u64>;
}

#[async_trait]
impl ConversationStore for MongoStore {
    async fn insert_conversation(&self, conversation: &Conversation) -> Result<()> {
        self.deadline(async move {
            conversation.validate()?;
            match self.conversations().insert_one(conversation).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Err(Error::client(
                    ErrorCode::Conflict,
                    "conversation already exists",
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>> {
        self.deadline(async move {
            Ok(self
                .conversations()
                .find_one(doc! {"conversation_id": conversation_id})
                .await?)
        })
        .await
    }

    async fn record_message(&self, last: &LastMessage, conversation_id: &str) -> Result<()> {
        self.deadline(async move {
            let seq = last.sequence_number as i64;
            let sender_marker = format!("read_up_to.{}", last.sender_id);
            let preview = mongodb::bson::to_bson(last).map_err(|e| Error::dependency("bson", e))?;
            // Usually this message is the newest: preview, highest number and the sender's read
            // marker in one update. An older (reordered or redelivered) one only moves the marker.
            let newest = self
                .conversations()
                .update_one(
                    doc! {"conversation_id": conversation_id, "last_sequence_number": {"$lt": seq}},
                    doc! {
                        "$set": {
                            "last_sequence_number": seq,
                            "last_message": preview,
                            "last_message_at": last.at,
                        },
                        "$max": {&sender_marker: seq},
                    },
                )
                .await?;
            if newest.matched_count == 0 {
                self.conversations()
                    .update_one(
                        doc! {"conversation_id": conversation_id},
                        doc! {"$max": {sender_marker: seq}},
                    )
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn advance_read_marker(
        &self,
        conversation_id: &str,
        user_id: &str,
        sequence_number: u64,
    ) -> Result<()> {
        self.deadline(async move {
            self.conversations()
                .update_one(
                    doc! {"conversation_id": conversation_id},
                    doc! {"$max": {format!("read_up_to.{user_id}"): sequence_number as i64}},
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn share_conversation(&self, a: &str, b: &str) -> Result<bool> {
        self.deadline(async move {
            let found = self
                .db
                .collection::<Document>(collections::CONVERSATIONS)
                .find_one(doc! {"participants": {"$all": [a, b]}})
                .projection(doc! {"_id": 1})
                .await?;
            Ok(found.is_some())
        })
        .await
    }

    async fn conversations_of(&self, user_id: &str) -> Result<Vec<MemberConversation>> {
        self.deadline(async move {
            let docs: Vec<Document> = self
                .conversation_docs()
                .find(doc! {"participants": user_id})
                .await?
                .try_collect()
                .await?;
            docs.into_iter()
                .map(|d| member_conversation_from(d, user_id))
                .collect()
        })
        .await
    }

    async fn contacts_of(&self, user_id: &str) -> Result<Vec<String>> {
        self.deadline(async move {
            let docs: Vec<Document> = self
                .conversation_docs()
                .find(doc! {"participants": user_id})
                .projection(doc! {"participants": 1})
                .await?
                .try_collect()
                .await?;
            let mut contacts = std::collections::BTreeSet::new();
            for d in &docs {
                if let Ok(participants) = d.get_array("participants") {
                    contacts.extend(
                        participants
                            .iter()
                            .filter_map(|p| p.as_str())
                            .map(String::from),
                    );
                }
            }
            contacts.remove(user_id);
            Ok(contacts.into_iter().collect())
        })
        .await
    }

    async fn member_conversation(
        &self,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberConversation>> {
        self.deadline(async move {
            let found = self
                .conversation_docs()
                .find_one(doc! {"conversation_id": conversation_id, "participants": user_id})
                .await?;
            found
                .map(|d| member_conversation_from(d, user_id))
                .transpose()
        })
        .await
    }

    async fn insert_pair_conversation(
        &self,
        conversation: &Conversation,
        pair_key: &str,
    ) -> Result<(Conversation, bool)> {
        self.deadline(async move {
            conversation.validate()?;
            let mut document = mongodb::bson::to_document(conversation)
                .map_err(|e| Error::dependency("bson", e))?;
            document.insert("pair_key", pair_key);
            match self.conversation_docs().insert_one(document).await {
                Ok(_) => Ok((conversation.clone(), true)),
                Err(e) if is_duplicate_key(&e) => {
                    let existing = self
                        .conversations()
                        .find_one(doc! {"pair_key": pair_key})
                        .await?
                        .ok_or_else(|| {
                            Error::client(ErrorCode::Conflict, "conversation already exists")
                        })?;
                    Ok((existing, false))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn conversation_between(
        &self,
        kind: ConversationKind,
        a: &str,
        b: &str,
    ) -> Result<Option<Conversation>> {
        self.deadline(async move {
            let kind = mongodb::bson::to_bson(&kind).map_err(|e| Error::dependency("bson", e))?;
            let found: Vec<Conversation> = self
                .conversations()
                .find(doc! {"kind": kind, "participants": {"$all": [a, b]}})
                .await?
                .try_collect()
                .await?;
            Ok(found.into_iter().find(|c| c.participants.len() == 2))
        })
        .await
    }

    async fn update_member_state(
        &self,
        conversation_id: &str,
        user_id: &str,
        update: &MemberStateUpdate,
    ) -> Result<bool> {
        self.deadline(async move {
            let base = format!("member_state.{user_id}");
            let mut set = doc! {};
            let mut max = doc! {};
            if let Some(pinned) = update.pinned {
                set.insert(format!("{base}.pinned"), pinned);
            }
            if let Some(archived) = update.archived {
                set.insert(format!("{base}.archived"), archived);
            }
            if let Some(seq) = update.delete_up_to {
                set.insert(format!("{base}.deleted"), true);
                set.insert(format!("{base}.pinned"), false);
                set.insert(format!("{base}.archived"), false);
                max.insert(format!("{base}.cleared_up_to"), seq as i64);
            }
            if update.restore {
                set.insert(format!("{base}.deleted"), false);
            }
            let mut change = doc! {};
            if !set.is_empty() {
                change.insert("$set", set);
            }
            if !max.is_empty() {
                change.insert("$max", max);
            }
            let filter = doc! {"conversation_id": conversation_id, "participants": user_id};
            if change.is_empty() {
                let found = self
                    .conversation_docs()
                    .find_one(filter)
                    .projection(doc! {"_id": 1})
                    .await?;
                return Ok(found.is_some());
            }
            Ok(self
                .conversation_docs()
                .update_one(filter, change)
                .await?
                .matched_count
                == 1)
        })
        .await
    }

    async fn replace_group_members(
        &self,
        conversation_id: &str,
        expected_participants: &[String],
        expected_admins: &[String],
        participants: &[String],
        admins: &[String],
    ) -> Result<bool> {
        self.deadline(async move {
            let mut filter = doc! {
                "conversation_id": conversation_id,
                "kind": "group",
                "participants": expected_participants,
            };
            if expected_admins.is_empty() {
                filter.insert(
                    "$or",
                    vec![doc! {"admins": {"$exists": false}}, doc! {"admins": []}],
                );
            } else {
                filter.insert("admins", expected_admins);
            }
            let mut update = doc! {"$set": {"participants": participants, "admins": admins}};
            let mut unset = doc! {};
            for gone in expected_participants
                .iter()
                .filter(|p| !participants.contains(p))
            {
                unset.insert(format!("read_up_to.{gone}"), "");
                unset.insert(format!("member_state.{gone}"), "");
            }
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            Ok(self
                .conversation_docs()
                .update_one(filter, update)
                .await?
                .matched_count
                == 1)
        })
        .await
    }

    async fn update_group_info(
        &self,
        conversation_id: &str,
        name: Option<&str>,
        description: Option<Option<&str>>,
    ) -> Result<bool> {
        self.deadline(async move {
            let update = name_and_optional_field(name, "description", description);
            let filter = doc! {"conversation_id": conversation_id, "kind": "group"};
            if update.is_empty() {
                return Ok(self.conversation_docs().find_one(filter).await?.is_some());
            }
            Ok(self
                .conversation_docs()
                .update_one(filter, update)
                .await?
                .matched_count
                == 1)
        })
        .await
    }

    async fn delete_conversation_data(&self, conversation_id: &str) -> Result<u64> {
        self.deadline(async move {
            let by_conversation = doc! {"conversation_id": conversation_id};
            let messages = self
                .messages()
                .delete_many(by_conversation.clone())
                .await?
                .deleted_count;
            self.db
                .collection::<Document>(collections::MEDIA)
                .delete_many(by_conversation.clone())
                .await?;
            self.device_cursors()
                .delete_many(by_conversation.clone())
                .await?;
            self.conversation_docs().delete_one(by_conversation).await?;
            Ok(messages)
        })
        .await
    }
}
