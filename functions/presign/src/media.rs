//! The media routes: ask for an upload, complete it, download.
//!
//! An upload is granted to a participant of the conversation for a kind, content type and size
//! within the configured limits; the presigned PUT is bound to that content type and length (and
//! checksum, when one is given), and the record waits as `pending`. Completion looks at what
//! storage actually holds: a size or type other than the declared one rejects the media and
//! deletes the object; otherwise plaintext images get a JPEG thumbnail next to the original,
//! encrypted media may get the client's encrypted preview, and the media is `ready`. Downloads
//! are short-lived presigned GETs for participants of the conversation only.

use std::time::Duration;

use base64::Engine;
use messaging::model::{Media, MediaState};
use messaging::{Error, ErrorCode, Result};
use mongodb::bson::DateTime;

use crate::Presign;
use crate::limits::{ENCRYPTED_CONTENT_TYPE, MediaKind, essence};
use crate::thumbnail;
use crate::views::{
    CompleteRequest, DownloadView, ErrorBody, MediaView, PresignedView, UploadRequest, UploadView,
};
use axum::extract::State;
use messaging::http::{Caller, Json, Path, Reply};

/// Suffix of a thumbnail's object key (after the media's own key).
pub const THUMBNAIL_SUFFIX: &str = ".thumbnail.jpg";
/// Suffix of an encrypted preview's object key.
pub const PREVIEW_SUFFIX: &str = ".preview";

fn expires_at(ttl: Duration) -> i64 {
    messaging::clock::now_ms() + ttl.as_millis() as i64
}

/// The media record, if the caller takes part in its conversation.
async fn visible_media(
    presign: &Presign,
    caller: &Caller,
    media_id: &str,
) -> Result<(Media, String)> {
    let user_id = caller.user_id()?.to_string();
    let media = presign
        .ctx
        .store
        .media(media_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("media {media_id} does not exist")))?;
    messaging::conversations::membership(&presign.ctx, &user_id, &media.conversation_id).await?;
    Ok((media, user_id))
}

