//! A task past its deadline is killed with its worker and fails with "timed out"; the worker
//! is replaced.

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, PID, SLEEP_MS, build, call, check, outcome, rt, submit};

fn deadline_kills_the_worker() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let pid = call(&pool, &PID, ()).await?;
        let t0 = Instant::now();
        let h = pool
            .submit_timeout(&SLEEP_MS, 30_000, Duration::from_millis(300))
            .await
            .map_err(|e| e.to_string())?;
        let e = h.await.expect_err("past its deadline");
        let took = t0.elapsed();
        check(e.is_timeout(), || format!("timed out expected: {e}"))?;
        check(took < Duration::from_secs(5), || format!("took {took:?}"))?;
        check(e.pid() == Some(pid), || {
            format!("pid of the killed worker: {e}")
        })?;
        check(e.to_string().contains("timed out after 300ms"), || {
            e.to_string()
        })?;
        let v = outcome(&pool, &ECHO, 9).await?;
        check(v.ok() == Some(9), || "echo after the timeout".into())?;
        let pid2 = call(&pool, &PID, ()).await?;
        check(pid2 != pid, || "the worker must have been replaced".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

/// Tasks that end right at their deadline, each followed by a task without one: the kill
/// that lands just after a deadline task finished must never fail (or re-run) the next task.
fn a_kill_at_the_deadline_never_hits_another_task() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        for i in 0..60u64 {
            let edge = pool
                .submit_timeout(&SLEEP_MS, 5, Duration::from_millis(5))
                .await
                .map_err(|e| e.to_string())?;
            let next = submit(&pool, &ECHO, i).await?;
            let (edge, next) = (edge.await, next.await);
            check(
                edge.is_ok() || edge.as_ref().is_err_and(|e| e.is_timeout()),
                || format!("the edge task: {edge:?}"),
            )?;
            check(next.as_ref().is_ok_and(|&v| v == i), || {
                format!("round {i}: the task after a deadline task got {next:?}")
            })?;
        }
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn pool_wide_task_timeout() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(
            ProcessPool::builder()
                .workers(1)
                .task_timeout(Duration::from_millis(200)),
        )?;
        let fast = outcome(&pool, &SLEEP_MS, 10).await?;
        check(fast.is_ok(), || format!("a fast task: {fast:?}"))?;
        let slow = outcome(&pool, &SLEEP_MS, 10_000).await?;
        check(slow.as_ref().is_err_and(|e| e.is_timeout()), || {
            format!("{slow:?}")
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[
        ("deadline_kills_the_worker", deadline_kills_the_worker),
        ("pool_wide_task_timeout", pool_wide_task_timeout),
        (
            "a_kill_at_the_deadline_never_hits_another_task",
            a_kill_at_the_deadline_never_hits_another_task,
        ),
    ]);
}
