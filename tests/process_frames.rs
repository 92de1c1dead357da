//! Oversized and garbage frames are errors of their task, never a crash or a hang; a large
//! argument being written to one worker holds up no other (its write runs without the pool's
//! lock), and cancelling it meanwhile kills only its worker.

mod process_support;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode, TaskHandle, TrySubmitError};
use process_support::{ECHO, PID, check, rt};

static BIG_RESULT: RemoteFn<usize, Vec<u8>> = RemoteFn::new("big_result", |n| vec![7u8; n]);
static LEN: RemoteFn<Vec<u8>, usize> = RemoteFn::new("len", |v| v.len());
static GARBAGE: RemoteFn<(), ()> = RemoteFn::new("garbage", |()| {
    // Write garbage onto the protocol's answer pipe (the first descriptor), as a buggy task
    // or memory corruption could.
    let fd: i32 = std::env::var("OFFLOAD_WORKER")
        .ok()
        .and_then(|v| v.split(',').next().and_then(|f| f.parse().ok()))
        .expect("a worker knows its descriptor");
    // SAFETY: the test deliberately borrows the worker's pipe; ManuallyDrop keeps it open.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = f.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
    let _ = f.flush();
    std::thread::sleep(std::time::Duration::from_millis(500));
});
static UNREGISTERED: RemoteFn<u64, u64> = RemoteFn::new("unregistered", |x| x);
/// Writes its pid to `GATE.pid`, then waits until the file `GATE` exists; returns its pid.
static GATED_PID: RemoteFn<String, u32> = RemoteFn::new("gated_pid", |gate| {
    let pid = std::process::id();
    let tmp = format!("{gate}.pid.tmp");
    if std::fs::write(&tmp, pid.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, format!("{gate}.pid"));
    }
    let t0 = Instant::now();
    while !Path::new(&gate).exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(1));
    }
    pid
});
/// The length of a (large) argument, and the pid of the worker that got it.
static BIG_LEN_PID: RemoteFn<String, (usize, u32)> =
    RemoteFn::new("big_len_pid", |s| (s.len(), std::process::id()));

/// 32 MiB: far over a request pipe's buffer, so writing it waits for the worker to read.
const BIG: usize = 32 << 20;

fn oversized_arguments_fail_at_submit() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .max_frame_size(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&LEN, vec![0u8; 100_000])
            .await
            .expect_err("too large");
        check(e.is_encoding(), || format!("encoding error expected: {e}"))?;
        check(e.to_string().contains("maximum frame size"), || {
            e.to_string()
        })?;
        // try_submit says why (not "shut down") and hands the arguments back.
        match pool.try_submit(&LEN, vec![3u8; 100_000]) {
            Err(TrySubmitError::Rejected(back, e)) => {
                let s = e.to_string();
                check(
                    e.is_encoding() && s.contains("maximum frame size") && s.contains("65536"),
                    || format!("an encoding error naming the size expected: {s}"),
                )?;
                check(back.len() == 100_000 && back[0] == 3, || {
                    "the arguments come back whole".into()
                })?;
            }
            Err(other) => return Err(format!("Rejected expected, got {other:?}")),
            Ok(_) => return Err("Rejected expected, got a handle".into()),
        }
        let ok = pool
            .submit(&LEN, vec![0u8; 1000])
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(ok.ok() == Some(1000), || "a small frame still works".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        // After shutdown: ShutDown, the arguments back.
        match pool.try_submit(&LEN, vec![0u8; 10]) {
            Err(TrySubmitError::ShutDown(back)) => {
                check(back.len() == 10, || "the arguments come back".into())?;
            }
            Err(other) => return Err(format!("ShutDown expected, got {other:?}")),
            Ok(_) => return Err("ShutDown expected, got a handle".into()),
        }
        Ok(())
    })
}

