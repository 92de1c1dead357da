//! A task that breaches the memory cap kills only its worker: "worker died", not a broken
//! pool.

mod process_support;

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode};
use process_support::{ECHO, check, rt};

static HOG: RemoteFn<usize, usize> = RemoteFn::new("hog", |mb| {
    let mut v: Vec<u8> = Vec::with_capacity(mb << 20);
    v.resize(mb << 20, 1);
    v.iter().map(|&b| b as usize).sum()
});

fn memory_cap_breach_is_worker_died() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .memory_limit(512 << 20)
            .build()
            .map_err(|e| e.to_string())?;
        let small = pool
            .submit(&HOG, 16)
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(small.ok() == Some(16 << 20), || {
            "16 MiB fits under the cap".into()
        })?;
        let e = pool
            .submit(&HOG, 2048)
            .await
            .map_err(|e| e.to_string())?
            .await
            .expect_err("over the cap");
        check(e.is_worker_died(), || format!("worker died expected: {e}"))?;
        check(e.signal().is_some() || e.exit_code().is_some(), || {
            format!("exit info: {e}")
        })?;
        check(pool.broken().is_none(), || "the pool is not broken".into())?;
        let v = pool
            .submit(&ECHO, 1)
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(v.ok() == Some(1), || "the pool serves on".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&HOG, &ECHO];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[(
        "memory_cap_breach_is_worker_died",
        memory_cap_breach_is_worker_died,
    )]);
}
