//! No idle core: with the default scheduler, as many CPU tasks as cores run at once, each on
//! its own worker thread, while the I/O threads are idle (seen in per-thread CPU time).
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use offload::Scheduler;

/// CPU time (utime + stime, in ticks) of this process's threads named `prefix*`, by name.
fn cpu_by_thread(prefix: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(name) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
        let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        out.insert(name, utime + stime);
    }
    out
}

/// This thread's own CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn the_default_scheduler_runs_cpu_work_on_every_core() {
    // One worker per core is the Linux default (elsewhere cores - 1: see the thread tier docs).
    if !cfg!(target_os = "linux") || !std::path::Path::new("/proc/self/task").exists() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sched = Scheduler::builder().build().expect("the default scheduler");
    assert_eq!(sched.executor().workers(), cores, "one CPU worker per core");
    let before = cpu_by_thread("offload-cpu");
    let running = Arc::new(AtomicUsize::new(0));
    let together = sched.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..cores {
            let running = running.clone();
            hs.push(
                sched
                    .executor()
                    .submit(move || {
                        running.fetch_add(1, Ordering::SeqCst);
                        // Wait (busy) until every task runs at once, then burn 300 ms of this
                        // thread's own CPU time.
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while running.load(Ordering::SeqCst) < cores && Instant::now() < deadline {
                            std::hint::spin_loop();
                        }
                        let all = running.load(Ordering::SeqCst) >= cores;
                        let t0 = thread_cpu();
                        while thread_cpu() - t0 < Duration::from_millis(300) {
                            std::hint::spin_loop();
                        }
                        all
                    })
                    .await
                    .expect("open"),
            );
        }
        let mut all = true;
        for h in hs {
            all &= h.await.expect("ran");
        }
        all
    });
    assert!(together, "{cores} CPU tasks did not all run at once");
    let after = cpu_by_thread("offload-cpu");
    let worked = after
        .iter()
        .filter(|(name, t)| **t >= before.get(*name).copied().unwrap_or(0) + 20)
        .count();
    assert!(
        worked >= cores,
        "{worked} worker threads ran CPU work on {cores} cores: {after:?}"
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn attach_follows_the_same_default() {
    let cores = offload::tier::default_thread_workers();
    let sched = Scheduler::builder().attach().expect("inside a runtime");
    assert_eq!(sched.executor().workers(), cores);
    let auto = offload::Executor::auto();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert_eq!(auto.workers(), cores);
    }
    auto.shutdown(offload::ShutdownMode::Drain).await;
    let s = sched.clone();
    tokio::task::spawn_blocking(move || {
        s.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5))
    })
    .await
    .expect("shut down");
}