fn oversized_result_is_an_error_of_its_task() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .max_frame_size(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&BIG_RESULT, 200_000)
            .await
            .map_err(|e| e.to_string())?
            .await
            .expect_err("too large");
        check(e.is_encoding(), || format!("encoding error expected: {e}"))?;
        let ok = pool
            .submit(&BIG_RESULT, 10)
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(ok.map(|v| v.len()).ok() == Some(10), || {
            "a small result still works".into()
        })?;
        check(pool.respawns() == 0, || {
            "the worker survives an oversized result".into()
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn garbage_from_a_worker_fails_its_task_and_replaces_it() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&GARBAGE, ())
            .await
            .map_err(|e| e.to_string())?
            .await
            .expect_err("garbage");
        check(e.is_encoding() || e.is_remote(), || {
            format!("a protocol error expected: {e}")
        })?;
        let v = pool
            .submit(&ECHO, 3)
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(v.ok() == Some(3), || "the pool serves on".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn an_unregistered_function_is_a_clear_error() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&UNREGISTERED, 1)
            .await
            .expect_err("not registered");
        check(
            e.is_remote() && e.to_string().contains("offload::init"),
            || e.to_string(),
        )?;
        match pool.try_submit(&UNREGISTERED, 1) {
            Err(TrySubmitError::Rejected(1, e)) => {
                check(e.is_remote(), || format!("a remote error expected: {e}"))?;
            }
            Err(other) => return Err(format!("Rejected expected, got {other:?}")),
            Ok(_) => return Err("Rejected expected, got a handle".into()),
        }
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

/// A file a task waits for, and the file where that task writes its pid when it starts.
struct Gate {
    path: PathBuf,
}

impl Gate {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("offload-{name}-{}", std::process::id()));
        let gate = Gate { path };
        gate.clean();
        gate
    }

    fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    fn pid_path(&self) -> PathBuf {
        PathBuf::from(format!("{}.pid", self.arg()))
    }

    /// The pid of the worker running the gated task, once it started.
    fn running_pid(&self) -> Result<u32, String> {
        let t0 = Instant::now();
        loop {
            if let Some(pid) = std::fs::read_to_string(self.pid_path())
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Ok(pid);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("the gated task did not start within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn open(&self) -> Result<(), String> {
        std::fs::write(&self.path, b"").map_err(|e| format!("opening the gate: {e}"))
    }

    fn clean(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.pid_path());
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.clean();
    }
}

fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    check(ok, || format!("kill -{sig} {pid} failed"))
}

/// A worker stopped with `SIGSTOP` (it reads nothing), continued when dropped.
struct Stopped(u32);

/// The last worker stopped, for a test thread to continue it when another thread is stuck.
static LAST_STOPPED: AtomicU32 = AtomicU32::new(0);

