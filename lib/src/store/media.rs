//! Media records: uploads and their life cycle (pending, ready, rejected).

use async_trait::async_trait;

use super::*;

/// Media records: uploads and their life cycle (pending, ready, rejected).
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Records a new media upload (`conflict` when the media id is taken).
    async fn insert_media(&self, media: &Media) -> Result<()>;
    /// One media record by id.
    async fn media(&self, media_id: &str) -> Result<Option<Media>>;
    /// Moves a media record from state `from` to `to` (compare-and-set), setting its thumbnail
    /// key when one is given; returns the record as updated, `None` when it was not in `from`
    /// (someone else moved it first, or it does not exist).
    async fn transition_media(
        &self,
        media_id: &str,
        from: MediaState,
        to: MediaState,
        thumbnail_key: Option<&str>,
    ) -> Result<Option<Media>>;
}

#[async_trait]
impl MediaStore for MongoStore {
    async fn insert_media(&self, media: &Media) -> Result<()> {
        self.deadline(async move {
            match self.media_records().insert_one(media).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Err(Error::client(
                    ErrorCode::Conflict,
                    format!("media {} already exists", media.media_id),
                )),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn media(&self, media_id: &str) -> Result<Option<Media>> {
        self.deadline(async move {
            Ok(self
                .media_records()
                .find_one(doc! {"media_id": media_id})
                .await?)
        })
        .await
    }

    async fn transition_media(
        &self,
        media_id: &str,
        from: MediaState,
        to: MediaState,
        thumbnail_key: Option<&str>,
    ) -> Result<Option<Media>> {
        self.deadline(async move {
            let state = |s: MediaState| {
                mongodb::bson::to_bson(&s).map_err(|e| Error::dependency("bson", e))
            };
            let mut set = doc! {"state": state(to)?};
            if let Some(key) = thumbnail_key {
                set.insert("thumbnail_key", key);
            }
            Ok(self
                .media_records()
                .find_one_and_update(
                    doc! {"media_id": media_id, "state": state(from)?},
                    doc! {"$set": set},
                )
                .return_document(ReturnDocument::After)
                .await?)
        })
        .await
    }
}
