//! One outcome per task: values, panics with their message, in any mix.
mod common;

use offload::{ErrorKind, ShutdownMode, TierKind};

#[tokio::test]
async fn every_task_ends_in_exactly_one_outcome_panics_included() {
    // Keep the expected panics out of the test output.
    std::panic::set_hook(Box::new(|_| {}));
    let pool = common::pool("out-a", 2, 64);
    let mut handles = Vec::new();
    for i in 0..200u32 {
        let h = pool
            .submit_named(format!("t{i}"), move || {
                if i % 7 == 0 {
                    panic!("task {i} refuses");
                }
                i * 2
            })
            .await
            .unwrap();
        handles.push(h);
    }
    let (mut ok, mut panicked) = (0, 0);
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(v) => {
                assert_eq!(v, i as u32 * 2);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Panicked);
                assert_eq!(
                    e.panic_message(),
                    Some(format!("task {i} refuses").as_str())
                );
                assert_eq!(e.tier(), Some(TierKind::Threads));
                assert!(e.worker().is_some());
                let text = e.to_string();
                assert!(
                    text.contains(&format!("\"t{i}\"")) && text.contains("threads"),
                    "{text}"
                );
                panicked += 1;
            }
        }
    }
    assert_eq!(ok + panicked, 200);
    assert_eq!(panicked, (0..200).filter(|i| i % 7 == 0).count());
    // The counters move just after each outcome is delivered.
    assert!(
        common::eventually(|| pool.stats().completed == 200),
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().panicked as usize, panicked);
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn run_info_reports_the_tasks_own_run_time() {
    let pool = common::pool("out-b", 1, 8);
    let mut h = pool
        .submit(|| std::thread::sleep(std::time::Duration::from_millis(20)))
        .await
        .unwrap();
    (&mut h).await.unwrap();
    let info = h.run_info().expect("finished");
    assert_eq!(info.tier, TierKind::Threads);
    assert_eq!(info.worker, Some(0));
    assert!(
        info.run_time >= std::time::Duration::from_millis(20),
        "{info:?}"
    );
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn submit_after_shutdown_is_refused() {
    let pool = common::pool("out-c", 1, 8);
    pool.shutdown(ShutdownMode::Drain).await;
    let e = pool.submit(|| 1).await.unwrap_err();
    assert!(e.is_shut_down(), "{e}");
    assert!(pool.try_submit(|| 1).unwrap_err().into_inner()() == 1);
}
