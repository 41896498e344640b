//! Dead letters: events and operations that failed for good, kept for inspection.

use async_trait::async_trait;

use super::*;

/// Dead letters: events and operations that failed for good, kept for inspection.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Stores a dead letter.
    async fn insert_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()>;
}

#[async_trait]
impl DeadLetterStore for MongoStore {
    async fn insert_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()> {
        self.deadline(async move {
            self.db
                .collection::<DeadLetter>(collections::DEAD_LETTERS)
                .insert_one(dead_letter)
                .await?;
            Ok(())
        })
        .await
    }
}

impl DeadLetter {
    /// A dead letter kept for [`DEAD_LETTER_RETENTION`].
    pub fn new(
        source: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
        error: impl Into<String>,
        attempts: u32,
    ) -> Self {
        Self {
            dead_letter_id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            kind: kind.into(),
            payload,
            error: error.into(),
            attempts,
            created_at: DateTime::now(),
            expires_at: after(DEAD_LETTER_RETENTION),
        }
    }
}
