//! `local-stack`: run the whole backend on one machine, or mint a token for it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use local_stack::instance::{self, Endpoints};
use local_stack::stack::{self, StackConfig};

/// The messaging backend on one machine: a managed WebSocket API emulator with its @connections
/// management API, a CloudEvents broker (Knative semantics), S3, every function in-process, and
/// a demo agent. Redis and MongoDB come from REDIS_URL / MONGODB_URI; when those are unset, the
/// stack starts redis-server and SecantusDB itself with their data under --data-dir.
#[derive(Parser, Debug)]
#[command(
    name = "local-stack",
    version,
    after_help = "Every setting the functions read from the environment applies here too, e.g. \
MAX_CONTENT_BYTES, SEND_RATE_PER_MINUTE, FRAME_RATE_PER_MINUTE, MAX_SYNC_MESSAGES, \
API_RATE_PER_MINUTE, AUTH_RATE_PER_MINUTE, ACCESS_TOKEN_TTL_SECS, MEDIA_RATE_PER_MINUTE, \
MEDIA_MAX_<KIND>_BYTES, PUSH_WEBHOOK_URL (README, \"Configuration\")."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the stack (the default).
    Run,
    /// Run only the WebSocket gateway, calling the connect, message and disconnect functions over
    /// HTTP (the Kubernetes edge; see infra/knative). With REDIS_URL, one replica of several:
    /// management calls reach the replica holding the socket, and on SIGTERM the replica tells
    /// its clients to migrate before it stops.
    Gateway(GatewayArgs),
    /// Print a JWT the running stack accepts, for connecting without registration.
    Token {
        /// The user id (the token's subject).
        user_id: String,
        /// Device id to put in the token.
        #[arg(long)]
        device: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        /// Data directory of the running stack (where its signing key is).
        #[arg(long, env = "LOCAL_STACK_DATA", default_value = instance::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Print a new VAPID key (PEM) for WEB_PUSH_VAPID_PRIVATE_KEY, and its public key (what
    /// the web client's config.json names as `web_push_public_key`) on standard error.
    VapidKey,
}

#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// Port for clients' WebSocket upgrades.
    #[arg(long, env = "GATEWAY_WS_PORT", default_value_t = 8080)]
    ws_port: u16,
    /// Port for the @connections management API (keep it private to the cluster).
    #[arg(long, env = "GATEWAY_MANAGEMENT_PORT", default_value_t = 8081)]
    management_port: u16,
    /// Stage name put in events.
    #[arg(long, env = "GATEWAY_STAGE", default_value = "prod")]
    stage: String,
    /// URL of the connect function.
    #[arg(long, env = "CONNECT_FUNCTION_URL")]
    connect_url: String,
    /// URL of the message function.
    #[arg(long, env = "MESSAGE_FUNCTION_URL")]
    message_url: String,
    /// URL of the disconnect function.
    #[arg(long, env = "DISCONNECT_FUNCTION_URL")]
    disconnect_url: String,
    /// URL of the `$connect` authorizer (the connect function's `authorizer` binary); without
    /// it the connect function verifies tokens itself.
    #[arg(long, env = "AUTHORIZER_FUNCTION_URL")]
    authorizer_url: Option<String>,
    /// Idle timeout, seconds.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    idle_timeout_secs: u64,
    /// Maximum connection lifetime, seconds.
    #[arg(long, env = "GATEWAY_MAX_LIFETIME_SECS", default_value_t = 7200)]
    max_lifetime_secs: u64,
    /// Redis holding the replica registry; without it this gateway is the only replica.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of the Redis keys (the functions' REDIS_KEY_PREFIX).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "msg:")]
    redis_prefix: String,
    /// Address the other replicas reach this one at (on Kubernetes the pod IP); defaults to
    /// --host, or 127.0.0.1 when that is 0.0.0.0.
    #[arg(long, env = "GATEWAY_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Public WebSocket address clients are told to reconnect to when this replica drains (the
    /// load balancer); without it, another live replica's own address.
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    public_url: Option<String>,
    /// On SIGTERM, how long clients have to migrate before what is left is closed (1001).
    #[arg(long, env = "GATEWAY_DRAIN_SECS", default_value_t = 30)]
    drain_secs: u64,
}

