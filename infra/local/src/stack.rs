//! Wires the real functions to the emulated endpoints and starts everything.
//!
//! The functions get exactly the adapters they get on AWS, pointed elsewhere: the gateway adapter
//! (SigV4-signed `@connections` calls) talks to the emulated management API over HTTP, the events
//! adapter posts CloudEvents to the broker's ingress over HTTP, Redis and MongoDB are real
//! servers. The broker calls the store and agent-response functions in-process and the demo
//! agent over HTTP, the way Knative would.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudevents::Event;
use messaging::auth::{JwtConfig, JwtIssuer, JwtVerifier};
use messaging::context::{Context, Settings};
use messaging::events::HttpBroker;
use messaging::gateway::ApiGatewayManagement;
use messaging::model::event_types;
use messaging::realtime::RedisState;
use messaging::store::{MongoStore, StoreOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::agent::{DEMO_AGENT_DEVICE, DEMO_AGENT_ID, DemoAgent, PLAIN_DEMO_AGENT_ID};
use crate::broker::{
    BackoffPolicy, Broker, BrokerConfig, DeliverySpec, EventHandler, Filter, HandlerError, Trigger,
};
use crate::functions::{Sandboxes, function};
use crate::gateway::{ApiSettings, Route, WebSocketApi};
use messaging::e2ee::AgentDevice;

pub use crate::instance::{JWT_AUDIENCE, JWT_ISSUER};

/// Everything the stack needs to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Address to listen on (loopback by default).
    pub host: IpAddr,
    /// WebSocket API and management API port (0: any free port).
    pub ws_port: u16,
    /// Broker ingress port.
    pub broker_port: u16,
    /// S3 port.
    pub s3_port: u16,
    /// Demo agent port.
    pub agent_port: u16,
    /// HTTP API port (the api function).
    pub api_port: u16,
    /// Serve the WebSocket route integrations over HTTP on this port (`POST
    /// /integrations/{route}`), so `local-stack gateway` replicas can run in front of this
    /// stack's functions (see [`crate::replicas`]). `None`: not served.
    pub functions_port: Option<u16>,
    /// Serve the web client (see [`crate::web`]) on this port, from [`StackConfig::web_root`].
    /// `None`: not served.
    pub web_port: Option<u16>,
    /// Where the built web client is (`scripts/build-web`).
    pub web_root: PathBuf,
    /// The WebSocket address the web client is told to use, when not this stack's own (gateway
    /// replicas in front of it, a load balancer).
    pub web_ws_url: Option<String>,
    /// Operator key of the agent registry (`X-Operator-Key`).
    pub operator_key: Option<String>,
    /// Redis.
    pub redis_url: String,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// MongoDB.
    pub mongodb_uri: String,
    /// MongoDB database.
    pub database: String,
    /// MongoDB adapter options (deadlines, retention, outbox grace).
    pub store: StoreOptions,
    /// Deadline of each Redis round trip.
    pub redis_timeout: Duration,
    /// Where S3 objects live.
    pub data_dir: PathBuf,
    /// HS256 secret of the stack's tokens.
    pub jwt_secret: String,
    /// WebSocket API settings (timeouts, route selection).
    pub api: ApiSettings,
    /// Function settings (limits, agent timeout).
    pub settings: Settings,
    /// More triggers (e.g. external agents), from TOML files.
    pub extra_triggers: Vec<PathBuf>,
    /// Run the functions in this many sandboxes, each a thread of its own with its own clients
    /// ([`crate::functions`]), so their CPU time is told from the emulators' (the `local-stack`
    /// binary, which `bench` measures). `None`: one sandbox on the caller's runtime (tests:
    /// fewer threads on a loaded machine).
    pub function_threads: Option<usize>,
    /// Run the demo agent.
    pub demo_agent: bool,
    /// How long the demo agent thinks before answering.
    pub agent_think: Duration,
    /// How often silent agents are looked for.
    pub sweep_interval: Duration,
    /// Retry delay of the built-in triggers.
    pub retry_delay: Duration,
}

