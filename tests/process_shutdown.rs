//! After shutdown no child process is left (checked in /proc); Drain runs queued work,
//! Cancel fails it; submit is refused afterwards; map keeps order with per-item errors.

mod process_support;

use std::time::Duration;

use futures::StreamExt;
use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, PANIC, SLEEP_MS, build, check, children, rt, submit};

fn no_child_left_after_shutdown() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(2))?;
        let mut hs = Vec::new();
        for i in 0..10u64 {
            hs.push(submit(&pool, &ECHO, i).await?);
        }
        for h in hs {
            h.await.map_err(|e| e.to_string())?;
        }
        check(children().len() >= 2, || {
            format!("workers running: {:?}", children())
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        let left = children();
        check(left.is_empty(), || {
            format!("children left after shutdown: {left:?}")
        })?;
        let e = pool
            .submit(&ECHO, 1)
            .await
            .expect_err("refused after shutdown");
        check(e.is_shut_down(), || e.to_string())?;
        Ok(())
    })
}

fn drain_runs_queued_work_and_cancel_fails_it() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let mut hs = Vec::new();
        for _ in 0..4 {
            hs.push(submit(&pool, &SLEEP_MS, 50).await?);
        }
        pool.shutdown(ShutdownMode::Drain).await;
        for h in hs {
            check(h.await.is_ok(), || "drain runs every queued task".into())?;
        }
        let pool = build(ProcessPool::builder().workers(1))?;
        let running = submit(&pool, &SLEEP_MS, 300).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut queued = Vec::new();
        for _ in 0..4 {
            queued.push(submit(&pool, &SLEEP_MS, 300).await?);
        }
        pool.shutdown(ShutdownMode::Cancel).await;
        check(running.await.is_ok(), || "the running task finishes".into())?;
        let mut cancelled = 0;
        for h in queued {
            match h.await {
                Err(e) if e.is_shut_down() => cancelled += 1,
                _ => {}
            }
        }
        // One may already sit in the worker's request pipe (pipelined) and run.
        check(cancelled >= 3, || {
            format!("{cancelled} of 4 queued tasks failed with shut down")
        })?;
        check(children().is_empty(), || {
            format!("children left: {:?}", children())
        })?;
        Ok(())
    })
}

fn dropping_the_pool_reaps_its_workers() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(2))?;
        let h = submit(&pool, &SLEEP_MS, 10_000).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(pool);
        let e = h.await.expect_err("killed with the pool");
        check(e.is_shut_down(), || e.to_string())?;
        check(children().is_empty(), || {
            format!("children left: {:?}", children())
        })?;
        Ok(())
    })
}

fn map_keeps_order_and_per_item_errors() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(2))?;
        let out: Vec<u64> = pool
            .map(&ECHO, 0..10_000u64)
            .map(|r| r.expect("echo does not fail"))
            .collect()
            .await;
        check(out == (0..10_000).collect::<Vec<_>>(), || {
            "map order".into()
        })?;
        let msgs = vec!["a".to_string(), "b".to_string()];
        let errs: Vec<_> = pool.map_chunked(&PANIC, msgs, 2).collect().await;
        check(errs.len() == 2, || "one outcome per item".into())?;
        check(
            errs.iter().all(|r| r.as_ref().is_err_and(|e| e.is_panic())),
            || format!("{errs:?}"),
        )?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[
        ("no_child_left_after_shutdown", no_child_left_after_shutdown),
        (
            "drain_runs_queued_work_and_cancel_fails_it",
            drain_runs_queued_work_and_cancel_fails_it,
        ),
        (
            "dropping_the_pool_reaps_its_workers",
            dropping_the_pool_reaps_its_workers,
        ),
        (
            "map_keeps_order_and_per_item_errors",
            map_keeps_order_and_per_item_errors,
        ),
    ]);
}
