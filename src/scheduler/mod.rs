//! The scheduler: a tokio runtime (owned, or the caller's), the CPU executor beside it, named
//! I/O tasks in groups, the long-poll watchdog, and shutdown with a deadline.
//!
//! ```
//! use std::time::Duration;
//!
//! let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
//! let sum = sched.block_on(async {
//!     let h = sched.executor().submit(|| (1..=100u64).sum::<u64>()).await?;
//!     h.await
//! })?;
//! assert_eq!(sum, 5050);
//! sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;

use crate::error::BuildError;
use crate::executor::Executor;
use crate::placement::{Placement, PlacementConfig, PlacementTier};
use crate::tier::{ShutdownMode, Threads, TierStats};

mod coop;
mod group;
mod watchdog;

pub use coop::{Cooperate, yield_now};
pub use group::{TaskExit, TaskGroup};
pub(crate) use watchdog::DEFAULT_SLOW_POLL;
pub(crate) use watchdog::{WatchdogState, Watched};

/// Default number of I/O (runtime) threads when the scheduler owns its runtime: one. The CPU
/// workers are one per core (cores − 1 at the I/O threads' priority, one overflow worker at a
/// lower one, on Linux; see [`crate::tier::Threads`]): off-core work can use every core the
/// I/O thread does not need, and the I/O thread wins the CPU when it does.
pub(crate) const DEFAULT_IO_THREADS: usize = 1;

/// The least time [`Scheduler::shutdown_timeout`] leaves the CPU executor to stop, even when
/// the named tasks used the whole limit: an idle pool stops in microseconds, but its threads
/// must be woken and joined, and a limit spent by the tasks must not turn a clean stop into a
/// cancellation of nothing.
pub(crate) const MIN_CPU_STOP: Duration = Duration::from_millis(100);

/// Settings for a [`Scheduler`]; `&mut Self` setters, then [`build`](Self::build) (own a
/// runtime) or [`attach`](Self::attach) (use the runtime this code already runs in).
#[derive(Debug, Clone)]
pub struct SchedulerBuilder {
    io_threads: usize,
    cpu: crate::tier::ThreadsBuilder,
    slow_poll: Duration,
    placement: PlacementConfig,
    placement_tiers: Vec<PlacementTier>,
}

impl Default for SchedulerBuilder {
    fn default() -> Self {
        SchedulerBuilder {
            io_threads: DEFAULT_IO_THREADS,
            cpu: Threads::builder(),
            slow_poll: DEFAULT_SLOW_POLL,
            placement: PlacementConfig::default(),
            placement_tiers: Vec::new(),
        }
    }
}

impl SchedulerBuilder {
    /// Runtime worker threads when the scheduler owns its runtime (default
    /// 1).
    pub fn io_threads(&mut self, n: usize) -> &mut Self {
        self.io_threads = n;
        self
    }

    /// CPU worker threads (default [`default_thread_workers`](crate::tier::default_thread_workers):
    /// one per core on Linux, the last at a lower priority; cores − 1 elsewhere). The same
    /// default holds for [`build`](Self::build) and [`attach`](Self::attach).
    pub fn cpu_workers(&mut self, n: usize) -> &mut Self {
        self.cpu.workers(n);
        self
    }

