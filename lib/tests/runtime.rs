//! The function runtime over real sockets: the Knative-style HTTP mode (CloudEvents in binary and
//! structured mode, reply events, error statuses), the WebSocket and HTTP function servers, and
//! the Lambda mode against a local Lambda runtime API carrying EventBridge events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use cloudevents::binding::reqwest::{RequestBuilderExt, ResponseExt};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use messaging::Error;
use messaging::runtime::{Mode, cloudevent_router, http_router, mode_from, websocket_router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

async fn serve(router: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn event(ty: &str, data: Value) -> Event {
    EventBuilderV10::new()
        .id(format!("id-{ty}"))
        .ty(ty)
        .source("/test")
        .extension("agentid", "helper")
        .data("application/json", data)
        .build()
        .unwrap()
}

/// A handler answering by event type, recording what it saw.
fn test_handler(
    seen: Arc<Mutex<Vec<Event>>>,
) -> impl Fn(Event) -> std::pin::Pin<Box<dyn Future<Output = messaging::Result<Option<Event>>> + Send>>
+ Send
+ Sync
+ 'static {
    move |event: Event| {
        seen.lock().unwrap().push(event.clone());
        Box::pin(async move {
            match event.ty() {
                "test.reply" => {
                    let data: Value = messaging::events::event_data(&event)?;
                    Ok(Some(
                        EventBuilderV10::new()
                            .id(format!("reply-{}", event.id()))
                            .ty("test.replied")
                            .source("/function")
                            .data("application/json", json!({ "echo": data }))
                            .build()
                            .unwrap(),
                    ))
                }
                "test.none" => Ok(None),
                "test.client" => Err(Error::invalid("bad event data")),
                "test.forbidden" => Err(Error::forbidden("not yours")),
                "test.server" => Err(Error::dependency("redis", "connection refused")),
                "test.limited" => Err(Error::RateLimited {
                    retry_after_secs: 7,
                }),
                _ => Err(Error::invalid("unexpected type")),
            }
        })
    }
}

#[tokio::test]
async fn binary_mode_event_with_a_reply_gets_200_and_the_reply_in_binary_mode() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = serve(cloudevent_router(test_handler(seen.clone()))).await;
    let response = reqwest::Client::new()
        .post(format!("{url}/"))
        .event(event("test.reply", json!({"n": 1})))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("ce-type").unwrap().to_str().unwrap(),
        "test.replied"
    );
    let reply = response.into_event().await.unwrap();
    assert_eq!(reply.id(), "reply-id-test.reply");
    let data: Value = messaging::events::event_data(&reply).unwrap();
    assert_eq!(data, json!({"echo": {"n": 1}}));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].extension("agentid").map(|v| v.to_string()),
        Some("helper".into())
    );
}

#[tokio::test]
async fn structured_mode_event_without_a_reply_gets_202() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = serve(cloudevent_router(test_handler(seen.clone()))).await;
    let body = json!({
        "specversion": "1.0",
        "id": "s1",
        "type": "test.none",
        "source": "/test",
        "agentid": "helper",
        "datacontenttype": "application/json",
        "data": {"x": true}
    });
    let response = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/cloudevents+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("ce-id").is_none());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].id(), "s1");
    let data: Value = messaging::events::event_data(&seen[0]).unwrap();
    assert_eq!(data, json!({"x": true}));
}

#[tokio::test]
async fn structured_mode_reply_event_comes_back_in_binary_mode() {
    let url = serve(cloudevent_router(test_handler(Arc::default()))).await;
    let body = json!({
        "specversion": "1.0", "id": "s2", "type": "test.reply", "source": "/test",
        "datacontenttype": "application/json", "data": {"y": 2}
    });
    let response = reqwest::Client::new()
        .post(format!("{url}/"))
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ce-specversion"], "1.0");
    let reply = response.into_event().await.unwrap();
    assert_eq!(reply.ty(), "test.replied");
}

async fn post_event(url: &str, ty: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/"))
        .event(event(ty, json!({})))
        .unwrap()
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failures_answer_with_the_error_status_and_json_body() {
    let url = serve(cloudevent_router(test_handler(Arc::default()))).await;

    // Client errors: Knative dead-letters them (no retry).
    let response = post_event(&url, "test.client").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(body["error"]["message"], "bad event data");

    let response = post_event(&url, "test.forbidden").await;
    assert_eq!(response.status(), 403);

    // Server faults: 503 and no details (Knative retries).
    let response = post_event(&url, "test.server").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        !body.to_string().contains("connection refused"),
        "details stay in the logs: {body}"
    );

    // Rate limits: 429 with Retry-After (Knative retries, honouring it).
    let response = post_event(&url, "test.limited").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
}