impl StackConfig {
    /// Defaults for one machine: loopback, documented ports, given servers and data directory.
    pub fn new(
        redis_url: String,
        mongodb_uri: String,
        data_dir: PathBuf,
        jwt_secret: String,
    ) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ws_port: 8080,
            broker_port: 8081,
            s3_port: 8082,
            agent_port: 8083,
            api_port: 8084,
            functions_port: None,
            web_port: None,
            web_root: PathBuf::from(crate::web::DEFAULT_ROOT),
            web_ws_url: None,
            operator_key: Some("local-operator-key".into()),
            redis_url,
            redis_prefix: "msg:".into(),
            mongodb_uri,
            database: "messaging".into(),
            store: StoreOptions::default(),
            redis_timeout: messaging::realtime::DEFAULT_TIMEOUT,
            data_dir,
            jwt_secret,
            api: ApiSettings::default(),
            settings: Settings::default(),
            extra_triggers: Vec::new(),
            function_threads: None,
            demo_agent: true,
            agent_think: Duration::from_millis(300),
            sweep_interval: Duration::from_secs(1),
            retry_delay: Duration::from_millis(200),
        }
    }
}

/// A started stack. Dropping it stops every server task.
pub struct RunningStack {
    /// `ws://HOST:PORT` of the WebSocket API.
    pub ws_url: String,
    /// `http://HOST:PORT` of the management API (`/@connections/{id}`).
    pub management_url: String,
    /// Broker ingress.
    pub broker_url: String,
    /// S3 endpoint.
    pub s3_url: String,
    /// Demo agent endpoint, when it runs.
    pub agent_url: Option<String>,
    /// HTTP API (accounts, conversations, groups, agents; `/openapi.json`).
    pub api_url: String,
    /// The route integrations over HTTP (`{url}/integrations/{route}`), when served.
    pub functions_url: Option<String>,
    /// The web client, when served.
    pub web_url: Option<String>,
    /// The first sandbox's functions' context (tests use its store and realtime state).
    pub ctx: Context,
    /// The emulated WebSocket API.
    pub api: Arc<WebSocketApi>,
    /// The broker.
    pub broker: Arc<Broker>,
    /// Issues tokens the stack accepts.
    pub issuer: JwtIssuer,
    /// The configuration it was started with.
    pub config: StackConfig,
    /// The MongoDB adapter the functions use (tests read the outbox through it).
    pub mongo: MongoStore,
    tasks: Vec<JoinHandle<()>>,
    /// Stopped after the tasks that invoke them are aborted.
    functions: Arc<Sandboxes<FunctionDeps>>,
}

impl RunningStack {
    /// Waits until everything acknowledged so far has been fanned out: the broker has nothing in
    /// flight and every message still in the outbox has its fan-out recorded done (a message is
    /// published after its ack, so the broker alone can look idle before the event of the last
    /// ack is in; the outbox marks themselves are cleared later, by the sweep).
    pub async fn settled(&self) {
        use messaging::store::MessageStore;
        loop {
            self.broker.idle().await;
            // Every mark, however far its due time (a century ahead).
            let everything = mongodb::bson::DateTime::from_millis(
                messaging::clock::now_ms() + 100 * 365 * 24 * 3600 * 1000,
            );
            // A failed read is "not yet", never "settled".
            if let Ok(marked) = self.mongo.overdue_fanout_ids(everything, 1_000_000).await
                && let Ok(done) = self
                    .ctx
                    .realtime
                    .work_done(messaging::outbox::FANOUT_SCOPE, &marked)
                    .await
                && done.iter().all(|d| *d)
            {
                self.broker.idle().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RunningStack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // The routes and the broker hold the sandboxes too: their threads end now, not when
        // the last of those is dropped.
        self.functions.stop();
    }
}

struct Function<F>(F);

#[async_trait]
impl<F, Fut> EventHandler for Function<F>
where
    F: Fn(Event) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = messaging::Result<()>> + Send,
{
    async fn handle(&self, event: Event) -> Result<Option<Event>, HandlerError> {
        (self.0)(event).await.map(|()| None).map_err(|e| {
            if e.is_server_fault() {
                tracing::error!(error = %e, "function failed");
            }
            HandlerError {
                status: e.http_status(),
                message: e.to_string(),
                retry_after: e.retry_after().map(Duration::from_secs),
            }
        })
    }
}

fn trigger(name: &str, subscriber: &str, attributes: &[(&str, &str)], delay: Duration) -> Trigger {
    Trigger {
        name: name.into(),
        filter: Filter {
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            prefix: Default::default(),
        },
        subscriber: subscriber.into(),
        delivery: DeliverySpec {
            retry: 5,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay_ms: delay.as_millis() as u64,
            dead_letter_sink: None,
        },
    }
}

async fn serve(listener: TcpListener, router: axum::Router) -> JoinHandle<()> {
    use axum::serve::ListenerExt as _;
    // Nagle off, as on API Gateway's side: small frames written back to back (an echo, then
    // the ack) must not wait for the client's delayed TCP ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "server stopped");
        }
    })
}

