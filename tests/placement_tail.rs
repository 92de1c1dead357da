//! Tail risk: a bimodal key (95 % of calls ~5 µs, 5 % ~3 ms, the same size hint) must not run
//! its long calls on the I/O thread again and again. After a warm-up of 300 calls, at most 2 of
//! the next 1000 calls' long ones (about 50) run inline: the key is unpredictable, so it stays
//! off-core instead of drifting back inline every ~20 cheap samples.

mod common;

use common::{spin, spin_call};
use std::thread;
use std::time::Duration;

use offload::Scheduler;

/// A small deterministic generator (splitmix64), so the test is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn a_bimodal_key_keeps_its_long_calls_off_the_io_thread() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("bimodal");
    let mut rng = Rng(7);
    let (warm_inline_long, inline_long, long) = sched.block_on(async {
        let (mut warm_inline_long, mut inline_long, mut long) = (0, 0, 0);
        for i in 0..1300 {
            let is_long = rng.next() % 20 == 0;
            let cost = if is_long {
                Duration::from_millis(3)
            } else {
                Duration::from_micros(5)
            };
            let caller = thread::current().id();
            let here = site
                .sized(1000)
                .call(move || {
                    spin(cost);
                    thread::current().id() == caller
                })
                .await
                .expect("no panic");
            if is_long && here {
                if i < 300 {
                    warm_inline_long += 1;
                } else {
                    inline_long += 1;
                }
            }
            if is_long && i >= 300 {
                long += 1;
            }
        }
        (warm_inline_long, inline_long, long)
    });
    let s = site.stats();
    eprintln!(
        "bimodal: {warm_inline_long} long call(s) inline in the warm-up, {inline_long} of {long} \
         after it; {} inline, {} off-core, {} mispredictions",
        s.inline,
        s.off_core(),
        s.mispredictions
    );
    assert!(long >= 30, "the generator gives ~50 long calls: {long}");
    assert!(
        inline_long <= 2,
        "{inline_long} of {long} long calls ran inline after the warm-up: {s:?}"
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}

/// The first long call that a key runs inline is its last one for a long while. The thread's
/// counters show that the call computed for that long (it was not preempted), so the bucket
/// takes a strike at once. Before, the first spike was taken for preemption: the bucket came
/// back inline after one clean call, and a bimodal key ran two or three of its long calls on the
/// I/O thread in its warm-up.
#[cfg(target_os = "linux")]
#[test]
fn the_first_long_call_seen_inline_is_not_taken_for_preemption() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("two-faced");
    let cheap = Duration::from_micros(5);
    let long = Duration::from_millis(3);
    let (warm, inline_long, cheap_inline_after, seq) = sched.block_on(async {
        let mut warm = 0;
        for _ in 0..12 {
            warm += usize::from(spin_call(&site, cheap).await);
        }
        let mut inline_long = 0;
        let mut cheap_inline_after = 0;
        let mut seq = String::new();
        for _ in 0..4 {
            let here = spin_call(&site, long).await;
            seq.push(if here { 'L' } else { 'l' });
            inline_long += usize::from(here);
            for _ in 0..3 {
                let here = spin_call(&site, cheap).await;
                seq.push(if here { 'C' } else { 'c' });
                cheap_inline_after += usize::from(here);
            }
        }
        (warm, inline_long, cheap_inline_after, seq)
    });
    let s = site.stats();
    assert!(warm >= 4, "the cheap key went inline in its warm-up: {s:?}");
    // One at most (none if noise had already made the key wary in its warm-up).
    assert!(
        inline_long <= 1,
        "long calls that ran on the I/O thread: {inline_long} of 4 (L/C: a long/cheap call ran inline, l/c: off-core: {seq}): {s:?}"
    );
    assert_eq!(
        cheap_inline_after, 0,
        "after a long call the key waits for a long clean streak: {s:?}"
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
