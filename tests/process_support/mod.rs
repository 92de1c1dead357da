//! Shared by the `process_*` test binaries: remote functions and a tiny runner.
//!
//! These binaries use `harness = false`: their `main` must call `offload::init` first, which
//! libtest's generated main cannot. Each prints `N passed, 0 failed` and exits non-zero on a
//! failure.
#![allow(dead_code)]

use std::time::Duration;

use offload::{AnyRemoteFn, ProcessPool, ProcessPoolBuilder, RemoteFn, TaskHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub static ECHO: RemoteFn<u64, u64> = RemoteFn::new("echo", |x| x);
pub static PID: RemoteFn<(), u32> = RemoteFn::new("pid", |()| std::process::id());
pub static SLEEP_MS: RemoteFn<u64, u32> = RemoteFn::new("sleep_ms", |ms| {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
});
pub static PANIC: RemoteFn<String, u64> = RemoteFn::new("panic", |msg| panic!("{msg}"));

/// Every function of the support module, for `offload::init`.
pub const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&ECHO, &PID, &SLEEP_MS, &PANIC];

/// A case: a name and a body that returns what went wrong.
pub type Case = (&'static str, fn() -> Result<(), String>);

/// What a case writes to this process's stdout and stderr (its logs, the lines the pool
/// forwards from its workers' stderr, a worker's stray stdout) goes to a file while it runs, and
/// reaches the terminal only when the case fails: a green run prints its summary, not the
/// failures the cases provoke on purpose. `OFFLOAD_TEST_VERBOSE=1` turns the capture off.
struct Capture {
    saved: [libc::c_int; 2],
    file: std::fs::File,
}

impl Capture {
    fn start() -> Option<Capture> {
        if std::env::var_os("OFFLOAD_TEST_VERBOSE").is_some() {
            return None;
        }
        use std::os::fd::AsRawFd;
        let file = tempfile_in_tmp()?;
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let mut saved = [-1; 2];
        for (i, fd) in [1, 2].into_iter().enumerate() {
            // SAFETY: dup and dup2 on this process's own standard descriptors and on a file
            // it holds open; no Rust object owns fds 1 and 2, so replacing them breaks no
            // invariant, and the saved copies restore them in `finish`.
            unsafe {
                saved[i] = libc::dup(fd);
                if saved[i] < 0 || libc::dup2(file.as_raw_fd(), fd) < 0 {
                    return None;
                }
            }
        }
        Some(Capture { saved, file })
    }

    /// Restores stdout and stderr; returns what the case wrote.
    fn finish(self) -> String {
        use std::io::{Read, Seek};
        let _ = std::io::Write::flush(&mut std::io::stdout());
        for (i, fd) in [1, 2].into_iter().enumerate() {
            // SAFETY: puts back the descriptors saved by `start`, then closes the copies.
            unsafe {
                libc::dup2(self.saved[i], fd);
                libc::close(self.saved[i]);
            }
        }
        let mut file = self.file;
        let mut out = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut out);
        out
    }
}

fn tempfile_in_tmp() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join(format!(
        "offload-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    let _ = std::fs::remove_file(&path);
    Some(file)
}

/// Runs the cases, prints one line per case and the closing count; exits 1 on a failure.
pub fn run(cases: &[Case]) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let t0 = std::time::Instant::now();
        let capture = Capture::start();
        let r = std::panic::catch_unwind(case).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()))
        });
        let captured = capture.map(Capture::finish).unwrap_or_default();
        match r {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:?})", t0.elapsed());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
                if !captured.is_empty() {
                    eprintln!("---- output of {name} ----\n{captured}---- end of {name} ----");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A runtime for one case.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Builds the pool; an error is the case's failure.
pub fn build(builder: &mut ProcessPoolBuilder) -> Result<ProcessPool, String> {
    builder.build().map_err(|e| e.to_string())
}

/// Submits `f(args)`; an error at submission is the case's failure.
pub async fn submit<A, R>(
    pool: &ProcessPool,
    f: &RemoteFn<A, R>,
    args: A,
) -> Result<TaskHandle<R>, String>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    pool.submit(f, args).await.map_err(|e| e.to_string())
}

/// Submits `f(args)` and waits for the task's outcome, for the case to check; an error at
/// submission is the case's failure.
pub async fn outcome<A, R>(
    pool: &ProcessPool,
    f: &RemoteFn<A, R>,
    args: A,
) -> Result<Result<R, offload::Error>, String>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    Ok(submit(pool, f, args).await?.await)
}

/// Submits `f(args)` and waits for its value; any error is the case's failure.
pub async fn call<A, R>(pool: &ProcessPool, f: &RemoteFn<A, R>, args: A) -> Result<R, String>
where
    A: Serialize,
    R: DeserializeOwned + Send + 'static,
{
    outcome(pool, f, args).await?.map_err(|e| e.to_string())
}

/// `Err(msg)` unless `cond`.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Child processes of this process, from /proc (pid, state).
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push((pid, state));
        }
    }
    out
}

/// Sends SIGKILL to `pid` with the `kill` command.
pub fn sigkill(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -9 {pid} failed");
}