/// What one sandbox's functions run with: their context (clients opened on the sandbox's
/// thread) and the functions built on it.
pub struct FunctionDeps {
    /// The functions' context.
    pub ctx: Context,
    /// The MongoDB adapter of that context, as itself (migrations, the outbox in tests).
    pub mongo: MongoStore,
    /// The push function.
    push: fn_push::Push,
    /// The api function's router.
    http_api: axum::Router,
    /// The presign function's router.
    presign: axum::Router,
}

/// A sandbox's [`FunctionDeps`], as an invocation gets them.
type Deps = Arc<FunctionDeps>;

/// What every sandbox's [`FunctionDeps`] are built from: the configuration as the functions'
/// environment would carry it on AWS.
struct Recipe {
    config: StackConfig,
    management_url: String,
    broker_url: String,
    s3_url: String,
    jwt: JwtConfig,
    settings: Settings,
    push_options: fn_push::PushOptions,
    api_options: fn_api::ApiOptions,
    presign_options: fn_presign::PresignOptions,
}

impl Recipe {
    /// Opens one sandbox's clients (on the sandbox's thread: their connection tasks run there)
    /// and builds its functions.
    async fn build(self: Arc<Self>) -> anyhow::Result<FunctionDeps> {
        let config = &self.config;
        // Its own AWS configuration too: the SDK's HTTP client (S3) lives in it.
        let aws = local_aws_config().await;
        let realtime = RedisState::connect_with_timeout(
            &config.redis_url,
            &config.redis_prefix,
            config.redis_timeout,
        )
        .await?;
        let store =
            MongoStore::connect(&config.mongodb_uri, &config.database, config.store.clone())
                .await?;
        let ctx = Context {
            realtime: Arc::new(realtime),
            store: Arc::new(store.clone()),
            gateway: Arc::new(ApiGatewayManagement::new(
                &aws,
                &self.management_url,
                messaging::config::DEFAULT_GATEWAY_TIMEOUT,
            )),
            events: Arc::new(HttpBroker::new(self.broker_url.clone())),
            jwt: JwtVerifier::new(&self.jwt)?,
            settings: self.settings.clone(),
            routing_memo: Arc::default(),
        };
        let mut api_options = self.api_options.clone();
        api_options.code_sender =
            Arc::new(fn_api::LocalCodeSender::new(Some(store.database().clone())));
        // Media presigning, against the local S3.
        let objects = Arc::new(messaging::objects::S3Objects::new(
            &aws,
            Some(&self.s3_url),
            true,
        ));
        Ok(FunctionDeps {
            push: fn_push::Push::new(ctx.clone(), self.push_options.clone()),
            http_api: fn_api::router(fn_api::Api::new(ctx.clone(), api_options)),
            presign: fn_presign::router(fn_presign::Presign::new(
                ctx.clone(),
                objects,
                self.presign_options.clone(),
            )),
            ctx,
            mongo: store,
        })
    }
}

