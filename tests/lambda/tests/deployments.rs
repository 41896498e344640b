//! Every function binary, run the way its deployment runs it:
//!
//! - under a Lambda Runtime API with exactly the environment `infra/aws/template.yaml` gives it
//!   (secrets, parameters without defaults and resource ids filled with test values; the only
//!   endpoints redirected are those a deployment resolves itself: the `@connections` endpoint,
//!   and the AWS SDK's EventBridge and S3 endpoints), fed the AWS-shaped events of each of its
//!   triggers: the `$connect` authorizer's event, API Gateway WebSocket proxy events, EventBridge
//!   events carrying CloudEvents, the scheduler's sweeps, HTTP API payload 2.0;
//! - as a Knative Service with exactly the environment of its manifest (`infra/knative/base`).
//!
//! Side effects are checked where they land: frames on real WebSockets of the emulated API,
//! events at a local PutEvents endpoint, documents in MongoDB, objects in the local S3.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lambda_tests::deployment::{Deployment, OPERATOR_KEY, WAIT, root};
use lambda_tests::process::Function;
use lambda_tests::runtime_api::{Outcome, RuntimeApi};
use lambda_tests::template::{SamTemplate, knative_services};
use serde_json::{Value, json};

use lambda_tests::deployment::Ws;

async fn frame(ws: &mut Ws, frame_type: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == frame_type {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no `{frame_type}` frame: {other:?}"),
        }
    }
}

async fn invoke(runtime: &RuntimeApi, event: Value) -> Outcome {
    runtime
        .invoke(event, WAIT)
        .await
        .expect("an answer within the deadline")
}

fn response(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Response(v) => v,
        Outcome::Error { error_type, body } => panic!("an invocation error {error_type}: {body}"),
    }
}

/// Invokes `event` and expects an invocation error (`what` it is, for the panic otherwise,
/// with the function's output); returns the error's body.
async fn expect_error(runtime: &RuntimeApi, event: Value, process: &Function, what: &str) -> Value {
    match invoke(runtime, event).await {
        Outcome::Error { body, .. } => body,
        outcome => panic!("{what} is an error: {outcome:?}\n{}", process.output()),
    }
}

fn context(
    route: &str,
    event_type: &str,
    connection: &str,
    identity: Option<(&str, &str)>,
) -> Value {
    let mut context = json!({
        "routeKey": route, "eventType": event_type, "connectionId": connection,
        "connectedAt": 1_700_000_000_000i64, "requestTimeEpoch": 1_700_000_000_001i64,
        "stage": "prod", "apiId": "test-api", "domainName": "test-api.execute-api.us-east-1.amazonaws.com",
        "requestId": "r", "messageDirection": "IN", "identity": {"sourceIp": "127.0.0.1"},
    });
    if let Some((user, device)) = identity {
        context["authorizer"] = json!({"principalId": user, "user_id": user, "device_id": device});
    }
    context
}

