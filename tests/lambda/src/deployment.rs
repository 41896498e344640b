//! What a deployment provides, stood in for on one machine: a MongoDB database with the schema
//! migrated, the secrets and parameters the SAM template needs, an emulated WebSocket API the
//! functions post to, a PutEvents endpoint, S3; and the Lambda environment of each function
//! (the template's, plus what Lambda itself sets). Used by the deployment suite and by the
//! `cold-start` measurement.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::Function;
use crate::runtime_api::RuntimeApi;
use crate::template::{SamTemplate, Values};

/// A WebSocket client of the emulated API.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The HS256 secret the deployment's functions verify tokens with.
pub const SECRET: &str = "deployment-test-secret-deployment-test";
/// The operator key of the agent registry.
pub const OPERATOR_KEY: &str = "operator-key-0123456789";
/// How long anything may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test's stand-ins for what a deployment provides.
pub struct Deployment {
    /// values.
    pub values: Values,
    /// api.
    pub api: Arc<local_stack::gateway::WebSocketApi>,
    /// management url.
    pub management_url: String,
    /// ws url.
    pub ws_url: String,
    /// eventbridge url.
    pub eventbridge_url: String,
    /// put events.
    pub put_events: Arc<Mutex<Vec<Value>>>,
    /// s3 url.
    pub s3_url: String,
    /// logs.
    pub logs: PathBuf,
    /// database.
    pub database: String,
}

