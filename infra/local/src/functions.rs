//! Where the functions run: a tokio runtime of their own, apart from the emulated services.
//!
//! On AWS the functions are what is billed by the millisecond; API Gateway's WebSocket edge, the
//! event bus and S3 are services run for us. In the local stack they share one process, so
//! every function invocation (route integrations, broker deliveries, the HTTP API, the
//! schedules) is spawned onto this runtime, whose threads are named [`THREAD_NAME`], and the
//! functions' clients (Redis, MongoDB, the management API's and the broker's HTTP clients) are
//! opened on it so their connection tasks run here too. A benchmark then tells the functions'
//! CPU time from the emulators' by thread (`/proc/<pid>/task/*/{comm,stat}`, see
//! [`cpu_seconds_by_role`]).

use std::future::Future;

use tokio::runtime::{Handle, Runtime};

/// Name of every thread of the functions' runtime (workers and blocking threads).
pub const THREAD_NAME: &str = "functions";

/// The functions' runtime; shut down (without waiting) when dropped.
pub struct FunctionsRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl std::fmt::Debug for FunctionsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionsRuntime").finish_non_exhaustive()
    }
}

impl FunctionsRuntime {
    /// A multi-threaded runtime with `workers` worker threads named [`THREAD_NAME`].
    pub fn new(workers: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    /// A handle to spawn invocations with (see [`invoke`]).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for FunctionsRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside another runtime (a stack dropped
        // by a test): let its threads finish in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs one invocation on the functions' runtime and waits for its answer. Like a Lambda
/// invocation, it runs to its end even if the caller stops waiting; a panic in it is the
/// caller's panic. Once the runtime is shut down (the stack is stopping) it never answers.
pub async fn invoke<T: Send + 'static>(
    functions: Handle,
    invocation: impl Future<Output = T> + Send + 'static,
) -> T {
    match functions.spawn(invocation).await {
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

    #[test]
    fn threads_of_the_functions_runtime_are_counted_as_functions() {
        let functions = FunctionsRuntime::new(1).unwrap();
        let spin = functions.handle().spawn(async {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(300) {
                x = x.wrapping_add(1);
            }
            x
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(spin).unwrap();
        let (in_functions, _) = cpu_seconds_by_role("self");
        assert!(in_functions >= 0.1, "{in_functions}");
    }
}