/// Runs the gateway alone, with remote route integrations.
async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    use local_stack::gateway::{ApiSettings, Route, RouteHandler, WebSocketApi};
    use local_stack::remote::RemoteFunction;
    use std::sync::Arc;
    let route = |function: &str, url: &str| Route {
        function: function.into(),
        handler: Arc::new(RemoteFunction::new(url)) as Arc<dyn RouteHandler>,
        route_response: false,
    };
    let mut routes = std::collections::HashMap::new();
    routes.insert("$connect".to_string(), route("connect", &args.connect_url));
    routes.insert(
        "$disconnect".to_string(),
        route("disconnect", &args.disconnect_url),
    );
    // Two-way, as on AWS: the message function's answer frame is its response body.
    routes.insert(
        "$default".to_string(),
        Route {
            route_response: true,
            ..route("message", &args.message_url)
        },
    );
    let settings = ApiSettings {
        stage: args.stage,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_lifetime: Duration::from_secs(args.max_lifetime_secs),
        ..ApiSettings::default()
    };
    let authorizer = args.authorizer_url.as_deref().map(|url| {
        Arc::new(local_stack::remote::RemoteAuthorizer::new(url))
            as local_stack::authorizer::SharedAuthorizer
    });
    let api = WebSocketApi::with_authorizer(settings, routes, authorizer);
    let ws = tokio::net::TcpListener::bind((args.host, args.ws_port)).await?;
    let management = tokio::net::TcpListener::bind((args.host, args.management_port)).await?;
    let (ws_addr, management_addr) = (ws.local_addr()?, management.local_addr()?);
    api.set_domain(ws_addr.to_string());
    if let Some(redis_url) = args.redis_url.as_deref().filter(|u| !u.is_empty()) {
        let advertise = args.advertise_host.clone().unwrap_or_else(|| {
            if args.host.is_unspecified() {
                "127.0.0.1".into()
            } else {
                args.host.to_string()
            }
        });
        api.join(
            redis_url,
            &args.redis_prefix,
            &format!("http://{advertise}:{}", management_addr.port()),
            &format!("ws://{advertise}:{}", ws_addr.port()),
            args.public_url.clone(),
        )
        .await?;
    } else {
        eprintln!("gateway: REDIS_URL not set: the only replica");
    }
    eprintln!("gateway: WebSocket on {ws_addr}, @connections on {management_addr}");
    let public = api
        .clone()
        .websocket_router()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let private = api
        .clone()
        .management_router()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let accepting = tokio::spawn(axum::serve(ws, public).into_future());
    let managing = tokio::spawn(axum::serve(management, private).into_future());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stop accepting (the load balancer sends new connections elsewhere), move the clients,
    // and keep the management API up until they are gone: posts still reach them meanwhile.
    accepting.abort();
    eprintln!("gateway: draining for up to {} s", args.drain_secs);
    let report = api.drain(Duration::from_secs(args.drain_secs)).await;
    eprintln!(
        "gateway: drained: {} told to migrate, {} moved, {} cut at the deadline",
        report.told, report.moved, report.cut
    );
    managing.abort();
    Ok(())
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// WebSocket API and @connections management API.
    #[arg(long, default_value_t = 8080)]
    ws_port: u16,
    /// Broker ingress (POST CloudEvents; GET /dead-letters).
    #[arg(long, default_value_t = 8081)]
    broker_port: u16,
    /// S3 endpoint (SigV4; access key `local`, secret `local-secret-key`).
    #[arg(long, default_value_t = 8082)]
    s3_port: u16,
    /// Demo agent (an HTTP subscriber of the broker).
    #[arg(long, default_value_t = 8083)]
    agent_port: u16,
    /// HTTP API (accounts, conversations, groups, agents; /openapi.json).
    #[arg(long, default_value_t = 8084)]
    api_port: u16,
    /// Also serve the WebSocket route integrations over HTTP on this port (POST
    /// /integrations/{$connect,$default,$disconnect}), for `local-stack gateway` replicas in
    /// front of this stack (README, "Several gateway replicas").
    #[arg(long)]
    functions_port: Option<u16>,
    /// The web client (a browser chat; `scripts/build-web` builds it into --web-root).
    #[arg(long, default_value_t = 8085)]
    web_port: u16,
    /// Where the built web client is.
    #[arg(long, env = "WEB_ROOT", default_value = local_stack::web::DEFAULT_ROOT)]
    web_root: PathBuf,
    /// The WebSocket address the web client is told to use (default: this stack's), e.g. a
    /// `local-stack gateway` replica in front of it.
    #[arg(long, env = "WEB_WS_URL")]
    web_ws_url: Option<String>,
    /// Operator key for agent registry writes (header X-Operator-Key).
    #[arg(long, env = "OPERATOR_KEY", default_value = "local-operator-key")]
    operator_key: String,
    /// Where S3 objects, the signing key, the broker's queue and self-started servers keep their
    /// data.
    #[arg(long, env = "LOCAL_STACK_DATA", default_value = instance::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// More broker triggers (TOML `[[trigger]]` tables), e.g. for an external agent; repeat the
    /// flag for several files.
    #[arg(long)]
    triggers: Vec<PathBuf>,
    /// Idle timeout of WebSocket connections, seconds (AWS: 600).
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    idle_timeout_secs: u64,
    /// Maximum lifetime of WebSocket connections, seconds (AWS: 7200).
    #[arg(long, env = "GATEWAY_MAX_LIFETIME_SECS", default_value_t = 7200)]
    max_lifetime_secs: u64,
    /// Seconds an agent may stay silent before the user is told.
    #[arg(long, env = "AGENT_TIMEOUT_SECS", default_value_t = 60)]
    agent_timeout_secs: u64,
    /// Do not run the demo agent.
    #[arg(long)]
    no_demo_agent: bool,
    /// Sandboxes the functions run in, each one thread with its own clients, as a Lambda
    /// sandbox (what `bench` measures as the functions' CPU).
    #[arg(long, env = "FUNCTION_THREADS", default_value = "2")]
    function_threads: std::num::NonZeroUsize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::VapidKey) = &cli.command {
        let pem = fn_push::webpush::generate_key();
        print!("{pem}");
        eprintln!(
            "public key (config.json web_push_public_key): {}",
            fn_push::webpush::public_key(&pem).map_err(anyhow::Error::msg)?
        );
        return Ok(());
    }
    if let Some(Command::Token {
        user_id,
        device,
        ttl_secs,
        data_dir,
    }) = &cli.command
    {
        let token = instance::token(
            data_dir,
            user_id,
            device.as_deref(),
            Duration::from_secs(*ttl_secs),
        )?;
        if Endpoints::of_running(data_dir).is_none() {
            eprintln!(
                "note: no stack is running with data directory {}; this token is accepted once \
                 one is",
                instance::shown(data_dir)
            );
        }
        println!("{token}");
        return Ok(());
    }
    messaging::telemetry::init();
    if let Some(Command::Gateway(args)) = cli.command {
        return tokio::runtime::Runtime::new()?.block_on(run_gateway(args));
    }
    let args = cli.run;
    std::fs::create_dir_all(&args.data_dir)?;
    let secret = instance::signing_secret_or_create(&args.data_dir)?;
    // Servers are started here, on the main thread, which lives as long as the process: they
    // are tied to it and stop with it.
    let mut own_servers = Vec::new();
    let redis_url = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let dir = args.data_dir.join("redis");
            std::fs::create_dir_all(&dir)?;
            let server = testkit::start_redis(Some(&dir)).map_err(anyhow::Error::msg)?;
            eprintln!(
                "REDIS_URL not set: started redis-server at {} (data in {})",
                server.url,
                dir.display()
            );
            let url = server.url.clone();
            own_servers.push(server);
            url
        }
    };
    let mongodb_uri = match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => uri,
        _ => {
            let dir = args.data_dir.join("mongodb");
            let server = testkit::start_mongodb(Some(&dir)).map_err(anyhow::Error::msg)?;
            eprintln!(
                "MONGODB_URI not set: started SecantusDB at {} (data in {})",
                server.url,
                dir.display()
            );
            let url = server.url.clone();
            own_servers.push(server);
            url
        }
    };
    let mut config = StackConfig::new(redis_url, mongodb_uri, args.data_dir.clone(), secret);
    // Limits and timings come from the same variables as on AWS (MAX_CONTENT_BYTES, ...).
    config.settings = messaging::context::Settings::from_source(&messaging::config::Env)?;
    config.store = messaging::store::StoreOptions::from_source(&messaging::config::Env)?;
    config.redis_timeout = messaging::config::millis(
        &messaging::config::Env,
        "REDIS_TIMEOUT_MS",
        messaging::realtime::DEFAULT_TIMEOUT,
    )?;
    if let Some(prefix) =
        messaging::config::Source::get(&messaging::config::Env, "REDIS_KEY_PREFIX")
    {
        config.redis_prefix = prefix;
    }
    config.host = args.host;
    config.ws_port = args.ws_port;
    config.broker_port = args.broker_port;
    config.s3_port = args.s3_port;
    config.agent_port = args.agent_port;
    config.api_port = args.api_port;
    config.functions_port = args.functions_port;
    config.web_port = Some(args.web_port);
    config.web_root = args.web_root.clone();
    config.web_ws_url = args.web_ws_url.clone();
    config.operator_key = Some(args.operator_key.clone());
    config.extra_triggers = args.triggers;
    config.api.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    config.api.max_lifetime = Duration::from_secs(args.max_lifetime_secs);
    config.settings.agent_timeout = Duration::from_secs(args.agent_timeout_secs);
    config.demo_agent = !args.no_demo_agent;
    config.function_threads = Some(args.function_threads.get());

    let runtime = tokio::runtime::Runtime::new()?;
    let data_dir = args.data_dir.clone();
    let run_dir = args.data_dir.clone();
    let outcome = runtime.block_on(async move {
        let running = stack::start(config).await?;
        Endpoints {
            pid: std::process::id(),
            ws_url: running.ws_url.clone(),
            management_url: running.management_url.clone(),
            broker_url: running.broker_url.clone(),
            s3_url: running.s3_url.clone(),
            agent_url: running.agent_url.clone(),
            api_url: running.api_url.clone(),
            web_url: running.web_url.clone(),
        }
        .write(&run_dir)?;
        print_banner(&running, &run_dir);
        tokio::signal::ctrl_c().await?;
        eprintln!("stopping");
        Endpoints::remove(&run_dir);
        drop(running);
        anyhow::Ok(())
    });
    Endpoints::remove(&data_dir);
    // Do not wait for connections still open: the servers' tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(own_servers);
    outcome
}

