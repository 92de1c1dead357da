//! The process tier: worker processes that survive crashes and can be killed.
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | [`ProcessPool`], the tuning constants |
//! | `builder.rs` | [`ProcessPoolBuilder`], the settings, `build` |
//! | `worker.rs` | one worker slot's state: its phase and every transition (see `README.md`) |
//! | `pool.rs` | the shared state: queue, dispatch, cancel |
//! | `pending.rs` | typed completers; decoding a result |
//! | `reader.rs` | reading a worker's answers: by the waiting caller or the slot thread |
//! | `slot.rs` | one thread per worker slot: serve, reap, replace; the deadline watchdog |
//! | `start.rs` | starting a worker: pipes, `exec`, handshake |
//! | `shutdown.rs` | drain, cancel, kill, time limits |
//! | `child.rs` | the worker's side, run by [`init`](crate::init) |
//! | `sys.rs` | the system calls std lacks: pipes, `ppoll`, `timerfd`, `SIGPIPE`, exit watch |
//! | `README.md` | the wire protocol and the life of a worker |
//!
//! Workers are the current executable started again; [`init`](crate::init) at the top of
//! `main` turns such a process into a worker. Work is a [`RemoteFn`]: a named function with
//! serde arguments and result, typed at the call site.
//!
//! Contracts (DESIGN.md §3): a worker that dies (signal, exit, memory cap) fails only the
//! task it was running, with its pid and signal or exit code, and is replaced; tasks it had
//! not started run elsewhere. Workers that fail to start [`DEFAULT_MAX_START_FAILURES`] times
//! in a row break the pool with an error instead of being retried forever. A task's deadline
//! and [`TaskHandle::cancel`] kill the worker running it. Panics come back with their message
//! and backtrace. Shutdown reaps every child.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_channel::TrySendError;
use futures::stream::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BuildError, Error, ErrorKind, TrySubmitError};
use crate::remote::wire::{self, Request};
use crate::remote::{Registry, RemoteFn};
use crate::task::{TaskHandle, remote_task};
use crate::tier::map::{ChunkStats, chunked_map};
use crate::tier::{ShutdownMode, TierKind, TierStats};

mod builder;
mod child;
mod pending;
mod pool;
mod reader;
mod shutdown;
mod slot;
mod start;
mod sys;
mod worker;

pub use builder::ProcessPoolBuilder;
pub(crate) use builder::{Config, SharedPayload};
pub(crate) use child::{serve_as_worker, worker_spec};
use pool::{Link, Shared};
use shutdown::Owner;
use worker::Req;
// The typed completers are shared with the cluster tier.
#[cfg(feature = "mpi")]
pub(crate) use pending::Pending;
pub(crate) use pending::{Batch, One};

/// How long a worker has to answer the handshake: start-up of a large binary on a loaded
/// machine takes well under a second; ten leave room and still end a hang.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Workers that fail to start this many times in a row break the pool (the crash-loop guard):
/// one failure can be bad luck, three in a row is the program.
pub(crate) const DEFAULT_MAX_START_FAILURES: u32 = 3;

/// Tasks sent ahead to each worker: one running and one waiting in its request pipe, so that a
/// worker never idles for a round trip between two tasks. A worker that dies loses only the
/// running one; the waiting one runs elsewhere.
pub(crate) const DEFAULT_PIPELINE: usize = 2;

/// A task is written behind the tasks a busy worker runs (pipelining, up to
/// [`DEFAULT_PIPELINE`] in all) only when each of them is of a function whose learned run time
/// is under this, and only when no worker is idle: then the worker never idles for a round
/// trip between two short tasks, and a task never waits behind a long one. 10 ms: a round trip
/// (tens of µs) is under 1% of it, and a task waits at most about this long for a worker that
/// frees meanwhile; `map` chunks (about [`MAP_CHUNK_TARGET`](crate::tier::MAP_CHUNK_TARGET))
/// stay under it. A function not yet seen is not known to be short. Set
/// [`ProcessPoolBuilder::pipeline_short`].
pub(crate) const DEFAULT_PIPELINE_SHORT: Duration = Duration::from_millis(10);

/// Shared data of at least this many bytes goes to the workers as one sealed memory file that
/// they all map, instead of inside each worker's setup frame: 64 KiB is a pipe's default
/// capacity, past which an inline copy costs the pool's start thread blocking writes and each
/// worker its own heap copy, while the file costs a few system calls once per pool.
pub(crate) const DEFAULT_SHARED_MAP_THRESHOLD: usize = 64 << 10;

