//! The staged call sends only the long cases off-core: the first part runs inline, looks at
//! what it computed, and either finishes (short) or hands the rest to a worker (long).

use std::time::Duration;

use offload::{Scheduler, Stage};

fn on_worker() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("offload-cpu"))
}

#[test]
fn only_the_long_cases_go_off_core() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("staged");
    let (mut short, mut long) = (0, 0);
    sched.block_on(async {
        for i in 0..40u64 {
            let n = if i % 4 == 0 { 200_000 } else { 50 };
            let (sum, worker) = site
                .staged(move || {
                    // First part: build the input, inline; its size says how long the rest is.
                    let items: Vec<u64> = (0..n).collect();
                    if items.len() < 1_000 {
                        Stage::Done((items.iter().sum::<u64>(), on_worker()))
                    } else {
                        Stage::Offload(move || (items.iter().sum::<u64>(), on_worker()))
                    }
                })
                .await
                .expect("no panic");
            assert_eq!(sum, n * (n - 1) / 2);
            if n < 1_000 {
                assert!(!worker, "a short case left the caller's thread");
                short += 1;
            } else {
                assert!(worker, "a long case stayed inline");
                long += 1;
            }
        }
    });
    let s = site.stats();
    assert_eq!((s.inline, s.threads), (short, long));
    assert_eq!((short, long), (30, 10));
    // A staged call is a Send future: it can be spawned like any task.
    let spawned = site.clone();
    let h = sched.handle().spawn(async move {
        spawned
            .staged(|| Stage::Offload(on_worker))
            .await
            .expect("no panic")
    });
    assert!(sched.block_on(h).expect("the task finished"));
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}

#[test]
fn a_panic_in_the_first_part_is_an_error_of_the_call() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("staged-panic");
    let e = sched
        .block_on(site.staged(|| -> Stage<u32, fn() -> u32> { panic!("bad header") }))
        .expect_err("the first part panicked");
    assert!(e.is_panic());
    assert!(e.to_string().contains("staged-panic") && e.to_string().contains("bad header"));
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
