//! Placement against fixed choices, in the same run.
//!
//! - `fast_path`: a ~100 ns function called directly (`direct_call`), and through a call site
//!   that the model keeps inline (`adaptive_inline`). The difference is the fast path's cost.
//! - `mixed`: 10,000 calls from 64 concurrent async tasks, 98 % costing ~2 µs and 2 % ~2 ms,
//!   total time: all inline on the I/O thread (`always_inline`), all submitted to the thread
//!   tier (`always_offload`), and placed per call with a size hint (`adaptive`).
//!
//! One I/O thread and one CPU worker, as the scheduler's defaults give on a 2-core machine.
//!
//! `cargo bench --bench placement`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use offload::{CallSite, Executor, Scheduler};

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

fn spin(d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        std::hint::spin_loop();
    }
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
    sched.shutdown(Duration::from_secs(5));
}

const CALLS: usize = 10_000;
const TASKS: usize = 64;
const SHORT: Duration = Duration::from_micros(2);
const LONG: Duration = Duration::from_millis(2);

#[derive(Clone, Copy)]
enum Mode {
    Inline,
    Offload,
    Adaptive,
}

/// The k-th call of the load: every 50th is long (2 %).
fn cost(k: usize) -> Duration {
    if k % 50 == 0 { LONG } else { SHORT }
}

async fn load(mode: Mode, exec: &Executor, site: &CallSite) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (exec, site) = (exec.clone(), site.clone());
            tokio::spawn(async move {
                for k in (t..CALLS).step_by(TASKS) {
                    let d = cost(k);
                    match mode {
                        Mode::Inline => spin(d),
                        Mode::Offload => exec
                            .submit(move || spin(d))
                            .await
                            .expect("open")
                            .await
                            .expect("no panic"),
                        Mode::Adaptive => site
                            .sized(d.as_micros() as u64)
                            .call(move || spin(d))
                            .await
                            .expect("no panic"),
                    }
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
    sched.block_on(load(Mode::Adaptive, &exec, &site)); // the model learns the two sizes
    let mut g = c.benchmark_group("mixed");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (name, mode) in [
        ("always_inline", Mode::Inline),
        ("always_offload", Mode::Offload),
        ("adaptive", Mode::Adaptive),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| sched.block_on(load(mode, &exec, &site)))
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
    sched.shutdown(Duration::from_secs(5));
}

criterion_group!(benches, fast_path, mixed);
criterion_main!(benches);
