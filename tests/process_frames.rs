//! Oversized and garbage frames are errors of their task, never a crash or a hang.

mod process_support;

use std::io::Write;
use std::os::fd::FromRawFd;

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode, TrySubmitError};
use process_support::{ECHO, check, rt};

static BIG_RESULT: RemoteFn<usize, Vec<u8>> = RemoteFn::new("big_result", |n| vec![7u8; n]);
static LEN: RemoteFn<Vec<u8>, usize> = RemoteFn::new("len", |v| v.len());
static GARBAGE: RemoteFn<(), ()> = RemoteFn::new("garbage", |()| {
    // Write garbage onto the protocol's answer pipe (the first descriptor), as a buggy task
    // or memory corruption could.
    let fd: i32 = std::env::var("OFFLOAD_WORKER")
        .ok()
        .and_then(|v| v.split(',').next().and_then(|f| f.parse().ok()))
        .expect("a worker knows its descriptor");
    // SAFETY: the test deliberately borrows the worker's pipe; ManuallyDrop keeps it open.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = f.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
    let _ = f.flush();
    std::thread::sleep(std::time::Duration::from_millis(500));
});
static UNREGISTERED: RemoteFn<u64, u64> = RemoteFn::new("unregistered", |x| x);

fn oversized_arguments_fail_at_submit() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .max_frame_size(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&LEN, vec![0u8; 100_000])
            .await
            .expect_err("too large");
        check(e.is_encoding(), || format!("encoding error expected: {e}"))?;
        check(e.to_string().contains("maximum frame size"), || {
            e.to_string()
        })?;
        // try_submit says why (not "shut down") and hands the arguments back.
        match pool.try_submit(&LEN, vec![3u8; 100_000]) {
            Err(TrySubmitError::Rejected(back, e)) => {
                let s = e.to_string();
                check(
                    e.is_encoding() && s.contains("maximum frame size") && s.contains("65536"),
                    || format!("an encoding error naming the size expected: {s}"),
                )?;
                check(back.len() == 100_000 && back[0] == 3, || {
                    "the arguments come back whole".into()
                })?;
            }
            Err(other) => return Err(format!("Rejected expected, got {other:?}")),
            Ok(_) => return Err("Rejected expected, got a handle".into()),
        }
        let ok = pool
            .submit(&LEN, vec![0u8; 1000])
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(ok.ok() == Some(1000), || "a small frame still works".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        // After shutdown: ShutDown, the arguments back.
        match pool.try_submit(&LEN, vec![0u8; 10]) {
            Err(TrySubmitError::ShutDown(back)) => {
                check(back.len() == 10, || "the arguments come back".into())?;
            }
            Err(other) => return Err(format!("ShutDown expected, got {other:?}")),
            Ok(_) => return Err("ShutDown expected, got a handle".into()),
        }
        Ok(())
    })
}

fn oversized_result_is_an_error_of_its_task() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .max_frame_size(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&BIG_RESULT, 200_000)
            .await
            .map_err(|e| e.to_string())?
            .await
            .expect_err("too large");
        check(e.is_encoding(), || format!("encoding error expected: {e}"))?;
        let ok = pool
            .submit(&BIG_RESULT, 10)
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(ok.map(|v| v.len()).ok() == Some(10), || {
            "a small result still works".into()
        })?;
        check(pool.respawns() == 0, || {
            "the worker survives an oversized result".into()
        })?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn garbage_from_a_worker_fails_its_task_and_replaces_it() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&GARBAGE, ())
            .await
            .map_err(|e| e.to_string())?
            .await
            .expect_err("garbage");
        check(e.is_encoding() || e.is_remote(), || {
            format!("a protocol error expected: {e}")
        })?;
        let v = pool
            .submit(&ECHO, 3)
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(v.ok() == Some(3), || "the pool serves on".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn an_unregistered_function_is_a_clear_error() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .build()
            .map_err(|e| e.to_string())?;
        let e = pool
            .submit(&UNREGISTERED, 1)
            .await
            .expect_err("not registered");
        check(
            e.is_remote() && e.to_string().contains("offload::init"),
            || e.to_string(),
        )?;
        match pool.try_submit(&UNREGISTERED, 1) {
            Err(TrySubmitError::Rejected(1, e)) => {
                check(e.is_remote(), || format!("a remote error expected: {e}"))?;
            }
            Err(other) => return Err(format!("Rejected expected, got {other:?}")),
            Ok(_) => return Err("Rejected expected, got a handle".into()),
        }
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&BIG_RESULT, &LEN, &GARBAGE, &ECHO];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[
        (
            "oversized_arguments_fail_at_submit",
            oversized_arguments_fail_at_submit,
        ),
        (
            "oversized_result_is_an_error_of_its_task",
            oversized_result_is_an_error_of_its_task,
        ),
        (
            "garbage_from_a_worker_fails_its_task_and_replaces_it",
            garbage_from_a_worker_fails_its_task_and_replaces_it,
        ),
        (
            "an_unregistered_function_is_a_clear_error",
            an_unregistered_function_is_a_clear_error,
        ),
    ]);
}