/// Starts the stack.
pub async fn start(config: StackConfig) -> anyhow::Result<RunningStack> {
    let ws_listener = TcpListener::bind((config.host, config.ws_port)).await?;
    let broker_listener = TcpListener::bind((config.host, config.broker_port)).await?;
    let s3_listener = TcpListener::bind((config.host, config.s3_port)).await?;
    let api_listener = TcpListener::bind((config.host, config.api_port)).await?;
    let api_url = format!("http://{}", api_listener.local_addr()?);
    let ws_addr = ws_listener.local_addr()?;
    let broker_addr = broker_listener.local_addr()?;
    let s3_addr = s3_listener.local_addr()?;
    let management_url = format!("http://{ws_addr}");
    let broker_url = format!("http://{broker_addr}/");
    let s3_url = format!("http://{s3_addr}");

    // What every sandbox's functions are built from.
    let jwt = JwtConfig {
        hs256_secret: Some(config.jwt_secret.clone().into_bytes()),
        rs256_public_pem: None,
        issuer: JWT_ISSUER.into(),
        audience: JWT_AUDIENCE.into(),
        leeway: Duration::from_secs(30),
    };
    let settings = Settings {
        // The functions know the emulator's lifetime limit, as the template tells them API
        // Gateway's: the sweep migrates connections a quarter of it (at most the configured
        // notice) before the cut.
        connection_max_age: config.api.max_lifetime,
        migration_notice: config
            .settings
            .migration_notice
            .min(config.api.max_lifetime / 4),
        ..config.settings.clone()
    };
    // Push notifications: providers come from the environment (FCM_*, APNS_*, PUSH_WEBHOOK_*,
    // WEB_PUSH_*); devices of unconfigured providers are skipped with a warning. Web Push works
    // without configuration: the stack keeps a VAPID key in its data directory, and the web
    // client gets its public key in config.json (browsers then push through their own push
    // services, when the machine reaches them).
    let mut push_options = fn_push::PushOptions::from_source(&messaging::config::Env)?;
    let web_push = match &push_options.web_push {
        Some(options) => options.clone(),
        None => {
            let path = config.data_dir.join("vapid.pem");
            if !path.exists() {
                std::fs::create_dir_all(&config.data_dir)?;
                std::fs::write(&path, fn_push::webpush::generate_key())?;
            }
            fn_push::WebPushOptions {
                vapid_private_key_pem: std::fs::read_to_string(&path)?,
                subject: "mailto:developer@localhost.localdomain".into(),
            }
        }
    };
    let web_push_public_key = fn_push::webpush::public_key(&web_push.vapid_private_key_pem)
        .map_err(|e| anyhow::anyhow!("VAPID key: {e}"))?;
    push_options.web_push = Some(web_push);
    // The HTTP API: verification codes are printed and kept in MongoDB (`code_outbox`).
    let issuer = JwtIssuer::hs256(config.jwt_secret.as_bytes(), JWT_ISSUER, JWT_AUDIENCE);
    // Token lifetimes and rate limits from the same variables as on AWS (API_RATE_PER_MINUTE, ...).
    let mut api_options =
        fn_api::ApiOptions::new(issuer.clone()).with_limits_from(&messaging::config::Env)?;
    api_options.operator_key = config.operator_key.clone();
    let presign_options = fn_presign::PresignOptions::from_source(&messaging::config::Env)?;
    let recipe = Arc::new(Recipe {
        config: config.clone(),
        management_url: management_url.clone(),
        broker_url: broker_url.clone(),
        s3_url: s3_url.clone(),
        jwt,
        settings,
        push_options,
        api_options,
        presign_options,
    });
    // Each sandbox opens its own clients on its own thread, as each Lambda sandbox does.
    let functions = Sandboxes::start(config.function_threads, |_| recipe.clone().build()).await?;
    let ctx = functions.first().ctx.clone();
    let mongo = functions.first().mongo.clone();
    // The local stack is its own deploy step: it migrates the database as it starts.
    mongo.migrate().await?;
    let functions = Arc::new(functions);

    // The WebSocket API: $connect, $disconnect, and every frame type to the message function.
    let mut routes = HashMap::new();
    let route = |function: &str, handler: Arc<dyn crate::gateway::RouteHandler>| Route {
        function: function.into(),
        handler,
        route_response: false,
    };
    routes.insert(
        "$connect".to_string(),
        route(
            "connect",
            Arc::new(function(&functions, |d: Deps, e| async move {
                fn_connect::handle(&d.ctx, e).await
            })),
        ),
    );
    routes.insert(
        "$disconnect".to_string(),
        route(
            "disconnect",
            Arc::new(function(&functions, |d: Deps, e| async move {
                fn_disconnect::handle(&d.ctx, e).await
            })),
        ),
    );
    let message: Arc<dyn crate::gateway::RouteHandler> =
        Arc::new(function(&functions, |d: Deps, e| async move {
            fn_message::handle(&d.ctx, e).await
        }));
    // Two-way routes, as infra/aws/template.yaml configures them: the function's answer frame
    // (`message_ack`, `heartbeat_ack`, an `error`) is its response body.
    for key in std::iter::once("$default").chain(messaging::protocol::ClientFrame::KINDS) {
        routes.insert(
            key.to_string(),
            Route {
                route_response: true,
                ..route("message", message.clone())
            },
        );
    }
    // The `$connect` authorizer, as on AWS: its context rides on every event of the connection.
    let authorizer: crate::authorizer::SharedAuthorizer = Arc::new(function(
        &functions,
        |d: Deps, event: serde_json::Value| async move {
            let request: messaging::identity::AuthorizerRequest =
                serde_json::from_value(event).map_err(|e| e.to_string())?;
            fn_connect::authorizer::handle(&d.ctx.jwt, &request)
                .map(|policy| serde_json::to_value(policy).unwrap_or_default())
                .map_err(|refusal| refusal.to_string())
        },
    ));
    let api = WebSocketApi::with_authorizer(config.api.clone(), routes, Some(authorizer));
    api.set_domain(ws_addr.to_string());
    // One replica of the edge: gateways started with `local-stack gateway` on the same Redis
    // join it, and the functions' management calls reach their connections through this one.
    api.join(
        &config.redis_url,
        &config.redis_prefix,
        &management_url,
        &format!("ws://{ws_addr}"),
        None,
    )
    .await?;

    // The broker: built-in triggers, then the operator's.
    let mut subscribers: HashMap<String, Arc<dyn EventHandler>> = HashMap::new();
    subscribers.insert(
        "store".into(),
        Arc::new(Function(function(&functions, |d: Deps, e| async move {
            fn_store::handle(&d.ctx, e).await.map(|_| ())
        }))),
    );
    subscribers.insert(
        "agent-response".into(),
        Arc::new(Function(function(&functions, |d: Deps, e| async move {
            fn_agent_response::handle(&d.ctx, e).await
        }))),
    );
    subscribers.insert(
        "push".into(),
        Arc::new(Function(function(&functions, |d: Deps, e| async move {
            fn_push::handle(&d.push, e).await
        }))),
    );
    let delay = config.retry_delay;
    let mut triggers = vec![
        trigger(
            "store",
            "fn:store",
            &[("type", event_types::MESSAGE_RECEIVED)],
            delay,
        ),
        trigger(
            "agent-response",
            "fn:agent-response",
            &[("type", event_types::AGENT_RESPONSE)],
            delay,
        ),
        trigger(
            "agent-progress",
            "fn:agent-response",
            &[("type", event_types::AGENT_PROGRESS)],
            delay,
        ),
        trigger(
            "agent-delta",
            "fn:agent-response",
            &[("type", event_types::AGENT_DELTA)],
            delay,
        ),
        trigger(
            "push",
            "fn:push",
            &[("type", event_types::NOTIFICATION)],
            delay,
        ),
    ];
    let mut agent_listeners = Vec::new();
    let mut agent_url = None;
    if config.demo_agent {
        // The encrypted demo agent on the configured port, the one without keys beside it.
        for (agent_id, port) in [(DEMO_AGENT_ID, config.agent_port), (PLAIN_DEMO_AGENT_ID, 0)] {
            let listener = TcpListener::bind((config.host, port)).await?;
            let url = format!("http://{}/", listener.local_addr()?);
            for (name, ty) in [
                (agent_id.to_string(), event_types::MESSAGE_RECEIVED),
                (format!("{agent_id}-cancel"), event_types::AGENT_CANCEL),
            ] {
                triggers.push(trigger(
                    &name,
                    &url,
                    &[("type", ty), (event_types::AGENT_ID_EXTENSION, agent_id)],
                    delay,
                ));
            }
            if agent_id == DEMO_AGENT_ID {
                agent_url = Some(url);
            }
            agent_listeners.push((agent_id, listener));
        }
    }
    let mut broker_config = BrokerConfig {
        triggers,
        dead_letter_sink: None,
    };
    for path in &config.extra_triggers {
        let extra = BrokerConfig::load(path)?;
        broker_config.triggers.extend(extra.triggers);
        if extra.dead_letter_sink.is_some() {
            broker_config.dead_letter_sink = extra.dead_letter_sink;
        }
    }
    broker_config.validate()?;
    // Accepted events survive a restart: delivered again when the stack comes back.
    let journal = crate::journal::Journal::open(&config.data_dir.join("broker"))?;
    let broker = Broker::with_journal(broker_config, subscribers, journal);

    // One HTTP API, two functions, split by route as API Gateway would: `/v1/media...` to
    // presign, the rest to api.
    let api_function: Arc<dyn crate::http_api::HttpFunction> = Arc::new(function(
        &functions,
        |d: Deps, request: lambda_http::Request| async move {
            provision_local_user(&d.ctx, &request).await;
            let path = request.uri().path();
            if path == "/v1/media" || path.starts_with("/v1/media/") {
                fn_presign::handle(&d.presign, request).await
            } else {
                fn_api::handle(&d.http_api, request).await
            }
        },
    ));

    let mut tasks = vec![
        serve(api_listener, crate::http_api::router("api", api_function)).await,
        serve(ws_listener, api.clone().router()).await,
        serve(
            broker_listener,
            broker.clone().router().merge(
                axum::Router::new()
                    .route("/metrics", axum::routing::get(metrics))
                    .with_state(api.clone()),
            ),
        )
        .await,
        serve(
            s3_listener,
            crate::s3::router(
                &config.data_dir.join("s3"),
                &["messaging-media", "messaging-documents"],
            )?,
        )
        .await,
    ];
    let mut functions_url = None;
    if let Some(port) = config.functions_port {
        let listener = TcpListener::bind((config.host, port)).await?;
        functions_url = Some(format!("http://{}", listener.local_addr()?));
        tasks.push(serve(listener, api.clone().integrations_router()).await);
    }
    let mut web_url = None;
    if let Some(port) = config.web_port {
        let listener = TcpListener::bind((config.host, port)).await?;
        web_url = Some(format!("http://{}", listener.local_addr()?));
        let client_config = serde_json::json!({
            "api_url": api_url,
            "ws_url": config.web_ws_url.clone().unwrap_or_else(|| format!("ws://{ws_addr}")),
            "local": true,
            "web_push_public_key": web_push_public_key,
        });
        tasks.push(
            serve(
                listener,
                crate::web::router(&config.web_root, client_config, mongo.database().clone()),
            )
            .await,
        );
    }
    for (agent_id, listener) in agent_listeners {
        ctx.store
            .upsert_agent(&DemoAgent::registry_entry(agent_id))
            .await?;
        let device = if agent_id == DEMO_AGENT_ID {
            Some(demo_agent_device(&config, &issuer, &api_url).await?)
        } else {
            None
        };
        tasks.push(
            serve(
                listener,
                DemoAgent::router(agent_id, &broker_url, device, config.agent_think),
            )
            .await,
        );
        let store = ctx.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(30));
            loop {
                beat.tick().await;
                let _ = store
                    .touch_agent(agent_id, mongodb::bson::DateTime::now())
                    .await;
            }
        }));
    }
    // The schedules: silent agents (AWS: an EventBridge schedule to agent-response), the outbox
    // and connections nearing their lifetime (AWS: EventBridge schedules to store).
    // Each tick is an invocation, as a schedule's event is on AWS: it takes its turn in the
    // sandboxes with the rest.
    let (f, every) = (functions.clone(), config.sweep_interval);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            f.invoke(|d| async move { sweep(&d.ctx).await }).await;
        }
    }));

    // Everything is listening: deliver what a previous run accepted and did not finish.
    broker.recover().await;

    Ok(RunningStack {
        ws_url: format!("ws://{ws_addr}"),
        management_url,
        broker_url,
        s3_url,
        agent_url,
        ctx,
        api,
        broker,
        api_url,
        functions_url,
        web_url,
        issuer,
        config,
        mongo,
        tasks,
        functions,
    })
}

