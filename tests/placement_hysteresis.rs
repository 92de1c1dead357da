//! Hysteresis: a size bucket whose cost sits at the inline budget (25–50 µs against 50 µs) must
//! not flip between inline and off-core call by call. Exploration is off, so every change of
//! place is the model's own decision; over the last 300 of 400 calls at most 4 changes are
//! allowed, plus 2 for each call that a busy machine stretched past twice the budget (a
//! preempted call is a spike: off-core for a few calls, then back).

mod common;

use common::spin;
use std::thread;
use std::time::{Duration, Instant};

/// Placement's default inline budget (`PlacementConfig::budget`).
const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_micros(50);
use offload::{PlacementConfig, Scheduler};

#[test]
fn a_bucket_that_straddles_the_budget_does_not_alternate() {
    let mut cfg = PlacementConfig::default();
    cfg.explore_every(0);
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .placement(cfg)
        .build()
        .expect("scheduler starts");
    let site = sched.site("straddle");
    let places: Vec<(bool, Duration)> = sched.block_on(async {
        let mut out = Vec::new();
        let mut x = 1u64;
        for _ in 0..400 {
            // 25 µs to 50 µs, spread evenly in the log domain (a linear-cost size band).
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let frac = (x >> 40) as f64 / (1u64 << 24) as f64;
            let cost = Duration::from_nanos((25_000.0 * 2f64.powf(frac)) as u64);
            let caller = thread::current().id();
            let placed = site
                .sized(3000)
                .call(move || {
                    let t0 = Instant::now();
                    spin(cost);
                    (thread::current().id() == caller, t0.elapsed())
                })
                .await
                .expect("no panic");
            out.push(placed);
        }
        out
    });
    let tail = &places[100..];
    let changes = tail.windows(2).filter(|w| w[0].0 != w[1].0).count();
    let inline = tail.iter().filter(|p| p.0).count();
    let spikes = tail.iter().filter(|p| p.1 > 2 * INLINE_BUDGET).count();
    eprintln!(
        "straddle: {changes} change(s) of place in 300 calls, {inline} inline, {spikes} \
         stretched past two budgets"
    );
    assert!(
        changes <= 4 + 2 * spikes,
        "{changes} changes, {spikes} spikes: {:?}",
        site.stats()
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
