//! Where the functions run: sandboxes apart from the emulated services, as on Lambda.
//!
//! On AWS the functions are what is billed by the millisecond; API Gateway's WebSocket edge, the
//! event bus and S3 are services run for us. In the local stack they share one process, so
//! every function invocation (route integrations, broker deliveries, the HTTP API, the
//! schedules) runs in a **sandbox**: a thread of its own named [`THREAD_NAME`] with a
//! current-thread tokio runtime, and its own clients (Redis, MongoDB, the management API's and
//! the broker's HTTP clients) opened on it, so their connection tasks run there too. That is a
//! Lambda sandbox's shape (one thread, its own connections, `messaging::runtime::start`): a
//! reply wakes the thread that waits for it, never a second one. An invocation goes to the
//! first sandbox with fewer than [`WARM_LIMIT`] invocations in flight, else to the one with the
//! fewest, so a light load keeps one sandbox warm and a heavy one spreads over all (Lambda
//! starts a sandbox per concurrent invocation; a sandbox here takes several at once, as
//! Knative's containers do).
//!
//! A benchmark then tells the functions' CPU time from the emulators' by thread
//! (`/proc/<pid>/task/*/{comm,stat}`, see [`cpu_seconds_by_role`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Name of every sandbox thread (and of their blocking threads).
pub const THREAD_NAME: &str = "functions";

/// Invocations in flight in one sandbox before the next goes to another. Most of an
/// invocation is waiting for Redis, MongoDB or HTTP, which one thread does for many at once;
/// one that is busy computing keeps its invocations in flight longer, and the next spill over.
/// Staying in the first sandbox keeps its caches warm (a send's remembered sequence number, the
/// routing memo), as Lambda reuses its warmest sandbox.
pub const WARM_LIMIT: usize = 4;

/// One sandbox: where its invocations run, what they run with, how many are in flight.
struct Sandbox<D> {
    handle: Handle,
    deps: Arc<D>,
    in_flight: Arc<AtomicUsize>,
    /// Ends the sandbox's thread when sent or dropped (`None`: the caller's runtime, or
    /// stopped).
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

/// The functions' sandboxes, each with its own `D` (the functions' clients and settings).
/// [`Sandboxes::stop`], or dropping them, ends their threads without waiting.
pub struct Sandboxes<D> {
    sandboxes: Vec<Sandbox<D>>,
}

impl<D> std::fmt::Debug for Sandboxes<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandboxes")
            .field("count", &self.sandboxes.len())
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> Sandboxes<D> {
    /// Starts `count` sandbox threads and builds each one's `D` on it with `build(index)`.
    /// `None`: one sandbox on the caller's runtime, no thread of its own (tests: fewer threads
    /// on a loaded machine).
    pub async fn start<B, Fut>(count: Option<usize>, build: B) -> anyhow::Result<Self>
    where
        B: Fn(usize) -> Fut,
        Fut: Future<Output = anyhow::Result<D>> + Send + 'static,
    {
        let Some(count) = count else {
            return Ok(Self {
                sandboxes: vec![Sandbox {
                    handle: Handle::current(),
                    deps: Arc::new(build(0).await?),
                    in_flight: Arc::default(),
                    stop: std::sync::Mutex::new(None),
                }],
            });
        };
        let mut sandboxes = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (handle, stop) = sandbox_thread(index).await?;
            let deps = run(&handle, build(index)).await?;
            sandboxes.push(Sandbox {
                handle,
                deps: Arc::new(deps),
                in_flight: Arc::default(),
                stop: std::sync::Mutex::new(Some(stop)),
            });
        }
        Ok(Self { sandboxes })
    }

    /// Ends every sandbox's thread (what runs there is dropped); invocations from then on never
    /// answer. Idempotent.
    pub fn stop(&self) {
        for sandbox in &self.sandboxes {
            let stop = sandbox
                .stop
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
        }
    }

    /// The first sandbox's `D` (what the stack's start-up and the tests use).
    pub fn first(&self) -> &Arc<D> {
        &self.sandboxes[0].deps
    }

    /// Runs one invocation in the first sandbox with fewer than [`WARM_LIMIT`] in flight (else
    /// the one with the fewest) and waits for its answer.
    /// Like a Lambda invocation, it runs to its end even if the caller stops waiting; a panic in
    /// it is the caller's panic. Once the sandboxes are gone (the stack is stopping) it never
    /// answers.
    pub async fn invoke<T, C, Fut>(&self, call: C) -> T
    where
        T: Send + 'static,
        C: FnOnce(Arc<D>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let in_flight = |s: &&Sandbox<D>| s.in_flight.load(Ordering::Relaxed);
        let sandbox = self
            .sandboxes
            .iter()
            .find(|s| in_flight(s) < WARM_LIMIT)
            .or_else(|| self.sandboxes.iter().min_by_key(in_flight))
            .expect("at least one sandbox");
        sandbox.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(sandbox.in_flight.clone());
        let invocation = call(sandbox.deps.clone());
        run(&sandbox.handle, async move {
            let _in_flight = in_flight;
            invocation.await
        })
        .await
    }
}

/// A function for the emulated services to call with each of its events (a route's, a
/// trigger's, an HTTP request): every call is an invocation of `call` in the sandboxes.
pub fn function<D, E, T, C, Fut>(
    sandboxes: &Arc<Sandboxes<D>>,
    call: C,
) -> impl Fn(E) -> BoxFuture<'static, T> + Send + Sync + 'static
where
    D: Send + Sync + 'static,
    E: Send + 'static,
    T: Send + 'static,
    C: Fn(Arc<D>, E) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let sandboxes = sandboxes.clone();
    move |event| {
        let (sandboxes, call) = (sandboxes.clone(), call.clone());
        // Boxed: a closure's future cannot be named here (one allocation beside the spawn's).
        Box::pin(async move { sandboxes.invoke(|deps| call(deps, event)).await }) as BoxFuture<_>
    }
}

