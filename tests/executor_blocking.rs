//! The blocking face works from plain sync code, with no runtime anywhere.
mod common;

use std::time::Duration;

use offload::{Executor, ShutdownMode};

#[test]
fn submit_and_wait_from_sync_code() {
    let pool = common::pool("syn-", 2, 8);
    let handles: Vec<_> = (0..20u64)
        .map(|i| pool.submit_blocking(move || i + 1).unwrap())
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| h.blocking_wait().unwrap())
        .sum();
    assert_eq!(total, 210);
    pool.shutdown_blocking(ShutdownMode::Drain);
}

#[test]
fn blocking_wait_with_timeout_keeps_the_handle() {
    let pool = common::pool("syt-", 1, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let mut h = pool
        .submit_blocking(move || {
            g.wait();
            9
        })
        .unwrap();
    assert!(h.blocking_wait_timeout(Duration::from_millis(20)).is_none());
    gate.open();
    let r = h
        .blocking_wait_timeout(Duration::from_secs(10))
        .expect("finished");
    assert_eq!(r.unwrap(), 9);
    pool.shutdown_blocking(ShutdownMode::Drain);
}

#[test]
fn a_panic_reaches_a_sync_caller() {
    let pool = Executor::inline();
    let e = pool
        .submit_blocking(|| -> u8 { panic!("sync boom") })
        .unwrap()
        .blocking_wait()
        .unwrap_err();
    assert_eq!(e.panic_message(), Some("sync boom"));
}
