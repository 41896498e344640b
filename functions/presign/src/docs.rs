//! The base of the presign function's OpenAPI 3 document (title, tag, security scheme); the
//! paths come from the routes as they are registered.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
                        "Access token from the api function (/v1/auth/verify, /v1/auth/login, /v1/auth/refresh)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Messaging media API",
        version = "1",
        description = "Presigned media uploads and downloads of the messaging backend. Media bytes never pass through this API: clients PUT them to storage with a presigned URL bound to content type and length, complete the upload, and refer to the media id in messages (`media_url`). Every route is rate limited per user (429 with Retry-After); errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags((name = "media", description = "Uploads, completion with checks and thumbnails, downloads")),
)]
pub(crate) struct MediaDoc;