/// The encrypted demo agent's device: keys published through the stack's own HTTP API (which
/// is serving by now) with an agent token, state kept under the data directory and encrypted
/// with a key derived from the stack's secret.
async fn demo_agent_device(
    config: &StackConfig,
    issuer: &JwtIssuer,
    api_url: &str,
) -> anyhow::Result<AgentDevice> {
    let token = issuer.issue(DEMO_AGENT_ID, Duration::from_secs(10 * 365 * 24 * 3600))?;
    let dir = config.data_dir.join("devices");
    std::fs::create_dir_all(&dir)?;
    let persist = (
        dir.join(format!("agent-{DEMO_AGENT_ID}.olm")),
        messaging::e2ee::agent_device::state_key(&config.jwt_secret),
    );
    let device = AgentDevice::start(
        api_url,
        &token,
        DEMO_AGENT_ID,
        DEMO_AGENT_DEVICE,
        Some(persist),
    )
    .await?;
    tracing::info!(
        safety_code = device.safety_code().await,
        "demo agent encrypted"
    );
    Ok(device)
}

/// AWS SDK configuration for the local endpoints: fixed credentials, `us-east-1`.
pub async fn local_aws_config() -> aws_config::SdkConfig {
    let credentials = aws_credential_types::Credentials::new(
        crate::s3::ACCESS_KEY,
        crate::s3::SECRET_KEY,
        None,
        None,
        "local-stack",
    );
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .load()
        .await
}

