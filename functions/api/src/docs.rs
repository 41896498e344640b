//! The published documents: the base of the OpenAPI 3 document (title, tags, security schemes;
//! the paths come from the routes as they are registered, see `documented_routes`) and the
//! routes that serve it and the AsyncAPI document.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::views::ErrorBody;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Access token from /v1/auth/verify, /v1/auth/login or /v1/auth/refresh",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "operator_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Operator-Key",
                "Operator secret (OPERATOR_KEY) for the agent registry",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Messaging API",
        version = "1",
        description = "Accounts and tokens, conversations, groups, agent discovery, push devices, media and personal data of the messaging backend. Every route is rate limited (429 with Retry-After); every refusal is an `ErrorBody` (`{\"error\": {\"code\", \"message\"}}`) with the codes of the WebSocket API. The WebSocket API and the CloudEvents are described by the AsyncAPI document at `/asyncapi.json`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Registration, verification codes, sign-in, tokens, recovery"),
        (name = "profile", description = "The caller's profile, data export and account deletion"),
        (name = "conversations", description = "1:1 and agent conversations, the list, history"),
        (name = "groups", description = "Groups of up to 100 and their admin rules"),
        (name = "agents", description = "The agent registry"),
        (name = "devices", description = "Push device tokens"),
        (name = "keys", description = "The end-to-end encryption key directory: device identity keys, one-time and fallback keys, claims"),
        (name = "media", description = "Media uploads and downloads through presigned URLs (the presign function)"),
        (name = "meta", description = "The published documents"),
    )
)]
pub(crate) struct ApiDoc;

/// The merged document as JSON, with the answers every operation can give (the documents
/// themselves are not rate limited).
pub(crate) fn finish(document: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut document = serde_json::to_value(document).unwrap_or_default();
    messaging::http::openapi::with_common_responses(&mut document, |path| {
        !matches!(path, "/openapi.json" | "/asyncapi.json")
    });
    document
}

/// The OpenAPI 3 document of the HTTP API (this function's routes and the presign function's).
#[utoipa::path(
    operation_id = "getOpenApi",
    get, path = "/openapi.json", tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
    )
)]
pub(crate) async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi())
}

/// The AsyncAPI 3 document of the WebSocket API and the CloudEvents.
#[utoipa::path(
    operation_id = "getAsyncApi",
    get, path = "/asyncapi.json", tag = "meta",
    responses(
        (status = 200, description = "The AsyncAPI document", content_type = "application/json", body = Object),
    )
)]
pub(crate) async fn asyncapi_json() -> axum::Json<serde_json::Value> {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOCUMENT.get_or_init(messaging::contract::asyncapi).clone())
}
