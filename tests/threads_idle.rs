//! An idle pool's threads use no CPU once their spin bound has passed (CPU time from
//! `/proc/self/task/*/stat`).
mod common;

use std::time::Duration;

use offload::ShutdownMode;

/// utime + stime, in clock ticks, of this process's threads whose name starts with `prefix`.
fn cpu_ticks(prefix: &str) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for e in dir.flatten() {
        let Ok(name) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if !name.trim().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command name's closing parenthesis: state is field 3, utime 14,
        // stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
        let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_idle_pool_uses_no_cpu_after_its_spin_bound() {
    if !std::path::Path::new("/proc/self/task").exists() {
        return;
    }
    let pool = common::pool("tidle", 2, 64);
    // Work, so that the workers have spun and learned that spinning pays.
    for _ in 0..2_000 {
        pool.submit(|| 1 + 1)
            .await
            .expect("open")
            .await
            .expect("ran");
    }
    // A thread takes its name when it first runs, which on a busy machine can be a while.
    assert!(
        common::eventually(|| common::threads_named("tidle").len() >= 2),
        "the workers run"
    );
    tokio::time::sleep(Duration::from_millis(100)).await; // past any spin bound
    let before = cpu_ticks("tidle");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks("tidle") - before;
    // A clock tick is 10 ms; an idle pool should not be charged a single one.
    assert!(
        used <= 1,
        "idle workers used {used} ticks of CPU in one second"
    );
    pool.shutdown(ShutdownMode::Drain).await;
}
