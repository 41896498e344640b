//! S3 on a local directory, with real SigV4 checks (`s3s` + `s3s-fs`).
//!
//! Presigned URLs made by `aws-sdk-s3` (the presign function) work against it with curl, and a
//! tampered or expired signature is refused with 403, as on AWS. Buckets are directories under
//! the data directory; the media buckets are created at start.

use std::path::Path;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tower::Service;

/// Access key the local S3 accepts.
pub const ACCESS_KEY: &str = "local";
/// Secret key the local S3 accepts.
pub const SECRET_KEY: &str = "local-secret-key";

/// An S3 router storing objects under `root`, with these buckets created.
pub fn router(root: &Path, buckets: &[&str]) -> anyhow::Result<Router> {
    for bucket in buckets {
        std::fs::create_dir_all(root.join(bucket))?;
    }
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3 root: {e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    Ok(Router::new()
        .fallback(serve)
        .with_state(service)
        .layer(cors()))
}

/// The media buckets' CORS rule in the SAM template (`AllowedMethods` GET, PUT, HEAD, every
/// header, `ETag` exposed, `MaxAge` 3600): the web client uploads to and downloads from
/// presigned URLs from another origin.
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::PUT, Method::HEAD])
        .allow_headers(tower_http::cors::Any)
        .expose_headers([HeaderName::from_static("etag")])
        .max_age(std::time::Duration::from_secs(3600))
}

async fn serve(State(mut service): State<S3Service>, request: Request) -> Response {
    match Service::call(&mut service, request).await {
        Ok(response) => response.map(axum::body::Body::new).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("s3: {e:?}")).into_response(),
    }
}