    /// Capacity of the CPU queue (default 256 per worker).
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.cpu.queue_capacity(n);
        self
    }

    /// How long idle CPU workers spin before they park.
    pub fn spin_before_park(&mut self, d: Duration) -> &mut Self {
        self.cpu.spin_before_park(d);
        self
    }

    /// The watchdog threshold: polls longer than this are reported (default
    /// 10 ms).
    pub fn slow_poll_threshold(&mut self, d: Duration) -> &mut Self {
        self.slow_poll = d;
        self
    }

    /// Placement settings for [`Scheduler::site`] (default: every constant of
    /// [`PlacementConfig`]).
    pub fn placement(&mut self, config: PlacementConfig) -> &mut Self {
        self.placement = config;
        self
    }

    /// Another off-core tier for placement, beside the CPU executor: a killable tier (a
    /// [`ProcessPool`](crate::ProcessPool), the MPI cluster) for
    /// [`CallSite::killable`](crate::CallSite::killable) work and
    /// [`Call::remote`](crate::Call::remote) calls, or any executor that should compete on
    /// expected completion. Shutting the scheduler down does not shut these down: they are
    /// yours.
    pub fn placement_tier(&mut self, tier: impl Into<PlacementTier>) -> &mut Self {
        self.placement_tiers.push(tier.into());
        self
    }

    fn finish(&self, runtime: Option<Runtime>, handle: Handle) -> Result<Scheduler, BuildError> {
        let cpu = Executor::from_tier(Arc::new(self.cpu.build()?));
        let mut tiers = vec![PlacementTier::from(cpu.clone())];
        tiers.extend(self.placement_tiers.iter().cloned());
        let placement = Placement::new(tiers, &self.placement)?;
        let watchdog = Arc::new(WatchdogState::new(self.slow_poll));
        watchdog
            .start()
            .map_err(|e| BuildError::io("could not start the watchdog thread", e))?;
        Ok(Scheduler {
            inner: Arc::new(Inner {
                runtime: Mutex::new(runtime),
                handle,
                executor: cpu,
                placement,
                watchdog,
                live: Arc::new(Live::default()),
                spawned: AtomicU64::new(0),
                io_threads: self.io_threads,
            }),
        })
    }

    /// Builds a scheduler that owns a multi-thread tokio runtime (threads `offload-io-N`).
    pub fn build(&self) -> Result<Scheduler, BuildError> {
        if self.io_threads == 0 {
            return Err(BuildError::invalid(
                "the scheduler needs at least 1 I/O thread",
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.io_threads)
            .thread_name_fn(|| {
                static N: AtomicUsize = AtomicUsize::new(0);
                format!("offload-io-{}", N.fetch_add(1, Ordering::Relaxed))
            })
            .enable_all()
            .build()
            .map_err(|e| BuildError::io("could not start the tokio runtime", e))?;
        let handle = rt.handle().clone();
        self.finish(Some(rt), handle)
    }

    /// Builds a scheduler on the runtime this code already runs in (inside `#[tokio::main]`).
    /// The runtime keeps its own threads (tokio's default: one per core); the scheduler adds
    /// its CPU workers beside them (by default one per core on Linux, the last at a lower OS
    /// priority, so the I/O threads win a core when they need it). To size both: the runtime
    /// with `#[tokio::main(worker_threads = N)]` (a few for an I/O-bound service), the CPU side
    /// with [`cpu_workers`](Self::cpu_workers) (one per core is right for CPU-heavy calls; fewer
    /// leaves cores to other processes). Shut it down with [`Scheduler::shutdown`]`.await`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// let sched = offload::Scheduler::builder().attach()?;
    /// assert!(!sched.owns_runtime());
    /// let h = sched.executor().submit(|| 2 + 2).await?;
    /// assert_eq!(h.await?, 4);
    /// sched.shutdown(offload::ShutdownMode::Drain).await;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn attach(&self) -> Result<Scheduler, BuildError> {
        let handle = Handle::try_current().map_err(|_| {
            BuildError::invalid("attach() must be called inside a tokio runtime; use build()")
        })?;
        self.finish(None, handle)
    }
}

#[derive(Debug, Default)]
struct Live {
    tasks: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    next: AtomicU64,
    empty: Notify,
}

struct LiveGuard {
    live: Arc<Live>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut tasks = self.live.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.remove(&self.id);
        if tasks.is_empty() {
            self.live.empty.notify_waiters();
        }
    }
}

struct Inner {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    executor: Executor,
    placement: Placement,
    watchdog: Arc<WatchdogState>,
    live: Arc<Live>,
    spawned: AtomicU64,
    io_threads: usize,
}

/// The cooperative side and the CPU side of an application, together. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

/// A snapshot of the scheduler's counters.
#[derive(Debug, Clone, Default)]
pub struct SchedulerStats {
    /// Runtime threads (when owned) .
    pub io_threads: usize,
    /// Named tasks spawned since start.
    pub tasks_spawned: u64,
    /// Named tasks still running.
    pub tasks_live: usize,
    /// Polls longer than the watchdog threshold (counted when they end).
    pub slow_polls: u64,
    /// Polls the watchdog thread caught still running past the threshold.
    pub stuck_polls: u64,
    /// The longest poll the watchdog saw above its threshold.
    pub longest_slow_poll: Duration,
    /// Slow polls per task name, sorted by name.
    pub slow_polls_by_task: Vec<(String, u64)>,
    /// The CPU executor's counters.
    pub cpu: TierStats,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("owns_runtime", &self.owns_runtime())
            .field("executor", &self.inner.executor)
            .finish()
    }
}