/// How long a waiter for a process task spins before it parks, by default: zero. The waiter
/// reads its own answer first ([`DEFAULT_RESULT_WAIT`]) without burning CPU; spinning on top
/// would only take a core from the worker on a small machine.
pub(crate) const DEFAULT_RESULT_SPIN: Duration = Duration::ZERO;

/// How long the first poll of a handle may block reading its own answer from the worker's
/// answer pipe (in `ppoll`: no CPU burned), when the pool's recent tasks run shorter than this.
///
/// Reading it there saves the hand-off that costs most: another thread reading the answer and
/// waking the waiter (a context switch, ~25 µs across cores on small VMs). A trivial task's
/// round trip is 10–40 µs on a loaded 2-core machine; 100 µs covers it with room, and bounds
/// how long a runtime thread is held when the answer is late (the waiter then parks as
/// before, and the slot thread reads). Set [`ProcessPoolBuilder::result_wait`]; zero turns
/// it off.
pub(crate) const DEFAULT_RESULT_WAIT: Duration = Duration::from_micros(100);

/// After a worker closed its answer pipe, how long it may take to exit before it is killed.
pub(crate) const REAP_GRACE: Duration = Duration::from_secs(2);

/// The fix for a worker that never reaches [`init`](crate::init).
pub(crate) const FORGOT_INIT: &str = "call offload::init(&[...]) as the first statement of \
    main: a process pool re-executes this binary, and only init turns it into a worker";

pub(crate) fn not_registered_fix() -> &'static str {
    "list it in offload::init(&[...]) at the top of main"
}

/// A pool of worker processes running registered [`RemoteFn`]s. Cheap to clone; see the
/// module docs.
///
/// ```no_run
/// use futures::StreamExt;
/// use offload::{ProcessPool, RemoteFn, ShutdownMode};
///
/// static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);
///
/// fn main() {
///     offload::init(&[&SQUARE]); // first: workers are this binary started again
///     let rt = tokio::runtime::Runtime::new().unwrap();
///     rt.block_on(async {
///         let pool = ProcessPool::builder().workers(2).build()?;
///         let h = pool.submit(&SQUARE, 12).await?;
///         assert_eq!(h.await?, 144);
///         let v: Vec<u64> = pool.map(&SQUARE, 0..1000u64).map(|r| r.unwrap()).collect().await;
///         assert_eq!(v[999], 998_001);
///         pool.shutdown(ShutdownMode::Drain).await;
///         Ok::<(), Box<dyn std::error::Error>>(())
///     }).unwrap();
/// }
/// ```
///
/// # Cancel safety
///
/// Dropping a handle withdraws its task while it is queued; a task already sent to a worker
/// runs on. [`TaskHandle::cancel`] stops a running task by killing its worker (which is
/// replaced). Dropping the last clone of the pool without [`shutdown`](Self::shutdown) kills
/// the workers and fails their tasks with "shut down".
#[derive(Clone)]
pub struct ProcessPool {
    inner: Arc<Owner>,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.shared.lock();
        f.debug_struct("ProcessPool")
            .field("workers", &st.slots.len())
            .field(
                "live",
                &st.slots
                    .iter()
                    .filter(|s| s.phase == worker::Phase::Serving)
                    .count(),
            )
            .field("queued", &(st.retry.len() + self.inner.shared.rx.len()))
            .field("broken", &st.broken.is_some())
            .field("closing", &st.closing)
            .finish()
    }
}

