//! A worker rank on **another host** that dies, stops, or loses its network mid-task fails its
//! task as "worker died" within a bound, and the ranks on rank 0's host serve on (issue 16).
//! harness = false; run by `tests/multihost/run.sh` over simulated hosts, e.g.:
//!
//! ```text
//! mpiexec --hostfile hosts.txt --map-by node -n 4 --enable-recovery \
//!     target/debug/deps/mpi_remote_rank-<hash> die|stop|cut
//! ```
//!
//! Every worker rank gets one task at the same time; the task acts only on a rank whose host
//! is not rank 0's: `die` aborts the process, `stop` stops it (SIGSTOP: it hangs, heartbeat
//! thread included), `cut` sets its host's network link down (`ip link set eth0 down`, inside
//! the simulated host's own namespace) and then runs on. Ranks on rank 0's host answer.
//! Without `mpiexec` (plain `cargo test`) it checks nothing and exits 0.

use std::time::{Duration, Instant};

use offload::RemoteFn;
use offload::tier::mpi::{Cluster, launched_with_workers};

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// `(mode, rank 0's host)`: acts as told on another host; returns this host's name on rank
/// 0's.
static ACT: RemoteFn<(String, String), String> = RemoteFn::new("act", |(mode, home)| {
    // Let every rank take its task before any acts.
    std::thread::sleep(Duration::from_millis(300));
    let me = host();
    if me == home {
        return me;
    }
    match mode.as_str() {
        "die" => std::process::abort(),
        "stop" => {
            // SAFETY: a plain signal to this process.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        }
        "cut" => {
            let _ = std::process::Command::new("ip")
                .args(["link", "set", "eth0", "down"])
                .status();
        }
        _ => {}
    }
    // Stopped or cut off: never answer in time.
    std::thread::sleep(Duration::from_secs(3600));
    me
});
static WHERE: RemoteFn<(), String> = RemoteFn::new("where", |()| host());

fn main() {
    offload::init(&[&ACT, &WHERE]);
    if !launched_with_workers() {
        println!("mpi_remote_rank: run it by tests/multihost/run.sh");
        return;
    }
    let mode = std::env::args().nth(1).unwrap_or_else(|| "die".into());
    // A watchdog: a task that never ends would hang the job.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(30));
        println!("test mpi_remote_rank ... FAILED: still running after 30 s");
        std::process::exit(1);
    });
    let cluster = Cluster::builder().build().expect("the cluster builds");
    let home = host();
    let t0 = Instant::now();
    // When the remote ranks act (after the tasks' 300 ms wait): the harness measures from
    // there to the end of the whole job.
    let acts_at = std::time::SystemTime::now() + Duration::from_millis(300);
    let acts_ms = acts_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    println!("remote ranks act at unix ms {acts_ms}");
    let handles: Vec<_> = (0..cluster.workers())
        .map(|_| {
            cluster
                .submit_blocking(&ACT, (mode.clone(), home.clone()))
                .expect("submit")
        })
        .collect();
    let (mut lost, mut answered) = (0, 0);
    for h in handles {
        match h.blocking_wait() {
            Ok(h) => {
                assert_eq!(h, home, "only ranks on rank 0's host answer");
                answered += 1;
            }
            Err(e) => {
                assert!(e.is_worker_died(), "{e}");
                lost += 1;
                println!("  {mode}: {e} (after {:?})", t0.elapsed());
            }
        }
    }
    let took = t0.elapsed();
    assert!(
        lost > 0,
        "no rank sat on another host: spread the ranks (--map-by node)"
    );
    assert!(took < Duration::from_secs(5), "reported after {took:?}");
    println!(
        "test remote_rank_{mode}_is_reported ... ok ({lost} lost, {answered} answered, {took:?})"
    );
    if answered > 0 {
        for _ in 0..4 {
            let h = cluster.submit_blocking(&WHERE, ()).expect("submit");
            assert_eq!(h.blocking_wait().expect("the others serve on"), home);
        }
        println!("test the_others_serve_on ... ok");
    }
    cluster.shutdown_blocking(offload::ShutdownMode::Drain);
    println!("mpi_remote_rank: done ({mode}) after {:?}", t0.elapsed());
}