/// One tick of the schedules: silent agents, the outbox, connections nearing their lifetime.
async fn sweep(ctx: &Context) {
    if let Err(e) = fn_agent_response::sweep(ctx, messaging::clock::now_ms()).await {
        tracing::warn!(error = %e, "agent timeout sweep failed");
    }
    if let Err(e) = messaging::outbox::sweep(ctx, messaging::clock::now_ms()).await {
        tracing::warn!(error = %e, "outbox sweep failed");
    }
    if let Err(e) = messaging::migration::sweep(ctx, messaging::clock::now_ms()).await {
        tracing::warn!(error = %e, "connection lifetime sweep failed");
    }
}

/// `GET /metrics` on the broker port: per-stage counters, open connections, resident memory.
async fn metrics(
    axum::extract::State(api): axum::extract::State<Arc<WebSocketApi>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "stages": messaging::metrics::snapshot(),
        "connections": api.connection_count(),
        "invocations": api.invocations(),
        "rss_bytes": resident_memory_bytes(),
    }))
}

/// Resident memory of this process (Linux), in bytes.
pub fn resident_memory_bytes() -> u64 {
    resident_memory_bytes_of("self")
}

/// Resident memory of process `pid` (`self` for this one; Linux), in bytes; 0 when unknown.
pub fn resident_memory_bytes_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Local convenience: a valid token (e.g. from `local-stack token alice`) for a user id that has
/// no account yet gets a minimal account (name = id), and so do the people that user names when
/// opening a 1:1 (`user_id`), creating a group (`participants`) or adding to one (`user_ids`).
/// So a newcomer can start a chat with someone who has never connected, in any order. Only the
/// local stack does this; on AWS accounts come from registration.
async fn provision_local_user(ctx: &Context, request: &lambda_http::Request) {
    let Some(token) = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return;
    };
    let Ok(claims) = ctx.jwt.verify(token) else {
        return;
    };
    let mut people = vec![claims.sub.clone()];
    if request.method() == http::Method::POST {
        people.extend(named_people(request.uri().path(), request.body()));
    }
    for user_id in people {
        provision(ctx, &user_id).await;
    }
}

