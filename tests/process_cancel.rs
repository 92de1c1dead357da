//! Cancelling a running process task kills its worker; the outcome is "cancelled" and the
//! worker is replaced. Cancelling a queued task withdraws it. Cancelling a task that already
//! finished (its answer not read yet) kills nothing.

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, PID, SLEEP_MS, build, call, check, rt, submit};

fn cancel_kills_the_running_task() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let pid = call(&pool, &PID, ()).await?;
        let h = submit(&pool, &SLEEP_MS, 30_000).await?;
        check(h.is_killable(), || "a process task is killable".into())?;
        // Queued behind it: a task we withdraw before it starts.
        let queued = submit(&pool, &ECHO, 1).await?;
        let queued2 = submit(&pool, &ECHO, 2).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        check(queued2.cancel(), || "withdrawing a queued task".into())?;
        check(h.cancel(), || {
            "cancel of a running process task returns true".into()
        })?;
        let e = h.await.expect_err("cancelled");
        check(e.is_cancelled(), || format!("cancelled expected: {e}"))?;
        check(t0.elapsed() < Duration::from_secs(5), || {
            "cancel took too long".into()
        })?;
        let e2 = queued2.await.expect_err("withdrawn");
        check(e2.is_cancelled(), || format!("{e2}"))?;
        // The task queued behind the killed one still runs, on the replacement.
        let v = queued
            .await
            .map_err(|e| format!("the task behind the killed one: {e}"))?;
        check(v == 1, || format!("echo gave {v}"))?;
        let pid2 = call(&pool, &PID, ()).await?;
        check(pid2 != pid, || "the worker must have been replaced".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

/// Nobody reads an answer until its handle waits; a cancel must not take such a finished task
/// for a running one and kill its worker, which by then runs the next task.
fn cancel_of_a_finished_unread_task_kills_nothing() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let pid = call(&pool, &PID, ()).await?;
        // Finishes at once; its handle is not awaited yet, so its answer stays in the pipe.
        let finished = submit(&pool, &ECHO, 7).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Sent behind it to the same worker, which runs it now.
        let next = submit(&pool, &SLEEP_MS, 300).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        check(!finished.cancel(), || {
            "cancel of a task that already finished returns false".into()
        })?;
        let v = finished
            .await
            .map_err(|e| format!("the finished task: {e}"))?;
        check(v == 7, || format!("echo gave {v}"))?;
        let ran_on = next
            .await
            .map_err(|e| format!("the task behind the finished one: {e}"))?;
        check(ran_on == pid && pool.respawns() == 0, || {
            format!(
                "no worker may be killed: ran on {ran_on}, first worker {pid}, respawns {}",
                pool.respawns()
            )
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[
        (
            "cancel_kills_the_running_task",
            cancel_kills_the_running_task,
        ),
        (
            "cancel_of_a_finished_unread_task_kills_nothing",
            cancel_of_a_finished_unread_task_kills_nothing,
        ),
    ]);
}
