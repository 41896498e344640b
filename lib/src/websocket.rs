//! Helpers for the WebSocket route events (`ApiGatewayWebsocketProxyRequest`) and their results.
//!
//! API Gateway tells a function which connection an event is about in `requestContext`, and
//! sends headers and the query string only with `$connect`. The functions read those through
//! these helpers so that the shape of the event is known in one place.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;

use crate::error::{Error, Result};

/// The connection id of a route event.
pub fn connection_id(event: &ApiGatewayWebsocketProxyRequest) -> Result<&str> {
    event
        .request_context
        .connection_id
        .as_deref()
        .ok_or_else(|| Error::invalid("event has no requestContext.connectionId"))
}

/// A query-string parameter (only `$connect` events have them).
pub fn query<'a>(event: &'a ApiGatewayWebsocketProxyRequest, name: &str) -> Option<&'a str> {
    event.query_string_parameters.first(name)
}

/// A header, case-insensitive (only `$connect` events have them).
pub fn header<'a>(event: &'a ApiGatewayWebsocketProxyRequest, name: &str) -> Option<&'a str> {
    event.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The bearer token of a `$connect`: `?token=` (browsers cannot set headers) or `Authorization`.
pub fn bearer_token(event: &ApiGatewayWebsocketProxyRequest) -> Option<&str> {
    query(event, "token").filter(|t| !t.is_empty()).or_else(|| {
        header(event, "authorization").and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .map(str::trim)
        })
    })
}

/// A route result with a status and a text body.
pub fn response(status: u16, body: impl Into<String>) -> ApiGatewayProxyResponse {
    let body = body.into();
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(status);
    response.body = (!body.is_empty()).then_some(Body::Text(body));
    response
}

/// `200` with no body.
pub fn ok() -> ApiGatewayProxyResponse {
    response(200, "")
}

/// The route result for an error: its HTTP status and JSON body.
pub fn error_response(error: &Error) -> ApiGatewayProxyResponse {
    response(error.http_status(), error.to_http_body().to_string())
}
