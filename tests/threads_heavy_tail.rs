//! A heavy-tailed key's cheap off-core calls complete while its long calls occupy every
//! worker: the express worker serves short work once long work holds the others.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use offload::Scheduler;

#[test]
fn cheap_calls_complete_while_long_calls_hold_every_worker() {
    let sched = Scheduler::builder()
        .io_threads(2)
        .cpu_workers(2)
        .build()
        .expect("the scheduler starts");
    let workers = sched.executor().workers();
    let site = sched.site("heavy-tail");
    let gate = common::Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let long: Vec<_> = (0..workers)
        .map(|_| {
            let (site, gate, started) = (site.clone(), gate.clone(), started.clone());
            sched.handle().spawn(async move {
                site.call(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.wait();
                })
                .await
            })
        })
        .collect();
    assert!(
        common::eventually(|| started.load(Ordering::SeqCst) == workers),
        "the long calls hold every worker"
    );
    let cheap = sched.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut sum = 0u64;
            for i in 0..20u64 {
                sum += site.call(move || i).await.expect("no panic");
            }
            sum
        })
        .await
    });
    assert_eq!(
        cheap,
        Ok((0..20).sum()),
        "cheap calls waited behind long ones"
    );
    // Some of the cheap calls went off-core (an unknown key starts there) and still came back.
    let s = site.stats();
    assert!(
        s.off_core() > workers as u64,
        "no cheap call went off-core: {s:?}"
    );
    assert!(started.load(Ordering::SeqCst) == workers && long.iter().all(|h| !h.is_finished()));
    gate.open();
    sched.block_on(async {
        for h in long {
            h.await.expect("joined").expect("no panic");
        }
    });
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