/// Ask for an upload: a new media id and a presigned PUT, valid one hour by default.
#[utoipa::path(
    operation_id = "requestUpload",
    post, path = "/v1/media", tag = "media", security(("bearer" = [])),
    request_body = UploadRequest,
    responses(
        (status = 201, description = "Upload granted: PUT the bytes with the given headers, then complete", body = UploadView),
        (status = 400, description = "Not what the schema says", body = ErrorBody),
        (status = 415, description = "A content type this deployment does not accept for this message type", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a participant of the conversation", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 413, description = "Larger than this message type allows", body = ErrorBody),
        (status = 429, description = "Too many requests (Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn request_upload(
    State(ref presign): State<Presign>,
    caller: Caller,
    Json(request): Json<UploadRequest>,
) -> Result<Reply> {
    let user_id = caller.user_id()?;
    let conversation_id = request.conversation_id.trim();
    if conversation_id.is_empty() || conversation_id.len() > 128 {
        return Err(Error::invalid(
            "conversation_id must be 1 to 128 characters",
        ));
    }
    let message_type = request.message_type.into();
    let kind = MediaKind::of(message_type)
        .ok_or_else(|| Error::invalid("message_type must be a media type"))?;
    let content_type = request.content_type.trim().to_string();
    let essence = essence(&content_type).ok_or_else(|| {
        Error::invalid(format!(
            "content_type `{content_type}` is not a MIME type like image/png"
        ))
    })?;
    let limits = presign.options.limits(kind);
    let allowed =
        limits.allows(&essence) || (request.encrypted && essence == ENCRYPTED_CONTENT_TYPE);
    if !allowed {
        let mut accepted = limits.content_types.join(", ");
        accepted.push_str(&format!(
            "; {ENCRYPTED_CONTENT_TYPE} when the upload is encrypted"
        ));
        return Err(Error::client(
            ErrorCode::UnsupportedMediaType,
            format!(
                "{essence} is not accepted for {} messages; accepted: {accepted}",
                kind.name()
            ),
        ));
    }
    if request.size_bytes == 0 {
        return Err(Error::invalid("size_bytes must be at least 1"));
    }
    if request.size_bytes > limits.max_bytes {
        return Err(Error::client(
            ErrorCode::PayloadTooLarge,
            format!(
                "{} uploads are limited to {} bytes; {} bytes requested",
                kind.name(),
                limits.max_bytes,
                request.size_bytes
            ),
        ));
    }
    let checksum = match request.checksum_sha256.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(given) => {
            let digest = base64::engine::general_purpose::STANDARD
                .decode(given)
                .ok()
                .filter(|d| d.len() == 32)
                .ok_or_else(|| {
                    Error::invalid("checksum_sha256 must be the base64 of a 32-byte SHA-256")
                })?;
            Some(base64::engine::general_purpose::STANDARD.encode(digest))
        }
    };
    messaging::conversations::membership(&presign.ctx, user_id, conversation_id).await?;

    let media_id = uuid::Uuid::new_v4().to_string();
    let bucket = match kind {
        MediaKind::Document => presign.options.documents_bucket.clone(),
        _ => presign.options.media_bucket.clone(),
    };
    let object_key = format!("{conversation_id}/{media_id}");
    let ttl = presign.options.upload_url_ttl;
    let upload = presign
        .objects
        .presign_put_with_checksum(
            &bucket,
            &object_key,
            &content_type,
            request.size_bytes,
            checksum.as_deref(),
            ttl,
        )
        .await?;
    let media = Media {
        media_id: media_id.clone(),
        conversation_id: conversation_id.to_string(),
        uploader_id: user_id.to_string(),
        bucket,
        object_key: object_key.clone(),
        content_type,
        size_bytes: request.size_bytes,
        encrypted: request.encrypted,
        thumbnail_key: None,
        state: MediaState::Pending,
        created_at: DateTime::now(),
    };
    presign.ctx.store.insert_media(&media).await?;
    Reply::json(
        201,
        &UploadView {
            media_id,
            conversation_id: media.conversation_id,
            object_key,
            state: MediaState::Pending,
            upload: PresignedView::new(upload, expires_at(ttl)),
        },
    )
}

/// Content types compared as storage may echo them: case and spaces do not matter.
fn same_content_type(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// Rejects a pending media: deletes its object, marks it `rejected`, and
/// returns the client error that says why.
async fn reject(presign: &Presign, media: &Media, why: String) -> Error {
    if let Err(e) = presign
        .objects
        .delete(&media.bucket, &media.object_key)
        .await
    {
        // The bucket's lifecycle rule removes it eventually; the record says rejected anyway.
        tracing::error!(media_id = %media.media_id, error = %e, "could not delete a rejected object");
    }
    if let Err(e) = presign
        .ctx
        .store
        .transition_media(
            &media.media_id,
            MediaState::Pending,
            MediaState::Rejected,
            None,
        )
        .await
    {
        return e;
    }
    tracing::info!(media_id = %media.media_id, reason = %why, "media rejected");
    Error::client(
        ErrorCode::Conflict,
        format!("media {} is rejected: {why}", media.media_id),
    )
}

/// Complete an upload: check what storage holds, make the preview, mark the media ready.
#[utoipa::path(
    operation_id = "completeUpload",
    post, path = "/v1/media/{media_id}/complete", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path, description = "The media id from the upload request")),
    request_body(content = Option<CompleteRequest>, description = "Optional; only encrypted media may send an encrypted preview"),
    responses(
        (status = 200, description = "The media, ready (also when it was completed before)", body = MediaView),
        (status = 400, description = "Not what the schema says", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not the uploader, or not a participant", body = ErrorBody),
        (status = 404, description = "No such media", body = ErrorBody),
        (status = 409, description = "Nothing uploaded yet; the object does not match the request (the media is rejected and its object deleted); the media was rejected before; a preview for plaintext media", body = ErrorBody),
        (status = 413, description = "Encrypted preview too large", body = ErrorBody),
        (status = 429, description = "Too many requests (Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn complete(
    State(ref presign): State<Presign>,
    caller: Caller,
    Path(media_id): Path<String>,
    body: Option<Json<CompleteRequest>>,
) -> Result<Reply> {
    let (media, user_id) = visible_media(presign, &caller, &media_id).await?;
    if media.uploader_id != user_id {
        return Err(Error::forbidden("only the uploader completes an upload"));
    }
    let request = body.map(|Json(request)| request).unwrap_or_default();
    match media.state {
        MediaState::Ready => return Reply::json(200, &MediaView::from(&media)),
        MediaState::Rejected => {
            return Err(Error::client(
                ErrorCode::Conflict,
                format!(
                    "media {} was rejected; request a new upload",
                    media.media_id
                ),
            ));
        }
        MediaState::Pending => {}
    }
    let preview = match request.encrypted_preview.as_deref() {
        None => None,
        Some(_) if !media.encrypted => {
            return Err(Error::client(
                ErrorCode::Conflict,
                "encrypted_preview is only for encrypted media; plaintext images get a thumbnail",
            ));
        }
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| Error::invalid("encrypted_preview must be base64"))?;
            if bytes.is_empty() {
                return Err(Error::invalid("encrypted_preview is empty"));
            }
            if bytes.len() > presign.options.max_preview_bytes {
                return Err(Error::client(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "encrypted_preview is limited to {} bytes",
                        presign.options.max_preview_bytes
                    ),
                ));
            }
            Some(bytes)
        }
    };

    let objects = &presign.objects;
    let Some(info) = objects.head(&media.bucket, &media.object_key).await? else {
        return Err(Error::client(
            ErrorCode::Conflict,
            "nothing is uploaded yet: PUT the bytes to the presigned URL, then complete",
        ));
    };
    let stored_type = info.content_type.clone().unwrap_or_default();
    let mut mismatches = Vec::new();
    if info.size_bytes != media.size_bytes {
        mismatches.push(format!(
            "{} bytes stored, {} declared",
            info.size_bytes, media.size_bytes
        ));
    }
    if !same_content_type(&stored_type, &media.content_type) {
        mismatches.push(format!(
            "content type `{stored_type}` stored, `{}` declared",
            media.content_type
        ));
    }
    if !mismatches.is_empty() {
        return Err(reject(presign, &media, mismatches.join("; ")).await);
    }

    let mut preview_key = None;
    let format = essence(&media.content_type).and_then(|e| thumbnail::format_of(&e));
    if let Some(bytes) = preview {
        let key = format!("{}{PREVIEW_SUFFIX}", media.object_key);
        objects
            .put(&media.bucket, &key, ENCRYPTED_CONTENT_TYPE, bytes)
            .await?;
        preview_key = Some(key);
    } else if let Some(format) = format
        && !media.encrypted
        && media.size_bytes <= presign.options.max_thumbnail_source_bytes
    {
        let bytes = objects.get(&media.bucket, &media.object_key).await?;
        let side = presign.options.thumbnail_size;
        let made = tokio::task::spawn_blocking(move || thumbnail::make(&bytes, format, side))
            .await
            .map_err(|e| Error::dependency("thumbnail", e))?;
        match made {
            Ok(thumb) => {
                let key = format!("{}{THUMBNAIL_SUFFIX}", media.object_key);
                objects
                    .put(
                        &media.bucket,
                        &key,
                        thumbnail::THUMBNAIL_CONTENT_TYPE,
                        thumb.bytes,
                    )
                    .await?;
                preview_key = Some(key);
            }
            Err(why) => {
                let why = format!(
                    "the object is not a valid {} image: {why}",
                    format.to_mime_type()
                );
                return Err(reject(presign, &media, why).await);
            }
        }
    }

    let updated = presign
        .ctx
        .store
        .transition_media(
            &media.media_id,
            MediaState::Pending,
            MediaState::Ready,
            preview_key.as_deref(),
        )
        .await?;
    let media = match updated {
        Some(media) => media,
        // A concurrent completion got there first: answer with what it decided.
        None => {
            let current = presign
                .ctx
                .store
                .media(&media.media_id)
                .await?
                .ok_or_else(|| {
                    Error::not_found(format!("media {} does not exist", media.media_id))
                })?;
            if current.state != MediaState::Ready {
                return Err(Error::client(
                    ErrorCode::Conflict,
                    format!(
                        "media {} was rejected; request a new upload",
                        current.media_id
                    ),
                ));
            }
            current
        }
    };
    tracing::info!(media_id = %media.media_id, preview = media.thumbnail_key.is_some(), "media ready");
    Reply::json(200, &MediaView::from(&media))
}

