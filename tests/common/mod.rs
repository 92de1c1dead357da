//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use offload::Executor;
use offload::tier::Threads;

/// Names of this process's threads that start with `prefix` (from /proc/self/task/*/comm).
pub fn threads_named(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(name) = std::fs::read_to_string(e.path().join("comm")) {
                let name = name.trim().to_string();
                if name.starts_with(prefix) {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Whether every thread named `prefix...` is gone, within a bound: a joined thread can still
/// be listed in `/proc/self/task` for a moment after `join` returns (the kernel wakes the
/// joiner before it removes the thread), so one look right after a shutdown can race. A thread
/// that was never stopped stays listed and fails this.
pub fn threads_gone(prefix: &str) -> bool {
    eventually(|| threads_named(prefix).is_empty())
}

/// A thread-tier executor whose threads carry `prefix`, so a test can count them.
pub fn pool(prefix: &str, workers: usize, capacity: usize) -> Executor {
    let t = Threads::builder()
        .workers(workers)
        .queue_capacity(capacity)
        .thread_name(prefix)
        .build()
        .expect("the pool starts");
    Executor::from(t)
}

/// A one-shot gate: tasks wait on it until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn wait(&self) {
        let (m, c) = &*self.0;
        let mut open = m.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !*open && Instant::now() < deadline {
            open = c.wait_timeout(open, Duration::from_millis(50)).unwrap().0;
        }
    }
    pub fn open(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}

/// Polls `cond` every millisecond for up to 10 s.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Burns the CPU for `d` (a stand-in for CPU work of a known cost).
pub fn spin(d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Runs one call of `site` with size hint 1000 that spins `cost` (on the wall clock); whether
/// it ran on the calling thread (inline).
pub async fn spin_call(site: &offload::CallSite, cost: Duration) -> bool {
    let caller = std::thread::current().id();
    site.sized(1000)
        .call(move || {
            spin(cost);
            std::thread::current().id() == caller
        })
        .await
        .expect("no panic")
}
