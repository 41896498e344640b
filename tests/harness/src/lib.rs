//! Real servers for tests and the local stack: `redis-server` and SecantusDB, started as child
//! processes on free loopback ports and stopped with their parent.
//!
//! Every integration test in the workspace talks to a real `redis-server` and a real MongoDB-wire
//! server (SecantusDB, `secantusd-py`). [`servers`] starts one of each per test process, on free
//! loopback ports, the first time a test asks, and waits until both answer. The child processes are
//! tied to the test process with `PR_SET_PDEATHSIG`, so they stop when it exits, however it exits
//! (passed, failed, panicked, killed). Tests isolate themselves with [`unique_name`]: a fresh MongoDB
//! database and a fresh Redis key prefix per test, so tests in one process run in parallel.
//!
//! Where the servers come from: `REDIS_SERVER` or `redis-server` on `PATH`; `SECANTUSD` or the
//! project's venv (`.tools/venv/bin/secantusd-py`, made by `scripts/setup`) or `secantusd-py` on `PATH`.

#![warn(missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Connection strings of the servers started for this test process.
#[derive(Debug, Clone)]
pub struct Servers {
    /// `redis://127.0.0.1:PORT/`
    pub redis_url: String,
    /// `mongodb://127.0.0.1:PORT/?directConnection=true`
    pub mongodb_uri: String,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();

/// The servers of this test process, started on first use.
///
/// Panics with a message naming what is missing when a server binary cannot be found or does not
/// come up: a test that cannot reach its servers must fail loudly, never pass by skipping.
pub fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        // PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits, and test threads
        // come and go. Spawn from a thread that lives as long as the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("testkit-servers".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(start_all);
                let children = match result {
                    Ok((servers, children)) => {
                        tx.send(Ok(servers)).ok();
                        children
                    }
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "server start failed".into());
                        tx.send(Err(msg)).ok();
                        return;
                    }
                };
                // Keep the children (and this thread) alive until the process ends.
                let _keep = children;
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn testkit thread");
        match rx.recv().expect("testkit thread died") {
            Ok(servers) => servers,
            Err(msg) => panic!("{msg}"),
        }
    })
}

/// A name unique to this call, for a test's MongoDB database or Redis key prefix.
///
/// Short enough for MongoDB's 64-byte database-name limit; only `[a-z0-9_]`.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..16])
}

/// A server process started by [`start_redis`] or [`start_mongodb`]; killed when dropped, and
/// when the process that started it exits.
pub struct ServerProcess {
    /// Its URL (`redis://...` or `mongodb://...`).
    pub url: String,
    child: Child,
}

impl ServerProcess {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the server (e.g. `libc::SIGSTOP` to stall it, `SIGCONT` to resume).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Kills the server at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a `redis-server` on a free port. With `data_dir`, data is kept there (AOF); without,
/// nothing is written to disk.
pub fn start_redis(data_dir: Option<&std::path::Path>) -> Result<ServerProcess, String> {
    start_redis_at(None, data_dir)
}

/// [`start_redis`] on `port` when given (e.g. to restart a server where its clients expect it).
pub fn start_redis_at(
    port: Option<u16>,
    data_dir: Option<&std::path::Path>,
) -> Result<ServerProcess, String> {
    let start = |port: u16| {
        let mut cmd = Command::new(redis_binary());
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
        ]);
        match data_dir {
            Some(dir) => {
                cmd.arg("--dir")
                    .arg(dir)
                    .args(["--appendonly", "yes", "--save", ""]);
            }
            None => {
                cmd.args(["--save", "", "--appendonly", "no"]);
            }
        }
        cmd
    };
    let (port, child) = match port {
        Some(port) => (port, start_on(port, "redis-server", start(port))?),
        None => try_start("redis-server", start)?,
    };
    Ok(ServerProcess {
        url: format!("redis://127.0.0.1:{port}/"),
        child,
    })
}

/// Starts SecantusDB on a free port. With `data_dir`, data is kept there; without, in memory.
pub fn start_mongodb(data_dir: Option<&std::path::Path>) -> Result<ServerProcess, String> {
    let workdir = match data_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::temp_dir().join(unique_name("secantus")),
    };
    std::fs::create_dir_all(&workdir).map_err(|e| format!("create {}: {e}", workdir.display()))?;
    let storage = match data_dir {
        Some(dir) => dir.join("data").display().to_string(),
        None => ":memory:".into(),
    };
    let (port, child) = try_start("secantusd-py", |port| {
        let mut cmd = Command::new(secantus_binary());
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            &storage,
            "--log-level",
            "WARNING",
        ])
        // SecantusDB looks for ./secantusd.toml; run it where there is none.
        .current_dir(&workdir);
        cmd
    })?;
    Ok(ServerProcess {
        url: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        child,
    })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn start_all() -> (Servers, Vec<ServerProcess>) {
    let redis = start_redis(None).unwrap_or_else(|e| panic!("{e}"));
    let mongo = start_mongodb(None).unwrap_or_else(|e| panic!("{e}"));
    (
        Servers {
            redis_url: redis.url.clone(),
            mongodb_uri: mongo.url.clone(),
        },
        vec![redis, mongo],
    )
}

fn try_start(name: &str, build: impl Fn(u16) -> Command) -> Result<(u16, Child), String> {
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut cmd = build(port);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        tie_to_this_thread(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot start {name} ({e}); run scripts/setup, or set REDIS_SERVER / SECANTUSD")
        })?;
        match wait_for_port(port, &mut child, Duration::from_secs(30)) {
            Ok(()) => return Ok((port, child)),
            Err(e) => {
                last_error = e;
                child.kill().ok();
                child.wait().ok();
            }
        }
    }
    Err(format!("{name} did not come up: {last_error}"))
}

/// Starts `cmd` (a server for `port`) and waits for the port to answer.
fn start_on(port: u16, name: &str, mut cmd: Command) -> Result<Child, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    tie_to_this_thread(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({e}); run scripts/setup"))?;
    match wait_for_port(port, &mut child, Duration::from_secs(30)) {
        Ok(()) => Ok(child),
        Err(e) => {
            child.kill().ok();
            child.wait().ok();
            Err(format!("{name} did not come up on port {port}: {e}"))
        }
    }
}

fn wait_for_port(port: u16, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("port {port} not answering after {timeout:?}"))
}

/// Makes the child die with the thread that spawns it (call from a long-lived thread).
fn tie_to_this_thread(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn redis_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn secantus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SECANTUSD") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join(".tools/venv/bin/secantusd-py");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("secantusd-py")
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}
