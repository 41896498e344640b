//! `cold-start`: how long each function takes from process start to its first event answered,
//! against two minimal `lambda_runtime` binaries measured in the same run (one that answers
//! with nothing, one that connects to MongoDB at start and answers with one read: the floor of
//! a function whose first event needs MongoDB), and how big each function's deployment zip is.
//!
//! Each function binary is started the way its deployment starts it: under a Lambda Runtime API
//! with exactly the environment `infra/aws/template.yaml` gives it (as the deployment suite
//! does), and in its HTTP mode (`PORT`, as Knative runs it), against real Redis and MongoDB-wire
//! servers on this machine. A run measures "init" (start to the first `invocation/next`) and
//! "first answer" (start to the response to one representative event of the function's own
//! triggers). Medians of `--runs` runs; the zip is the binary as `bootstrap`, deflated (what
//! `cargo lambda build --output-format zip` uploads).
//!
//! ```sh
//! cargo build --release --bins && cargo run --release -p lambda-tests --bin cold-start
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lambda_tests::deployment::{Deployment, root};
use lambda_tests::runtime_api::RuntimeApi;
use lambda_tests::template::SamTemplate;
use serde_json::{Value, json};

/// The minimal binary's stand-in function in the template (its environment is given to it too,
/// so both processes read the same amount of environment).
const MINIMAL: &str = "minimal-lambda";

/// The minimal binary that reads MongoDB, run with the store function's environment.
const MINIMAL_MONGODB: &str = "minimal-mongodb-lambda";

