//! Placement against fixed choices, in the same run.
//!
//! - `fast_path`: a ~100 ns function called directly (`direct_call`), and through a call site
//!   that the model keeps inline (`adaptive_inline`). The difference is the fast path's cost.
//! - `mixed`: 10,000 calls from 64 concurrent async tasks, 98 % costing ~2 µs and 2 % ~2 ms,
//!   total time: all inline on the I/O thread (`always_inline`), all submitted to the thread
//!   tier (`always_offload`), and placed per call with a size hint (`adaptive`).
//!
//! - `mixed_contended`: the `mixed` workload under a background load started by the bench for
//!   the group (`support/contention.rs`: a second process running this library's thread-tier
//!   round trip in a loop, plus one busy thread per core), same three functions.
//!
//! One I/O thread and one CPU worker, as the scheduler's defaults give on a 2-core machine.
//! The mixed costs are CPU work (a multiply-add loop calibrated at start to iterations per µs),
//! not wall-clock spin-waits: a spin-wait that is preempted still ends on time, which would
//! credit the single-threaded `always_inline` with work it never did on a shared machine.
//!
//! `cargo bench --bench placement`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use offload::{CallSite, Executor, Scheduler};

#[path = "support/contention.rs"]
mod contention;

/// About 100 ns of dependent multiply-adds.
#[inline(never)]
fn work_100ns(seed: u64) -> u64 {
    let mut x = seed;
    for i in 0..48u64 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(black_box(i));
    }
    x
}

/// `iters` dependent multiply-adds: CPU work of a known size.
#[inline(never)]
fn burn(iters: u64) -> u64 {
    let mut x = iters;
    for i in 0..iters {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(black_box(i));
    }
    x
}

/// Iterations of [`burn`] per microsecond here: the fastest of 20 rounds, so that a round that
/// was preempted does not count.
fn iters_per_us() -> u64 {
    const N: u64 = 200_000;
    let best = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            black_box(burn(black_box(N)));
            t0.elapsed()
        })
        .min()
        .expect("20 rounds");
    (N * 1_000 / (best.as_nanos() as u64).max(1)).max(1)
}

fn scheduler() -> Scheduler {
    Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("the scheduler starts")
}

fn fast_path(c: &mut Criterion) {
    let sched = scheduler();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime starts");
    let site = sched.site("fast");
    // Teach the model that the call is cheap.
    rt.block_on(async {
        for _ in 0..1_000 {
            site.call(|| work_100ns(black_box(7))).await.expect("runs");
        }
    });
    let mut g = c.benchmark_group("fast_path");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("direct_call", |b| {
        b.to_async(&rt).iter(|| async { work_100ns(black_box(7)) })
    });
    g.bench_function("adaptive_inline", |b| {
        b.to_async(&rt)
            .iter(|| site.call(|| work_100ns(black_box(7))))
    });
    g.finish();
    let s = site.stats();
    eprintln!(
        "fast_path: {} calls, {} inline, {} off-core (explored {}), clock pair {:?}",
        s.calls,
        s.inline,
        s.off_core(),
        s.explored,
        sched.placement_stats().clock_pair
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}

const CALLS: usize = 10_000;
const TASKS: usize = 64;
/// Short calls: ~2 µs of CPU work.
const SHORT_US: u64 = 2;
/// Long calls: ~2 ms of CPU work.
const LONG_US: u64 = 2_000;

#[derive(Clone, Copy)]
enum Mode {
    Inline,
    Offload,
    Adaptive,
}

/// The k-th call of the load, in µs of work: every 50th is long (2 %).
fn cost_us(k: usize) -> u64 {
    if k % 50 == 0 { LONG_US } else { SHORT_US }
}

async fn load(mode: Mode, exec: &Executor, site: &CallSite, ipu: u64) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (exec, site) = (exec.clone(), site.clone());
            tokio::spawn(async move {
                for k in (t..CALLS).step_by(TASKS) {
                    let us = cost_us(k);
                    let iters = us * ipu;
                    let v = match mode {
                        Mode::Inline => burn(iters),
                        Mode::Offload => exec
                            .submit(move || burn(iters))
                            .await
                            .expect("open")
                            .await
                            .expect("no panic"),
                        Mode::Adaptive => site
                            .sized(us)
                            .call(move || burn(iters))
                            .await
                            .expect("no panic"),
                    };
                    black_box(v);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("the task finished");
    }
}

fn mixed(c: &mut Criterion) {
    let sched = scheduler();
    let exec = sched.executor().clone();
    let site = sched.site("mixed");
    let ipu = iters_per_us();
    eprintln!("mixed: {ipu} iterations of work per µs");
    sched.block_on(load(Mode::Adaptive, &exec, &site, ipu)); // the model learns the two sizes
    let mut g = c.benchmark_group("mixed");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (name, mode) in [
        ("always_inline", Mode::Inline),
        ("always_offload", Mode::Offload),
        ("adaptive", Mode::Adaptive),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| sched.block_on(load(mode, &exec, &site, ipu)))
        });
    }
    g.finish();
    let s = site.stats();
    eprintln!(
        "mixed/adaptive: {} calls, {} inline, {} off-core, {} explored, {} mispredictions; buckets {:?}",
        s.calls,
        s.inline,
        s.off_core(),
        s.explored,
        s.mispredictions,
        s.buckets
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}

fn mixed_contended(c: &mut Criterion) {
    let sched = scheduler();
    let exec = sched.executor().clone();
    let site = sched.site("mixed");
    let ipu = iters_per_us();
    eprintln!("mixed_contended: {ipu} iterations of work per µs (before the load)");
    sched.block_on(load(Mode::Adaptive, &exec, &site, ipu)); // the model learns the two sizes
    let background = contention::Contention::start();
    let mut g = c.benchmark_group("mixed_contended");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (name, mode) in [
        ("always_inline", Mode::Inline),
        ("always_offload", Mode::Offload),
        ("adaptive", Mode::Adaptive),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| sched.block_on(load(mode, &exec, &site, ipu)))
        });
    }
    g.finish();
    drop(background);
    let s = site.stats();
    eprintln!(
        "mixed_contended/adaptive: {} calls, {} inline, {} off-core, {} explored, {} mispredictions",
        s.calls,
        s.inline,
        s.off_core(),
        s.explored,
        s.mispredictions
    );
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}

criterion_group!(benches, fast_path, mixed, mixed_contended);

// Not criterion_main!: the contention child is this binary again and must stop here first.
fn main() {
    if contention::child_main_if_asked() {
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
