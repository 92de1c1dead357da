//! `Scheduler::shutdown` keeps its deadline: queued CPU work that cannot drain in time fails
//! with "shut down" (one outcome each, nothing lost), and the task already running finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use offload::Scheduler;

#[test]
fn queued_cpu_work_past_the_deadline_fails_with_shut_down() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let cpu = sched.executor().clone();
    let ran = Arc::new(AtomicU64::new(0));
    let (running, queued) = sched.block_on(async {
        let r = ran.clone();
        let running = cpu
            .submit(move || {
                std::thread::sleep(Duration::from_millis(400));
                r.fetch_add(1, Ordering::Relaxed);
                7u32
            })
            .await
            .expect("submit");
        let mut queued = Vec::new();
        for _ in 0..10 {
            let r = ran.clone();
            queued.push(
                cpu.submit(move || {
                    std::thread::sleep(Duration::from_millis(400));
                    r.fetch_add(1, Ordering::Relaxed);
                    0u32
                })
                .await
                .expect("submit"),
            );
        }
        (running, queued)
    });
    // Ten queued tasks of 400 ms each cannot drain in 100 ms.
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_millis(100));
    let mut shut_down = 0;
    for mut h in queued {
        match h.blocking_wait_timeout(Duration::from_secs(10)) {
            Some(Err(e)) if e.is_shut_down() => shut_down += 1,
            Some(Ok(_)) => {}
            other => panic!("one outcome per task, got {other:?}"),
        }
    }
    assert!(shut_down >= 8, "{shut_down} of 10 queued tasks were failed");
    let mut running = running;
    let v = running
        .blocking_wait_timeout(Duration::from_secs(10))
        .expect("the running task finishes");
    assert_eq!(v.expect("its value"), 7);
    assert_eq!(ran.load(Ordering::Relaxed), 10 - shut_down + 1);
}
