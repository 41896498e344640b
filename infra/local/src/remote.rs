//! Route integrations over HTTP: the WebSocket gateway on Kubernetes calls the connect, message
//! and disconnect functions running as their own Services.
//!
//! On one machine the gateway calls the functions in-process. On Kubernetes each function is a
//! Knative Service (or plain Deployment) running `messaging::runtime::run_websocket_function`,
//! which takes the `ApiGatewayWebsocketProxyRequest` JSON on `POST /` and answers with the
//! `ApiGatewayProxyResponse` JSON, exactly what API Gateway exchanges with Lambda. A
//! [`RemoteFunction`] is the gateway's side of that exchange.
//!
//! Failures look like a failed Lambda integration does on API Gateway: the route's result is a
//! 502 with `{"message": "Internal server error"}` (so `$connect` refuses the upgrade with 502
//! and a frame's invocation ends without a result). A request that never reached the function
//! (connection refused, DNS, a scale-from-zero race) is retried a few times; one that reached it
//! is not, since it may have had effects (the functions are idempotent, but the gateway does not
//! need to rely on it).

use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;

use crate::gateway::RouteHandler;

/// API Gateway's integration timeout.
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(29);
/// Attempts for a request that could not be sent at all.
const CONNECT_ATTEMPTS: u32 = 3;

/// A route integration calling a function over HTTP.
#[derive(Debug, Clone)]
pub struct RemoteFunction {
    url: String,
    client: reqwest::Client,
}

impl RemoteFunction {
    /// Calls the function at `url` (e.g. `http://message.messaging.svc.cluster.local/`), with
    /// API Gateway's 29-second integration timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_timeout(url, INTEGRATION_TIMEOUT)
    }

    /// Like [`RemoteFunction::new`] with another timeout.
    pub fn with_timeout(url: impl Into<String>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client with timeouts always builds");
        Self {
            url: url.into(),
            client,
        }
    }

    /// Where the function is.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts the event; `Err` carries what went wrong (for the log).
    pub async fn call(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, String> {
        let mut last = String::new();
        for attempt in 0..CONNECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt - 1))).await;
            }
            let response = match self.client.post(&self.url).json(event).send().await {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    last = crate::error_chain(&e);
                    continue;
                }
                Err(e) => return Err(crate::error_chain(&e)),
            };
            let status = response.status();
            let body = response.bytes().await.map_err(|e| crate::error_chain(&e))?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(format!("the function answered {status}: {text}"));
            }
            return serde_json::from_slice(&body)
                .map_err(|e| format!("the function's answer is not an API Gateway response: {e}"));
        }
        Err(format!(
            "cannot reach the function after {CONNECT_ATTEMPTS} attempts: {last}"
        ))
    }
}

/// The `$connect` authorizer over HTTP (the connect function's `authorizer` binary in HTTP
/// mode): `200` with the policy, or an error message (`401 {"message":"Unauthorized"}` is the
/// refusal API Gateway turns into a 401).
#[derive(Debug, Clone)]
pub struct RemoteAuthorizer(RemoteFunction);

impl RemoteAuthorizer {
    /// Calls the authorizer at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(RemoteFunction::with_timeout(url, Duration::from_secs(10)))
    }
}

#[async_trait]
impl crate::authorizer::Authorizer for RemoteAuthorizer {
    async fn invoke(&self, event: serde_json::Value) -> Result<serde_json::Value, String> {
        let response = self
            .0
            .client
            .post(&self.0.url)
            .json(&event)
            .send()
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| crate::error_chain(&e))?;
        if status.is_success() {
            return Ok(body);
        }
        Err(body
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("authorizer failed")
            .to_string())
    }
}

/// What API Gateway answers when an integration fails.
pub fn integration_failure() -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = 502;
    response.body = Some(Body::Text(
        serde_json::json!({ "message": "Internal server error" }).to_string(),
    ));
    response
}

#[async_trait]
impl RouteHandler for RemoteFunction {
    async fn invoke(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        match self.call(&event).await {
            Ok(response) => response,
            Err(error) => {
                tracing::error!(
                    function = %self.url,
                    route = event.request_context.route_key.as_deref().unwrap_or(""),
                    connection_id = event.request_context.connection_id.as_deref().unwrap_or(""),
                    error = %error,
                    "remote route integration failed"
                );
                integration_failure()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;

    fn request(route: &str) -> ApiGatewayWebsocketProxyRequest {
        serde_json::from_value(serde_json::json!({
            "requestContext": {
                "routeKey": route,
                "eventType": "MESSAGE",
                "connectionId": "conn-1",
                "apiId": "localapi",
                "stage": "local",
                "requestTimeEpoch": 1,
                "connectedAt": 1,
            },
            "body": "{\"type\":\"heartbeat\"}",
            "isBase64Encoded": false
        }))
        .unwrap()
    }

    async fn serve(router: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn the_event_goes_out_as_json_and_the_response_comes_back() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let url = serve(axum::Router::new().route(
            "/",
            axum::routing::post(move |Json(event): Json<ApiGatewayWebsocketProxyRequest>| {
                let s = s.clone();
                async move {
                    s.lock()
                        .unwrap()
                        .push(event.request_context.route_key.clone());
                    let mut response = ApiGatewayProxyResponse::default();
                    response.status_code = 401;
                    response.body = Some(Body::Text("no token".into()));
                    Json(response)
                }
            }),
        ))
        .await;
        let response = RemoteFunction::new(url).invoke(request("$connect")).await;
        assert_eq!(response.status_code, 401);
        assert_eq!(response.body, Some(Body::Text("no token".into())));
        assert_eq!(*seen.lock().unwrap(), vec![Some("$connect".to_string())]);
    }

    #[tokio::test]
    async fn failures_become_api_gateway_integration_errors() {
        let url = serve(axum::Router::new().route(
            "/",
            axum::routing::post(|| async {
                (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
            }),
        ))
        .await;
        let response = RemoteFunction::new(&url).invoke(request("message")).await;
        assert_eq!(response.status_code, 502);

        let url =
            serve(axum::Router::new().route("/", axum::routing::post(|| async { "not json" })))
                .await;
        let error = RemoteFunction::new(&url)
            .call(&request("message"))
            .await
            .unwrap_err();
        assert!(error.contains("not an API Gateway response"), "{error}");

        // Nothing listens there: retried, then a 502.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let error = RemoteFunction::new(&url)
            .call(&request("message"))
            .await
            .unwrap_err();
        assert!(error.contains("cannot reach"), "{error}");
        assert_eq!(
            RemoteFunction::new(&url)
                .invoke(request("message"))
                .await
                .status_code,
            502
        );
    }
}
