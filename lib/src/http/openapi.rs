//! The answers every route of an HTTP function can give besides its own, documented in one
//! place: a route's annotation lists what is particular to it (200, 404 for its resource, 409
//! for its conflict), and [`with_common_responses`] adds to every operation of the document what
//! the extractors, the gate and the error mapping answer for all of them.

use serde_json::{Value, json};

/// The schema every error answer has.
const ERROR_BODY: &str = "#/components/schemas/ErrorBody";

fn error(description: &str, retry_after: bool) -> Value {
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_BODY}}},
    });
    if retry_after {
        response["headers"] = json!({"Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 0},
        }});
    }
    response
}

/// Adds to each operation of `document` (OpenAPI 3 as JSON) the answers it does not list yet:
/// 400 for input that is not what the schema says (operations with parameters or a body), 413
/// for a body over the limit, 401 for secured operations, 429 for rate-limited ones
/// (`rate_limited` says whether an operation is behind the gate), and 500 and 503 for every
/// operation (a fault, a dependency unavailable: retry with the same idempotency key).
pub fn with_common_responses(document: &mut Value, rate_limited: impl Fn(&str) -> bool) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let limited = rate_limited(path);
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let has_input = operation.get("requestBody").is_some()
                || operation
                    .get("parameters")
                    .and_then(Value::as_array)
                    .is_some_and(|p| !p.is_empty());
            let has_body = operation.get("requestBody").is_some();
            let secured = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let mut add = |status: &str, response: Value| {
                responses.entry(status.to_string()).or_insert(response);
            };
            if has_input {
                add(
                    "400",
                    error(
                        "The request is not what the schema says (`invalid_request`, `malformed_json`)",
                        false,
                    ),
                );
            }
            if has_body {
                add(
                    "413",
                    error(
                        "The body is larger than the limit (`payload_too_large`)",
                        false,
                    ),
                );
            }
            if secured {
                add(
                    "401",
                    error(
                        "No credentials, or refused ones (`unauthenticated`, `invalid_token`, `token_expired`)",
                        false,
                    ),
                );
            }
            if limited {
                add("429", error("Too many requests (`rate_limited`)", true));
            }
            add("500", error("A fault of the server (`internal`)", false));
            add(
                "503",
                error(
                    "A backend is unavailable or slow (`unavailable`): retry after Retry-After",
                    true,
                ),
            );
        }
    }
}
