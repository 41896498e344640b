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
//! After its first answer each Lambda process gets `--warm` more of the same event, one at a
//! time as Lambda hands them: "warm ms" is the median time from handing an event to its answer
//! (what Lambda bills, plus this Runtime API's own hop), "warm CPU" the process's CPU time per
//! event (every thread's, from `/proc/<pid>/task/*/schedstat`), also as a ratio to the minimal
//! binary's (its runtime API round trip and nothing else) measured in the same run.
//!
//! ```sh
//! cargo build --release --bins && cargo run --release -p lambda-tests --bin cold-start
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lambda_tests::deployment::{Deployment, root};
use lambda_tests::runtime_api::{Outcome, RuntimeApi};
use lambda_tests::template::SamTemplate;
use serde_json::{Value, json};

/// The minimal binary's stand-in function in the template (its environment is given to it too,
/// so both processes read the same amount of environment).
const MINIMAL: &str = "minimal-lambda";

/// The minimal binary that reads MongoDB, run with the store function's environment.
const MINIMAL_MONGODB: &str = "minimal-mongodb-lambda";

struct Args {
    runs: usize,
    warm: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let mut runs = 5;
    let mut warm = 200;
    let mut profile = "release".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(runs),
            "--warm" => warm = it.next().and_then(|n| n.parse().ok()).unwrap_or(warm),
            "--profile" => profile = it.next().unwrap_or(profile),
            other => {
                eprintln!(
                    "usage: cold-start [--runs N] [--warm EVENTS] [--profile release|debug] (not {other})"
                );
                std::process::exit(2);
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Args {
        runs,
        warm,
        dir: target.join(profile),
    }
}

/// One event of the function's own triggers, as its deployment delivers it.
/// Each HTTP event is a different user's, so that the API's per-user rate limit (kept in Redis
/// across runs) answers none of them with 429.
fn event(binary: &str, deployment: &Deployment) -> Value {
    static USERS: AtomicUsize = AtomicUsize::new(0);
    let user = USERS.fetch_add(1, Ordering::Relaxed);
    let token = deployment.token(&format!("cold-start-user-{user}"));
    // What API Gateway puts in every WebSocket event's `requestContext`.
    let context = |route: &str, event_type: &str| {
        json!({
            "routeKey": route, "eventType": event_type, "connectionId": "cold-start-conn",
            "connectedAt": 1_700_000_000_000i64, "requestTimeEpoch": 1_700_000_000_001i64,
            "stage": "prod", "apiId": "test-api", "requestId": "r", "messageDirection": "IN",
            "identity": {"sourceIp": "127.0.0.1"}})
    };
    let websocket = |route: &str, event_type: &str| {
        let mut context = context(route, event_type);
        context["authorizer"] = json!({"principalId": "cold-start-user",
            "user_id": "cold-start-user", "device_id": "phone"});
        json!({"requestContext": context,
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
            "headers": {}, "queryStringParameters": {"token": token, "device_id": "phone"},
            "requestContext": context("$connect", "CONNECT")}),
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

/// What one process under the Lambda Runtime API measured.
struct LambdaRun {
    /// Start to the first `invocation/next`.
    init: Duration,
    /// Start to the first event's outcome.
    first: Duration,
    /// Median time from handing a warm event to its outcome.
    warm: Duration,
    /// The process's CPU time per warm event.
    warm_cpu: Duration,
    /// What the first event was answered with: `ok`, `status N` (an HTTP or WebSocket
    /// response), or the error's type.
    answer: String,
}

/// Starts `path` under `runtime` and hands it one of `event` cold, then `warm` more.
async fn lambda_once(
    path: &Path,
    env: &BTreeMap<String, String>,
    runtime: &RuntimeApi,
    event: impl Fn() -> Value,
    warm: usize,
) -> anyhow::Result<LambdaRun> {
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
    let outcome = runtime.invoke(event(), Duration::from_secs(30)).await;
    let first = started.elapsed();
    let measured = async {
        let answer = match outcome {
            Some(Outcome::Response(response)) => match response.get("statusCode") {
                Some(status) => format!("status {status}"),
                None => "ok".to_string(),
            },
            Some(Outcome::Error { error_type, .. }) => error_type,
            None => anyhow::bail!("{} did not answer", path.display()),
        };
        let cpu_before = process_cpu(child.id())?;
        let mut walls = Vec::with_capacity(warm);
        for _ in 0..warm {
            // Built before the clock starts: the function's answer is timed, not this.
            let event = event();
            let handed = Instant::now();
            let outcome = runtime.invoke(event, Duration::from_secs(30)).await;
            anyhow::ensure!(outcome.is_some(), "{} did not answer warm", path.display());
            walls.push(handed.elapsed());
        }
        let cpu = process_cpu(child.id())?.saturating_sub(cpu_before);
        Ok(LambdaRun {
            init,
            first,
            warm: median(walls),
            warm_cpu: cpu / warm.max(1) as u32,
            answer,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// The CPU time process `pid` has used so far, over all its threads, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds: `/proc/<pid>/stat` counts 10 ms ticks, too
/// coarse for a fraction of a millisecond per event). A thread that exits takes its time along;
/// the functions' threads live as long as the process.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(nanos))
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
        "cold starts, {} runs each, then {} warm events each, binaries in {} (median; the minimal \
         lambda_runtime binaries first: x minimal is to the one that answers with nothing, x MongoDB \
         to the one that reads MongoDB once)\n",
        args.runs,
        args.warm,
        args.dir.display()
    );
    println!(
        "{:<22} {:>8} {:>11} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>8}  answer",
        "binary",
        "init ms",
        "1st answer",
        "x minimal",
        "x MongoDB",
        "HTTP mode",
        "warm ms",
        "warm CPU",
        "x minimal",
        "zip KiB"
    );
    // The servers settle first (the first processes' connections, the schema): otherwise the
    // first binary measured, the floor, pays for it.
    {
        let (function, binary) = &functions[0];
        let runtime = RuntimeApi::start().await;
        let env = deployment.lambda_env(&template, function, &runtime);
        let events = || event(binary, &deployment);
        lambda_once(&args.dir.join(binary), &env, &runtime, events, args.warm).await?;
    }
    let mut floor = None;
    let mut mongodb_floor = None;
    let mut cpu_floor = None;
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
        let mut warms = Vec::new();
        let mut warm_cpus = Vec::new();
        let mut https = Vec::new();
        let mut answer = String::new();
        for _ in 0..args.runs {
            let runtime = RuntimeApi::start().await;
            let env = deployment.lambda_env(&template, &function, &runtime);
            let run = lambda_once(
                &path,
                &env,
                &runtime,
                || event(&binary, &deployment),
                args.warm,
            )
            .await?;
            inits.push(run.init);
            firsts.push(run.first);
            warms.push(run.warm);
            warm_cpus.push(run.warm_cpu);
            answer = run.answer;
            if binary != MINIMAL && binary != MINIMAL_MONGODB {
                https.push(http_once(&path, &env, &event(&binary, &deployment)).await?);
            }
        }
        let (init, first) = (median(inits), median(firsts));
        let (warm, warm_cpu) = (median(warms), median(warm_cpus));
        let floor_first = *floor.get_or_insert(first);
        let floor_cpu = *cpu_floor.get_or_insert(warm_cpu);
        let mongodb_floor_first = if binary == MINIMAL {
            None
        } else {
            Some(*mongodb_floor.get_or_insert(first))
        };
        let to_mongodb = mongodb_floor_first.map(|f| first.as_secs_f64() / f.as_secs_f64());
        let cpu_ratio = warm_cpu.as_secs_f64() / floor_cpu.as_secs_f64().max(1e-9);
        let http = (!https.is_empty()).then(|| median(https));
        let zip = zip_size(&path)?;
        println!(
            "{binary:<22} {:>8.1} {:>11.1} {:>9.2}x {:>10} {:>10} {:>8.2} {:>6.0} us {:>9.2}x {:>8.0}  {answer}",
            ms(init),
            ms(first),
            first.as_secs_f64() / floor_first.as_secs_f64(),
            to_mongodb
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".into()),
            http.map(|h| format!("{:.1}", ms(h)))
                .unwrap_or_else(|| "-".into()),
            ms(warm),
            warm_cpu.as_secs_f64() * 1e6,
            cpu_ratio,
            zip as f64 / 1024.0
        );
        report.push(
            json!({"binary": binary, "init_ms": ms(init), "first_answer_ms": ms(first),
            "ratio_to_minimal": first.as_secs_f64() / floor_first.as_secs_f64(),
            "ratio_to_minimal_mongodb": to_mongodb,
            "http_first_answer_ms": http.map(ms),
            "warm_answer_ms": ms(warm), "warm_cpu_us": warm_cpu.as_secs_f64() * 1e6,
            "warm_cpu_ratio_to_minimal": cpu_ratio, "zip_bytes": zip, "answer": answer}),
        );
    }
    if let Ok(path) = std::env::var("COLD_START_JSON") {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