#[tokio::test]
async fn requests_that_are_not_cloudevents_get_400_and_healthz_answers() {
    let url = serve(cloudevent_router(test_handler(Arc::default()))).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid CloudEvent")
    );

    let response = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn websocket_functions_take_and_return_api_gateway_json_over_http() {
    let url = serve(websocket_router(
        |event: ApiGatewayWebsocketProxyRequest| async move {
            let mut response = ApiGatewayProxyResponse::default();
            response.status_code = 200;
            response.body = Some(Body::Text(format!(
                "{}:{}",
                event.request_context.route_key.unwrap_or_default(),
                event.request_context.connection_id.unwrap_or_default()
            )));
            response
        },
    ))
    .await;
    let request = json!({
        "requestContext": {
            "routeKey": "message",
            "eventType": "MESSAGE",
            "connectionId": "abc=",
            "messageId": "m-1",
            "apiId": "localapi",
            "stage": "local",
            "domainName": "localhost",
            "requestId": "r-1",
            "requestTimeEpoch": 1,
            "connectedAt": 1,
            "extendedRequestId": "r-1",
            "identity": {"sourceIp": "127.0.0.1"},
            "messageDirection": "IN"
        },
        "body": "{\"type\":\"heartbeat\"}",
        "isBase64Encoded": false
    });
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: ApiGatewayProxyResponse = response.json().await.unwrap();
    assert_eq!(body.status_code, 200);
    assert_eq!(body.body, Some(Body::Text("message:abc=".into())));

    let response = client
        .post(format!("{url}/"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn http_functions_get_every_request_as_a_lambda_http_request() {
    use lambda_http::RequestExt as _;
    let url = serve(http_router(|request: lambda_http::Request| async move {
        let query = request.query_string_parameters();
        let body = match request.body() {
            lambda_http::Body::Text(t) => t.clone(),
            lambda_http::Body::Empty => "<empty>".into(),
            _ => "<binary>".into(),
        };
        lambda_http::Response::builder()
            .status(201)
            .header("x-path", request.uri().path())
            .body(lambda_http::Body::Text(format!(
                "{} {} q={} body={body}",
                request.method(),
                request.uri().path(),
                query.first("q").unwrap_or("-")
            )))
            .unwrap()
    }))
    .await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/v1/conversations?q=hello%20world"))
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-path"], "/v1/conversations");
    assert_eq!(
        response.text().await.unwrap(),
        "POST /v1/conversations q=hello world body={\"a\":1}"
    );
    let response = client
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "GET /openapi.json q=- body=<empty>"
    );
}

#[test]
fn the_mode_is_lambda_under_the_runtime_api_else_http_on_port() {
    let src = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        mode_from(&src(&[
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("PORT", "9000")
        ]))
        .unwrap(),
        Mode::Lambda
    );
    assert_eq!(mode_from(&src(&[])).unwrap(), Mode::Http(8080));
    assert_eq!(
        mode_from(&src(&[("PORT", "9090")])).unwrap(),
        Mode::Http(9090)
    );
    let error = mode_from(&src(&[("PORT", "http")])).unwrap_err();
    assert!(error.to_string().contains("PORT"));
}

// ---------------------------------------------------------------------------------------------
// Lambda mode, against a local Lambda runtime API.

#[derive(Default)]
struct FakeRuntime {
    queue: Mutex<VecDeque<(String, Value)>>,
    results: Mutex<Vec<(String, &'static str, Value)>>,
}

async fn start_runtime_api(runtime: Arc<FakeRuntime>) -> String {
    use axum::extract::{Path, State};
    use axum::response::IntoResponse;
    let router = axum::Router::new()
        .route(
            "/2018-06-01/runtime/invocation/next",
            axum::routing::get(|State(rt): State<Arc<FakeRuntime>>| async move {
                loop {
                    let next = rt.queue.lock().unwrap().pop_front();
                    if let Some((id, payload)) = next {
                        let deadline = (std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            + Duration::from_secs(30))
                        .as_millis()
                        .to_string();
                        return (
                            [
                                ("lambda-runtime-aws-request-id", id),
                                ("lambda-runtime-deadline-ms", deadline),
                                (
                                    "lambda-runtime-invoked-function-arn",
                                    "arn:aws:lambda:us-east-1:111122223333:function:store".into(),
                                ),
                                ("content-type", "application/json".to_string()),
                            ],
                            payload.to_string(),
                        )
                            .into_response();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            axum::routing::post(
                |State(rt): State<Arc<FakeRuntime>>, Path(id): Path<String>, body: String| async move {
                    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    rt.results.lock().unwrap().push((id, "response", value));
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            axum::routing::post(
                |State(rt): State<Arc<FakeRuntime>>, Path(id): Path<String>, body: String| async move {
                    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    rt.results.lock().unwrap().push((id, "error", value));
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(runtime);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// A broker ingress that records the CloudEvents posted to it.
async fn start_broker(received: Arc<Mutex<Vec<Event>>>) -> String {
    let router = axum::Router::new().route(
        "/",
        axum::routing::post(move |event: Event| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push(event);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    format!("{}/", serve(router).await)
}

#[tokio::test]
async fn under_lambda_eventbridge_events_are_handled_and_errors_are_lambda_errors() {
    let runtime = Arc::new(FakeRuntime::default());
    let runtime_api = start_runtime_api(runtime.clone()).await;
    let published = Arc::new(Mutex::new(Vec::new()));
    let broker = start_broker(published.clone()).await;
    // This is the only test of this binary that reads the process environment.
    unsafe {
        std::env::set_var("AWS_LAMBDA_RUNTIME_API", &runtime_api);
        std::env::set_var("AWS_LAMBDA_FUNCTION_NAME", "store");
        std::env::set_var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256");
        std::env::set_var("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST");
        std::env::set_var("BROKER_URL", &broker);
        std::env::remove_var("EVENT_BUS_NAME");
    }
    let envelope = |ty: &str, data: Value| {
        json!({
            "version": "0", "id": "eb-1", "detail-type": ty, "source": "/test",
            "account": "111122223333", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
            "resources": [],
            "detail": messaging::eventbridge::to_detail(&event(ty, data)).unwrap(),
        })
    };
    {
        let mut queue = runtime.queue.lock().unwrap();
        queue.push_back(("r-none".into(), envelope("test.none", json!({}))));
        queue.push_back(("r-reply".into(), envelope("test.reply", json!({"k": "v"}))));
        queue.push_back(("r-server".into(), envelope("test.server", json!({}))));
        queue.push_back(("r-garbage".into(), json!({"not": "an event"})));
        queue.push_back(("r-forbidden".into(), envelope("test.forbidden", json!({}))));
        queue.push_back((
            "r-bare".into(),
            json!({"specversion": "1.0", "id": "sched-1", "type": "test.none", "source": "/aws/scheduler"}),
        ));
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let servers = testkit::servers();
    let store = messaging::store::MongoStore::connect(
        &servers.mongodb_uri,
        &testkit::unique_name("runtime"),
        messaging::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    // The runtime's future is not `Send` (lambda_runtime's), so it runs in this task.
    let run = messaging::runtime::run_cloudevent_function(
        "store",
        Arc::new(store.clone()),
        test_handler(seen.clone()),
    );
    let answered = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while runtime.results.lock().unwrap().len() < 6 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the runtime did not answer every invocation: {:?}",
                runtime.results.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        result = run => panic!("the Lambda runtime loop ended: {result:?}"),
        () = answered => {}
    }

    let results = runtime.results.lock().unwrap().clone();
    let find = |id: &str| {
        results
            .iter()
            .find(|(rid, _, _)| rid == id)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {id}: {results:?}"))
    };
    assert_eq!(find("r-none").1, "response");
    let (_, kind, reply) = find("r-reply");
    assert_eq!(kind, "response");
    assert_eq!(reply["type"], "test.replied");
    assert_eq!(reply["data"], json!({"echo": {"k": "v"}}));
    // A transient failure is a Lambda error (retried), its errorType the error's code.
    let (_, kind, error) = find("r-server");
    assert_eq!(kind, "error", "a failed handler is a Lambda error: {error}");
    assert_eq!(error["errorType"], "unavailable", "{error}");
    assert!(
        error["errorMessage"].as_str().unwrap().contains("redis"),
        "{error}"
    );
    // Permanent failures are dead-lettered at once, with the reason, and not retried.
    for id in ["r-garbage", "r-forbidden"] {
        let (_, kind, answer) = find(id);
        assert_eq!(kind, "response", "{id}: {answer}");
        assert!(answer["dead_letter"].is_string(), "{id}: {answer}");
    }
    let dead: Vec<mongodb::bson::Document> = {
        use futures::TryStreamExt;
        store
            .database()
            .collection::<mongodb::bson::Document>("dead_letters")
            .find(mongodb::bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .any(|d| d.get_str("kind") == Ok("test.forbidden")
                && d.get_str("error").unwrap().contains("not yours"))
    );
    assert!(dead.iter().any(|d| d.get_str("kind") == Ok("unreadable")));
    assert_eq!(find("r-bare").1, "response");

    // The handler saw the CloudEvents inside the envelopes, extensions included.
    let seen = seen.lock().unwrap();
    let types: Vec<&str> = seen.iter().map(|e| e.ty()).collect();
    assert_eq!(
        types,
        vec![
            "test.none",
            "test.reply",
            "test.server",
            "test.forbidden",
            "test.none"
        ]
    );
    assert_eq!(
        seen[0].extension("agentid").map(|v| v.to_string()),
        Some("helper".into())
    );
    // The reply event was published to the configured broker.
    let published = published.lock().unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].ty(), "test.replied");
}
