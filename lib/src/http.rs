//! Helpers shared by the HTTP functions (api, presign): route matching on path templates, the
//! bearer token, request bodies, and JSON answers — errors included, rendered from
//! [`crate::Error`] so HTTP clients see the same codes as WebSocket clients.

use std::collections::HashMap;

use lambda_http::{Body, Request, Response};

use crate::error::{Error, ErrorCode};

/// A route of an HTTP function: a method and a path template whose `{name}` segments are
/// parameters (as in the OpenAPI document).
pub trait RouteTemplate {
    /// HTTP method, upper case.
    fn method(&self) -> &'static str;
    /// Path template, e.g. `/v1/groups/{conversation_id}/participants`.
    fn path(&self) -> &'static str;
}

/// Path parameters of a matched route, decoded.
pub type RouteParams = HashMap<&'static str, String>;

/// The route for `method` and `path`: `Ok` with the route and its parameters, `Err` with the
/// methods the path allows (empty when no route has this path: 404; else 405).
pub fn find_route<'r, R: RouteTemplate>(
    routes: &'r [R],
    method: &str,
    path: &str,
) -> Result<(&'r R, RouteParams), Vec<&'static str>> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut allowed = Vec::new();
    for route in routes {
        let template: Vec<&'static str> = route.path().split('/').collect();
        if template.len() != segments.len() {
            continue;
        }
        let mut params = RouteParams::new();
        let matched = template.iter().zip(&segments).all(|(t, s)| {
            if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                params.insert(name, decode_segment(s));
                !s.is_empty()
            } else {
                t == s
            }
        });
        if !matched {
            continue;
        }
        if route.method() == method {
            return Ok((route, params));
        }
        allowed.push(route.method());
    }
    Err(allowed)
}

/// A percent-decoded path segment (`+` stays a plus, unlike in query strings).
pub fn decode_segment(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The path without an API Gateway stage prefix: `/prod/v1/me` -> `/v1/me` for root `/v1/`.
pub fn without_stage<'a>(path: &'a str, root: &str) -> &'a str {
    if path.starts_with(root) {
        return path;
    }
    match path.find(root) {
        Some(i) => &path[i..],
        None => path,
    }
}

/// The body bytes of a request (`lambda_http` already decoded base64 bodies).
pub fn body_bytes(request: &Request) -> Vec<u8> {
    match request.body() {
        Body::Text(t) => t.as_bytes().to_vec(),
        Body::Binary(b) => b.clone(),
        _ => Vec::new(),
    }
}

/// The bearer token of a request.
pub fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A response with `status`, a JSON body when given, and extra headers.
pub fn json_response(
    status: u16,
    body: Option<&serde_json::Value>,
    extra_headers: &[(&str, String)],
) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in extra_headers {
        builder = builder.header(*name, value.as_str());
    }
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            Body::Text(json.to_string())
        }
        None => Body::Empty,
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// The response for an error: its status, its JSON body, `Retry-After` on 429, and extra headers.
pub fn error_response(error: &Error, extra_headers: &[(&str, String)]) -> Response<Body> {
    let mut headers = extra_headers.to_vec();
    if let Some(secs) = error.retry_after() {
        headers.push(("retry-after", secs.to_string()));
    }
    json_response(error.http_status(), Some(&error.to_http_body()), &headers)
}

/// A request body as `T`. Every body this API takes is a JSON object: an empty body, malformed
/// JSON (`malformed_json`), or JSON of another type (an array would fill a struct's fields by
/// position) is a 400 that says which.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> crate::Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("a JSON request body is required"));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::client(ErrorCode::MalformedJson, format!("request body: {e}")))?;
    if !value.is_object() {
        return Err(Error::invalid(format!(
            "the request body must be a JSON object, not {}",
            json_type(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| Error::invalid(format!("request body: {e}")))
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