struct Args {
    runs: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let mut runs = 5;
    let mut profile = "release".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(runs),
            "--profile" => profile = it.next().unwrap_or(profile),
            other => {
                eprintln!("usage: cold-start [--runs N] [--profile release|debug] (not {other})");
                std::process::exit(2);
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Args {
        runs,
        dir: target.join(profile),
    }
}

/// One event of the function's own triggers, as its deployment delivers it.
fn event(binary: &str, deployment: &Deployment) -> Value {
    let token = deployment.token("cold-start-user");
    let websocket = |route: &str, event_type: &str| {
        json!({"requestContext": {
            "routeKey": route, "eventType": event_type, "connectionId": "cold-start-conn",
            "connectedAt": 1_700_000_000_000i64, "requestTimeEpoch": 1_700_000_000_001i64,
            "stage": "prod", "apiId": "test-api", "requestId": "r", "messageDirection": "IN",
            "identity": {"sourceIp": "127.0.0.1"},
            "authorizer": {"principalId": "cold-start-user", "user_id": "cold-start-user", "device_id": "phone"}},
            "body": "{\"type\":\"heartbeat\",\"timestamp\":0}", "isBase64Encoded": false})
    };
    let scheduled = |kind: &str| {
        json!({"version": "0", "id": uuid::Uuid::new_v4().to_string(), "detail-type": kind,
               "source": "aws.scheduler", "account": "123456789012", "time": "2026-11-27T00:00:00Z",
               "region": "us-east-1", "resources": [],
               "detail": {"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "type": kind,
                          "source": "/aws/scheduler", "data": {}}})
    };
    let http = |path: &str| {
        json!({"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
               "headers": {"authorization": format!("Bearer {token}")},
               "requestContext": {"accountId": "123456789012", "apiId": "http-api", "domainName": "x",
                   "domainPrefix": "x", "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                   "sourceIp": "127.0.0.1", "userAgent": "cold-start"}, "requestId": "r",
                   "routeKey": "$default", "stage": "$default", "time": "27/Nov/2026:00:00:00 +0000",
                   "timeEpoch": 1_700_000_000_000i64},
               "isBase64Encoded": false})
    };
    match binary {
        "authorizer" => json!({"type": "REQUEST",
            "methodArn": "arn:aws:execute-api:us-east-1:123456789012:test-api/prod/$connect",
            "headers": {}, "queryStringParameters": {"token": token},
            "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "connectionId": "c",
                               "apiId": "test-api", "stage": "prod", "requestId": "r"}}),
        "connect" => websocket("$connect", "CONNECT"),
        "message" => websocket("$default", "MESSAGE"),
        "disconnect" => websocket("$disconnect", "DISCONNECT"),
        "store" => scheduled("messaging.outbox.sweep"),
        "agent-response" => scheduled("messaging.agent.sweep"),
        "push" => scheduled("messaging.notification"),
        "api" => http("/v1/agents"),
        "presign" => http("/v1/media/none"),
        _ => json!({"ping": true}),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Start to first `invocation/next`, and start to the first event's outcome, under Lambda.
async fn lambda_once(
    path: &Path,
    env: &BTreeMap<String, String>,
    runtime: &RuntimeApi,
    event: Value,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = started + Duration::from_secs(30);
    while runtime.polls() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "{} never polled", path.display());
        if let Some(error) = runtime.init_error() {
            anyhow::bail!("{} failed to start: {error:?}", path.display());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let init = started.elapsed();
    let outcome = runtime.invoke(event, Duration::from_secs(30)).await;
    let first = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    anyhow::ensure!(outcome.is_some(), "{} did not answer", path.display());
    Ok((init, first))
}

/// Start to the first answer of `POST /` in HTTP mode (any status is an answer).
async fn http_once(
    path: &Path,
    env: &BTreeMap<String, String>,
    event: &Value,
) -> anyhow::Result<Duration> {
    let port = testkit::free_port();
    let mut env = env.clone();
    env.remove("AWS_LAMBDA_RUNTIME_API");
    env.insert("PORT".into(), port.to_string());
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut child = Command::new(path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = started + Duration::from_secs(30);
    let url = format!("http://127.0.0.1:{port}/");
    let answered = loop {
        if client.post(&url).json(event).send().await.is_ok() {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("{} never answered over HTTP", path.display());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(answered)
}

/// Size of the binary zipped as `bootstrap` (deflate), as Lambda receives it.
fn zip_size(path: &Path) -> anyhow::Result<u64> {
    let dir = std::env::temp_dir().join(testkit::unique_name("zip"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(path, dir.join("bootstrap"))?;
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED); z.write(sys.argv[2], 'bootstrap'); z.close()",
        ])
        .arg(dir.join("function.zip"))
        .arg(dir.join("bootstrap"))
        .status()?;
    anyhow::ensure!(status.success(), "zipping {} failed", path.display());
    let size = std::fs::metadata(dir.join("function.zip"))?.len();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(size)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args();
    let deployment = Deployment::new().await;
    let template = SamTemplate::load(&root().join("infra/aws/template.yaml"));
    let mut functions: Vec<(String, String)> = template
        .functions()
        .into_iter()
        // The migration runs once per deploy, not per request.
        .filter(|(_, binary)| binary != "migrate")
        .collect();
    functions.insert(0, ("AuthorizerFunction".into(), MINIMAL.into()));
    functions.insert(1, ("StoreFunction".into(), MINIMAL_MONGODB.into()));
    println!(
        "cold starts, {} runs each, binaries in {} (median; the minimal lambda_runtime binaries first: \
         x minimal is to the one that answers with nothing, x MongoDB to the one that reads MongoDB once)\n",
        args.runs,
        args.dir.display()
    );
    println!(
        "{:<22} {:>9} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "binary", "init ms", "1st answer", "x minimal", "x MongoDB", "HTTP mode", "zip KiB"
    );
    let mut floor = None;
    let mut mongodb_floor = None;
    let mut report = Vec::new();
    for (function, binary) in functions {
        let path = args.dir.join(&binary);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: cargo build --release --bins",
            path.display()
        );
        let mut inits = Vec::new();
        let mut firsts = Vec::new();
        let mut https = Vec::new();
        for _ in 0..args.runs {
            let runtime = RuntimeApi::start().await;
            let env = deployment.lambda_env(&template, &function, &runtime);
            let (init, first) =
                lambda_once(&path, &env, &runtime, event(&binary, &deployment)).await?;
            inits.push(init);
            firsts.push(first);
            if binary != MINIMAL && binary != MINIMAL_MONGODB {
                https.push(http_once(&path, &env, &event(&binary, &deployment)).await?);
            }
        }
        let (init, first) = (median(inits), median(firsts));
        let floor_first = *floor.get_or_insert(first);
        let mongodb_floor_first = if binary == MINIMAL {
            None
        } else {
            Some(*mongodb_floor.get_or_insert(first))
        };
        let to_mongodb = mongodb_floor_first.map(|f| first.as_secs_f64() / f.as_secs_f64());
        let http = (!https.is_empty()).then(|| median(https));
        let zip = zip_size(&path)?;
        println!(
            "{binary:<22} {:>9.1} {:>12.1} {:>9.2}x {:>10} {:>12} {:>10.0}",
            ms(init),
            ms(first),
            first.as_secs_f64() / floor_first.as_secs_f64(),
            to_mongodb
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".into()),
            http.map(|h| format!("{:.1}", ms(h)))
                .unwrap_or_else(|| "-".into()),
            zip as f64 / 1024.0
        );
        report.push(
            json!({"binary": binary, "init_ms": ms(init), "first_answer_ms": ms(first),
            "ratio_to_minimal": first.as_secs_f64() / floor_first.as_secs_f64(),
            "ratio_to_minimal_mongodb": to_mongodb,
            "http_first_answer_ms": http.map(ms), "zip_bytes": zip}),
        );
    }
    if let Ok(path) = std::env::var("COLD_START_JSON") {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
