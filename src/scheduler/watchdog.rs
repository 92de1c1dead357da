//! The long-poll watchdog: every poll of a named task is timed, and one that holds its runtime
//! thread longer than the threshold is reported through `tracing` with the task's name and
//! counted. Such a poll is a blocking call that should become an adaptive call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Default slow-poll threshold. A poll that holds a runtime thread for 10 ms delays every other
/// task on that thread by as much — two orders of magnitude above a healthy poll (tens of µs).
pub const DEFAULT_SLOW_POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub(crate) struct WatchdogState {
    pub(crate) threshold: Duration,
    pub(crate) slow_polls: AtomicU64,
    pub(crate) longest_ns: AtomicU64,
    by_task: Mutex<HashMap<Arc<str>, u64>>,
}

impl WatchdogState {
    pub(crate) fn new(threshold: Duration) -> Self {
        WatchdogState {
            threshold,
            slow_polls: AtomicU64::new(0),
            longest_ns: AtomicU64::new(0),
            by_task: Mutex::new(HashMap::new()),
        }
    }

    fn report(&self, name: &Arc<str>, took: Duration) {
        self.slow_polls.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.longest_ns.fetch_max(ns, Ordering::Relaxed);
        *self
            .by_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_insert(0) += 1;
        tracing::warn!(
            task = %name,
            poll_ms = took.as_secs_f64() * 1e3,
            threshold_ms = self.threshold.as_secs_f64() * 1e3,
            "slow poll: the task held its runtime thread; make the blocking part an adaptive call"
        );
    }

    pub(crate) fn by_task(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .by_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        v.sort();
        v
    }
}

pin_project_lite::pin_project! {
    /// A future whose polls are timed by the watchdog.
    pub(crate) struct Watched<F> {
        #[pin]
        inner: F,
        name: Arc<str>,
        state: Arc<WatchdogState>,
    }
}

impl<F> Watched<F> {
    pub(crate) fn new(inner: F, name: Arc<str>, state: Arc<WatchdogState>) -> Self {
        Watched { inner, name, state }
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let t0 = Instant::now();
        let r = this.inner.poll(cx);
        let took = t0.elapsed();
        if took >= this.state.threshold {
            this.state.report(this.name, took);
        }
        r
    }
}
