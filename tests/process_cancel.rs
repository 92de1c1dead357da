//! Cancelling a running process task kills its worker; the outcome is "cancelled" and the
//! worker is replaced. Cancelling a queued task withdraws it.

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, PID, SLEEP_MS, check, rt};

fn cancel_kills_the_running_task() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .build()
            .map_err(|e| e.to_string())?;
        let pid = pool
            .submit(&PID, ())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let h = pool
            .submit(&SLEEP_MS, 30_000)
            .await
            .map_err(|e| e.to_string())?;
        check(h.is_killable(), || "a process task is killable".into())?;
        // Queued behind it: a task we withdraw before it starts.
        let queued = pool.submit(&ECHO, 1).await.map_err(|e| e.to_string())?;
        let queued2 = pool.submit(&ECHO, 2).await.map_err(|e| e.to_string())?;
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
        let pid2 = pool
            .submit(&PID, ())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        check(pid2 != pid, || "the worker must have been replaced".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[(
        "cancel_kills_the_running_task",
        cancel_kills_the_running_task,
    )]);
}
