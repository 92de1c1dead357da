//! Dispatch: a queued task goes to the first free worker, never behind a running task while
//! another worker idles; a cancel of a task written behind another fails that task only, at
//! once; a drain after a withdrawn task ends; a panic while decoding a result fails only that
//! task; a finished task names its worker's pid. harness = false: `main` calls `offload::init`.

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, RemoteFn, ShutdownMode};
use process_support::{ECHO, PID, SLEEP_MS, build, call, check, rt, submit};
use serde::{Deserialize, Deserializer, Serialize};

/// A result whose decoding panics in the pool's process (its encoding in the worker is fine).
#[derive(Serialize)]
struct Bomb(u8);

impl<'de> Deserialize<'de> for Bomb {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("bomb: decoding this result panics");
    }
}

static BOMB: RemoteFn<(), Bomb> = RemoteFn::new("bomb", |()| Bomb(1));

/// Waits until the pool's `n` workers have started (bounded).
async fn warm(pool: &ProcessPool, n: usize) -> Result<(), String> {
    let t0 = Instant::now();
    while pool.worker_pids().len() < n {
        check(t0.elapsed() < Duration::from_secs(10), || {
            "the workers did not start".into()
        })?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Issue 13, item 1: A runs a long task, B a short one; trivial tasks submitted next must not
/// wait behind A: they finish while A's task still runs.
fn no_task_waits_behind_a_running_one_while_a_worker_is_free() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(2))?;
        warm(&pool, 2).await?;
        let long = submit(&pool, &SLEEP_MS, 3_000).await?;
        let short = submit(&pool, &SLEEP_MS, 50).await?;
        let mut trivial = Vec::new();
        for i in 0..3u64 {
            trivial.push(submit(&pool, &ECHO, i).await?);
        }
        for (i, h) in trivial.into_iter().enumerate() {
            let v = tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .map_err(|_| "a trivial task hung".to_string())?
                .map_err(|e| e.to_string())?;
            check(v == i as u64, || format!("echo gave {v}"))?;
            check(!long.is_finished(), || {
                format!("trivial task {i} waited behind the 3 s task although a worker was free")
            })?;
        }
        short.await.map_err(|e| e.to_string())?;
        long.await.map_err(|e| e.to_string())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

/// Issue 13, item 2: a task written behind a running one and cancelled is done at once, as
/// cancelled; the task ahead and a task submitted meanwhile succeed.
fn cancel_of_a_written_task_fails_it_alone() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        // The pool learns that `sleep_ms` is short, so it pipelines behind it.
        for round in 0..20 {
            // Short again on average after the last round's 150 ms.
            for _ in 0..8 {
                call(&pool, &SLEEP_MS, 0).await?;
            }
            let ahead = submit(&pool, &SLEEP_MS, 150).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let behind = submit(&pool, &SLEEP_MS, 0).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            check(behind.cancel(), || "cancel returns true".into())?;
            let e = tokio::time::timeout(Duration::from_millis(100), behind)
                .await
                .map_err(|_| format!("round {round}: the cancelled task was not done at once"))?
                .expect_err("cancelled");
            check(e.is_cancelled(), || format!("cancelled expected: {e}"))?;
            let between = submit(&pool, &ECHO, round).await?;
            tokio::time::timeout(Duration::from_secs(10), ahead)
                .await
                .map_err(|_| "the task ahead hung".to_string())?
                .map_err(|e| format!("round {round}: the task ahead: {e}"))?;
            let v = tokio::time::timeout(Duration::from_secs(10), between)
                .await
                .map_err(|_| "the task submitted meanwhile hung".to_string())?
                .map_err(|e| format!("round {round}: the task submitted meanwhile: {e}"))?;
            check(v == round, || format!("echo gave {v}"))?;
        }
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

/// Runs `f` on a thread; an error when it does not return within `limit`.
fn bounded(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .map_err(|_| format!("{what} did not return within {limit:?}"))
}

/// Issue 13, item 3: a withdrawn task in the queue must not make a drain hang.
fn drain_after_a_withdrawn_task_ends() -> Result<(), String> {
    for round in 0..3 {
        let pool = build(ProcessPool::builder().workers(1).max_tasks_per_worker(1))?;
        let a = pool
            .submit_blocking(&SLEEP_MS, 100)
            .map_err(|e| e.to_string())?;
        drop(pool.submit_blocking(&ECHO, 1).map_err(|e| e.to_string())?);
        a.blocking_wait().map_err(|e| e.to_string())?;
        let p = pool.clone();
        bounded(Duration::from_secs(10), "shutdown(Drain)", move || {
            p.shutdown_blocking(ShutdownMode::Drain)
        })
        .map_err(|e| format!("round {round}: {e}"))?;
    }
    Ok(())
}

/// Issue 13, item 3, second form: a worker killed during the drain; the drain still ends.
fn drain_with_a_worker_killed_meanwhile_ends() -> Result<(), String> {
    let pool = build(ProcessPool::builder().workers(1).max_tasks_per_worker(1))?;
    let running = pool
        .submit_blocking(&SLEEP_MS, 2_000)
        .map_err(|e| e.to_string())?;
    drop(pool.submit_blocking(&ECHO, 1).map_err(|e| e.to_string())?);
    let queued = pool.submit_blocking(&ECHO, 2).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    while pool.worker_pids().is_empty() {
        check(t0.elapsed() < Duration::from_secs(10), || {
            "no worker".into()
        })?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = pool.worker_pids()[0];
    let p = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        p.shutdown_blocking(ShutdownMode::Drain);
        let _ = tx.send(());
    });
    std::thread::sleep(Duration::from_millis(200));
    process_support::sigkill(pid);
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "shutdown(Drain) did not return 10 s after the kill".to_string())?;
    let e = running.blocking_wait().expect_err("its worker was killed");
    check(e.is_worker_died(), || format!("worker died expected: {e}"))?;
    let v = queued
        .blocking_wait()
        .map_err(|e| format!("the queued task: {e}"))?;
    check(v == 2, || format!("echo gave {v}"))
}