impl Scheduler {
    /// Settings for a new scheduler.
    ///
    /// From sync code, [`build`](SchedulerBuilder::build) owns a runtime:
    ///
    /// ```
    /// let sched = offload::Scheduler::builder().io_threads(2).build()?;
    /// let n = sched.block_on(async { sched.site("sum").call(|| (1..=10u32).sum::<u32>()).await })?;
    /// assert_eq!(n, 55);
    /// sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Inside `#[tokio::main]`, [`attach`](SchedulerBuilder::attach) runs on that runtime
    /// (a runtime cannot own or block on another from inside one):
    ///
    /// ```
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let sched = offload::Scheduler::builder().attach()?;
    ///     let n = sched.site("sum").call(|| (1..=10u32).sum::<u32>()).await?;
    ///     assert_eq!(n, 55);
    ///     sched.shutdown(offload::ShutdownMode::Drain).await;
    ///     Ok(())
    /// }
    /// ```
    pub fn builder() -> SchedulerBuilder {
        SchedulerBuilder::default()
    }

    /// The runtime handle the scheduler spawns on.
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// Whether the scheduler owns its runtime (built with [`SchedulerBuilder::build`]).
    pub fn owns_runtime(&self) -> bool {
        self.inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The CPU executor (thread tier).
    pub fn executor(&self) -> &Executor {
        &self.inner.executor
    }

    /// Placement over the CPU executor (and any [`SchedulerBuilder::placement_tier`]): call
    /// sites, the model, the stats.
    pub fn placement(&self) -> &Placement {
        &self.inner.placement
    }

    /// Runs `fut` to completion on the scheduler's runtime, from sync code.
    ///
    /// # Panics
    ///
    /// When called from inside an async context (a task, `#[tokio::main]`): a thread of a
    /// runtime cannot block on another future. There, `.await` the future instead, and build
    /// the scheduler with [`SchedulerBuilder::attach`] to run on the runtime you are in.
    #[track_caller]
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.inner.handle.block_on(fut)
    }

    pub(crate) fn watch<F: Future>(&self, name: Arc<str>, fut: F) -> Watched<F> {
        Watched::new(fut, name, self.inner.watchdog.clone())
    }

    /// Spawns a named task on the runtime; its polls are watched, and
    /// [`shutdown`](Self::shutdown) waits for it ([`shutdown_timeout`](Self::shutdown_timeout) cancels it past the limit).
    pub fn spawn<F>(&self, name: &str, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let live = self.inner.live.clone();
        let id = live.next.fetch_add(1, Ordering::Relaxed);
        self.inner.spawned.fetch_add(1, Ordering::Relaxed);
        let watched = self.watch(name.into(), fut);
        // Registered before the task can finish: the lock is held across the spawn.
        let mut tasks = live.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let guard = LiveGuard {
            live: live.clone(),
            id,
        };
        let jh = self.inner.handle.spawn(async move {
            let _guard = guard;
            watched.await
        });
        tasks.insert(id, jh.abort_handle());
        jh
    }