/// A PutEvents endpoint (the EventBridge JSON 1.1 protocol) that records the entries.
async fn eventbridge(entries: Arc<Mutex<Vec<Value>>>) -> String {
    let router = axum::Router::new().route(
        "/",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let entries = entries.clone();
            async move {
                assert_eq!(
                    headers.get("x-amz-target").and_then(|v| v.to_str().ok()),
                    Some("AWSEvents.PutEvents")
                );
                let request: Value = serde_json::from_str(&body).unwrap_or_default();
                let list = request["Entries"].as_array().cloned().unwrap_or_default();
                let n = list.len();
                entries.lock().unwrap().extend(list);
                let ids: Vec<Value> = (0..n)
                    .map(|i| json!({"EventId": format!("e{i}")}))
                    .collect();
                (
                    [("content-type", "application/x-amz-json-1.1")],
                    json!({"FailedEntryCount": 0, "Entries": ids}).to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

impl Deployment {
    /// Test stand-ins for what a deployment provides (MongoDB database, secrets, the WebSocket
    /// API, EventBridge, S3), on the harness's servers.
    pub async fn new() -> Self {
        let servers = testkit::servers();
        let database = testkit::unique_name("deploy");
        let mongodb_uri = servers.mongodb_uri.replace("/?", &format!("/{database}?"));
        let secrets: HashMap<String, String> = [
            ("MONGODB_URI", mongodb_uri.clone()),
            ("REDIS_URL", servers.redis_url.clone()),
            ("JWT_HS256_SECRET", SECRET.to_string()),
            ("OPERATOR_KEY", OPERATOR_KEY.to_string()),
            ("CODE_SENDER_TOKEN", "code-sender-token".to_string()),
            ("CODE_SENDER_URL", "https://codes.invalid/send".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // CloudFormation ran the SchemaMigration custom resource before any function (they
        // depend on it); the migration's own path is tested below.
        messaging::store::MongoStore::connect(
            &mongodb_uri,
            &database,
            messaging::store::StoreOptions::default(),
        )
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
        let parameters: HashMap<String, String> = [
            ("CodeSenderUrl", "https://codes.invalid/send"),
            ("MongoDbDatabase", database.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // The WebSocket API the functions post to, with plain routes: the functions under test
        // are reached through the Runtime API, not through it.
        let mut routes = HashMap::new();
        for key in ["$connect", "$disconnect", "$default"] {
            routes.insert(
                key.to_string(),
                local_stack::gateway::Route {
                    function: "test".into(),
                    handler: Arc::new(
                        |_e: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest| async {
                            messaging::websocket::ok()
                        },
                    ),
                    route_response: false,
                },
            );
        }
        let api = local_stack::gateway::WebSocketApi::new(
            local_stack::gateway::ApiSettings::default(),
            routes,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        api.set_domain(address.to_string());
        let router = api.clone().router();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
        });
        let put_events = Arc::new(Mutex::new(Vec::new()));
        let eventbridge_url = eventbridge(put_events.clone()).await;
        let logs = std::env::temp_dir().join(testkit::unique_name("deploy-logs"));
        std::fs::create_dir_all(&logs).unwrap();
        let s3_dir = logs.join("s3");
        let s3 = local_stack::s3::router(&s3_dir, &["test-mediabucket", "test-documentsbucket"])
            .expect("s3");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s3_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, s3).await;
        });
        Self {
            values: Values {
                parameters,
                secrets,
            },
            api,
            management_url: format!("http://{address}"),
            ws_url: format!("ws://{address}"),
            eventbridge_url,
            put_events,
            s3_url,
            logs,
            database,
        }
    }

    /// What Lambda gives every function, plus the endpoints a deployment resolves itself.
    /// What Lambda gives `function`: the template's environment, plus the endpoints a
    /// deployment resolves itself.
    pub fn lambda_env(
        &self,
        template: &SamTemplate,
        function: &str,
        runtime: &RuntimeApi,
    ) -> BTreeMap<String, String> {
        let mut env = template
            .environment(function, &self.values)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            env.contains_key("WEBSOCKET_MANAGEMENT_ENDPOINT") || function == "AuthorizerFunction",
            "{function}: no @connections endpoint in the template"
        );
        env.insert(
            "WEBSOCKET_MANAGEMENT_ENDPOINT".into(),
            self.management_url.clone(),
        );
        for (k, v) in [
            ("AWS_LAMBDA_RUNTIME_API", runtime.address().to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.to_string()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function}"),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/11/27/[$LATEST]test".into(),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "local".into()),
            ("AWS_SECRET_ACCESS_KEY", "local-secret-key".into()),
            ("AWS_SESSION_TOKEN", "session".into()),
            ("_HANDLER", "bootstrap".into()),
            ("AWS_ENDPOINT_URL_EVENTBRIDGE", self.eventbridge_url.clone()),
            ("AWS_ENDPOINT_URL_S3", self.s3_url.clone()),
        ] {
            env.insert(k.into(), v);
        }
        env
    }

    /// Starts `function` under `runtime` and waits until it polls for work.
    pub async fn start(
        &self,
        template: &SamTemplate,
        function: &str,
        binary: &str,
        runtime: &RuntimeApi,
    ) -> Function {
        let env = self.lambda_env(template, function, runtime);
        let mut process = Function::start(binary, &env, &self.logs);
        let deadline = std::time::Instant::now() + WAIT;
        while runtime.polls() == 0 {
            if let Some(error) = runtime.init_error() {
                panic!(
                    "{function} ({binary}) failed to start: {error:?}\n{}",
                    process.output()
                );
            }
            if let Some(status) = process.exited() {
                panic!(
                    "{function} ({binary}) exited with {status}:\n{}",
                    process.output()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{function} never asked for work:\n{}",
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// A token for `user`.
    pub fn token(&self, user: &str) -> String {
        messaging::auth::JwtIssuer::hs256(SECRET.as_bytes(), "messaging", "messaging-clients")
            .issue(user, Duration::from_secs(3600))
            .unwrap()
    }

    /// The deployment's database.
    pub async fn store(&self) -> messaging::store::MongoStore {
        messaging::store::MongoStore::connect(
            &self.values.secrets["MONGODB_URI"],
            &self.database,
            messaging::store::StoreOptions::default(),
        )
        .await
        .unwrap()
    }

    /// A WebSocket client of the emulated API and its connection id.
    pub async fn socket(&self) -> (Ws, String) {
        let before: Vec<String> = self.api.connection_ids();
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}/", self.ws_url))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(id) = self
                .api
                .connection_ids()
                .into_iter()
                .find(|id| !before.contains(id))
            {
                return (ws, id);
            }
            assert!(std::time::Instant::now() < deadline, "no connection id");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
