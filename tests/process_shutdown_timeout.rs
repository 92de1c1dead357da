//! Shutdown with a time limit, and `ShutdownMode::Kill`: running tasks that would run for
//! ever are killed, each failing "shut down"; no worker is left. harness = false: `main` calls
//! `offload::init` first.

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, SLEEP_MS, build, check, children, rt, submit};

/// Drain with a limit the running tasks overrun: escalates to Kill, returns false, every task
/// fails "shut down", no child is left.
fn drain_past_its_limit_kills() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(2))?;
        let mut running = Vec::new();
        for _ in 0..2 {
            running.push(submit(&pool, &SLEEP_MS, 60_000).await?);
        }
        let queued = submit(&pool, &SLEEP_MS, 60_000).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let clean = tokio::time::timeout(
            Duration::from_secs(10),
            pool.shutdown_timeout(ShutdownMode::Drain, Duration::from_millis(300)),
        )
        .await
        .map_err(|_| "shutdown_timeout hung".to_string())?;
        check(!clean, || {
            "a drain past its limit reports the escalation".into()
        })?;
        check(t0.elapsed() >= Duration::from_millis(300), || {
            "the drain waited its limit first".into()
        })?;
        for h in running.into_iter().chain([queued]) {
            let e = h.await.expect_err("killed");
            check(e.is_shut_down(), || format!("shut down expected: {e}"))?;
        }
        let left = children();
        check(left.is_empty(), || format!("children left: {left:?}"))
    })
}

/// Drain within its limit: returns true, tasks finish.
fn drain_within_its_limit_is_clean() -> Result<(), String> {
    let pool = build(ProcessPool::builder().workers(2))?;
    let mut hs = Vec::new();
    for i in 0..6u64 {
        hs.push(pool.submit_blocking(&ECHO, i).map_err(|e| e.to_string())?);
    }
    let clean = pool.shutdown_timeout_blocking(ShutdownMode::Drain, Duration::from_secs(20));
    check(clean, || "a drain within its limit is clean".into())?;
    for (i, h) in hs.into_iter().enumerate() {
        let v = h.blocking_wait().map_err(|e| e.to_string())?;
        check(v == i as u64, || format!("echo gave {v}"))?;
    }
    let left = children();
    check(left.is_empty(), || format!("children left: {left:?}"))
}

/// `shutdown(Kill)`: the running task fails "shut down" (not "worker died"), the queued one
/// too, at once.
fn kill_mode_fails_running_tasks_as_shut_down() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let running = submit(&pool, &SLEEP_MS, 60_000).await?;
        let queued = submit(&pool, &SLEEP_MS, 1).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::time::timeout(Duration::from_secs(10), pool.shutdown(ShutdownMode::Kill))
            .await
            .map_err(|_| "shutdown(Kill) hung".to_string())?;
        for h in [running, queued] {
            let e = h.await.expect_err("killed");
            check(e.is_shut_down(), || format!("shut down expected: {e}"))?;
        }
        let left = children();
        check(left.is_empty(), || format!("children left: {left:?}"))
    })
}

/// Blocking face, Cancel mode past its limit.
fn cancel_past_its_limit_blocking() -> Result<(), String> {
    let pool = build(ProcessPool::builder().workers(1))?;
    let running = pool
        .submit_blocking(&SLEEP_MS, 60_000)
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let clean = pool.shutdown_timeout_blocking(ShutdownMode::Cancel, Duration::from_millis(200));
    check(!clean, || "escalated".into())?;
    let e = running.blocking_wait().expect_err("killed");
    check(e.is_shut_down(), || format!("shut down expected: {e}"))?;
    let left = children();
    check(left.is_empty(), || format!("children left: {left:?}"))
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[
        ("drain_past_its_limit_kills", drain_past_its_limit_kills),
        (
            "drain_within_its_limit_is_clean",
            drain_within_its_limit_is_clean,
        ),
        (
            "kill_mode_fails_running_tasks_as_shut_down",
            kill_mode_fails_running_tasks_as_shut_down,
        ),
        (
            "cancel_past_its_limit_blocking",
            cancel_past_its_limit_blocking,
        ),
    ]);
    std::process::exit(0);
}