impl ProcessPool {
    /// Settings for a new pool.
    ///
    /// ```
    /// use offload::{ProcessPool, RemoteFn, ShutdownMode};
    ///
    /// static LEN: RemoteFn<String, usize> = RemoteFn::new("len", |s| s.len());
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     offload::init(&[&LEN]); // first: in a worker process, this serves tasks
    ///     let pool = ProcessPool::builder()
    ///         .workers(2)
    ///         .memory_limit(512 << 20)      // each worker's address space
    ///         .max_tasks_per_worker(1_000)  // recycle a worker after 1,000 tasks
    ///         .build()?;
    ///     let n = pool.submit_blocking(&LEN, "four".to_string())?.blocking_wait()?;
    ///     assert_eq!(n, 4);
    ///     pool.shutdown_blocking(ShutdownMode::Drain);
    ///     Ok(())
    /// }
    /// ```
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::default()
    }

    /// A pool of `workers` processes with default settings.
    pub fn new(workers: usize) -> Result<Self, BuildError> {
        Self::builder().workers(workers).build()
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Number of worker slots.
    pub fn workers(&self) -> usize {
        self.shared().cfg.workers
    }

    /// The tier: [`TierKind::Processes`].
    pub fn tier(&self) -> TierKind {
        TierKind::Processes
    }

    /// The process ids of the workers serving now (a worker still in its handshake, and a slot
    /// between two workers, are skipped). A finished task's
    /// [`RunInfo::pid`](crate::RunInfo::pid) names the worker that ran it.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared()
            .lock()
            .slots
            .iter()
            .filter_map(|s| s.pid)
            .collect()
    }

    /// Workers started to replace dead or retired ones so far.
    pub fn respawns(&self) -> u64 {
        self.shared().counters.respawned.load(Ordering::Relaxed)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TierStats {
        let s = self.shared();
        let queued = s.lock().retry.len() + s.rx.len();
        TierStats {
            workers: s.cfg.workers,
            queued,
            completed: s.counters.completed.load(Ordering::Relaxed),
            panicked: s.counters.panicked.load(Ordering::Relaxed),
            mean_run_time: Duration::from_nanos(s.counters.ewma_run_ns.load(Ordering::Relaxed)),
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared().lock().closing
    }

    /// Why no task can run (the crash-loop guard fired), if so.
    pub fn broken(&self) -> Option<Error> {
        self.shared().lock().broken.clone()
    }

    fn refusal(&self, name: &'static str) -> Error {
        let st = self.shared().lock();
        let e = match &st.broken {
            Some(b) => b.clone(),
            None => Error::shut_down(),
        };
        e.with_tier(TierKind::Processes).with_task(name)
    }

    /// Checks the function and the pool, then encodes a request. `batch` sends a `Vec<A>`.
    fn request<T, P>(
        &self,
        name: &'static str,
        batch: bool,
        timeout: Option<Duration>,
        encode: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, postcard::Error>,
        make: impl FnOnce(crate::task::Completer<T>) -> P,
    ) -> Result<(Req, TaskHandle<T>), Error>
    where
        P: pending::Pending + 'static,
    {
        let s = self.shared();
        let registered = Registry::global().is_some_and(|r| r.contains(name));
        if !registered {
            return Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "no remote function {name:?} is registered: {}",
                    not_registered_fix()
                ),
            )
            .with_task(name)
            .with_tier(TierKind::Processes));
        }
        // Shutdown and the crash-loop guard close the queue first: no lock needed to see them.
        if s.tx.is_closed() {
            return Err(self.refusal(name));
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let header = if batch {
            Request::Batch { id, func: name }
        } else {
            Request::Call { id, func: name }
        };
        let frame = wire::build_frame(&header, s.cfg.max_frame, encode)
            .map_err(|e| e.with_task(name).with_tier(TierKind::Processes))?;
        let (completer, handle) = remote_task::<T>(
            Some(Arc::from(name)),
            TierKind::Processes,
            s.cfg.result_spin,
            Some(Arc::new(Link {
                pool: Arc::downgrade(s),
                id,
                read_own: !batch,
            })),
        );
        let req = Req {
            id,
            key: (name, batch),
            frame,
            task: Box::new(make(completer)),
            timeout: timeout.or(s.cfg.task_timeout),
            started: false,
            failed_writes: 0,
        };
        Ok((req, handle))
    }

    fn kick(&self) {
        let s = self.shared();
        let mut st = s.lock();
        s.pump(&mut st);
    }

    async fn enqueue(&self, name: &'static str, req: Req) -> Result<(), Error> {
        let s = self.shared();
        match s.tx.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(req)) => {
                if s.tx.send(req).await.is_err() {
                    return Err(self.refusal(name));
                }
            }
            Err(TrySendError::Closed(_)) => return Err(self.refusal(name)),
        }
        self.kick();
        Ok(())
    }

    /// Submits `f(args)`, waiting while the queue is full. The handle is a `Future` of the
    /// result, and can cancel (kill) the task.
    ///
    /// Errors at once when `f` is not registered, the arguments do not encode or exceed the
    /// maximum frame size, or the pool is shut down or broken.
    pub async fn submit<A, R>(&self, f: &RemoteFn<A, R>, args: A) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_inner(f, args, None).await
    }

    /// As [`submit`](Self::submit), with a deadline for this task: past `timeout` from when
    /// its worker starts it (time in the queue does not count; see
    /// [`ProcessPoolBuilder::task_timeout`]) its worker is killed and it fails with
    /// "timed out".
    ///
    /// ```
    /// use std::time::Duration;
    /// use offload::{ProcessPool, RemoteFn, ShutdownMode};
    ///
    /// static SLEEP_MS: RemoteFn<u64, u64> = RemoteFn::new("sleep_ms", |ms| {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// });
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     offload::init(&[&SLEEP_MS]);
    ///     let pool = ProcessPool::new(1)?;
    ///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    ///     rt.block_on(async {
    ///         let h = pool.submit_timeout(&SLEEP_MS, 10_000, Duration::from_millis(100)).await?;
    ///         let e = h.await.unwrap_err();
    ///         assert!(e.is_timeout(), "{e}");
    ///         // The worker was killed and replaced: the pool serves on.
    ///         assert_eq!(pool.submit(&SLEEP_MS, 1).await?.await?, 1);
    ///         pool.shutdown(ShutdownMode::Drain).await;
    ///         Ok::<(), offload::Error>(())
    ///     })?;
    ///     Ok(())
    /// }
    /// ```
    pub async fn submit_timeout<A, R>(
        &self,
        f: &RemoteFn<A, R>,
        args: A,
        timeout: Duration,
    ) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_inner(f, args, Some(timeout)).await
    }

    async fn submit_inner<A, R>(
        &self,
        f: &RemoteFn<A, R>,
        args: A,
        timeout: Option<Duration>,
    ) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let name = f.name();
        let (req, handle) = self.request(
            name,
            false,
            timeout,
            |v| postcard::to_extend(&args, v),
            |completer| One { completer },
        )?;
        drop(args);
        self.enqueue(name, req).await?;
        Ok(handle)
    }

    /// Submits `f(args)` if the queue has room now; otherwise hands `args` back:
    ///
    /// - [`TrySubmitError::Full`]: the queue is at capacity; try again later.
    /// - [`TrySubmitError::ShutDown`]: [`shutdown`](Self::shutdown) was called.
    /// - [`TrySubmitError::Rejected`], with the error that says why: `f` is not registered
    ///   ([`Error::is_remote`]), the arguments cannot be encoded or exceed the
    ///   [maximum frame size](ProcessPoolBuilder::max_frame_size) ([`Error::is_encoding`]),
    ///   or the pool is broken (the [`ErrorKind::Pool`] error of [`broken`](Self::broken)).
    pub fn try_submit<A, R>(
        &self,
        f: &RemoteFn<A, R>,
        args: A,
    ) -> Result<TaskHandle<R>, TrySubmitError<A>>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let name = f.name();
        let (req, handle) = match self.request(
            name,
            false,
            None,
            |v| postcard::to_extend(&args, v),
            |completer| One { completer },
        ) {
            Ok(x) => x,
            // The queue is closed: shut down, or broken.
            Err(e) if e.is_shut_down() || e.kind() == ErrorKind::Pool => {
                return Err(self.try_refusal(name, args));
            }
            Err(e) => return Err(TrySubmitError::Rejected(args, e)),
        };
        match self.shared().tx.try_send(req) {
            Ok(()) => {
                self.kick();
                Ok(handle)
            }
            Err(TrySendError::Full(req)) => {
                req.task.discard();
                drop(handle);
                Err(TrySubmitError::Full(args))
            }
            Err(TrySendError::Closed(req)) => {
                req.task.discard();
                drop(handle);
                Err(self.try_refusal(name, args))
            }
        }
    }

    /// Hands `args` back from a closed queue: [`TrySubmitError::ShutDown`] after
    /// [`shutdown`](Self::shutdown), else (the crash-loop guard closed it)
    /// [`TrySubmitError::Rejected`] with the pool's error.
    fn try_refusal<A>(&self, name: &'static str, args: A) -> TrySubmitError<A> {
        let st = self.shared().lock();
        match &st.broken {
            Some(b) if !st.closing => TrySubmitError::Rejected(
                args,
                b.clone().with_tier(TierKind::Processes).with_task(name),
            ),
            _ => TrySubmitError::ShutDown(args),
        }
    }

    /// As [`submit`](Self::submit) from plain sync code, blocking while the queue is full.
    ///
    /// Do not call it on an async runtime's thread: use `submit` there.
    pub fn submit_blocking<A, R>(&self, f: &RemoteFn<A, R>, args: A) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let name = f.name();
        let (req, handle) = self.request(
            name,
            false,
            None,
            |v| postcard::to_extend(&args, v),
            |completer| One { completer },
        )?;
        if self.shared().tx.send_blocking(req).is_err() {
            return Err(self.refusal(name));
        }
        self.kick();
        Ok(handle)
    }

    async fn submit_chunk<A, R>(
        &self,
        name: &'static str,
        items: Vec<A>,
        stats: Arc<ChunkStats>,
    ) -> Result<TaskHandle<Vec<Result<R, Error>>>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let n = items.len();
        let (req, handle) = self.request(
            name,
            true,
            None,
            |v| postcard::to_extend(&items, v),
            |completer| Batch {
                completer,
                items: n,
                stats,
            },
        )?;
        drop(items);
        self.enqueue(name, req).await?;
        Ok(handle)
    }

    /// Applies `f` to every item in worker processes; results in input order, one per item.
    ///
    /// Items travel in chunks, many per frame, sized so that a chunk runs about
    /// 2 ms (one item per chunk until the first
    /// chunk reports its run time; at most 4,096).
    /// Two chunks per worker are in flight; the input is pulled only as results are consumed,
    /// so an endless iterator is fine. A panic fails only its item; a worker that dies fails
    /// every item of its chunk.
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map<A, R, I>(
        &self,
        f: &RemoteFn<A, R>,
        items: I,
    ) -> impl Stream<Item = Result<R, Error>> + Send + use<A, R, I>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        self.map_inner(f.name(), items, None)
    }

    /// As [`map`](Self::map) with a fixed chunk size (Python's `chunksize`).
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map_chunked<A, R, I>(
        &self,
        f: &RemoteFn<A, R>,
        items: I,
        chunk: usize,
    ) -> impl Stream<Item = Result<R, Error>> + Send + use<A, R, I>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        self.map_inner(f.name(), items, Some(chunk.max(1)))
    }

    fn map_inner<A, R, I>(
        &self,
        name: &'static str,
        items: I,
        fixed: Option<usize>,
    ) -> impl Stream<Item = Result<R, Error>> + Send + use<A, R, I>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let window = (self.workers() * self.shared().cfg.pipeline.max(1)).max(2);
        let pool = self.clone();
        chunked_map(items, fixed, window, move |chunk, stats| {
            let pool = pool.clone();
            async move { pool.submit_chunk::<A, R>(name, chunk, stats).await?.await }
        })
    }

    /// Stops the pool: new submissions fail with "shut down"; queued tasks run
    /// ([`ShutdownMode::Drain`]) or fail with "shut down" ([`ShutdownMode::Cancel`],
    /// [`ShutdownMode::Kill`]); running tasks finish, or with `Kill` are killed with their
    /// workers and fail "shut down". Returns when every worker has exited and been reaped and
    /// every thread of the pool has ended. Safe to call twice.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        self.stop_async(mode, None).await;
    }

    /// As [`shutdown`](Self::shutdown), blocking the calling thread (for sync code).
    pub fn shutdown_blocking(&self, mode: ShutdownMode) {
        self.inner.stop(mode, None);
    }

    /// As [`shutdown`](Self::shutdown) with a time limit (Python's `terminate_workers` after
    /// a wait): shuts down per `mode`; if that has not finished within `limit`, escalates to
    /// [`ShutdownMode::Kill`] (queued and running tasks fail "shut down"). Returns true when it
    /// finished without escalating. On return no worker process is left (all reaped).
    pub async fn shutdown_timeout(&self, mode: ShutdownMode, limit: Duration) -> bool {
        self.stop_async(mode, Some(limit)).await
    }

    /// As [`shutdown_timeout`](Self::shutdown_timeout), blocking the calling thread (for sync
    /// code).
    pub fn shutdown_timeout_blocking(&self, mode: ShutdownMode, limit: Duration) -> bool {
        self.inner.stop(mode, Some(limit))
    }

    /// Stops the pool on a thread of its own (joining threads and reaping children block).
    async fn stop_async(&self, mode: ShutdownMode, limit: Option<Duration>) -> bool {
        let owner = self.inner.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("offload-proc-shutdown".into())
            .spawn(move || {
                let _ = tx.send(owner.stop(mode, limit));
            });
        match joiner {
            Ok(j) => {
                let clean = rx.await.unwrap_or(false);
                let _ = j.join();
                clean
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread for shutdown; stopping on the caller's thread");
                self.inner.stop(mode, limit)
            }
        }
    }
}
