//! Placement with the process tier attached: `CallSite::remote` calls registered functions
//! where the model says (inline, threads or processes), and a killable site sends every call
//! to the worker processes, where a crash fails only that call. harness = false: `main` must
//! call `offload::init` first.

mod process_support;

use std::time::Duration;

use offload::{ErrorKind, ProcessPool, ProcessPoolBuilder, RemoteFn, Scheduler, ShutdownMode};
use process_support::{ECHO, PANIC, PID, SLEEP_MS, check};

static ABORT: RemoteFn<(), u32> = RemoteFn::new("abort", |()| std::process::abort());

/// Reads the pool's shared table: works in a worker and, the same, in this process.
static NTH_SQUARE: RemoteFn<u64, Option<u64>> = RemoteFn::new("nth_square", |i| {
    let table = offload::shared::<Vec<u64>>().ok()?;
    usize::try_from(i).ok().and_then(|i| table.get(i)).copied()
});

fn setup() -> Result<(Scheduler, ProcessPool), String> {
    setup_with(ProcessPool::builder().workers(1))
}

/// A scheduler whose placement may use the pool `builder` builds.
fn setup_with(builder: &mut ProcessPoolBuilder) -> Result<(Scheduler, ProcessPool), String> {
    let pool = builder.build().map_err(|e| e.to_string())?;
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .placement_tier(pool.clone())
        .build()
        .map_err(|e| e.to_string())?;
    Ok((sched, pool))
}

fn teardown(sched: Scheduler, pool: &ProcessPool) {
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
    pool.shutdown_blocking(ShutdownMode::Drain);
}

fn killable_calls_run_only_in_worker_processes() -> Result<(), String> {
    let (sched, pool) = setup()?;
    let site = sched.site("isolated").killable();
    let me = std::process::id();
    let r = sched.block_on(async {
        // Cheap calls, many times: the model learns they are cheap, and they still never run
        // here nor on the thread tier.
        for _ in 0..50 {
            let pid = site.remote(&PID, ()).await.map_err(|e| e.to_string())?;
            check(pid != me, || "a killable call ran in this process".into())?;
            check(pool.worker_pids().contains(&pid), || {
                format!("pid {pid} is not one of the pool's workers")
            })?;
        }
        // A probe saying "short" does not bring it inline either.
        let v = site
            .probe(|| false)
            .remote(&ECHO, 7)
            .await
            .map_err(|e| e.to_string())?;
        check(v == 7, || format!("echo gave {v}"))?;
        // A closure cannot cross: the error names the fix.
        let e = site
            .call(|| 1u32)
            .await
            .expect_err("a closure cannot run on the process tier");
        check(e.kind() == ErrorKind::Unsupported, || e.to_string())?;
        check(e.to_string().contains(".remote("), || e.to_string())?;
        Ok::<(), String>(())
    });
    let s = site.stats();
    teardown(sched, &pool);
    r?;
    check((s.inline, s.threads, s.processes) == (0, 0, 51), || {
        format!("{s:?}")
    })
}

fn a_crash_fails_only_its_call() -> Result<(), String> {
    let (sched, pool) = setup()?;
    let site = sched.site("untrusted").killable();
    let r = sched.block_on(async {
        let e = site
            .remote(&ABORT, ())
            .await
            .expect_err("the worker aborts");
        check(e.is_worker_died(), || format!("worker died expected: {e}"))?;
        check(e.pid().is_some(), || format!("a pid expected: {e}"))?;
        let e = site
            .remote(&PANIC, "bad record 12".to_string())
            .await
            .expect_err("the function panics");
        check(
            e.is_panic() && e.to_string().contains("bad record 12"),
            || e.to_string(),
        )?;
        for i in 0..20u64 {
            let v = site.remote(&ECHO, i).await.map_err(|e| e.to_string())?;
            check(v == i, || format!("echo {i} gave {v}"))?;
        }
        Ok::<(), String>(())
    });
    let respawns = pool.respawns();
    teardown(sched, &pool);
    r?;
    check(respawns >= 1, || "the dead worker was not replaced".into())
}

