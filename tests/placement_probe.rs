//! A user probe overrides the model, both ways: a key the model keeps inline goes off-core
//! when a probe says "long" or expects a long duration, and a key it keeps off-core runs
//! inline when a probe says "short".

mod common;

use common::spin;
use std::time::Duration;

use offload::Scheduler;

/// Whether the calling thread is one of the library's CPU workers.
fn on_worker() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("offload-cpu"))
}

#[test]
fn a_probe_overrides_what_the_model_learned() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let cheap = sched.site("cheap");
    let long = sched.site("long");
    sched.block_on(async {
        for _ in 0..20 {
            cheap
                .call(|| spin(Duration::from_micros(1)))
                .await
                .expect("ok");
            long.call(|| spin(Duration::from_millis(2)))
                .await
                .expect("ok");
        }
        assert!(cheap.prediction(None).expect("known") < cheap.budget());
        assert!(long.prediction(None).expect("known") > long.budget());
        // What the model does on its own: (the call after 20 is not an exploration)
        assert!(!cheap.call(on_worker).await.expect("ok"));
        assert!(long.call(on_worker).await.expect("ok"));

        // Probes say otherwise, and win.
        for _ in 0..10 {
            assert!(cheap.probe(|| true).call(on_worker).await.expect("ok"));
            assert!(!long.probe(|| false).call(on_worker).await.expect("ok"));
            assert!(
                cheap
                    .expect(Duration::from_millis(10))
                    .call(on_worker)
                    .await
                    .expect("ok")
            );
            assert!(
                !long
                    .expect(Duration::from_micros(1))
                    .call(on_worker)
                    .await
                    .expect("ok")
            );
        }
    });
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(5));
}