/// Download: short-lived presigned GETs of the media and its preview.
#[utoipa::path(
    operation_id = "downloadMedia",
    get, path = "/v1/media/{media_id}", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path, description = "The media id (a message's `media_url`)")),
    responses(
        (status = 200, description = "Presigned GETs (valid a few minutes)", body = DownloadView),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not a participant of the media's conversation", body = ErrorBody),
        (status = 404, description = "No such media, or it was rejected", body = ErrorBody),
        (status = 409, description = "Not uploaded and completed yet", body = ErrorBody),
        (status = 429, description = "Too many requests (Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn download(
    State(ref presign): State<Presign>,
    caller: Caller,
    Path(media_id): Path<String>,
) -> Result<Reply> {
    let (media, _) = visible_media(presign, &caller, &media_id).await?;
    match media.state {
        MediaState::Ready => {}
        MediaState::Pending => {
            return Err(Error::client(
                ErrorCode::Conflict,
                format!("media {} is not uploaded and completed yet", media.media_id),
            ));
        }
        MediaState::Rejected => {
            return Err(Error::not_found(format!(
                "media {} was rejected and deleted",
                media.media_id
            )));
        }
    }
    let ttl = presign.options.download_url_ttl;
    let objects = &presign.objects;
    let download = objects
        .presign_get(&media.bucket, &media.object_key, ttl)
        .await?;
    let preview = match &media.thumbnail_key {
        Some(key) => Some(PresignedView::new(
            objects.presign_get(&media.bucket, key, ttl).await?,
            expires_at(ttl),
        )),
        None => None,
    };
    Reply::json(
        200,
        &DownloadView {
            media: MediaView::from(&media),
            download: PresignedView::new(download, expires_at(ttl)),
            preview,
        },
    )
}
