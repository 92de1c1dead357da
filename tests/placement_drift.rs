//! Drift: a key's cost jumps from ~1 µs to ~5 ms. Within 50 calls it is placed off-core (and
//! stays there). The figure reached is printed: with the default sampling (a 1 µs call is timed
//! one in 4 on a machine where a clock-read pair costs ~70 ns) it is at most 4, and never more
//! than `SAMPLE_EVERY`; timing every call makes it 1.

mod common;

use common::spin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use offload::{PlacementConfig, Scheduler};

/// Placement's default sampling period of cheap inline calls (`PlacementConfig::sample_every`).
const SAMPLE_EVERY: u64 = 16;

/// Calls (after the jump) that ran inline before the key was placed off-core.
fn inline_calls_after_jump(config: PlacementConfig) -> u64 {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .placement(config)
        .build()
        .expect("scheduler starts");
    let site = sched.site("drift");
    let cost_ns = Arc::new(AtomicU64::new(1_000));
    let call = |site: &offload::CallSite| {
        let cost = cost_ns.clone();
        let site = site.clone();
        async move {
            site.call(move || spin(Duration::from_nanos(cost.load(Ordering::Relaxed))))
                .await
                .expect("no panic")
        }
    };
    let figure = sched.block_on(async {
        for _ in 0..200 {
            call(&site).await;
        }
        let s = site.stats();
        assert!(
            s.inline >= 150,
            "a 1 µs key should be inline before the jump: {s:?}"
        );
        cost_ns.store(5_000_000, Ordering::Relaxed);
        let mut placed_off_at = None;
        for i in 1..=50u64 {
            let off0 = site.stats().off_core();
            call(&site).await;
            if site.stats().off_core() > off0 {
                placed_off_at = Some(i);
                break;
            }
        }
        let at = placed_off_at.expect("placed off-core within 50 calls of the jump");
        // And it stays off-core: the next 10 calls all go there.
        let off0 = site.stats().off_core();
        for _ in 0..10 {
            call(&site).await;
        }
        assert_eq!(site.stats().off_core() - off0, 10, "{:?}", site.stats());
        assert!(site.stats().mispredictions >= 1);
        at - 1
    });
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
    figure
}

#[test]
fn a_key_that_jumps_from_1us_to_5ms_goes_off_core_within_50_calls() {
    let default = inline_calls_after_jump(PlacementConfig::default());
    let mut every = PlacementConfig::default();
    every.sample_every(1);
    let timed = inline_calls_after_jump(every);
    eprintln!(
        "drift 1 µs -> 5 ms: {default} call(s) ran inline after the jump with default sampling \
         (at most 1 in {} timed), {timed} when every call is timed",
        SAMPLE_EVERY
    );
    assert!(default <= SAMPLE_EVERY, "{default}");
    assert_eq!(timed, 1);
}