/// The user ids a conversation or group request names in its body.
fn named_people(path: &str, body: &lambda_http::Body) -> Vec<String> {
    let field = if path.ends_with("/v1/conversations") {
        "user_id"
    } else if path.ends_with("/v1/groups") {
        "participants"
    } else if path.contains("/v1/groups/") && path.ends_with("/participants") {
        "user_ids"
    } else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body.as_ref()) else {
        return Vec::new();
    };
    match json.get(field) {
        Some(serde_json::Value::String(id)) => vec![id.clone()],
        Some(serde_json::Value::Array(ids)) => ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Creates a minimal account for `user_id` unless it has one (or is an agent, or is malformed:
/// the API then answers as it would anywhere).
async fn provision(ctx: &Context, user_id: &str) {
    if user_id.trim().is_empty() || user_id.len() > 128 || user_id.contains('.') {
        return;
    }
    if !matches!(ctx.store.user(user_id).await, Ok(None))
        || !matches!(ctx.store.agent(user_id).await, Ok(None))
    {
        return;
    }
    let user = messaging::model::User {
        user_id: user_id.to_string(),
        phone: None,
        email: None,
        name: user_id.to_string(),
        avatar_url: None,
        created_at: mongodb::bson::DateTime::now(),
        last_seen: None,
        status: messaging::protocol::PresenceStatus::Offline,
    };
    if ctx.store.insert_user(&user).await.is_ok() {
        tracing::info!(user = %messaging::telemetry::hashed_id(user_id), "local account provisioned");
    }
}