/// Issue 13, item 4: a result whose decoding panics on a pool thread fails that task with a
/// panic; the worker's later tasks finish and the pool drains.
fn a_panic_while_decoding_fails_only_its_task() -> Result<(), String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if !msg.starts_with("bomb") {
            eprintln!("{info}");
        }
    }));
    let r = rt().block_on(async {
        // No own read: the pool's slot thread decodes the answer.
        let pool = build(
            ProcessPool::builder()
                .workers(1)
                .result_wait(Duration::ZERO),
        )?;
        let h = submit(&pool, &BOMB, ()).await?;
        let out = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "the task whose result panics hung".to_string())?;
        let e = out.err().ok_or("decoding panicked: an error expected")?;
        check(e.is_panic(), || format!("a panic expected: {e}"))?;
        check(e.to_string().contains("bomb"), || {
            format!("the panic's message expected: {e}")
        })?;
        for i in 0..3u64 {
            let v = tokio::time::timeout(Duration::from_secs(10), async {
                pool.submit(&ECHO, i).await?.await
            })
            .await
            .map_err(|_| "a later task hung".to_string())?
            .map_err(|e| format!("a later task: {e}"))?;
            check(v == i, || format!("echo gave {v}"))?;
        }
        let p = pool.clone();
        bounded(Duration::from_secs(10), "shutdown(Drain)", move || {
            p.shutdown_blocking(ShutdownMode::Drain)
        })
    });
    std::panic::set_hook(hook);
    r
}

/// Issue 13, item 9: a deadline counts from when the worker starts the task, not from its
/// submission: a task that waits 600 ms in the queue and runs 100 ms meets a 400 ms deadline.
fn a_deadline_counts_from_the_start() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        warm(&pool, 1).await?;
        let busy = submit(&pool, &SLEEP_MS, 600).await?;
        let h = pool
            .submit_timeout(&SLEEP_MS, 100, Duration::from_millis(400))
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "the task with a deadline hung".to_string())?
            .map_err(|e| format!("the queue time counted against the deadline: {e}"))?;
        busy.await.map_err(|e| e.to_string())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

/// Issue 13, item 10: a finished task's run info names the worker process that ran it.
fn run_info_names_the_workers_pid() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let mut h = submit(&pool, &PID, ()).await?;
        let pid = tokio::task::block_in_place(|| h.blocking_wait_timeout(Duration::from_secs(10)))
            .ok_or("hung")?
            .map_err(|e| e.to_string())?;
        let info = h.run_info().ok_or("run info of a finished task")?;
        check(info.pid == Some(pid), || {
            format!("run info pid {:?}, the worker's {pid}", info.pid)
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(&[&ECHO, &PID, &SLEEP_MS, &BOMB]);
    process_support::run(&[
        (
            "no_task_waits_behind_a_running_one_while_a_worker_is_free",
            no_task_waits_behind_a_running_one_while_a_worker_is_free,
        ),
        (
            "cancel_of_a_written_task_fails_it_alone",
            cancel_of_a_written_task_fails_it_alone,
        ),
        (
            "drain_after_a_withdrawn_task_ends",
            drain_after_a_withdrawn_task_ends,
        ),
        (
            "drain_with_a_worker_killed_meanwhile_ends",
            drain_with_a_worker_killed_meanwhile_ends,
        ),
        (
            "a_panic_while_decoding_fails_only_its_task",
            a_panic_while_decoding_fails_only_its_task,
        ),
        (
            "a_deadline_counts_from_the_start",
            a_deadline_counts_from_the_start,
        ),
        (
            "run_info_names_the_workers_pid",
            run_info_names_the_workers_pid,
        ),
    ]);
    std::process::exit(0);
}
