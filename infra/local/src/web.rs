//! The web client's origin: the built static client (`scripts/build-web` writes it to
//! `target/web`; on AWS the same files are in S3 behind CloudFront), its `config.json` (where
//! this stack's APIs are: the one file a deployment writes), and, on the local stack only, the
//! code outbox, so the sign-up page can show the code a phone or mailbox would have received.
//!
//! Everything is served from the build (no CDN at run time). The HTTP API is another origin:
//! it answers CORS as API Gateway does (see `http_api`).

use std::path::Path;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mongodb::bson::{Document, doc};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where the built web client is, unless `--web-root` says otherwise (relative to the
/// directory the stack starts in: `scripts/dev` starts it at the repository's root).
pub const DEFAULT_ROOT: &str = "target/web";

#[derive(Clone)]
struct Web {
    config: Value,
    outbox: mongodb::Database,
}

/// The web client's router: `config.json`, `local/code`, and the files under `root`.
///
/// `config` is what the page reads first (`api_url`, `ws_url`, `local`).
pub fn router(root: &Path, config: Value, outbox: mongodb::Database) -> axum::Router {
    let files = tower_http::services::ServeDir::new(root)
        .append_index_html_on_directories(true)
        // An unknown path is the page (it routes by itself, `#conversation`).
        .fallback(tower_http::services::ServeFile::new(
            root.join("index.html"),
        ));
    axum::Router::new()
        .route("/config.json", get(client_config))
        .route("/local/code", get(local_code))
        .with_state(Web { config, outbox })
        .fallback_service(files)
        // The page, its scripts and the crypto module change with every build: the service
        // worker keeps the offline copy, the browser asks again each time.
        .layer(axum::middleware::map_response(no_cache))
}

async fn no_cache(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn client_config(State(web): State<Web>) -> Json<Value> {
    Json(web.config)
}

#[derive(Deserialize)]
struct CodeQuery {
    /// `email:someone@example.com` or `phone:+15550100`, as the code outbox records it.
    destination: String,
}

/// The newest code the local code sender recorded for a destination (development only: there
/// is no such route on AWS, where codes go out by SMS or e-mail).
async fn local_code(State(web): State<Web>, Query(query): Query<CodeQuery>) -> Response {
    let found = web
        .outbox
        .collection::<Document>(messaging::store::collections::CODE_OUTBOX)
        .find_one(doc! {"destination": &query.destination})
        .sort(doc! {"created_at": -1})
        .await;
    match found {
        Ok(Some(record)) => Json(json!({
            "destination": query.destination,
            "code": record.get_str("code").unwrap_or_default(),
        }))
        .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no code was sent there"})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("code outbox unavailable: {e}")})),
        )
            .into_response(),
    }
}
