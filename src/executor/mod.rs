//! The executor face: the concurrent.futures mapping (DESIGN.md §5), the same on every tier.
//!
//! | Python | here |
//! | --- | --- |
//! | `executor.submit(fn)` | [`Executor::submit`] (waits for room), [`Executor::try_submit`] (hands the job back when full), [`Executor::submit_blocking`] (sync callers) |
//! | `executor.map(fn, it, chunksize)` | [`Executor::map`]: an ordered `Stream`, small items batched in chunks sized from their measured cost, a bounded window in flight; [`Executor::map_chunked`] fixes the chunk size, [`Executor::map_window`] runs one task per item |
//! | `as_completed(fs)` | [`as_completed`] and [`Executor::map_unordered`] |
//! | `wait(fs, return_when)` | [`wait()`] with [`WaitMode`] |
//! | `shutdown(wait, cancel_futures)` | [`Executor::shutdown`] with [`ShutdownMode`] |
//!
//! # Drop semantics
//!
//! [`Executor`] is a cheap `Clone` handle. Dropping the last clone without calling
//! [`shutdown`](Executor::shutdown) closes the queue: queued tasks still run, and the workers
//! exit on their own afterwards, without anyone waiting for them. Call `shutdown` to know
//! that every thread is gone.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{BuildError, Error, TrySubmitError};
use crate::task::{Expect, TaskHandle, closure_task, recover_closure};
use crate::tier::{Inline, PushError, ShutdownMode, Threads, Tier, TierKind, TierStats};

mod map;
mod wait;

pub use wait::{WaitMode, Waited, as_completed, wait, wait_timeout};

/// The smallest default `map` window: enough to keep a pool busy while results are consumed.
pub(crate) const MIN_MAP_WINDOW: usize = 4;

/// Default `map` window per worker: each worker has one task running and one queued behind it,
/// so it never idles between tasks, and the input is pulled no faster than it is consumed.
pub(crate) const MAP_WINDOW_PER_WORKER: usize = 2;

struct Inner {
    tier: Arc<dyn Tier>,
    closed: AtomicBool,
    workers: usize,
}

/// Runs closures on one tier; the concurrent.futures face. See the module docs.
///
/// ```
/// use offload::prelude::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let pool = Executor::builder().workers(2).build()?;  // or Executor::auto()
/// let sum = pool.run(|| (1..=100u64).sum::<u64>()).await?;
/// assert_eq!(sum, 5050);
/// let lens: Vec<usize> = pool
///     .map(["a", "bb", "ccc"], |s| s.len())
///     .map(|r| r.expect("len does not panic"))
///     .collect()
///     .await;
/// assert_eq!(lens, [1, 2, 3]);
/// pool.shutdown(ShutdownMode::Drain).await;
/// # Ok::<(), offload::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("tier", &self.inner.tier.kind())
            .field("workers", &self.inner.workers)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Settings for a thread-tier [`Executor`] (Python's `ThreadPoolExecutor(max_workers, ...)`):
/// `&mut Self` setters, then [`build`](Self::build).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let pool = offload::Executor::builder()
///     .workers(2)
///     .queue_capacity(64)
///     .thread_name("parser")
///     .build()?;
/// assert_eq!(pool.workers(), 2);
/// assert_eq!(pool.run(|| 6 * 7).await?, 42);
/// pool.shutdown(offload::ShutdownMode::Drain).await;
/// # Ok::<(), offload::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct ExecutorBuilder {
    threads: crate::tier::ThreadsBuilder,
}

