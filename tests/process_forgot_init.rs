//! A binary that forgot `offload::init` gets a clear error naming the fix, not a hang: in the
//! parent (the pool refuses to build) and in a worker that never reaches `init`.

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, build, check, outcome, rt};

fn a_worker_that_never_reaches_init_breaks_the_pool_with_the_fix() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1).env("FORGET_INIT", "exit"))?;
        let t0 = Instant::now();
        let e = outcome(&pool, &ECHO, 1).await?.expect_err("no worker");
        check(e.kind() == offload::ErrorKind::Pool, || {
            format!("pool error expected: {e}")
        })?;
        check(e.to_string().contains("offload::init"), || e.to_string())?;
        check(t0.elapsed() < Duration::from_secs(10), || {
            format!("took {:?}", t0.elapsed())
        })?;
        pool.shutdown(ShutdownMode::Cancel).await;
        Ok(())
    })
}

fn a_silent_worker_hits_the_handshake_timeout() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(
            ProcessPool::builder()
                .workers(1)
                .env("FORGET_INIT", "hang")
                .handshake_timeout(Duration::from_millis(300))
                .max_start_failures(2),
        )?;
        let e = outcome(&pool, &ECHO, 1).await?.expect_err("no worker");
        check(e.kind() == offload::ErrorKind::Pool, || {
            format!("pool error expected: {e}")
        })?;
        let s = e.to_string();
        check(
            s.contains("handshake") && s.contains("offload::init"),
            || s.clone(),
        )?;
        pool.shutdown(ShutdownMode::Cancel).await;
        check(process_support::children().is_empty(), || {
            "silent workers reaped".into()
        })?;
        Ok(())
    })
}

fn a_parent_without_init_cannot_build_a_pool() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .env("PARENT_NO_INIT", "1")
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    check(
        out.status.success() && text.contains("offload::init"),
        || format!("status {:?}, output {text:?}", out.status),
    )
}

fn main() {
    if std::env::var_os("PARENT_NO_INIT").is_some() {
        match ProcessPool::new(1) {
            Err(e) => println!("refused: {e}"),
            Ok(_) => std::process::exit(2),
        }
        return;
    }
    match std::env::var("FORGET_INIT").as_deref() {
        // A worker started from a main that does not call init first: it runs the program.
        Ok("exit") => return,
        Ok("hang") => {
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        _ => offload::init(process_support::FUNCTIONS),
    }
    process_support::run(&[
        (
            "a_worker_that_never_reaches_init_breaks_the_pool_with_the_fix",
            a_worker_that_never_reaches_init_breaks_the_pool_with_the_fix,
        ),
        (
            "a_silent_worker_hits_the_handshake_timeout",
            a_silent_worker_hits_the_handshake_timeout,
        ),
        (
            "a_parent_without_init_cannot_build_a_pool",
            a_parent_without_init_cannot_build_a_pool,
        ),
    ]);
}
