//! Media uploads and downloads through presigned S3 URLs (API Gateway HTTP API events via
//! `lambda_http`). Media bytes never pass through a function: clients PUT them straight to
//! storage and fetch them from it, with URLs this function signs for participants of the
//! conversation only.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/media` | participant | ask for an upload: a new media id and a presigned PUT (1 hour) bound to content type and length |
//! | POST | `/v1/media/{media_id}/complete` | the uploader | check the stored object, make the preview, mark the media `ready` |
//! | GET | `/v1/media/{media_id}` | participant | short-lived presigned GETs of the media and its preview |
//!
//! The function is an `axum` [`router`]: every route is registered together with its OpenAPI
//! entry ([`openapi`]), so neither exists without the other. Requests and answers are JSON;
//! every refusal is a 4xx with the one `messaging::http::ErrorBody`, and a 429 carries
//! `Retry-After`. Callers authenticate with the same access JWT as the api function, and each
//! user has one request budget per minute for all routes (`MEDIA_RATE_PER_MINUTE`).
//!
//! # Lifecycle of a media object
//!
//! 1. **Upload request.** The caller names the conversation, the message type (image, video,
//!    audio, voice, document), the content type, the exact size and optionally the SHA-256 of
//!    the bytes. Types and sizes are checked against the limits of the kind (see [`limits`]);
//!    the media record is stored in MongoDB (`media`) as `pending`, under a new media id and the
//!    object key `{conversation_id}/{media_id}`; documents go to the documents bucket, all else
//!    to the media bucket (both expire objects after 90 days by a lifecycle rule in the
//!    deployment templates).
//! 2. **Upload.** The client PUTs the bytes with exactly the signed `Content-Type` and
//!    `Content-Length` (and `x-amz-checksum-sha256`); storage refuses anything else.
//! 3. **Completion.** The function HEADs the object: if its size or content type differ from
//!    the request, the media becomes `rejected` and the object is deleted. Plaintext JPEG, PNG
//!    and WebP images get a JPEG thumbnail (`{key}.thumbnail.jpg`, see [`thumbnail`]); an image
//!    that does not decode is rejected like a mismatch. Media flagged `encrypted` are never
//!    read: the client may hand in its own encrypted preview (`{key}.preview`) instead. Then
//!    the media is `ready`. Completing twice answers the same.
//! 4. **Download.** Messages carry the media id in `media_url`, never a URL; a participant
//!    asks for presigned GETs, valid a few minutes (`MEDIA_DOWNLOAD_URL_TTL_SECS`).

#![warn(missing_docs)]

mod docs;
pub mod limits;
mod media;
pub mod thumbnail;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

/// Re-exported so callers build requests for [`handle`] with the very same types.
pub use lambda_http;
use lambda_http::{Body, Request, Response};
use messaging::config::{ConfigError, Env, S3Config, Source};
use messaging::context::Context;
use messaging::http::gate::{self, Budget, Gate};
use messaging::objects::{ObjectStore, S3Objects};
use messaging::realtime::RateLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use limits::{KindLimits, MediaKind};
pub use media::{PREVIEW_SUFFIX, THUMBNAIL_SUFFIX};