impl ExecutorBuilder {
    /// Worker threads (default: one per core on Linux, see [`Threads`](crate::tier::Threads)).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.threads.workers(n);
        self
    }

    /// How many workers run at a lower OS priority and step in only when the others are busy
    /// and a core is spare (default 1 on Linux, 0 elsewhere).
    pub fn low_priority_workers(&mut self, n: usize) -> &mut Self {
        self.threads.low_priority_workers(n);
        self
    }

    /// Whether an extra worker serves short work while long work holds every worker (default
    /// true).
    pub fn express_worker(&mut self, on: bool) -> &mut Self {
        self.threads.express_worker(on);
        self
    }

    /// Queue capacity (default 256 per worker); a full queue makes `submit` wait.
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.threads.queue_capacity(n);
        self
    }

    /// How long idle workers spin before they park (default 50 µs).
    pub fn spin_before_park(&mut self, d: Duration) -> &mut Self {
        self.threads.spin_before_park(d);
        self
    }

    /// Runs `init(worker_index)` once on every worker thread before its first task (Python's
    /// `initializer`); see [`ThreadsBuilder::initializer`](crate::tier::ThreadsBuilder::initializer).
    pub fn initializer(&mut self, init: impl Fn(usize) + Send + Sync + 'static) -> &mut Self {
        self.threads.initializer(init);
        self
    }

    /// Prefix of the worker thread names (default: unique per pool, `offload-cpuP-N`).
    pub fn thread_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.threads.thread_name(name);
        self
    }

    /// Starts the pool's threads.
    pub fn build(&self) -> Result<Executor, BuildError> {
        Ok(Executor::from(self.threads.build()?))
    }
}

/// The thread pool behind an executor face.
impl From<Threads> for Executor {
    fn from(pool: Threads) -> Self {
        Executor::from_tier(Arc::new(pool))
    }
}

impl Executor {
    /// Settings for a thread-tier executor; see [`ExecutorBuilder`].
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// An executor on any tier.
    pub(crate) fn from_tier(tier: Arc<dyn Tier>) -> Self {
        let workers = tier.stats().workers;
        Executor {
            inner: Arc::new(Inner {
                tier,
                closed: AtomicBool::new(false),
                workers,
            }),
        }
    }

    /// The inline tier: tasks run on the thread that first waits for them.
    pub fn inline() -> Self {
        Executor::from_tier(Arc::new(Inline::new()))
    }

    /// The thread tier with `workers` threads and default settings: on Linux, with 2 or more,
    /// the last one is the overflow worker at a lower priority (see
    /// [`Threads`](crate::tier::Threads); [`ThreadsBuilder::low_priority_workers`](crate::tier::ThreadsBuilder::low_priority_workers)
    /// turns it off), plus the express worker for short work.
    pub fn threads(workers: usize) -> Result<Self, BuildError> {
        let pool = Threads::builder().workers(workers).build()?;
        Ok(Executor::from_tier(Arc::new(pool)))
    }

