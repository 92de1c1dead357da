//! A task that prints to stdout (and stderr) cannot corrupt the protocol: frames travel on
//! a dedicated descriptor.

mod process_support;

use std::io::Write;

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode};
use process_support::{build, check, rt, submit};

static NOISY: RemoteFn<u64, u64> = RemoteFn::new("noisy", |x| {
    let mut out = std::io::stdout().lock();
    // Bytes that look like a frame header, then text.
    let _ = out.write_all(&[0, 0, 0, 5, 1, 0xff, 0xff, 0xff, 0xff]);
    let _ = writeln!(out, "\nnoisy task {x} writes to stdout");
    let _ = out.flush();
    eprintln!("noisy task {x} writes to stderr");
    x + 1
});

fn printing_to_stdout_does_not_break_the_pool() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(2))?;
        let mut handles = Vec::new();
        for i in 0..20u64 {
            handles.push(submit(&pool, &NOISY, i).await?);
        }
        for (i, h) in handles.into_iter().enumerate() {
            let v = h.await.map_err(|e| e.to_string())?;
            check(v == i as u64 + 1, || format!("task {i} gave {v}"))?;
        }
        check(pool.respawns() == 0, || "no worker may die".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&NOISY];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[(
        "printing_to_stdout_does_not_break_the_pool",
        printing_to_stdout_does_not_break_the_pool,
    )]);
}