fn print_banner(running: &stack::RunningStack, data_dir: &std::path::Path) {
    let agent = running.agent_url.as_deref().unwrap_or("(disabled)");
    let dir = instance::data_dir_flag(data_dir);
    eprintln!(
        "\nlocal stack is up
  web client        {web}   (open it in a browser: sign up, chat with the demo agent)
  WebSocket API     {ws}/?token=JWT
  @connections API  {mgmt}/@connections/{{id}}   (also under /local/@connections/{{id}})
  broker ingress    {broker}   (GET {broker}dead-letters)
  S3                {s3}   (access key local / secret local-secret-key, path-style)
  demo agent        {agent}   (agent id `demo`, end-to-end encrypted; `demo-plain` has no keys)
  HTTP API          {api}/v1/...   (OpenAPI: {api}/openapi.json){functions}
  data              {data}

chat (in another terminal, in this directory; ctrl-d quits):
  cargo run -q -p local-stack --bin chat -- --user alice --agent demo{dir}
  cargo run -q -p local-stack --bin chat -- --user alice --with bob{dir}
any WebSocket client:
  TOKEN=$(cargo run -q -p local-stack -- token alice{dir})
  websocat \"{ws}/?token=$TOKEN\"
  then send: {{\"type\":\"heartbeat\",\"timestamp\":0}}
stop: ctrl-c
",
        ws = running.ws_url,
        mgmt = running.management_url,
        broker = running.broker_url,
        s3 = running.s3_url,
        api = running.api_url,
        functions = running
            .functions_url
            .as_ref()
            .map(|url| format!(
                "\n  route functions   {url}/integrations/{{$connect,$default,$disconnect}}   (for `local-stack gateway` replicas)"
            ))
            .unwrap_or_default(),
        data = instance::shown(data_dir),
        web = running.web_url.as_deref().unwrap_or("(not served)"),
    );
}
