//! The background load of the `contended` groups (benches `overhead` and `placement`): a second
//! process that runs this library's thread-tier round trip in a loop (a second service using
//! the library on the same host), plus one busy thread per core at normal priority.
//!
//! [`Contention::start`] starts both; dropping the [`Contention`] stops them (the busy threads
//! are joined, the child is killed and reaped), on a panic too. The child is this bench binary
//! again, with [`CHILD_ENV`] set: its `main` calls [`child_main_if_asked`] first. It also exits
//! when its stdin closes, so it never outlives a bench that was killed.

use std::hint::black_box;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Set in the child that runs the round-trip loop.
pub const CHILD_ENV: &str = "OFFLOAD_BENCH_CONTENTION_CHILD";

/// The running background load; dropping it stops it.
pub struct Contention {
    child: Option<Child>,
    stop: Arc<AtomicBool>,
    busy: Vec<JoinHandle<()>>,
}

impl Contention {
    /// Starts the second process and one busy thread per core.
    pub fn start() -> Contention {
        let exe = std::env::current_exe().expect("the bench binary's path");
        let child = Command::new(exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the contention child starts");
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let busy = (0..cores)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("bench-busy-{i}"))
                    .spawn(move || {
                        let mut x = 1u64;
                        while !stop.load(Ordering::Relaxed) {
                            for _ in 0..1_000 {
                                x = black_box(
                                    x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                                );
                            }
                        }
                        black_box(x);
                    })
                    .expect("a busy thread starts")
            })
            .collect();
        // Let the child's pool reach its loop before measuring.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Contention {
            child: Some(child),
            stop,
            busy,
        }
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.busy.drain(..) {
            let _ = t.join();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// In the child ([`CHILD_ENV`] set): runs the thread-tier round trip (one trivial task
/// submitted and awaited at a time, as `roundtrip/threads`) until stdin closes, then returns
/// true. Elsewhere returns false at once.
pub fn child_main_if_asked() -> bool {
    if std::env::var_os(CHILD_ENV).is_none() {
        return false;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watch = stop.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        watch.store(true, Ordering::Relaxed);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let threads = offload::Executor::threads(1).expect("one worker thread starts");
    rt.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..1_000 {
                let h = threads.submit(|| black_box(1u64) + 1).await.expect("open");
                black_box(h.await.expect("no panic"));
            }
        }
    });
    threads.shutdown_blocking(offload::ShutdownMode::Drain);
    true
}