    /// The best in-process tier available here: threads when this machine has more than one
    /// core (the thread tier's default workers: one per core on Linux, see
    /// [`Threads`](crate::tier::Threads)), inline otherwise. The choice is logged and readable through [`tier`](Self::tier).
    pub fn auto() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chosen = if cores > 1 {
            Threads::builder()
                .build()
                .map(|t| Executor::from_tier(Arc::new(t)))
        } else {
            Err(BuildError::invalid("one core: no parallelism to gain"))
        };
        match chosen {
            Ok(e) => {
                tracing::info!(tier = "threads", cores, "auto() picked a tier");
                e
            }
            Err(why) => {
                tracing::info!(tier = "inline", cores, %why, "auto() picked a tier");
                Executor::inline()
            }
        }
    }

    /// The tier this executor runs on.
    pub fn tier(&self) -> TierKind {
        self.inner.tier.kind()
    }

    /// Number of workers (0 for inline).
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// A snapshot of the tier's counters.
    pub fn stats(&self) -> TierStats {
        self.inner.tier.stats()
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn refuse(&self, name: Option<Arc<str>>) -> Error {
        let e = Error::shut_down().with_tier(self.tier());
        match name {
            Some(n) => e.with_task(n),
            None => e,
        }
    }

    fn build<F, T>(
        &self,
        name: Option<Arc<str>>,
        expect: Expect,
        f: F,
    ) -> (crate::task::Job, TaskHandle<T>)
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let tier = &self.inner.tier;
        let (mut job, handle) = closure_task(f, name, tier.kind(), tier.result_spin());
        job.set_expect(expect);
        (job, handle)
    }

    /// Submits `f`, waiting while the queue is full. The handle is a `Future` of the outcome.
    ///
    /// Errors with "shut down" after [`shutdown`](Self::shutdown).
    ///
    /// ```
    /// use offload::prelude::*;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let pool = Executor::threads(2)?;
    /// let h = pool.submit(|| "hello".to_uppercase()).await?;
    /// // ... other work while it runs ...
    /// assert_eq!(h.await?, "HELLO");
    /// pool.shutdown(ShutdownMode::Drain).await;
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn submit<F, T>(&self, f: F) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_inner(None, Expect::Unsaid, f).await
    }

    /// Submits `f` and waits for its outcome: `submit(f).await?.await` in one step, for the
    /// common case where the caller waits anyway.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let pool = offload::Executor::threads(1)?;
    /// let n = pool.run(|| (1..=20u64).sum::<u64>()).await?;
    /// assert_eq!(n, 210);
    /// # pool.shutdown(offload::ShutdownMode::Drain).await;
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes drops the handle, which withdraws the task if it
    /// has not started.
    pub async fn run<F, T>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_inner(None, Expect::Unsaid, f).await?.await
    }

    /// As [`submit`](Self::submit), naming the task (the name shows in errors and logs).
    pub async fn submit_named<F, T>(
        &self,
        name: impl Into<Arc<str>>,
        f: F,
    ) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_inner(Some(name.into()), Expect::Unsaid, f)
            .await
    }

    /// As [`submit_named`](Self::submit_named), saying how long the task is expected to run
    /// (placement's prediction; `None`: asked, but not known yet). The thread tier serves work
    /// predicted under 1 ms, and work not yet
    /// predicted, before plain and long work, and on its express worker when long work holds
    /// every other one: such a task never waits long behind long ones (see
    /// [`Threads`](crate::tier::Threads)).
    pub async fn submit_expected<F, T>(
        &self,
        name: impl Into<Arc<str>>,
        expected: Option<Duration>,
        f: F,
    ) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit_inner(Some(name.into()), Expect::from_prediction(expected), f)
            .await
    }

    async fn submit_inner<F, T>(
        &self,
        name: Option<Arc<str>>,
        expect: Expect,
        f: F,
    ) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.is_shut_down() {
            return Err(self.refuse(name));
        }
        let (job, mut handle) = self.build(name.clone(), expect, f);
        let tier = &self.inner.tier;
        if tier.is_lazy() {
            handle.set_lazy(job);
            return Ok(handle);
        }
        let job = match tier.try_push(job) {
            Ok(()) => return Ok(handle),
            Err(PushError::Closed(_)) => return Err(self.refuse(name)),
            Err(PushError::Full(job)) => job,
        };
        match tier.push(job).await {
            Ok(()) => Ok(handle),
            Err(_) => Err(self.refuse(name)),
        }
    }

    /// Submits `f` if the queue has room now; otherwise hands `f` back in
    /// [`TrySubmitError::Full`] (or [`TrySubmitError::ShutDown`]).
    pub fn try_submit<F, T>(&self, f: F) -> Result<TaskHandle<T>, TrySubmitError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.is_shut_down() {
            return Err(TrySubmitError::ShutDown(f));
        }
        let (job, mut handle) = self.build(None, Expect::Unsaid, f);
        let tier = &self.inner.tier;
        if tier.is_lazy() {
            handle.set_lazy(job);
            return Ok(handle);
        }
        match tier.try_push(job) {
            Ok(()) => Ok(handle),
            Err(PushError::Full(job)) => Err(TrySubmitError::Full(recover_closure::<F, T>(job))),
            Err(PushError::Closed(job)) => {
                Err(TrySubmitError::ShutDown(recover_closure::<F, T>(job)))
            }
        }
    }

    /// Submits `f` from plain sync code, blocking this thread while the queue is full.
    ///
    /// Do not call it on an async runtime's thread: use [`submit`](Self::submit) there.
    pub fn submit_blocking<F, T>(&self, f: F) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.is_shut_down() {
            return Err(self.refuse(None));
        }
        let (job, mut handle) = self.build(None, Expect::Unsaid, f);
        let tier = &self.inner.tier;
        if tier.is_lazy() {
            handle.set_lazy(job);
            return Ok(handle);
        }
        if tier.is_own_worker() {
            // A task of this pool that waited for room in its own full queue would wait for
            // itself (with one worker, for ever): take the room there is, or say why not.
            return match tier.try_push(job) {
                Ok(()) => Ok(handle),
                Err(PushError::Closed(_)) => Err(self.refuse(None)),
                Err(PushError::Full(job)) => {
                    drop(crate::task::recover_closure::<F, T>(job));
                    Err(Error::new(
                        crate::ErrorKind::Usage,
                        "submit_blocking was called from a task of the same pool while its queue \
                         is full: waiting for room would wait for this task itself; use \
                         try_submit there, or submit from outside the pool",
                    )
                    .with_tier(self.tier()))
                }
            };
        }
        match tier.push_blocking(job) {
            Ok(()) => Ok(handle),
            Err(_) => Err(self.refuse(None)),
        }
    }

    /// Stops the executor: new submissions fail with "shut down"; queued tasks run
    /// ([`ShutdownMode::Drain`]) or fail with "shut down" ([`ShutdownMode::Cancel`]); running
    /// tasks finish. Returns when every thread of the tier has exited. Safe to call twice.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        self.inner.closed.store(true, Ordering::Release);
        let tier = self.inner.tier.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        // Joining threads blocks; do it on a short-lived thread so the runtime keeps running.
        let joiner = std::thread::Builder::new()
            .name("offload-shutdown".into())
            .spawn(move || {
                tier.shutdown(mode);
                let _ = tx.send(());
            });
        match joiner {
            Ok(j) => {
                let _ = rx.await;
                let _ = j.join();
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread for shutdown; joining on the caller's thread");
                self.inner.tier.shutdown(mode);
            }
        }
    }

    /// As [`shutdown`](Self::shutdown), blocking the calling thread (for sync code).
    pub fn shutdown_blocking(&self, mode: ShutdownMode) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.tier.shutdown(mode);
    }

    /// Shuts down per `mode`, but for at most `limit`: past it, escalates to
    /// [`ShutdownMode::Kill`] (what is still queued fails with "shut down"). Returns true when
    /// the shutdown finished within `limit` without escalating.
    ///
    /// In-process tiers cannot stop a running task: after an escalation, tasks already running
    /// on a thread finish there, and their threads exit after them, while this returns. The
    /// process pool and the cluster kill theirs.
    ///
    /// ```
    /// use std::time::Duration;
    /// use offload::{Executor, ShutdownMode};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let pool = Executor::threads(1)?;
    /// let slow = pool.submit(|| std::thread::sleep(Duration::from_millis(300))).await?;
    /// let queued = pool.submit(|| 1).await?;
    /// let drained = pool.shutdown_timeout(ShutdownMode::Drain, Duration::from_millis(50)).await;
    /// assert!(!drained);
    /// assert!(queued.await.unwrap_err().is_shut_down());
    /// slow.await?; // a running thread task finishes
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn shutdown_timeout(&self, mode: ShutdownMode, limit: Duration) -> bool {
        if tokio::time::timeout(limit, self.shutdown(mode))
            .await
            .is_ok()
        {
            return true;
        }
        tracing::info!(?limit, "shutdown past its limit: stopping what is left");
        let tier = self.inner.tier.clone();
        // The first shutdown still joins the threads; this one only fails what is queued.
        let _ = std::thread::Builder::new()
            .name("offload-shutdown".into())
            .spawn(move || tier.shutdown(ShutdownMode::Kill));
        false
    }

    /// As [`shutdown_timeout`](Self::shutdown_timeout), blocking the calling thread.
    pub fn shutdown_timeout_blocking(&self, mode: ShutdownMode, limit: Duration) -> bool {
        self.inner.closed.store(true, Ordering::Release);
        let tier = self.inner.tier.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let first = std::thread::Builder::new()
            .name("offload-shutdown".into())
            .spawn(move || {
                tier.shutdown(mode);
                let _ = tx.send(());
            });
        if first.is_err() {
            self.inner.tier.shutdown(ShutdownMode::Kill);
            return false;
        }
        if rx.recv_timeout(limit).is_ok() {
            return true;
        }
        tracing::info!(?limit, "shutdown past its limit: stopping what is left");
        self.inner.tier.shutdown(ShutdownMode::Kill);
        false
    }
}
