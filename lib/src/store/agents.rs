//! The agent registry: who the agents are, what they can do, whether they are alive.

use async_trait::async_trait;

use super::*;

/// The agent registry: who the agents are, what they can do, whether they are alive.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// One agent of the registry.
    async fn agent(&self, agent_id: &str) -> Result<Option<Agent>>;
    /// Creates or replaces an agent of the registry.
    async fn upsert_agent(&self, agent: &Agent) -> Result<()>;
    /// Records an agent's heartbeat.
    async fn touch_agent(&self, agent_id: &str, at: DateTime) -> Result<()>;
    /// The most recently seen agent with `capability` whose heartbeat is not older than
    /// `online_since`.
    async fn agent_with_capability(
        &self,
        capability: &str,
        online_since: DateTime,
    ) -> Result<Option<Agent>>;
    /// Adds an agent to the registry (`conflict` when the id is taken).
    async fn insert_agent(&self, agent: &Agent) -> Result<()>;
    /// Removes an agent from the registry; false when it was not there.
    async fn delete_agent(&self, agent_id: &str) -> Result<bool>;
    /// Agents matching every filter of `query`, by ascending id.
    async fn search_agents(&self, query: &AgentQuery) -> Result<Vec<Agent>>;
}

#[async_trait]
impl AgentStore for MongoStore {
    async fn agent(&self, agent_id: &str) -> Result<Option<Agent>> {
        self.deadline(async move {
            Ok(self
                .db
                .collection::<Agent>(collections::AGENTS)
                .find_one(doc! {"agent_id": agent_id})
                .await?)
        })
        .await
    }

    async fn upsert_agent(&self, agent: &Agent) -> Result<()> {
        self.deadline(async move {
            self.db
                .collection::<Agent>(collections::AGENTS)
                .replace_one(doc! {"agent_id": &agent.agent_id}, agent)
                .upsert(true)
                .await?;
            Ok(())
        })
        .await
    }

    async fn touch_agent(&self, agent_id: &str, at: DateTime) -> Result<()> {
        self.deadline(async move {
            self.db
                .collection::<Agent>(collections::AGENTS)
                .update_one(
                    doc! {"agent_id": agent_id},
                    doc! {"$set": {"last_heartbeat_at": at}},
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn agent_with_capability(
        &self,
        capability: &str,
        online_since: DateTime,
    ) -> Result<Option<Agent>> {
        self.deadline(async move {
            Ok(self
                .db
                .collection::<Agent>(collections::AGENTS)
                .find_one(doc! {
                    "capabilities": capability,
                    "last_heartbeat_at": {"$gte": online_since},
                })
                .sort(doc! {"last_heartbeat_at": -1})
                .await?)
        })
        .await
    }

    async fn insert_agent(&self, agent: &Agent) -> Result<()> {
        self.deadline(async move {
            match self.agents().insert_one(agent).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Err(Error::client(
                    ErrorCode::Conflict,
                    format!("agent {} already exists", agent.agent_id),
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn delete_agent(&self, agent_id: &str) -> Result<bool> {
        self.deadline(async move {
            Ok(self
                .agents()
                .delete_one(doc! {"agent_id": agent_id})
                .await?
                .deleted_count
                == 1)
        })
        .await
    }

    async fn search_agents(&self, query: &AgentQuery) -> Result<Vec<Agent>> {
        self.deadline(async move {
            let mut filter = doc! {};
            if let Some(text) = query.text.as_deref().filter(|t| !t.is_empty()) {
                let pattern = regex_escape(text);
                let like = |field: &str| doc! {field: {"$regex": &pattern, "$options": "i"}};
                filter.insert(
                    "$or",
                    vec![like("name"), like("capabilities"), like("categories")],
                );
            }
            if let Some(capability) = &query.capability {
                filter.insert("capabilities", capability);
            }
            if let Some(category) = &query.category {
                filter.insert("categories", category);
            }
            if let Some(since) = query.online_since {
                filter.insert("last_heartbeat_at", doc! {"$gte": since});
            }
            if let Some(after) = &query.after {
                filter.insert("agent_id", doc! {"$gt": after});
            }
            let cursor = self
                .agents()
                .find(filter)
                .sort(doc! {"agent_id": 1})
                .limit(query.limit as i64)
                .await?;
            Ok(cursor.try_collect().await?)
        })
        .await
    }
}
