//! A tier's learned overhead is the hand-off, not the queueing: after a burst that filled the
//! thread tier's queue (40 calls of 2 ms on one worker, so the last waited ~80 ms), the
//! overhead placement learned stays near the trip of an idle tier (here: under 2 ms, where the
//! queueing alone would make it tens of milliseconds).

mod common;

use common::spin;
use std::time::Duration;

use offload::Scheduler;

#[test]
fn learned_overhead_stays_near_the_hand_off_after_a_burst() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("burst");
    let long = Duration::from_millis(10); // a probe: every call goes off-core
    let before = sched.block_on(async {
        for _ in 0..20 {
            site.expect(long)
                .call(|| spin(Duration::from_micros(200)))
                .await
                .expect("no panic");
        }
        sched.placement_stats().tiers[0].overhead
    });
    let after = sched.block_on(async {
        let calls: Vec<_> = (0..40)
            .map(|_| {
                let site = site.clone();
                tokio::spawn(async move {
                    site.expect(long)
                        .call(|| spin(Duration::from_millis(2)))
                        .await
                        .expect("no panic")
                })
            })
            .collect();
        for c in calls {
            c.await.expect("the call's task finished");
        }
        sched.placement_stats().tiers[0]
    });
    eprintln!(
        "thread tier overhead: {before:?} idle, {:?} after the burst ({} trips)",
        after.overhead, after.samples
    );
    assert!(after.samples >= 60, "{after:?}");
    assert!(
        after.overhead < Duration::from_millis(2),
        "the burst's queueing leaked into the learned overhead: {after:?} (idle: {before:?})"
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
