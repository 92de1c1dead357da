//! A worker killed by a signal fails only its task (with the signal and pid), is replaced,
//! and the pool serves on.

mod process_support;

use std::time::Duration;

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, SLEEP_MS, build, call, check, outcome, rt, sigkill, submit};

fn sigkill_mid_task_fails_only_that_task() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        // Learn the worker's pid from a task, then kill it while it sleeps in another.
        let pid = call(&pool, &SLEEP_MS, 0).await?;
        let long = submit(&pool, &SLEEP_MS, 30_000).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        sigkill(pid);
        let e = long.await.expect_err("the killed task must fail");
        check(e.is_worker_died(), || format!("worker died expected: {e}"))?;
        check(e.signal() == Some(9), || format!("signal 9 expected: {e}"))?;
        check(e.pid() == Some(pid), || format!("pid {pid} expected: {e}"))?;
        check(e.to_string().contains("signal 9"), || e.to_string())?;
        for i in 0..100u64 {
            let v = outcome(&pool, &ECHO, i)
                .await?
                .map_err(|e| format!("task {i} after the kill: {e}"))?;
            check(v == i, || format!("echo {i} gave {v}"))?;
        }
        check(pool.respawns() >= 1, || "no respawn counted".into())?;
        check(!pool.worker_pids().contains(&pid), || {
            "the dead pid is still listed".into()
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[(
        "sigkill_mid_task_fails_only_that_task",
        sigkill_mid_task_fails_only_that_task,
    )]);
}
