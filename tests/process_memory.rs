//! A task that breaches the memory cap kills only its worker: "worker died", not a broken
//! pool.

mod process_support;

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode};
use process_support::{ECHO, build, check, outcome, rt, submit};

static HOG: RemoteFn<usize, usize> = RemoteFn::new("hog", |mb| {
    let mut v: Vec<u8> = Vec::with_capacity(mb << 20);
    v.resize(mb << 20, 1);
    v.iter().map(|&b| b as usize).sum()
});

fn memory_cap_breach_is_worker_died() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1).memory_limit(512 << 20))?;
        let small = outcome(&pool, &HOG, 16).await?;
        check(small.ok() == Some(16 << 20), || {
            "16 MiB fits under the cap".into()
        })?;
        let e = outcome(&pool, &HOG, 2048).await?.expect_err("over the cap");
        check(e.is_worker_died(), || format!("worker died expected: {e}"))?;
        check(e.signal().is_some() || e.exit_code().is_some(), || {
            format!("exit info: {e}")
        })?;
        check(pool.broken().is_none(), || "the pool is not broken".into())?;
        let v = outcome(&pool, &ECHO, 1).await?;
        check(v.ok() == Some(1), || "the pool serves on".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

static LEN: RemoteFn<Vec<u8>, usize> = RemoteFn::new("len", |v| v.len());

fn arguments_over_the_cap_fail_their_task_not_the_pool() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(
            ProcessPool::builder()
                .workers(1)
                .memory_limit(160 << 20)
                .max_frame_size(256 << 20),
        )?;
        // Reading these arguments kills every worker that tries: the task must fail after a
        // bounded number of tries, not restart workers for ever.
        let h = submit(&pool, &LEN, vec![7u8; 192 << 20]).await?;
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), h)
            .await
            .map_err(|_| format!("no outcome; {} respawns so far", pool.respawns()))?;
        let e = out.expect_err("the arguments do not fit under the cap");
        check(e.is_worker_died(), || format!("worker died expected: {e}"))?;
        check(pool.respawns() <= 4, || {
            format!("{} respawns for one task", pool.respawns())
        })?;
        let v = outcome(&pool, &LEN, vec![1u8; 1000]).await?;
        check(v.ok() == Some(1000), || "the pool serves on".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&HOG, &ECHO, &LEN];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[
        (
            "memory_cap_breach_is_worker_died",
            memory_cap_breach_is_worker_died,
        ),
        (
            "arguments_over_the_cap_fail_their_task_not_the_pool",
            arguments_over_the_cap_fail_their_task_not_the_pool,
        ),
    ]);
}