    /// A new named group of tasks.
    pub fn group<T: Send + 'static>(&self, name: &str) -> TaskGroup<T> {
        TaskGroup::new(name.into(), self.clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SchedulerStats {
        let w = &self.inner.watchdog;
        SchedulerStats {
            io_threads: if self.owns_runtime() {
                self.inner.io_threads
            } else {
                0
            },
            tasks_spawned: self.inner.spawned.load(Ordering::Relaxed),
            tasks_live: self
                .inner
                .live
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            slow_polls: w.slow_polls.load(Ordering::Relaxed),
            stuck_polls: w.stuck_polls.load(Ordering::Relaxed),
            longest_slow_poll: Duration::from_nanos(w.longest_ns.load(Ordering::Relaxed)),
            slow_polls_by_task: w.by_task(),
            cpu: self.inner.executor.stats(),
        }
    }

    /// Stops everything, from async code, with no time limit.
    ///
    /// - [`ShutdownMode::Drain`]: waits for the named tasks spawned with
    ///   [`spawn`](Self::spawn) to end, then for the CPU executor to finish its queue.
    /// - [`ShutdownMode::Cancel`] / [`ShutdownMode::Kill`]: cancels the named tasks, fails the
    ///   queued CPU work with "shut down"; a CPU task already running on a thread finishes
    ///   there (threads cannot be stopped), and its thread exits after it.
    ///
    /// Groups are stopped by their own `shutdown`. Tiers given to
    /// [`SchedulerBuilder::placement_tier`] are yours to shut down. From sync code use
    /// [`shutdown_blocking`](Self::shutdown_blocking).
    pub async fn shutdown(&self, mode: ShutdownMode) {
        self.stop(mode, None).await;
    }

    /// As [`shutdown`](Self::shutdown), but for at most `limit`: past it, the named tasks still
    /// running are cancelled and the CPU executor escalates to [`ShutdownMode::Kill`] (queued
    /// CPU work fails with "shut down"; running CPU tasks finish on their threads while this
    /// returns). The CPU side always gets at least 100 ms to stop. Returns true when
    /// everything stopped within `limit` without cancelling anything.
    pub async fn shutdown_timeout(&self, mode: ShutdownMode, limit: Duration) -> bool {
        self.stop(mode, Some(limit)).await
    }

    async fn stop(&self, mode: ShutdownMode, limit: Option<Duration>) -> bool {
        let started = Instant::now();
        let mut clean = true;
        let live = &self.inner.live;
        let all_done = async {
            loop {
                let notified = live.empty.notified();
                if live
                    .tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    return;
                }
                notified.await;
            }
        };
        let tasks_ended = match (mode, limit) {
            (ShutdownMode::Drain, None) => {
                all_done.await;
                true
            }
            (ShutdownMode::Drain, Some(limit)) => {
                tokio::time::timeout(limit, all_done).await.is_ok()
            }
            _ => false,
        };
        if !tasks_ended {
            let tasks = live.tasks.lock().unwrap_or_else(|p| p.into_inner());
            if !tasks.is_empty() {
                if mode == ShutdownMode::Drain {
                    clean = false;
                    tracing::info!(
                        left = tasks.len(),
                        "shutdown limit passed: cancelling the named tasks still running"
                    );
                }
                for t in tasks.values() {
                    t.abort();
                }
            }
        }
        let executor = &self.inner.executor;
        match limit {
            None => executor.shutdown(mode).await,
            Some(limit) => {
                let left = limit.saturating_sub(started.elapsed()).max(MIN_CPU_STOP);
                if !executor.shutdown_timeout(mode, left).await {
                    clean = false;
                    tracing::warn!(
                        "shutdown limit passed before the CPU executor stopped: its queued \
                         tasks fail with \"shut down\", running ones finish on their threads"
                    );
                }
            }
        }
        self.inner.watchdog.stop();
        clean
    }

    /// The runtime, when the scheduler owns it and it was not taken yet.
    fn take_runtime(&self) -> Option<Runtime> {
        self.inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// As [`shutdown`](Self::shutdown), from sync code; then, when the scheduler owns its
    /// runtime, the runtime's own shutdown. Afterwards no thread of the library is left.
    ///
    /// # Panics
    ///
    /// When called from inside an async context (a tokio task, `#[tokio::main]`): use
    /// [`shutdown`](Self::shutdown)`.await` there. The panic names the caller's line.
    #[track_caller]
    pub fn shutdown_blocking(self, mode: ShutdownMode) {
        self.inner.handle.block_on(self.stop(mode, None));
        // Dropping an owned runtime waits for its tasks and threads.
        drop(self.take_runtime());
    }

    /// As [`shutdown_timeout`](Self::shutdown_timeout), from sync code; then, when the
    /// scheduler owns its runtime, the runtime's shutdown within what is left of `limit`.
    /// Returns true when everything stopped within `limit` without cancelling anything.
    ///
    /// ```
    /// use std::time::Duration;
    /// use offload::ShutdownMode;
    ///
    /// let sched = offload::Scheduler::builder().build()?;
    /// let ticker = sched.spawn("ticker", async { tokio::time::sleep(Duration::from_secs(60)).await });
    /// // The ticker would run a minute: past 100 ms it is cancelled.
    /// assert!(!sched.shutdown_timeout_blocking(ShutdownMode::Drain, Duration::from_millis(100)));
    /// # drop(ticker);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// When called from inside an async context: use
    /// [`shutdown_timeout`](Self::shutdown_timeout)`.await` there.
    #[track_caller]
    pub fn shutdown_timeout_blocking(self, mode: ShutdownMode, limit: Duration) -> bool {
        let started = Instant::now();
        let clean = self.inner.handle.block_on(self.stop(mode, Some(limit)));
        let left = limit.saturating_sub(started.elapsed());
        if let Some(rt) = self.take_runtime() {
            rt.shutdown_timeout(left);
        }
        clean
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watchdog.stop();
        let rt = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rt) = rt {
            // Dropping a runtime inside an async context panics; this never blocks.
            rt.shutdown_background();
        }
    }
}
