//! Learning: a key that costs ~1 µs below 1 KiB and ~5 ms from 1 MiB up. After a warm-up of
//! 200 calls, ≥ 95 % of its small calls run inline and ≥ 95 % of its large calls off-core, as
//! the per-bucket stats say.

mod common;

use common::spin;
use std::time::Duration;

use offload::{KeyStats, Scheduler};

/// The key's cost as a function of its size.
fn work(n: u64) -> u64 {
    if n < 1024 {
        spin(Duration::from_micros(1));
    } else {
        spin(Duration::from_millis(5));
    }
    n
}

const SMALL: [u64; 4] = [64, 200, 512, 1000];
const LARGE: [u64; 3] = [1 << 20, 3 << 20, 8 << 20];

/// The i-th size of a fixed interleaving: three small calls, then one large.
fn size(i: usize) -> u64 {
    if i % 4 == 3 {
        LARGE[(i / 4) % LARGE.len()]
    } else {
        SMALL[i % SMALL.len()]
    }
}

/// (inline, off-core) of the calls of the listed sizes' buckets.
fn counts(k: &KeyStats, sizes: &[u64]) -> (u64, u64) {
    let mut seen = Vec::new();
    let (mut inline, mut off) = (0, 0);
    for &n in sizes {
        // A listed size that the interleaving never draws has no bucket.
        let Some(b) = k.bucket(Some(n)) else { continue };
        if !seen.contains(&b.size_from) {
            seen.push(b.size_from);
            inline += b.inline;
            off += b.off_core;
        }
    }
    (inline, off)
}

#[test]
fn small_calls_run_inline_and_large_ones_off_core_after_warm_up() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("learn");
    let run = |range: std::ops::Range<usize>| {
        sched.block_on(async {
            for i in range {
                let n = size(i);
                let got = site.sized(n).call(move || work(n)).await.expect("no panic");
                assert_eq!(got, n);
            }
        })
    };

    run(0..200); // warm-up
    let before = site.stats();
    run(200..400);
    let after = site.stats();

    let (si0, so0) = counts(&before, &SMALL);
    let (si1, so1) = counts(&after, &SMALL);
    let (li0, lo0) = counts(&before, &LARGE);
    let (li1, lo1) = counts(&after, &LARGE);
    let (small_inline, small_total) = (si1 - si0, (si1 - si0) + (so1 - so0));
    let (large_off, large_total) = (lo1 - lo0, (li1 - li0) + (lo1 - lo0));
    assert_eq!(small_total, 150);
    assert_eq!(large_total, 50);
    eprintln!(
        "after warm-up: {small_inline}/{small_total} small calls inline, \
         {large_off}/{large_total} large calls off-core; stats: {after:?}"
    );
    assert!(
        small_inline * 100 >= small_total * 95,
        "only {small_inline}/{small_total} small calls inline"
    );
    assert!(
        large_off * 100 >= large_total * 95,
        "only {large_off}/{large_total} large calls off-core"
    );
    // The whole-key view agrees, and the large calls' duration shows in the p99.
    assert_eq!(after.calls, 400);
    assert_eq!(after.inline + after.off_core(), 400);
    assert!(after.p99 >= Duration::from_millis(5), "{:?}", after.p99);
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
