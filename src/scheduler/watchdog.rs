//! The long-poll watchdog: every poll of a named task is timed, and one that holds its runtime
//! thread longer than the threshold is reported through `tracing` with the task's name and
//! counted. Such a poll is a blocking call that should become an adaptive call.
//!
//! A poll that never returns (a deadlock, an endless loop) would escape a report made when the
//! poll ends, so a watchdog thread also looks at the polls in progress every half threshold and
//! reports each one that has run past the threshold while it is still running.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Default slow-poll threshold. A poll that holds a runtime thread for 10 ms delays every other
/// task on that thread by as much — two orders of magnitude above a healthy poll (tens of µs).
pub(crate) const DEFAULT_SLOW_POLL: Duration = Duration::from_millis(10);

/// Where a watched task's current poll started (ns since the watchdog's epoch; 0: not polling).
#[derive(Debug)]
struct Stamp {
    name: Arc<str>,
    start: AtomicU64,
    warned: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct WatchdogState {
    pub(crate) threshold: Duration,
    pub(crate) slow_polls: AtomicU64,
    pub(crate) stuck_polls: AtomicU64,
    pub(crate) longest_ns: AtomicU64,
    by_task: Mutex<HashMap<Arc<str>, u64>>,
    epoch: Instant,
    stamps: Mutex<Vec<Weak<Stamp>>>,
    stop: Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WatchdogState {
    pub(crate) fn new(threshold: Duration) -> Self {
        WatchdogState {
            threshold,
            slow_polls: AtomicU64::new(0),
            stuck_polls: AtomicU64::new(0),
            longest_ns: AtomicU64::new(0),
            by_task: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            stamps: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        }
    }

    fn now_ns(&self) -> u64 {
        // +1 keeps 0 free to mean "not polling".
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Starts the thread that reports polls still running past the threshold.
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("offload-watchdog".into())
            .spawn(move || me.scan_loop())?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(())
    }

    /// Stops and joins the watchdog thread (idempotent).
    pub(crate) fn stop(&self) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() && t.join().is_err() {
                tracing::error!("the watchdog thread panicked");
            }
        }
    }

    fn scan_loop(&self) {
        let period = (self.threshold / 2).max(Duration::from_millis(1));
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        while !*stop {
            stop = self
                .wake
                .wait_timeout(stop, period)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if *stop {
                break;
            }
            self.scan();
        }
    }

    fn scan(&self) {
        let now = self.now_ns();
        let limit = u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX);
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        stamps.retain(|w| {
            let Some(s) = w.upgrade() else { return false };
            let start = s.start.load(Ordering::Acquire);
            if start != 0
                && now.saturating_sub(start) >= limit
                && s.warned.load(Ordering::Relaxed) != start
            {
                s.warned.store(start, Ordering::Relaxed);
                self.stuck_polls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    task = %s.name,
                    running_ms = now.saturating_sub(start) as f64 / 1e6,
                    "poll still running past the threshold: the task is blocking its runtime thread"
                );
            }
            true
        });
    }

    fn stamp(&self, name: Arc<str>) -> Arc<Stamp> {
        let s = Arc::new(Stamp {
            name,
            start: AtomicU64::new(0),
            warned: AtomicU64::new(0),
        });
        self.stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&s));
        s
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
        stamp: Arc<Stamp>,
        state: Arc<WatchdogState>,
    }
}

impl<F> Watched<F> {
    pub(crate) fn new(inner: F, name: Arc<str>, state: Arc<WatchdogState>) -> Self {
        let stamp = state.stamp(name);
        Watched {
            inner,
            stamp,
            state,
        }
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let t0 = Instant::now();
        this.stamp
            .start
            .store(this.state.now_ns(), Ordering::Release);
        let r = this.inner.poll(cx);
        this.stamp.start.store(0, Ordering::Release);
        let took = t0.elapsed();
        if took >= this.state.threshold {
            this.state.report(&this.stamp.name, took);
        }
        r
    }
}
