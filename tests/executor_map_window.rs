//! `map` over an endless iterator keeps a bounded window: items pulled stay within the window
//! of items finished, so memory stays flat.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use offload::ShutdownMode;

#[tokio::test]
async fn endless_input_is_pulled_no_faster_than_results_are_consumed() {
    let pool = common::pool("map-a", 2, 16);
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let window = 8;
    let mut results = Box::pin(pool.map_window(endless, window, |x| x * 3));
    for expected in 0..1000u64 {
        let v = results.next().await.expect("endless").expect("no panic");
        assert_eq!(v, expected * 3, "results come in input order");
        let finished = expected as usize + 1;
        let now = pulled.load(Ordering::SeqCst);
        assert!(
            now <= finished + window,
            "pulled {now} with {finished} finished"
        );
    }
    drop(results);
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn map_unordered_returns_every_result() {
    let pool = common::pool("map-b", 2, 16);
    let mut got: Vec<u64> = pool
        .map_unordered(0..500u64, |x| x + 1)
        .map(|r| r.unwrap())
        .collect()
        .await;
    got.sort_unstable();
    assert_eq!(got, (1..=500).collect::<Vec<_>>());
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn map_reports_a_panic_as_that_items_error_and_goes_on() {
    let pool = common::pool("map-c", 1, 16);
    let out: Vec<_> = pool
        .map(0..10u32, |x| {
            assert!(x != 4, "item four is bad");
            x
        })
        .collect()
        .await;
    assert_eq!(out.len(), 10);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v as usize, i),
            Err(e) => {
                assert_eq!(i, 4);
                assert!(e.panic_message().unwrap().contains("item four is bad"));
            }
        }
    }
    pool.shutdown(ShutdownMode::Drain).await;
}