/// Longest validity S3 allows for a presigned URL (SigV4: 7 days).
pub const MAX_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings of the presign function beyond the shared [`Context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignOptions {
    /// Bucket of images, videos, audio and voice notes.
    pub media_bucket: String,
    /// Bucket of documents.
    pub documents_bucket: String,
    /// Limits of images.
    pub image: KindLimits,
    /// Limits of videos.
    pub video: KindLimits,
    /// Limits of audio files and voice notes.
    pub audio: KindLimits,
    /// Limits of documents.
    pub document: KindLimits,
    /// Validity of presigned PUTs.
    pub upload_url_ttl: Duration,
    /// Validity of presigned GETs.
    pub download_url_ttl: Duration,
    /// Per-user budget of requests (all routes together).
    pub rate_limit: RateLimit,
    /// Thumbnails fit in a square of this many pixels.
    pub thumbnail_size: u32,
    /// Larger images are kept without a thumbnail (not decoded at all).
    pub max_thumbnail_source_bytes: u64,
    /// Largest encrypted preview a client may hand in, in bytes.
    pub max_preview_bytes: usize,
}

impl Default for PresignOptions {
    /// The seeds' buckets (`messaging-media`, `messaging-documents`), the limits of
    /// [`KindLimits::defaults`], uploads valid 1 hour, downloads 5 minutes, 60 requests a minute
    /// per user, 320-pixel thumbnails of images up to 16 MiB, encrypted previews up to 32 KiB.
    fn default() -> Self {
        Self {
            media_bucket: "messaging-media".into(),
            documents_bucket: "messaging-documents".into(),
            image: KindLimits::defaults(MediaKind::Image),
            video: KindLimits::defaults(MediaKind::Video),
            audio: KindLimits::defaults(MediaKind::Audio),
            document: KindLimits::defaults(MediaKind::Document),
            upload_url_ttl: Duration::from_secs(3600),
            download_url_ttl: Duration::from_secs(300),
            rate_limit: RateLimit {
                max: 60,
                window: Duration::from_secs(60),
            },
            thumbnail_size: 320,
            max_thumbnail_source_bytes: 16 * 1024 * 1024,
            max_preview_bytes: 32 * 1024,
        }
    }
}

impl PresignOptions {
    /// The limits of a kind.
    pub fn limits(&self, kind: MediaKind) -> &KindLimits {
        match kind {
            MediaKind::Image => &self.image,
            MediaKind::Video => &self.video,
            MediaKind::Audio => &self.audio,
            MediaKind::Document => &self.document,
        }
    }

    fn limits_mut(&mut self, kind: MediaKind) -> &mut KindLimits {
        match kind {
            MediaKind::Image => &mut self.image,
            MediaKind::Video => &mut self.video,
            MediaKind::Audio => &mut self.audio,
            MediaKind::Document => &mut self.document,
        }
    }

    /// Reads the options from configuration, defaults as in [`PresignOptions::default`]:
    /// `MEDIA_BUCKET`, `DOCUMENTS_BUCKET` (as [`S3Config`]); per kind (`IMAGE`, `VIDEO`,
    /// `AUDIO`, `DOCUMENT`) `MEDIA_MAX_<KIND>_BYTES` and `MEDIA_<KIND>_TYPES` (comma-separated
    /// MIME types); `MEDIA_UPLOAD_URL_TTL_SECS` (3600), `MEDIA_DOWNLOAD_URL_TTL_SECS` (300),
    /// both at most 7 days; `MEDIA_RATE_PER_MINUTE` (60); `MEDIA_THUMBNAIL_SIZE` (320, 16 to
    /// 2048); `MEDIA_MAX_THUMBNAIL_SOURCE_BYTES` (16 MiB); `MEDIA_MAX_PREVIEW_BYTES` (32768, at
    /// most 40960 so that its base64 fits a request body).
    pub fn from_source(src: &impl Source) -> std::result::Result<Self, ConfigError> {
        let s3 = S3Config::from_source(src)?;
        let mut options = Self {
            media_bucket: s3.media_bucket,
            documents_bucket: s3.documents_bucket,
            ..Self::default()
        };
        let num = |var: &'static str, default: u64, min: u64, max: u64| {
            messaging::config::bounded(src, var, default, min..=max)
        };
        for kind in MediaKind::ALL {
            let (size_var, types_var): (&'static str, &'static str) = match kind {
                MediaKind::Image => ("MEDIA_MAX_IMAGE_BYTES", "MEDIA_IMAGE_TYPES"),
                MediaKind::Video => ("MEDIA_MAX_VIDEO_BYTES", "MEDIA_VIDEO_TYPES"),
                MediaKind::Audio => ("MEDIA_MAX_AUDIO_BYTES", "MEDIA_AUDIO_TYPES"),
                MediaKind::Document => ("MEDIA_MAX_DOCUMENT_BYTES", "MEDIA_DOCUMENT_TYPES"),
            };
            let default = options.limits(kind).max_bytes;
            // S3 takes at most 5 GiB in one PUT.
            let max_bytes = num(size_var, default, 1, 5 * 1024 * 1024 * 1024)?;
            let limits = options.limits_mut(kind);
            limits.max_bytes = max_bytes;
            if let Some(list) = src.get(types_var) {
                limits.content_types =
                    limits::parse_types(&list).map_err(|reason| ConfigError::Invalid {
                        var: types_var,
                        reason,
                    })?;
            }
        }
        let max_ttl = MAX_URL_TTL.as_secs();
        options.upload_url_ttl = Duration::from_secs(num(
            "MEDIA_UPLOAD_URL_TTL_SECS",
            options.upload_url_ttl.as_secs(),
            1,
            max_ttl,
        )?);
        options.download_url_ttl = Duration::from_secs(num(
            "MEDIA_DOWNLOAD_URL_TTL_SECS",
            options.download_url_ttl.as_secs(),
            1,
            max_ttl,
        )?);
        options.rate_limit.max = num("MEDIA_RATE_PER_MINUTE", options.rate_limit.max, 1, u64::MAX)?;
        options.thumbnail_size = num(
            "MEDIA_THUMBNAIL_SIZE",
            options.thumbnail_size.into(),
            16,
            2048,
        )? as u32;
        options.max_thumbnail_source_bytes = num(
            "MEDIA_MAX_THUMBNAIL_SOURCE_BYTES",
            options.max_thumbnail_source_bytes,
            0,
            u64::MAX,
        )?;
        options.max_preview_bytes = num(
            "MEDIA_MAX_PREVIEW_BYTES",
            options.max_preview_bytes as u64,
            1,
            40 * 1024,
        )? as usize;
        Ok(options)
    }
}

/// The presign function: its ports and options, built once per cold start.
#[derive(Clone)]
pub struct Presign {
    ctx: Context,
    objects: Arc<dyn ObjectStore>,
    options: PresignOptions,
}

impl Presign {
    /// Builds the function from the environment: the shared [`Context`], the S3 settings
    /// ([`S3Config`]: endpoint, path style, buckets), the AWS SDK configuration and
    /// [`PresignOptions::from_source`]. A missing or invalid value names its variable.
    pub async fn from_env() -> anyhow::Result<Self> {
        let ctx = Context::from_env().await?;
        let s3 = S3Config::from_source(&Env)?;
        let options = PresignOptions::from_source(&Env)?;
        let aws = messaging::aws_sdk::sdk_config().await;
        let objects = S3Objects::new(&aws, s3.endpoint.as_deref(), s3.path_style);
        Ok(Self::new(ctx, Arc::new(objects), options))
    }

    /// The function over these ports.
    pub fn new(ctx: Context, objects: Arc<dyn ObjectStore>, options: PresignOptions) -> Self {
        Self {
            ctx,
            objects,
            options,
        }
    }

    /// The shared context.
    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// The options.
    pub fn options(&self) -> &PresignOptions {
        &self.options
    }
}

/// The routes of this function, each registered with its OpenAPI entry by `routes!`.
fn documented_routes() -> OpenApiRouter<Presign> {
    OpenApiRouter::with_openapi(docs::MediaDoc::openapi())
        .routes(routes!(media::request_upload))
        .routes(routes!(media::complete))
        .routes(routes!(media::download))
}

/// The presign function as an `axum` router: every route behind the one [`Gate`] (bearer
/// token, one per-user budget for all routes), JSON answers for unknown paths and methods, and
/// `Cache-Control: no-store` on every answer (they carry presigned URLs). Serve it with
/// [`messaging::http::call`].
pub fn router(presign: Presign) -> axum::Router {
    let gate = Gate::new(
        presign.ctx.jwt.clone(),
        presign.ctx.realtime.clone(),
        Budget {
            scope: "media",
            limit: presign.options.rate_limit,
        },
    );
    let (routes, _) = documented_routes().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(gate, gate::admit))
        .fallback(messaging::http::no_route)
        .method_not_allowed_fallback(messaging::http::method_not_allowed)
        .layer(axum::middleware::map_response(no_store))
        .with_state(presign)
}

/// The OpenAPI document of these routes (the api function publishes it merged with its own).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

/// The OpenAPI document as JSON, with the answers every operation can give.
pub fn openapi() -> serde_json::Value {
    let mut document = serde_json::to_value(openapi_document()).unwrap_or_default();
    messaging::http::openapi::with_common_responses(&mut document, |_| true);
    document
}

/// Answers carry presigned URLs: never cache them anywhere.
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// Answers one HTTP request (API Gateway's, Knative's or the local stack's) with `router`.
pub async fn handle(router: &axum::Router, request: Request) -> Response<Body> {
    messaging::http::call(router, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_configuration_name_the_bad_variable() {
        let source = |vars: Vec<(&'static str, &'static str)>| {
            move |var: &str| {
                vars.iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = |vars| {
            PresignOptions::from_source(&source(vars))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(vec![("MEDIA_MAX_VIDEO_BYTES", "lots")]).contains("MEDIA_MAX_VIDEO_BYTES"));
        assert!(err(vec![("MEDIA_IMAGE_TYPES", "png")]).contains("MEDIA_IMAGE_TYPES"));
        assert!(
            err(vec![("MEDIA_UPLOAD_URL_TTL_SECS", "9999999")])
                .contains("MEDIA_UPLOAD_URL_TTL_SECS")
        );
        assert!(err(vec![("MEDIA_MAX_PREVIEW_BYTES", "0")]).contains("MEDIA_MAX_PREVIEW_BYTES"));
        assert_eq!(
            PresignOptions::from_source(&source(vec![])).unwrap(),
            PresignOptions::default()
        );
        let options = PresignOptions::from_source(&source(vec![
            ("MEDIA_BUCKET", "m"),
            ("DOCUMENTS_BUCKET", "d"),
            ("MEDIA_MAX_IMAGE_BYTES", "1000"),
            ("MEDIA_AUDIO_TYPES", "audio/ogg, audio/mpeg"),
            ("MEDIA_DOWNLOAD_URL_TTL_SECS", "60"),
        ]))
        .unwrap();
        assert_eq!(options.media_bucket, "m");
        assert_eq!(options.documents_bucket, "d");
        assert_eq!(options.image.max_bytes, 1000);
        assert_eq!(options.audio.content_types, vec!["audio/ogg", "audio/mpeg"]);
        assert_eq!(options.download_url_ttl, Duration::from_secs(60));
        assert_eq!(options.upload_url_ttl, Duration::from_secs(3600));
    }
}
