//! Runs an HTTP function's `axum` router on one `lambda_http` request: the request API Gateway's
//! HTTP API hands a Lambda, the Knative HTTP server builds, and the local stack passes on. So
//! every deployment goes through the same router, gate and extractors.

use axum::Router;
use lambda_http::{Body, Request, RequestExt, Response};
use tower::ServiceExt;

/// Answers `request` with `router`. A stage prefix (`/prod/v1/me`) is removed first, as the
/// routes are written without it; the query string comes from the URI, else from what API
/// Gateway parsed. Never fails: a failure is an error answer.
pub async fn call(router: &Router, request: Request) -> Response<Body> {
    let query = query_of(&request);
    let (mut parts, body) = request.into_parts();
    let path = route_path(parts.uri.path()).to_string();
    let uri = match query {
        Some(query) if !query.is_empty() => format!("{path}?{query}"),
        _ => path,
    };
    if let Ok(uri) = uri.parse() {
        parts.uri = uri;
    }
    let body = match body {
        Body::Text(text) => axum::body::Body::from(text),
        Body::Binary(bytes) => axum::body::Body::from(bytes),
        _ => axum::body::Body::empty(),
    };
    let response = match router
        .clone()
        .oneshot(axum::extract::Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) if bytes.is_empty() => Body::Empty,
        Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        },
        Err(e) => {
            return super::error_response(
                &crate::Error::dependency("http", format!("response body: {e}")),
                &[],
            );
        }
    };
    Response::from_parts(parts, body)
}

/// The raw query string: from the URI, else rebuilt from the parameters API Gateway parsed.
fn query_of(request: &Request) -> Option<String> {
    if let Some(raw) = request.uri().query() {
        return Some(raw.to_string());
    }
    let parsed = request.query_string_parameters();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, _) in parsed.iter() {
        for value in parsed.all(name).unwrap_or_default() {
            query.append_pair(name, value);
            any = true;
        }
    }
    any.then(|| query.finish())
}

/// The path without an API Gateway stage prefix: `/prod/v1/me` -> `/v1/me`,
/// `/prod/openapi.json` -> `/openapi.json`.
fn route_path(path: &str) -> &str {
    if path.starts_with("/v1/") || path == "/v1" {
        return path;
    }
    if let Some(i) = path.find("/v1/") {
        return &path[i..];
    }
    for document in ["/openapi.json", "/asyncapi.json"] {
        if path.ends_with(document) {
            return document;
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_prefixes_are_removed() {
        assert_eq!(route_path("/prod/v1/me"), "/v1/me");
        assert_eq!(route_path("/v1/me"), "/v1/me");
        assert_eq!(route_path("/prod/openapi.json"), "/openapi.json");
        assert_eq!(route_path("/elsewhere"), "/elsewhere");
    }
}
