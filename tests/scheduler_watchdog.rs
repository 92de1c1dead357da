//! The watchdog reports a poll that blocks its runtime thread for 50 ms, by the task's name,
//! through `tracing` and in the stats snapshot.
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offload::Scheduler;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_50ms_blocking_poll_is_reported_by_name() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .slow_poll_threshold(Duration::from_millis(20))
        .build()
        .unwrap();
    let group = sched.group::<()>("http");
    group.spawn("render-report", async {
        // A blocking call inside async code: exactly what the watchdog is for.
        std::thread::sleep(Duration::from_millis(50));
    });
    group.spawn("healthy", async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let exits = sched.block_on(group.join_all());
    assert_eq!(exits.len(), 2);

    let stats = sched.stats();
    assert_eq!(stats.slow_polls, 1, "{stats:?}");
    assert_eq!(
        stats.slow_polls_by_task,
        vec![("http/render-report".to_string(), 1)]
    );
    assert!(stats.longest_slow_poll >= Duration::from_millis(50));
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("slow poll") && text.contains("http/render-report"),
        "{text}"
    );
    assert!(!text.contains("healthy"), "{text}");
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(2));
}

#[test]
fn a_poll_that_never_returns_is_reported_while_it_runs() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .slow_poll_threshold(Duration::from_millis(20))
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let h = sched.spawn("stuck", async move {
        // Blocks its thread until the test has seen the report.
        while !r.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sched.stats().stuck_polls == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen_while_running = sched.stats().stuck_polls;
    release.store(true, Ordering::SeqCst);
    sched.block_on(h).unwrap();
    assert_eq!(seen_while_running, 1, "reported once while still blocked");
    assert_eq!(
        sched.stats().slow_polls,
        1,
        "and counted as slow when it ended"
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(1));
}
