//! The classic examples' logic, through their own sources: quicksort on the pool sorts, the
//! worker/queue factoring is right and fails with a reason past its table, the staged refactoring
//! agrees with the legacy function and moves only the long calls, the sweep finds chaos where the
//! theory puts it, and Monte-Carlo pi lands near pi. Behaviour only, never speed.

// Each example includes `examples/common` (its log set-up); five of them are loaded here.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../examples/pi.rs"]
mod pi;
#[allow(dead_code)]
#[path = "../examples/quicksort.rs"]
mod quicksort;
#[allow(dead_code)]
#[path = "../examples/staged.rs"]
mod staged;
#[allow(dead_code)]
#[path = "../examples/sweep.rs"]
mod sweep;
#[allow(dead_code)]
#[path = "../examples/worker_queue.rs"]
mod worker_queue;

use std::time::Duration;

use offload::{Executor, Scheduler, ShutdownMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quicksort_on_the_pool_sorts_with_duplicates_and_tiny_inputs() {
    let pool = Executor::threads(2).expect("pool");
    let mut x = 12345u64;
    for (len, modulo) in [
        (0usize, 10u64),
        (1, 10),
        (2, 10),
        (1000, 7),
        (50_000, 1_000_000),
    ] {
        let v: Vec<u64> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % modulo
            })
            .collect();
        let mut want = v.clone();
        want.sort_unstable();
        let got = quicksort::quicksort(pool.clone(), v.clone(), 100)
            .await
            .expect("sorted");
        assert_eq!(got, want, "len {len}");
        assert_eq!(quicksort::quicksort_sequential(v, 100), want);
    }
    pool.shutdown(ShutdownMode::Drain).await;
}

#[test]
fn worker_queue_factors_and_refuses_past_its_table() {
    let table = worker_queue::primes_up_to(1000);
    assert_eq!(&table[..5], &[2, 3, 5, 7, 11]);
    assert_eq!(
        worker_queue::factor(360, &table),
        Ok(vec![2, 2, 2, 3, 3, 5])
    );
    assert_eq!(worker_queue::factor(997 * 991, &table), Ok(vec![991, 997]));
    // A prime just under the table's square is still recognised as prime.
    assert_eq!(worker_queue::factor(994_009, &table), Ok(vec![997, 997]));
    let err = worker_queue::factor(1_009 * 1_013, &table).expect_err("beyond the table");
    assert!(err.contains("beyond the table"), "{err}");
}

#[test]
fn staged_agrees_with_legacy_and_moves_only_long_calls() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler");
    let site = sched.site("analyse-test");
    for (n, long) in [(50usize, false), (200, false), (20_000, true)] {
        let text = staged::make_text(n, 7 + n as u64);
        let before = site.stats();
        let got = sched
            .block_on(staged::analyse_staged(&site, &text))
            .expect("staged call");
        let after = site.stats();
        assert_eq!(got, staged::analyse(&text), "{n} words");
        assert_eq!(got.words, n);
        assert_eq!(after.threads > before.threads, long, "{n} words");
    }
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(2));
}

#[test]
fn sweep_sees_cycles_below_and_chaos_above_the_onset() {
    assert!(sweep::lyapunov(3.2, 20_000) < 0.0);
    assert!(sweep::lyapunov(3.5, 20_000) < 0.0);
    assert!(sweep::lyapunov(3.9, 20_000) > 0.0);
    assert!(sweep::lyapunov(4.0, 20_000) > 0.5);
}

#[test]
fn pi_samples_land_near_pi() {
    let mut rng = pi::SplitMix::new(1);
    let n = 200_000;
    let inside = (0..n).filter(|_| rng.hit()).count();
    let est = 4.0 * inside as f64 / n as f64;
    assert!((est - std::f64::consts::PI).abs() < 0.02, "{est}");
}
