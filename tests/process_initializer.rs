//! The initializer runs in every worker, replacements included, before its first task; the
//! shared read-only data reaches every worker once.

mod process_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use offload::{AnyRemoteFn, ProcessPool, RemoteFn, ShutdownMode, TrySubmitError};
use process_support::{PID, check, rt, sigkill};

static INITIALIZED: AtomicU64 = AtomicU64::new(0);

static INIT: RemoteFn<u64, ()> = RemoteFn::new("init", |v| INITIALIZED.store(v, Ordering::SeqCst));
static READ_INIT: RemoteFn<(), u64> =
    RemoteFn::new("read_init", |()| INITIALIZED.load(Ordering::SeqCst));
static LOOKUP: RemoteFn<String, Option<u32>> = RemoteFn::new("lookup", |k| {
    offload::shared::<HashMap<String, u32>>()
        .expect("the pool gave shared data")
        .get(&k)
        .copied()
});
static FAILING_INIT: RemoteFn<(), ()> = RemoteFn::new("failing_init", |()| panic!("init failed"));

fn initializer_runs_on_a_respawned_worker() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .initializer(&INIT, 77)
            .build()
            .map_err(|e| e.to_string())?;
        let v = pool
            .submit(&READ_INIT, ())
            .await
            .map_err(|e| e.to_string())?
            .await;
        check(v.as_ref().ok() == Some(&77), || {
            format!("first worker: {v:?}")
        })?;
        let pid = pool
            .submit(&PID, ())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        sigkill(pid);
        // Wait for the replacement, then ask it.
        let mut v = Err("no answer".to_string());
        for _ in 0..50 {
            match pool
                .submit(&READ_INIT, ())
                .await
                .map_err(|e| e.to_string())?
                .await
            {
                Ok(x) => {
                    v = Ok(x);
                    break;
                }
                Err(e) if e.is_worker_died() => continue, // sent before the death was seen
                Err(e) => return Err(e.to_string()),
            }
        }
        check(v == Ok(77), || format!("respawned worker: {v:?}"))?;
        let pid2 = pool
            .submit(&PID, ())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        check(pid2 != pid, || "same pid after a kill".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn shared_data_reaches_every_worker() -> Result<(), String> {
    rt().block_on(async {
        let table: HashMap<String, u32> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
        let pool = ProcessPool::builder()
            .workers(2)
            .shared_data(&table)
            .build()
            .map_err(|e| e.to_string())?;
        let mut handles = Vec::new();
        for i in [0u32, 500, 999] {
            handles.push((
                i,
                pool.submit(&LOOKUP, format!("k{i}"))
                    .await
                    .map_err(|e| e.to_string())?,
            ));
        }
        for (i, h) in handles {
            let v = h.await.map_err(|e| e.to_string())?;
            check(v == Some(i), || format!("k{i} gave {v:?}"))?;
        }
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn a_failing_initializer_trips_the_crash_loop_guard() -> Result<(), String> {
    rt().block_on(async {
        let pool = ProcessPool::builder()
            .workers(1)
            .initializer(&FAILING_INIT, ())
            .build()
            .map_err(|e| e.to_string())?;
        let h = pool.submit(&PID, ()).await.map_err(|e| e.to_string())?;
        let e = h.await.expect_err("no worker can start");
        check(e.kind() == offload::ErrorKind::Pool, || {
            format!("pool error expected: {e}")
        })?;
        check(e.to_string().contains("init failed"), || e.to_string())?;
        check(pool.broken().is_some(), || {
            "the pool says it is broken".into()
        })?;
        let again = pool.submit(&PID, ()).await;
        check(again.is_err(), || "a broken pool refuses work".into())?;
        // try_submit says why: Rejected with the pool's error, not "shut down".
        match pool.try_submit(&PID, ()) {
            Err(TrySubmitError::Rejected((), e)) => check(
                e.kind() == offload::ErrorKind::Pool && e.to_string().contains("init failed"),
                || format!("the pool's error expected: {e}"),
            )?,
            Err(other) => return Err(format!("Rejected expected, got {other:?}")),
            Ok(_) => return Err("Rejected expected, got a handle".into()),
        }
        pool.shutdown(ShutdownMode::Cancel).await;
        Ok(())
    })
}

const FUNCTIONS: &[&'static dyn AnyRemoteFn] = &[&INIT, &READ_INIT, &LOOKUP, &FAILING_INIT, &PID];

fn main() {
    offload::init(FUNCTIONS);
    process_support::run(&[
        (
            "initializer_runs_on_a_respawned_worker",
            initializer_runs_on_a_respawned_worker,
        ),
        (
            "shared_data_reaches_every_worker",
            shared_data_reaches_every_worker,
        ),
        (
            "a_failing_initializer_trips_the_crash_loop_guard",
            a_failing_initializer_trips_the_crash_loop_guard,
        ),
    ]);
}