fn dropping_a_killable_call_stops_its_worker() -> Result<(), String> {
    let (sched, pool) = setup()?;
    let site = sched.site("abandoned").killable();
    let r = sched.block_on(async {
        let before = site.remote(&PID, ()).await.map_err(|e| e.to_string())?;
        // A call nobody waits for any more: its future is dropped at the timeout.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(300), site.remote(&SLEEP_MS, 60_000)).await;
        check(gave_up.is_err(), || "the 60 s call finished early".into())?;
        // Its worker was killed and replaced: the next call runs in a new process, at once
        // (the old one would have slept for a minute).
        let after = tokio::time::timeout(Duration::from_secs(20), site.remote(&PID, ()))
            .await
            .map_err(|_| "the worker still sleeps: the dropped call was not stopped".to_string())?
            .map_err(|e| e.to_string())?;
        check(after != before, || format!("same worker pid {after}"))?;
        Ok::<(), String>(())
    });
    let respawns = pool.respawns();
    teardown(sched, &pool);
    r?;
    check(respawns >= 1, || "no worker was replaced".into())
}

fn remote_calls_are_placed_by_the_model() -> Result<(), String> {
    let (sched, pool) = setup()?;
    let cheap = sched.site("echo");
    let slow = sched.site("sleep");
    let me = std::process::id();
    let r = sched.block_on(async {
        // A cheap function: after the first (unknown, off-core) call it runs inline, here.
        for i in 0..200u64 {
            let v = cheap.remote(&ECHO, i).await.map_err(|e| e.to_string())?;
            check(v == i, || format!("echo {i} gave {v}"))?;
        }
        // A slow one: off-core, on whichever tier is expected to finish first; never here.
        for _ in 0..20 {
            let pid = slow.remote(&SLEEP_MS, 5).await.map_err(|e| e.to_string())?;
            let on_worker_process = pool.worker_pids().contains(&pid);
            check(pid == me || on_worker_process, || {
                format!("unknown pid {pid}")
            })?;
        }
        Ok::<(), String>(())
    });
    let (c, s) = (cheap.stats(), slow.stats());
    teardown(sched, &pool);
    r?;
    check(c.inline >= 190, || {
        format!("cheap calls mostly inline: {c:?}")
    })?;
    check(s.inline == 0 && s.threads + s.processes == 20, || {
        format!("slow calls all off-core: {s:?}")
    })
}

fn shared_data_reads_the_same_in_place_and_in_workers() -> Result<(), String> {
    // Large enough to be the mapped file, so both ways of travelling are the same bytes.
    let table: Vec<u64> = (0..100_000u64).map(|i| i * i).collect();
    let (sched, pool) = setup_with(ProcessPool::builder().workers(1).shared_data(&table))?;
    let site = sched.site("nth_square");
    let r = sched.block_on(async {
        check(NTH_SQUARE.call_local(300) == Some(90_000), || {
            "call_local in the pool's process".into()
        })?;
        let in_worker = pool
            .submit(&NTH_SQUARE, 99_999)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        check(in_worker == Some(99_999 * 99_999), || {
            format!("in a worker: {in_worker:?}")
        })?;
        // Cheap calls: the first goes off-core, the rest run inline here.
        for i in 0..100u64 {
            let v = site
                .remote(&NTH_SQUARE, i * 1000)
                .await
                .map_err(|e| e.to_string())?;
            check(v == Some(i * i * 1_000_000), || format!("{i}: {v:?}"))?;
        }
        Ok::<(), String>(())
    });
    let stats = site.stats();
    teardown(sched, &pool);
    r?;
    check(stats.inline >= 90, || {
        format!("most calls inline, reading the data here: {stats:?}")
    })
}

fn main() {
    offload::init(&[&ECHO, &PID, &SLEEP_MS, &PANIC, &ABORT, &NTH_SQUARE]);
    process_support::run(&[
        (
            "killable_calls_run_only_in_worker_processes",
            killable_calls_run_only_in_worker_processes,
        ),
        ("a_crash_fails_only_its_call", a_crash_fails_only_its_call),
        (
            "dropping_a_killable_call_stops_its_worker",
            dropping_a_killable_call_stops_its_worker,
        ),
        (
            "remote_calls_are_placed_by_the_model",
            remote_calls_are_placed_by_the_model,
        ),
        (
            "shared_data_reads_the_same_in_place_and_in_workers",
            shared_data_reads_the_same_in_place_and_in_workers,
        ),
    ]);
}