/// Counts an invocation out of its sandbox when it ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A thread named [`THREAD_NAME`] running a current-thread runtime until the returned sender is
/// sent or dropped.
async fn sandbox_thread(index: usize) -> std::io::Result<(Handle, oneshot::Sender<()>)> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (started, handle) = oneshot::channel();
    // The runtime is built and dropped on its own thread: dropping a runtime is refused inside
    // another one (the caller's).
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            let _ = started.send(Ok(runtime.handle().clone()));
            runtime.block_on(async {
                let _ = stopped.await;
            });
            // Whatever is still running is dropped; blocking work ends on its own.
            runtime.shutdown_background();
        })
        .map_err(|e| std::io::Error::other(format!("sandbox {index}: {e}")))?;
    let handle = handle
        .await
        .map_err(|_| std::io::Error::other(format!("sandbox {index} ended as it started")))??;
    Ok((handle, stop))
}

/// Runs `work` on `handle`'s runtime and waits for it; a panic in it is the caller's panic.
/// Once that runtime is shut down it never answers.
async fn run<T: Send + 'static>(
    handle: &Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    match handle.spawn(work).await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => std::future::pending().await,
    }
}

/// CPU time (user + system) a process has used, split by role: (functions, everything else),
/// from its threads' names. `pid`: a process id, or `"self"`.
pub fn cpu_seconds_by_role(pid: &str) -> (f64, f64) {
    let (mut functions, mut rest) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, 0.0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let seconds = stat_cpu_seconds(&stat);
        if comm.trim_end() == THREAD_NAME {
            functions += seconds;
        } else {
            rest += seconds;
        }
    }
    (functions, rest)
}

/// User + system time from a `/proc/.../stat` line (fields 14 and 15, after the command name,
/// which may hold spaces and parentheses: counted from the last `)`).
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_times_are_read_after_the_name() {
        let line = "1234 (fn (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        let ticks = clock_ticks_per_second();
        assert_eq!(stat_cpu_seconds(line), 300.0 / ticks);
    }

    #[tokio::test]
    async fn threads_of_the_sandboxes_are_counted_as_functions() {
        let sandboxes = Sandboxes::start(Some(1), |_| async { anyhow::Ok(()) })
            .await
            .unwrap();
        let spun = sandboxes
            .invoke(|_| async {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    x = x.wrapping_add(1);
                }
                x
            })
            .await;
        assert!(spun > 0);
        let (in_functions, _) = cpu_seconds_by_role("self");
        assert!(in_functions >= 0.1, "{in_functions}");
    }

    #[tokio::test]
    async fn invocations_stay_in_the_first_sandbox_until_it_has_its_fill() {
        // Each sandbox's deps are its index.
        let sandboxes = Arc::new(
            Sandboxes::start(Some(2), |index| async move { anyhow::Ok(index) })
                .await
                .unwrap(),
        );
        let on = |sandboxes: Arc<Sandboxes<usize>>| async move {
            sandboxes
                .invoke(|index| async move { (*index, std::thread::current().id()) })
                .await
        };
        // Nothing in flight: the first sandbox, on a thread that is not the caller's.
        let (first, first_thread) = on(sandboxes.clone()).await;
        assert_eq!(first, 0);
        assert_ne!(first_thread, std::thread::current().id());
        // Invocations that wait (for a reply) stay in the first one up to its limit.
        let mut releases = Vec::new();
        let mut waiting = Vec::new();
        for held in 1..=WARM_LIMIT {
            let (release, released) = oneshot::channel::<()>();
            releases.push(release);
            let sandboxes_ = sandboxes.clone();
            waiting.push(tokio::spawn(async move {
                sandboxes_
                    .invoke(|index| async move {
                        let _ = released.await;
                        *index
                    })
                    .await
            }));
            while sandboxes.sandboxes[0].in_flight.load(Ordering::Relaxed) < held {
                tokio::task::yield_now().await;
            }
        }
        // Full: the next goes to the second, on another thread.
        let (second, second_thread) = on(sandboxes.clone()).await;
        assert_eq!(second, 1);
        assert_ne!(second_thread, first_thread);
        for release in releases {
            release.send(()).unwrap();
        }
        for waited in waiting {
            assert_eq!(waited.await.unwrap(), 0);
        }
        // Room again: back to the first.
        assert_eq!(on(sandboxes.clone()).await.0, 0);
    }

    #[tokio::test]
    async fn a_panic_in_an_invocation_is_the_callers() {
        let sandboxes = Sandboxes::start(Some(1), |_| async { anyhow::Ok(()) })
            .await
            .unwrap();
        let panicked = tokio::spawn(async move {
            sandboxes
                .invoke(|_| async {
                    if true {
                        panic!("in the function")
                    }
                })
                .await
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
    }

    #[tokio::test]
    async fn stopped_sandboxes_drop_what_runs_in_them() {
        let sandboxes = Arc::new(
            Sandboxes::start(Some(1), |_| async { anyhow::Ok(()) })
                .await
                .unwrap(),
        );
        let (held, dropped) = oneshot::channel::<()>();
        let running = sandboxes.clone();
        tokio::spawn(async move {
            running
                .invoke(|_| async move {
                    let _held = held;
                    std::future::pending::<()>().await
                })
                .await
        });
        while sandboxes.sandboxes[0].in_flight.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        sandboxes.stop();
        let ended = tokio::time::timeout(Duration::from_secs(10), dropped).await;
        assert!(ended.expect("dropped within 10 s").is_err());
    }
}
