//! A host that restored the default action of `SIGPIPE` (Rust programs ignore it) survives a
//! write to a worker that no longer reads its request pipe: the write fails, the task is sent
//! to a replacement, and the host lives on.

mod process_support;

use std::time::Duration;

use offload::{ProcessPool, RemoteFn, ShutdownMode};
use process_support::{ECHO, build, check, rt, submit};

/// Closes the worker's request pipe (the second descriptor of `OFFLOAD_WORKER`), as a buggy
/// task could, then stays alive a while: the pool's next write there has no reader.
static CLOSE_REQUESTS: RemoteFn<u64, ()> = RemoteFn::new("close_requests", |ms| {
    let fd: i32 = std::env::var("OFFLOAD_WORKER")
        .ok()
        .and_then(|v| v.split(',').nth(1).and_then(|f| f.parse().ok()))
        .expect("a worker knows its descriptors");
    #[allow(unsafe_code)]
    // SAFETY: the test deliberately closes the worker's own request pipe; nothing in this
    // process uses the descriptor until the worker's next read, which then fails.
    unsafe {
        libc::close(fd);
    }
    std::thread::sleep(Duration::from_millis(ms));
});

fn a_worker_gone_deaf_does_not_kill_a_host_with_default_sigpipe() -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: signal() with SIG_DFL only sets the disposition; no handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let deaf = submit(&pool, &CLOSE_REQUESTS, 300).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Pipelined to the same worker: written to a pipe nobody reads.
        let after = submit(&pool, &ECHO, 5).await?;
        deaf.await
            .map_err(|e| format!("the task that closed the pipe still answers: {e}"))?;
        let v = after
            .await
            .map_err(|e| format!("the task written to the deaf worker: {e}"))?;
        check(v == 5, || format!("echo gave {v}"))?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    let mut functions = process_support::FUNCTIONS.to_vec();
    functions.push(&CLOSE_REQUESTS);
    offload::init(&functions);
    process_support::run(&[(
        "a_worker_gone_deaf_does_not_kill_a_host_with_default_sigpipe",
        a_worker_gone_deaf_does_not_kill_a_host_with_default_sigpipe,
    )]);
}
