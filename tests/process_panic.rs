//! A panic in a worker crosses the process boundary with its message and backtrace; the
//! worker survives it.

mod process_support;

use offload::{ProcessPool, ShutdownMode};
use process_support::{ECHO, PANIC, PID, build, check, outcome, rt, submit};

fn panic_message_and_backtrace_arrive() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let pid_before = outcome(&pool, &PID, ()).await?;
        let h = submit(&pool, &PANIC, "bad input 42".to_string()).await?;
        let e = h.await.expect_err("a panic is an error");
        check(e.is_panic(), || format!("panic expected: {e}"))?;
        let msg = e.panic_message().unwrap_or_default();
        check(msg.contains("bad input 42"), || format!("message: {msg:?}"))?;
        check(msg.contains("process_support"), || {
            format!("location: {msg:?}")
        })?;
        let s = e.to_string();
        check(
            s.contains("\"panic\"") && s.contains("processes worker 0"),
            || s.clone(),
        )?;
        check(e.backtrace().is_some_and(|b| !b.is_empty()), || {
            "no backtrace".into()
        })?;
        // The same worker goes on.
        let pid_after = outcome(&pool, &PID, ()).await?;
        check(pid_before.ok() == pid_after.ok(), || {
            "a panic must not kill the worker".into()
        })?;
        let v = outcome(&pool, &ECHO, 5).await?;
        check(v.ok() == Some(5), || "echo after the panic".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[(
        "panic_message_and_backtrace_arrive",
        panic_message_and_backtrace_arrive,
    )]);
}
