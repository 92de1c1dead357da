//! An unknown key starts off-core: nothing is known of its cost, so the safe place is off the
//! I/O thread. So does an unknown size of a known key when no larger size is known cheap.

use std::time::Duration;

use offload::{PlacementConfig, Scheduler};

fn on_worker() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("offload-cpu"))
}

#[test]
fn the_first_call_of_a_key_goes_off_core() {
    // A budget far above the closure's cost, so that a worker preempted during the first call
    // (a loaded CI machine) still measures it as cheap: what is tested is where an *unknown*
    // key or size goes, not the size of the budget.
    let mut cfg = PlacementConfig::default();
    cfg.inline_budget(Duration::from_millis(50));
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .placement(cfg)
        .build()
        .expect("scheduler starts");
    let site = sched.site("never-seen");
    assert_eq!(site.prediction(None), None);
    let streak: u64 = 4; // PlacementConfig::clean_streak, default
    sched.block_on(async {
        assert!(site.call(on_worker).await.expect("ok"));
        let s = site.stats();
        assert_eq!((s.calls, s.inline, s.threads), (1, 0, 1));
        // Learned from that one call: a trivial closure is cheap. It runs inline once a clean
        // streak of CLEAN_STREAK samples says so.
        assert!(site.prediction(None).is_some());
        for _ in 1..streak {
            assert!(site.call(on_worker).await.expect("ok"));
        }
        assert!(!site.call(on_worker).await.expect("ok"));

        // A size never seen, with no larger size known: off-core too.
        assert!(site.sized(1 << 30).call(on_worker).await.expect("ok"));
        // A smaller size than one known to be cheap borrows its prediction: inline.
        assert!(!site.sized(1 << 10).call(on_worker).await.expect("ok"));
    });
    let stats = sched.placement_stats();
    let k = stats.key("never-seen").expect("the key is in the stats");
    assert_eq!(k.calls, 3 + streak);
    assert_eq!(k.threads, 1 + streak);
    assert_eq!(stats.tiers.len(), 1);
    assert_eq!(stats.tiers[0].samples, 1 + streak);
    assert!(stats.tiers[0].overhead > Duration::ZERO);
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