fn envelope(detail: Value) -> Value {
    json!({
        "version": "0", "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": detail["type"], "source": detail["source"],
        "account": "123456789012", "time": "2026-11-27T00:00:00Z", "region": "us-east-1",
        "resources": [], "detail": detail,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_starts_under_lambda_with_the_template_environment() {
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    let functions = template.functions();
    assert!(functions.len() >= 9, "{functions:?}");
    for (function, binary) in functions {
        let runtime = RuntimeApi::start().await;
        let _process = deployment
            .start(&template, &function, &binary, &runtime)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_functions_answer_api_gateway_events() {
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    let store = deployment.store().await;
    use messaging::store::{AccountStore, ConversationStore};
    let (alice, bob) = (testkit::unique_name("alice"), testkit::unique_name("bob"));
    for user in [&alice, &bob] {
        store
            .insert_user(&messaging::model::User {
                user_id: user.clone(),
                phone: None,
                email: None,
                name: user.clone(),
                avatar_url: None,
                created_at: mongodb::bson::DateTime::now(),
                last_seen: None,
                status: messaging::protocol::PresenceStatus::Offline,
            })
            .await
            .unwrap();
    }
    let conversation_id = uuid::Uuid::new_v4().to_string();
    store
        .insert_conversation(&messaging::model::Conversation::new(
            conversation_id.clone(),
            messaging::model::ConversationKind::Direct,
            vec![alice.clone(), bob.clone()],
        ))
        .await
        .unwrap();

    // The authorizer: allow with the identity, 'Unauthorized' for a bad token, deny for another user.
    let runtime = RuntimeApi::start().await;
    let _authorizer = deployment
        .start(&template, "AuthorizerFunction", "authorizer", &runtime)
        .await;
    let request = |query: Value| {
        json!({"type": "REQUEST", "methodArn": "arn:aws:execute-api:us-east-1:123456789012:test-api/prod/$connect",
               "headers": {"Host": "test-api"}, "queryStringParameters": query, "stageVariables": {},
               "requestContext": context("$connect", "CONNECT", "c0", None)})
    };
    let allowed = response(
        invoke(
            &runtime,
            request(json!({"token": deployment.token(&alice), "device_id": "phone"})),
        )
        .await,
    );
    assert_eq!(allowed["principalId"], alice.as_str());
    assert_eq!(allowed["policyDocument"]["Statement"][0]["Effect"], "Allow");
    assert_eq!(allowed["context"]["user_id"], alice.as_str());
    match invoke(&runtime, request(json!({"token": "not-a-token"}))).await {
        Outcome::Error { error_type, body } => {
            assert_eq!(
                body["errorMessage"], "Unauthorized",
                "API Gateway's 401: {body}"
            );
            assert_eq!(error_type, "Unauthorized");
        }
        other => panic!("{other:?}"),
    }
    let denied = response(
        invoke(
            &runtime,
            request(json!({"token": deployment.token(&alice), "user_id": bob})),
        )
        .await,
    );
    assert_eq!(denied["policyDocument"]["Statement"][0]["Effect"], "Deny");

    // $connect with the authorizer's identity; and without connectedAt, still an answer.
    let (_alice_ws, alice_conn) = deployment.socket().await;
    let (mut bob_ws, bob_conn) = deployment.socket().await;
    let runtime = RuntimeApi::start().await;
    let _connect = deployment
        .start(&template, "ConnectFunction", "connect", &runtime)
        .await;
    for (user, conn) in [(&alice, &alice_conn), (&bob, &bob_conn)] {
        let answer = response(
            invoke(&runtime, json!({"requestContext": context("$connect", "CONNECT", conn, Some((user, "phone"))), "isBase64Encoded": false})).await,
        );
        assert_eq!(answer["statusCode"], 200, "{answer}");
    }
    let mut no_connected_at = context("$connect", "CONNECT", "c-x", Some((&alice, "tablet")));
    no_connected_at
        .as_object_mut()
        .unwrap()
        .remove("connectedAt");
    let answer = response(invoke(&runtime, json!({"requestContext": no_connected_at})).await);
    assert!(answer["statusCode"].is_number(), "{answer}");

    // $default: a heartbeat and a message answered in the response body (the template's routes
    // are two-way: API Gateway sends that body to the client); the message announced on
    // EventBridge.
    let runtime = RuntimeApi::start().await;
    let _message = deployment
        .start(&template, "MessageFunction", "message", &runtime)
        .await;
    let event = |body: Value| {
        json!({"requestContext": context("message", "MESSAGE", &alice_conn, Some((&alice, "phone"))),
               "body": body.to_string(), "isBase64Encoded": false})
    };
    let answer = |response: Value| -> Value {
        assert_eq!(response["statusCode"], 200, "{response}");
        serde_json::from_str(
            response["body"]
                .as_str()
                .expect("an answer frame as the body"),
        )
        .expect("the body is a frame")
    };
    let heartbeat = answer(response(
        invoke(
            &runtime,
            event(json!({"type": "heartbeat", "timestamp": 1})),
        )
        .await,
    ));
    assert_eq!(heartbeat["type"], "heartbeat_ack", "{heartbeat}");
    let ack = answer(response(
        invoke(
            &runtime,
            event(json!({"type": "message", "client_message_id": "c1", "idempotency_key": "k1",
                         "payload": {"conversation_id": conversation_id, "content": messaging::e2ee::Envelope::opaque("hello"), "type": "text", "timestamp": 1}})),
        )
        .await,
    ));
    assert_eq!(ack["type"], "message_ack", "{ack}");
    assert_eq!(ack["payload"]["sequence_number"], 1);
    let deadline = std::time::Instant::now() + WAIT;
    let entry = loop {
        if let Some(e) = deployment
            .put_events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e["DetailType"] == "messaging.message.received")
            .cloned()
        {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no PutEvents entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entry["EventBusName"], "test-eventbus");

    // store, with the EventBridge event that entry becomes: the message reaches bob's socket.
    let runtime = RuntimeApi::start().await;
    let _store_fn = deployment
        .start(&template, "StoreFunction", "store", &runtime)
        .await;
    let detail: Value = serde_json::from_str(entry["Detail"].as_str().unwrap()).unwrap();
    let answer = response(invoke(&runtime, envelope(detail.clone())).await);
    assert!(answer.is_null(), "{answer}");
    let delivered = frame(&mut bob_ws, "message").await;
    assert_eq!(
        messaging::e2ee::Envelope::opaque_marker(delivered["payload"]["content"].as_str().unwrap())
            .as_deref(),
        Some("hello")
    );
    // A permanent failure (data that is not a message) is dead-lettered at once.
    let mut broken = detail.clone();
    broken["id"] = json!("other-id");
    broken["data"] = json!({"message_id": "other-id"});
    let answer = response(invoke(&runtime, envelope(broken)).await);
    assert!(answer["dead_letter"].is_string(), "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    // A malformed event too, and the process answers the next one.
    let answer = response(invoke(&runtime, json!({"not": "an event"})).await);
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    // The scheduler's outbox sweep.
    let sweep = json!({"specversion": "1.0", "id": "sched-1", "type": "messaging.outbox.sweep", "source": "/aws/scheduler", "data": {}});
    assert!(response(invoke(&runtime, sweep).await).is_null());
    // The scheduler's connections sweep: these connections connected (connectedAt) long over 2
    // hours ago, so each is told to migrate to the API's public address.
    let sweep = json!({"specversion": "1.0", "id": "sched-3", "type": "messaging.connections.sweep", "source": "/aws/scheduler", "data": {}});
    assert!(response(invoke(&runtime, sweep).await).is_null());
    let migration = frame(&mut bob_ws, "migration").await;
    assert_eq!(migration["payload"]["reason"], "lifetime", "{migration}");
    let endpoint = migration["payload"]["new_endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("wss://"), "{migration}");
    assert!(
        migration["payload"].get("session_token").is_none(),
        "{migration}"
    );
    // Told once: the next sweep leaves them alone.
    let sweep = json!({"specversion": "1.0", "id": "sched-4", "type": "messaging.connections.sweep", "source": "/aws/scheduler", "data": {}});
    assert!(response(invoke(&runtime, sweep).await).is_null());

    // agent-response and its sweep; push with its notification.
    let runtime = RuntimeApi::start().await;
    let _agents = deployment
        .start(
            &template,
            "AgentResponseFunction",
            "agent-response",
            &runtime,
        )
        .await;
    let sweep = json!({"specversion": "1.0", "id": "sched-2", "type": "messaging.agent.sweep", "source": "/aws/scheduler", "data": {}});
    assert!(response(invoke(&runtime, sweep).await).is_null());
    let runtime = RuntimeApi::start().await;
    let _push = deployment
        .start(&template, "PushFunction", "push", &runtime)
        .await;
    let note = json!({"specversion": "1.0", "id": "n1", "type": "messaging.notification", "source": "/messaging",
                      "datacontenttype": "application/json",
                      "data": {"user_id": bob, "conversation_id": conversation_id, "message_id": "m",
                               "sender_id": alice, "message_type": "text", "badge": 1}});
    assert!(response(invoke(&runtime, envelope(note)).await).is_null());

    // $disconnect.
    let runtime = RuntimeApi::start().await;
    let _disconnect = deployment
        .start(&template, "DisconnectFunction", "disconnect", &runtime)
        .await;
    let mut gone = context(
        "$disconnect",
        "DISCONNECT",
        &bob_conn,
        Some((&bob, "phone")),
    );
    gone["disconnectStatusCode"] = json!(1000);
    let answer = response(invoke(&runtime, json!({"requestContext": gone})).await);
    assert_eq!(answer["statusCode"], 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_functions_answer_http_api_payload_2_events() {
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    let http_event = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut headers = json!({"content-type": "application/json", "host": "api.test"});
        if let Some(t) = token {
            headers["authorization"] = json!(format!("Bearer {t}"));
        }
        json!({
            "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": headers,
            "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.test",
                "domainPrefix": "api", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1", "userAgent": "test"}, "requestId": "r", "routeKey": "$default",
                "stage": "$default", "time": "27/Nov/2026:00:00:00 +0000", "timeEpoch": 1_800_000_000_000i64},
            "body": body.map(|b| b.to_string()), "isBase64Encoded": false,
        })
    };
    let runtime = RuntimeApi::start().await;
    let _api = deployment
        .start(&template, "ApiFunction", "api", &runtime)
        .await;
    let answer = response(invoke(&runtime, http_event("GET", "/openapi.json", None, None)).await);
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let document: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    // The operator key from the secret works.
    let mut register = http_event(
        "POST",
        "/v1/agents",
        None,
        Some(json!({"agent_id": "helper", "name": "Helper"})),
    );
    register["headers"]["x-operator-key"] = json!(OPERATOR_KEY);
    let answer = response(invoke(&runtime, register).await);
    assert_eq!(answer["statusCode"], 201, "{answer}");

    // presign: an upload URL for a conversation of the caller, usable against S3.
    let store = deployment.store().await;
    use messaging::store::ConversationStore;
    let user = testkit::unique_name("carol");
    let conversation_id = uuid::Uuid::new_v4().to_string();
    store
        .insert_conversation(&messaging::model::Conversation::new(
            conversation_id.clone(),
            messaging::model::ConversationKind::Direct,
            vec![user.clone(), "someone".into()],
        ))
        .await
        .unwrap();
    let runtime = RuntimeApi::start().await;
    let _presign = deployment
        .start(&template, "PresignFunction", "presign", &runtime)
        .await;
    let token = deployment.token(&user);
    let answer = response(
        invoke(
            &runtime,
            http_event(
                "POST",
                "/v1/media",
                Some(&token),
                Some(json!({"conversation_id": conversation_id,
                "message_type": "document", "content_type": "application/pdf", "size_bytes": 5})),
            ),
        )
        .await,
    );
    assert_eq!(answer["statusCode"], 201, "{answer}");
    let upload: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    let url = upload["upload"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{upload}"));
    assert!(url.starts_with(&deployment.s3_url), "{url}");
    let mut put = reqwest::Client::new().put(url).body("%PDF-");
    if let Some(headers) = upload["upload"]["headers"].as_object() {
        for (k, v) in headers {
            put = put.header(k, v.as_str().unwrap());
        }
    }
    let response = put.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "the presigned PUT: {status} {body}\n{upload}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_is_reported_and_exits_cleanly_and_an_unreachable_mongodb_is_an_answer() {
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    for (missing, expected) in [
        ("REDIS_URL", "invalid_configuration"),
        ("WEBSOCKET_MANAGEMENT_ENDPOINT", "invalid_configuration"),
    ] {
        let runtime = RuntimeApi::start().await;
        let mut env = deployment.lambda_env(&template, "ConnectFunction", &runtime);
        env.remove(missing);
        let mut process = Function::start("connect", &env, &deployment.logs);
        let status = process.wait_exit(WAIT).await.expect("it exits");
        assert_eq!(status.code(), Some(1));
        let error = runtime
            .init_error()
            .expect("reported to /runtime/init/error");
        assert_eq!(error.error_type, expected);
        assert!(error.message.contains(missing), "{error:?}");
        assert!(
            !process.output().contains("panicked"),
            "{}",
            process.output()
        );
    }
    // An unreachable MongoDB does not fail the start (the schema check runs beside it): the
    // first event that needs MongoDB gets a typed `unavailable` within the deadline, without a
    // panic, and the function keeps serving.
    let runtime = RuntimeApi::start().await;
    let mut env = deployment.lambda_env(&template, "StoreFunction", &runtime);
    env.insert(
        "MONGODB_URI".into(),
        "mongodb://127.0.0.1:9/?directConnection=true".into(),
    );
    env.insert("MONGODB_TIMEOUT_MS".into(), "500".into());
    let process = Function::start("store", &env, &deployment.logs);
    let body = expect_error(
        &runtime,
        outbox_sweep("sweep-unreachable"),
        &process,
        "unreachable MongoDB",
    )
    .await;
    assert!(body.to_string().contains("mongodb"), "{body}");
    assert!(runtime.init_error().is_none());
    assert!(
        !process.output().contains("panicked"),
        "{}",
        process.output()
    );
}

/// The MongoDB adapter on database `name` of the deployment's server (not migrated by this).
async fn store_of(deployment: &Deployment, name: &str) -> messaging::store::MongoStore {
    let uri = deployment.values.secrets["MONGODB_URI"].replace(&deployment.database, name);
    messaging::store::MongoStore::connect(&uri, name, messaging::store::StoreOptions::default())
        .await
        .unwrap()
}

/// The scheduled `messaging.outbox.sweep` event, as EventBridge Scheduler delivers it.
fn outbox_sweep(id: &str) -> Value {
    json!({"version": "0", "id": id, "detail-type": "messaging.outbox.sweep",
        "source": "aws.scheduler", "account": "123456789012", "time": "2026-11-27T00:00:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {"specversion": "1.0", "id": id, "type": "messaging.outbox.sweep",
                   "source": "/aws/scheduler", "data": {}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_knative_service_starts_with_its_manifest_environment() {
    let deployment = Deployment::new().await;
    let services = knative_services(&root().join("infra/knative/base"), &deployment.values)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        services.len() >= 9,
        "{:?}",
        services.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let ours = [
        "authorizer",
        "connect",
        "message",
        "disconnect",
        "store",
        "agent-response",
        "push",
        "api",
        "presign",
    ];
    // The migrate Job runs once, on a database nobody migrated, and makes it usable.
    let job = services
        .iter()
        .find(|s| s.binary == "migrate")
        .expect("the migrate Job");
    let fresh = testkit::unique_name("knative-fresh");
    let mut env = job.env.clone();
    env.insert("MONGODB_DATABASE".into(), fresh.clone());
    let mut process = Function::start(&job.binary, &env, &deployment.logs);
    let status = process.wait_exit(WAIT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the migrate Job failed ({status:?}):\n{}",
        process.output()
    );
    let migrated = messaging::store::MongoStore::connect(
        &deployment.values.secrets["MONGODB_URI"],
        &fresh,
        messaging::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    migrated.check_schema().await.unwrap();

    for service in services
        .iter()
        .filter(|s| ours.contains(&s.binary.as_str()))
    {
        let mut env = service.env.clone();
        // What the cluster resolves: the Broker and the gateway, by their in-cluster names.
        env.insert("BROKER_URL".into(), deployment.eventbridge_url.clone());
        env.insert(
            "WEBSOCKET_MANAGEMENT_ENDPOINT".into(),
            deployment.management_url.clone(),
        );
        // The manifests' MONGODB_DATABASE is `messaging`; keep this test's data apart.
        env.insert("MONGODB_DATABASE".into(), deployment.database.clone());
        // A free port can be taken by someone else before the service binds it (an outgoing
        // connection gets an ephemeral port too): then start again on another.
        let mut attempts = 0;
        'start: loop {
            attempts += 1;
            let port = testkit::free_port();
            env.insert("PORT".into(), port.to_string());
            let mut process = Function::start(&service.binary, &env, &deployment.logs);
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
                    && r.status() == 200
                {
                    break 'start;
                }
                if let Some(status) = process.exited() {
                    let output = process.output();
                    if output.contains("Address already in use") && attempts < 3 {
                        continue 'start;
                    }
                    panic!(
                        "Knative service {} ({}) exited with {status}:\n{output}",
                        service.name, service.binary,
                    );
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never became healthy:\n{}",
                    service.name,
                    process.output()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What CloudFormation received: each PUT's content type and JSON body.
type Answers = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// CloudFormation's side of a custom resource: a presigned `ResponseURL` that records the PUTs.
async fn response_url(answers: Answers) -> String {
    let router = axum::Router::new().route(
        "/cfn-response",
        axum::routing::put(move |headers: axum::http::HeaderMap, body: String| {
            let answers = answers.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                answers.lock().unwrap().push((
                    content_type,
                    serde_json::from_str(&body).unwrap_or(Value::Null),
                ));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/cfn-response?X-Amz-Signature=test",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

fn custom_resource_event(request_type: &str, url: &str) -> Value {
    let mut event = json!({
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:MigrateFunction",
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/messaging/guid",
        "RequestId": uuid::Uuid::new_v4().to_string(),
        "ResourceType": "Custom::SchemaMigration",
        "LogicalResourceId": "SchemaMigration",
        "ResourceProperties": {"ServiceToken": "arn", "SchemaVersion": "1", "Database": "x"},
    });
    if request_type != "Create" {
        event["PhysicalResourceId"] = "messaging-schema-x".into();
        event["OldResourceProperties"] = event["ResourceProperties"].clone();
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_migration_answers_cloudformation_as_a_custom_resource() {
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let url = response_url(answers.clone()).await;

    // A database nobody migrated yet: the functions refuse it, the migration makes it usable.
    let fresh = testkit::unique_name("deploy-fresh");
    let store = store_of(&deployment, &fresh).await;
    assert!(store.check_schema().await.is_err());
    let runtime = RuntimeApi::start().await;
    let mut env = deployment.lambda_env(&template, "MigrateFunction", &runtime);
    env.insert("MONGODB_DATABASE".into(), fresh.clone());
    let _process = Function::start("migrate", &env, &deployment.logs);
    for request_type in ["Create", "Update"] {
        let outcome = invoke(&runtime, custom_resource_event(request_type, &url)).await;
        assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
        let (content_type, answer) = answers
            .lock()
            .unwrap()
            .pop()
            .expect("an answer to CloudFormation");
        // The presigned URL is signed without a content type: sending one would be refused.
        assert_eq!(content_type, None);
        assert_eq!(answer["Status"], "SUCCESS", "{answer}");
        assert_eq!(answer["LogicalResourceId"], "SchemaMigration");
        assert_eq!(
            answer["PhysicalResourceId"],
            format!("messaging-schema-{fresh}")
        );
        assert_eq!(
            answer["Data"]["SchemaVersion"],
            messaging::store::SCHEMA_VERSION.to_string()
        );
    }
    store.check_schema().await.unwrap();
    // Deleting the stack keeps the data.
    let outcome = invoke(&runtime, custom_resource_event("Delete", &url)).await;
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
    assert_eq!(
        answers.lock().unwrap().pop().unwrap().1["Status"],
        "SUCCESS"
    );
    store.check_schema().await.unwrap();

    // A migration that cannot reach MongoDB fails the deployment with the reason, in time.
    let runtime = RuntimeApi::start().await;
    let mut env = deployment.lambda_env(&template, "MigrateFunction", &runtime);
    env.insert(
        "MONGODB_URI".into(),
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true",
            testkit::free_port()
        ),
    );
    env.insert("MONGODB_TIMEOUT_MS".into(), "500".into());
    let _failing = Function::start("migrate", &env, &deployment.logs);
    let outcome = invoke(&runtime, custom_resource_event("Create", &url)).await;
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
    let answer = answers.lock().unwrap().pop().unwrap().1;
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    assert!(!answer["Reason"].as_str().unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_on_a_database_never_migrated_refuses_every_operation_saying_what_to_run() {
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    let runtime = RuntimeApi::start().await;
    let mut env = deployment.lambda_env(&template, "StoreFunction", &runtime);
    let fresh = testkit::unique_name("deploy-unmigrated");
    env.insert("MONGODB_DATABASE".into(), fresh.clone());
    let process = Function::start("store", &env, &deployment.logs);
    // The schema check runs beside the start (a cold start does not wait for MongoDB's
    // handshakes); the first event that needs MongoDB gets its answer.
    let body = expect_error(
        &runtime,
        outbox_sweep("sweep-1"),
        &process,
        "an unmigrated database",
    )
    .await;
    let text = body.to_string();
    assert!(text.contains(&fresh) && text.contains("migrat"), "{text}");
    assert!(
        runtime.init_error().is_none(),
        "the start itself did not fail"
    );
    // Once the migration has run, the same process works: a failed check is not kept.
    let store = store_of(&deployment, &fresh).await;
    store.migrate().await.unwrap();
    let outcome = invoke(&runtime, outbox_sweep("sweep-2")).await;
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}");
}