impl Stopped {
    fn new(pid: u32) -> Result<Self, String> {
        signal(pid, "STOP")?;
        LAST_STOPPED.store(pid, Ordering::SeqCst);
        let stopped = Stopped(pid);
        let t0 = Instant::now();
        while !process_support::children()
            .iter()
            .any(|&(p, state)| p == pid && state == 'T')
        {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("worker {pid} did not stop"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // Fails harmlessly when the worker was killed meanwhile.
        let _ = signal(self.0, "CONT");
    }
}

/// Waits (up to 10 s) until one of the pool's slot threads (`offload-proc-N`) is blocked
/// writing to a pipe, as the kernel's wait channel tells; false if none was seen (also where
/// /proc does not tell).
fn a_slot_thread_writes_a_pipe() -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return false;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let is_slot = comm
                .trim()
                .strip_prefix("offload-proc-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_slot
                && std::fs::read_to_string(dir.join("wchan"))
                    .is_ok_and(|w| w.contains("pipe_write"))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Two workers; one runs a gated task, the other is stopped and a large argument is submitted:
/// the only idle worker is the stopped one, so its write waits there. Returns the pool, the
/// gated task, its gate, the pids (running the gated task, stopped) and the large task.
type BigSetup = (
    ProcessPool,
    TaskHandle<u32>,
    Gate,
    u32,
    Stopped,
    TaskHandle<(usize, u32)>,
);

fn set_up_a_blocked_big_write(name: &str) -> Result<BigSetup, String> {
    set_up_a_blocked_big_write_with(name, None)
}

/// As [`set_up_a_blocked_big_write`], the large task with a deadline when `limit` is given.
fn set_up_a_blocked_big_write_with(
    name: &str,
    limit: Option<Duration>,
) -> Result<BigSetup, String> {
    let pool = ProcessPool::builder()
        .workers(2)
        .build()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    while pool.worker_pids().len() < 2 {
        check(t0.elapsed() < Duration::from_secs(30), || {
            "two workers did not start within 30 s".into()
        })?;
        std::thread::sleep(Duration::from_millis(1));
    }
    let gate = Gate::new(name);
    let gated = pool
        .submit_blocking(&GATED_PID, gate.arg())
        .map_err(|e| e.to_string())?;
    let busy = gate.running_pid()?;
    let other = pool
        .worker_pids()
        .into_iter()
        .find(|&p| p != busy)
        .ok_or("no second worker")?;
    let stopped = Stopped::new(other)?;
    let big = match limit {
        None => pool.submit_blocking(&BIG_LEN_PID, "x".repeat(BIG)),
        Some(limit) => process_support::rt().block_on(pool.submit_timeout(
            &BIG_LEN_PID,
            "x".repeat(BIG),
            limit,
        )),
    }
    .map_err(|e| e.to_string())?;
    Ok((pool, gated, gate, busy, stopped, big))
}

fn small_tasks_run_while_a_large_argument_is_written() -> Result<(), String> {
    // Everything that takes the pool's lock runs on a helper thread: were the lock held for
    // the whole write, it would block for ever, and this thread reports that instead.
    let (tx, rx) = std::sync::mpsc::channel();
    let helper = std::thread::spawn(move || {
        let r = (|| {
            let (pool, gated, gate, busy, stopped, big) = set_up_a_blocked_big_write("big-write")?;
            let seen = a_slot_thread_writes_a_pipe();
            if !seen {
                println!("  (no slot thread seen in pipe_write through /proc; going on)");
            }
            // The gated task's worker finishes it, then runs small tasks submitted while the
            // large argument is still being written to the stopped worker.
            gate.open()?;
            let g = gated.blocking_wait().map_err(|e| e.to_string())?;
            let mut smalls = Vec::new();
            for _ in 0..8 {
                smalls.push(pool.submit_blocking(&PID, ()).map_err(|e| e.to_string())?);
            }
            let mut ran_on = Vec::new();
            for h in smalls {
                ran_on.push(h.blocking_wait().map_err(|e| e.to_string())?);
            }
            Ok::<_, String>((pool, g, busy, stopped, big, ran_on))
        })();
        let _ = tx.send(r);
    });
    let outcome = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(r) => r,
        Err(_) => {
            // Let the stuck write finish, so that the helper ends.
            let _ = signal(LAST_STOPPED.load(Ordering::SeqCst), "CONT");
            Err(
                "small tasks did not complete within 120 s while a 32 MiB argument was \
                 written to a stopped worker: the write holds the pool up"
                    .into(),
            )
        }
    };
    let r = (|| {
        let (pool, g, busy, stopped, mut big, ran_on) = outcome?;
        check(g == busy, || format!("gated task ran on {g}, not {busy}"))?;
        check(ran_on.iter().all(|&p| p == busy), || {
            format!("small tasks ran on {ran_on:?}, not all on the free worker {busy}")
        })?;
        check(!big.is_finished(), || {
            "the large task finished, though its worker is stopped".into()
        })?;
        let other = stopped.0;
        drop(stopped);
        let v = big
            .blocking_wait_timeout(Duration::from_secs(120))
            .ok_or("the large task did not finish once its worker went on")?
            .map_err(|e| e.to_string())?;
        check(v == (BIG, other), || {
            format!("large task: {v:?}, expected ({BIG}, {other})")
        })?;
        pool.shutdown_blocking(ShutdownMode::Drain);
        Ok(())
    })();
    let _ = helper.join();
    r
}

fn cancelling_a_task_whose_argument_is_written_hits_only_it() -> Result<(), String> {
    let (pool, gated, gate, busy, stopped, mut big) = set_up_a_blocked_big_write("big-cancel")?;
    let writing = a_slot_thread_writes_a_pipe();
    // While written (or, where /proc cannot tell, perhaps still waiting for its slot thread):
    // cancelled either way, the gated task on the other worker untouched.
    check(big.cancel(), || "cancel found nothing to cancel".into())?;
    let e = big
        .blocking_wait_timeout(Duration::from_secs(60))
        .ok_or("the cancelled task did not end within 60 s")?
        .expect_err("cancelled");
    check(e.is_cancelled(), || format!("cancelled expected: {e}"))?;
    drop(stopped);
    untouched_and_serving(&pool, gated, &gate, busy)?;
    if writing {
        // The worker being written to was killed and replaced.
        let t0 = Instant::now();
        while pool.respawns() < 1 && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        check(pool.respawns() >= 1, || {
            "the stopped worker was replaced".into()
        })?;
    }
    shut_down_and_reaped(&pool)
}

/// After the large task ended: the gated task on the other worker was not touched (it
/// completes once its gate opens, on `busy`), and the pool serves on.
fn untouched_and_serving(
    pool: &ProcessPool,
    gated: TaskHandle<u32>,
    gate: &Gate,
    busy: u32,
) -> Result<(), String> {
    gate.open()?;
    let g = gated.blocking_wait().map_err(|e| e.to_string())?;
    check(g == busy, || {
        format!("the gated task: {g}, expected {busy}")
    })?;
    let v = pool
        .submit_blocking(&ECHO, 5)
        .map_err(|e| e.to_string())?
        .blocking_wait();
    check(v.ok() == Some(5), || "the pool serves on".into())
}

fn shut_down_and_reaped(pool: &ProcessPool) -> Result<(), String> {
    pool.shutdown_blocking(ShutdownMode::Drain);
    check(process_support::children().is_empty(), || {
        "every worker reaped".into()
    })
}

fn a_deadline_ends_a_task_whose_argument_is_not_read() -> Result<(), String> {
    // The large task's deadline counts from when its worker was claimed for it: a worker that
    // never reads the argument (stopped here) cannot hold the task past it.
    let limit = Duration::from_millis(300);
    let (pool, gated, gate, busy, stopped, mut big) =
        set_up_a_blocked_big_write_with("big-deadline", Some(limit))?;
    let e = big
        .blocking_wait_timeout(Duration::from_secs(60))
        .ok_or("the task whose argument is not read did not end within 60 s")?
        .expect_err("timed out");
    check(e.is_timeout(), || format!("timed out expected: {e}"))?;
    drop(stopped);
    untouched_and_serving(&pool, gated, &gate, busy)?;
    shut_down_and_reaped(&pool)
}

fn dropping_the_pool_during_a_large_write_ends_every_task() -> Result<(), String> {
    let (pool, gated, gate, _busy, stopped, big) = set_up_a_blocked_big_write("big-drop")?;
    let _ = a_slot_thread_writes_a_pipe();
    // Dropped without shutdown: the workers are killed (the stopped one too), the write
    // fails, and both tasks end "shut down"; no worker is left.
    drop(pool);
    drop(stopped);
    drop(gate);
    for (name, e) in [
        ("large", big.blocking_wait().map(|_| ()).err()),
        ("gated", gated.blocking_wait().map(|_| ()).err()),
    ] {
        check(e.as_ref().is_some_and(|e| e.is_shut_down()), || {
            format!("the {name} task: shut down expected, got {e:?}")
        })?;
    }
    check(process_support::children().is_empty(), || {
        "every worker reaped".into()
    })
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[
    &BIG_RESULT,
    &LEN,
    &GARBAGE,
    &ECHO,
    &PID,
    &GATED_PID,
    &BIG_LEN_PID,
];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[
        (
            "oversized_arguments_fail_at_submit",
            oversized_arguments_fail_at_submit,
        ),
        (
            "oversized_result_is_an_error_of_its_task",
            oversized_result_is_an_error_of_its_task,
        ),
        (
            "garbage_from_a_worker_fails_its_task_and_replaces_it",
            garbage_from_a_worker_fails_its_task_and_replaces_it,
        ),
        (
            "an_unregistered_function_is_a_clear_error",
            an_unregistered_function_is_a_clear_error,
        ),
        (
            "small_tasks_run_while_a_large_argument_is_written",
            small_tasks_run_while_a_large_argument_is_written,
        ),
        (
            "cancelling_a_task_whose_argument_is_written_hits_only_it",
            cancelling_a_task_whose_argument_is_written_hits_only_it,
        ),
        (
            "a_deadline_ends_a_task_whose_argument_is_not_read",
            a_deadline_ends_a_task_whose_argument_is_not_read,
        ),
        (
            "dropping_the_pool_during_a_large_write_ends_every_task",
            dropping_the_pool_during_a_large_write_ends_every_task,
        ),
    ]);
}
