//! The process tier: worker processes that survive crashes and can be killed.
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | [`ProcessPool`], [`ProcessPoolBuilder`], the tuning constants |
//! | `pool.rs` | the shared state: queue, in-flight tasks, dispatch |
//! | `slot.rs` | one thread per worker slot: start, handshake, read answers, reap, replace |
//! | `child.rs` | the worker's side, run by [`init`](crate::init) |
//! | `sys.rs` | the system calls std lacks: pipes, `ppoll`, `timerfd`, `SIGPIPE` blocking |
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

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_channel::TrySendError;
use bytes::Bytes;
use futures::stream::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BuildError, Error, ErrorKind, TrySubmitError};
use crate::remote::wire::{self, DEFAULT_MAX_FRAME, Request};
use crate::remote::{Registry, RemoteFn, SealedFile};
use crate::task::{TaskHandle, remote_task};
use crate::tier::map::{ChunkStats, chunked_map};
use crate::tier::{DEFAULT_QUEUE_PER_WORKER, ShutdownMode, TierKind, TierStats, default_workers};

mod child;
mod pool;
mod slot;
mod sys;

pub(crate) use child::{serve_as_worker, worker_spec};
use pool::{Link, Req, Shared, SlotState, State};
// The typed completers are shared with the cluster tier.
#[cfg(feature = "mpi")]
pub(crate) use pool::Pending;
pub(crate) use pool::{Batch, One};

/// How long a worker has to answer the handshake: start-up of a large binary on a loaded
/// machine takes well under a second; ten leave room and still end a hang.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Workers that fail to start this many times in a row break the pool (the crash-loop guard):
/// one failure can be bad luck, three in a row is the program.
pub const DEFAULT_MAX_START_FAILURES: u32 = 3;

/// Tasks sent ahead to each worker: one running and one waiting in its request pipe, so that a
/// worker never idles for a round trip between two tasks. A worker that dies loses only the
/// running one; the waiting one runs elsewhere.
pub const DEFAULT_PIPELINE: usize = 2;

/// Shared data of at least this many bytes goes to the workers as one sealed memory file that
/// they all map, instead of inside each worker's setup frame: 64 KiB is a pipe's default
/// capacity, past which an inline copy costs the pool's start thread blocking writes and each
/// worker its own heap copy, while the file costs a few system calls once per pool.
pub const DEFAULT_SHARED_MAP_THRESHOLD: usize = 64 << 10;

/// How long a waiter for a process task spins before it parks, by default: zero. The waiter
/// reads its own answer first ([`DEFAULT_RESULT_WAIT`]) without burning CPU; spinning on top
/// would only take a core from the worker on a small machine.
pub const DEFAULT_RESULT_SPIN: Duration = Duration::ZERO;

/// How long the first poll of a handle may block reading its own answer from the worker's
/// answer pipe (in `ppoll`: no CPU burned), when the pool's recent tasks run shorter than this.
///
/// Reading it there saves the hand-off that costs most: another thread reading the answer and
/// waking the waiter (a context switch, ~25 µs across cores on small VMs). A trivial task's
/// round trip is 10–40 µs on a loaded 2-core machine; 100 µs covers it with room, and bounds
/// how long a runtime thread is held when the answer is late (the waiter then parks as
/// before, and the slot thread reads). Set [`ProcessPoolBuilder::result_wait`]; zero turns
/// it off.
pub const DEFAULT_RESULT_WAIT: Duration = Duration::from_micros(100);

/// After a worker closed its answer pipe, how long it may take to exit before it is killed.
pub(crate) const REAP_GRACE: Duration = Duration::from_secs(2);

/// The fix for a worker that never reaches [`init`](crate::init).
pub(crate) const FORGOT_INIT: &str = "call offload::init(&[...]) as the first statement of \
    main: a process pool re-executes this binary, and only init turns it into a worker";

/// Settings of a [`ProcessPool`] (all fixed at start).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) max_frame: usize,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) init: Option<(&'static str, Vec<u8>)>,
    pub(crate) shared: SharedPayload,
    pub(crate) shared_map_threshold: usize,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) pipeline: usize,
    pub(crate) max_start_failures: u32,
    pub(crate) program: PathBuf,
    pub(crate) arg0: Option<OsString>,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) result_spin: Duration,
    pub(crate) result_wait: Duration,
}

/// The read-only data every worker gets: as the builder was given it, then (after
/// [`ProcessPoolBuilder::build`]) as it travels.
#[derive(Clone, Debug)]
pub(crate) enum SharedPayload {
    /// Bytes in the setup frame (the builder's form of any bytes; after `build`, only data
    /// under the map threshold).
    Inline(Bytes),
    /// The builder's form of [`ProcessPoolBuilder::shared_file`]: copied at `build`.
    File(PathBuf),
    /// A sealed memory file every worker inherits and maps (after `build` only).
    Mapped(Arc<SealedFile>),
}

impl SharedPayload {
    /// The data's length in bytes, when known without reading a file.
    fn len(&self) -> Option<u64> {
        match self {
            SharedPayload::Inline(b) => Some(b.len() as u64),
            SharedPayload::File(_) => None,
            SharedPayload::Mapped(f) => Some(f.len()),
        }
    }

    /// The form the workers receive: data at or over `threshold` bytes, and any file, goes
    /// into a sealed memory file.
    fn resolve(&self, threshold: usize) -> Result<SharedPayload, String> {
        if !crate::remote::MAPPED_SHARED_DATA {
            // No sealed memory files on this platform: everything travels inline.
            return match self {
                SharedPayload::File(path) => std::fs::read(path)
                    .map(|b| SharedPayload::Inline(b.into()))
                    .map_err(|e| format!("could not read the shared file {}: {e}", path.display())),
                other => Ok(other.clone()),
            };
        }
        let sealed = match self {
            SharedPayload::Inline(b) if b.len() < threshold || b.is_empty() => {
                return Ok(self.clone());
            }
            SharedPayload::Mapped(_) => return Ok(self.clone()),
            SharedPayload::Inline(b) => SealedFile::from_bytes(b).map_err(|e| {
                format!(
                    "could not put the shared data ({} bytes) in a memory file: {e}",
                    b.len()
                )
            })?,
            SharedPayload::File(path) => SealedFile::from_path(path)
                .map_err(|e| format!("could not read the shared file {}: {e}", path.display()))?,
        };
        if sealed.len() == 0 {
            return Ok(SharedPayload::Inline(Bytes::new()));
        }
        Ok(SharedPayload::Mapped(Arc::new(sealed)))
    }
}

/// Settings for a [`ProcessPool`]: `&mut self` setters, then [`build`](Self::build).
#[derive(Clone)]
pub struct ProcessPoolBuilder {
    cfg: Config,
    queue_capacity: Option<usize>,
    problem: Option<String>,
}

impl fmt::Debug for ProcessPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPoolBuilder")
            .field("workers", &self.cfg.workers)
            .field("max_frame", &self.cfg.max_frame)
            .field("memory_limit", &self.cfg.memory_limit)
            .field("max_tasks", &self.cfg.max_tasks)
            .field("initializer", &self.cfg.init.as_ref().map(|(n, _)| *n))
            .field("shared_bytes", &self.cfg.shared.len())
            .field("shared_map_threshold", &self.cfg.shared_map_threshold)
            .field("task_timeout", &self.cfg.task_timeout)
            .finish()
    }
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        let mut args = std::env::args_os();
        let arg0 = args.next();
        let program = if std::path::Path::new("/proc/self/exe").exists() {
            // Exec'ing the magic link runs this very binary even if its file was replaced.
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
        };
        ProcessPoolBuilder {
            cfg: Config {
                workers: default_workers(),
                queue_capacity: 0,
                max_frame: DEFAULT_MAX_FRAME,
                memory_limit: None,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                max_tasks: None,
                init: None,
                shared: SharedPayload::Inline(Bytes::new()),
                shared_map_threshold: DEFAULT_SHARED_MAP_THRESHOLD,
                task_timeout: None,
                pipeline: DEFAULT_PIPELINE,
                max_start_failures: DEFAULT_MAX_START_FAILURES,
                program,
                arg0,
                args: args.collect(),
                env: Vec::new(),
                result_spin: DEFAULT_RESULT_SPIN,
                result_wait: DEFAULT_RESULT_WAIT,
            },
            queue_capacity: None,
            problem: None,
        }
    }
}

impl ProcessPoolBuilder {
    /// Number of worker processes (default: cores − 1, at least 1; Listing 5).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.cfg.workers = n;
        self
    }

    /// Queue capacity: tasks waiting for a worker (default [`DEFAULT_QUEUE_PER_WORKER`] ×
    /// workers). `submit` waits for room; `try_submit` hands the arguments back.
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Largest frame either side sends or accepts (default [`DEFAULT_MAX_FRAME`]). Arguments
    /// or results that do not fit fail their task with an encoding error.
    pub fn max_frame_size(&mut self, bytes: usize) -> &mut Self {
        self.cfg.max_frame = bytes;
        self
    }

    /// Caps each worker's address space (`RLIMIT_AS`). A task that allocates past it kills
    /// its worker (the allocation fails and the process aborts): that task fails with
    /// "worker died" and the worker is replaced.
    pub fn memory_limit(&mut self, bytes: u64) -> &mut Self {
        self.cfg.memory_limit = Some(bytes);
        self
    }

    /// How long a new worker has to answer the handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(&mut self, d: Duration) -> &mut Self {
        self.cfg.handshake_timeout = d;
        self
    }

    /// Replaces each worker after it ran `n` tasks (Python's `max_tasks_per_child`); a `map`
    /// chunk counts as one task.
    pub fn max_tasks_per_worker(&mut self, n: u64) -> &mut Self {
        self.cfg.max_tasks = Some(n.max(1));
        self
    }

    /// A registered function every worker, replacements included, runs with `args` before
    /// its first task. If it panics the worker does not start (see the crash-loop guard).
    pub fn initializer<A: Serialize, R>(&mut self, f: &RemoteFn<A, R>, args: A) -> &mut Self {
        match postcard::to_allocvec(&args) {
            Ok(bytes) => self.cfg.init = Some((f.name(), bytes)),
            Err(e) => {
                self.problem = Some(format!("could not encode the initializer's arguments: {e}"))
            }
        }
        self
    }

    /// Read-only data given once to every worker at start (Listing 2's precomputed data);
    /// workers read it with [`offload::shared`](crate::shared), which decodes it once per
    /// worker and may borrow from it.
    ///
    /// Data of [`shared_map_threshold`](Self::shared_map_threshold) bytes or more (encoded)
    /// is written once into a sealed memory file that every worker, replacements included,
    /// maps read-only: one copy in memory for the whole pool, and no size limit but memory
    /// (Linux; elsewhere all data travels inline, within
    /// [`max_frame_size`](Self::max_frame_size)). Smaller data travels in each worker's setup
    /// frame. Empty data is no data. Replaces any earlier shared data.
    pub fn shared_data<T: Serialize + ?Sized>(&mut self, data: &T) -> &mut Self {
        match postcard::to_allocvec(data) {
            Ok(bytes) => self.cfg.shared = SharedPayload::Inline(bytes.into()),
            Err(e) => self.problem = Some(format!("could not encode the shared data: {e}")),
        }
        self
    }

    /// Raw read-only bytes given once to every worker, read there with
    /// [`offload::shared_bytes`](crate::shared_bytes) as a `&'static [u8]`, without any
    /// decoding. Travels as [`shared_data`](Self::shared_data) does. Replaces any earlier
    /// shared data.
    pub fn shared_bytes(&mut self, bytes: impl Into<Bytes>) -> &mut Self {
        self.cfg.shared = SharedPayload::Inline(bytes.into());
        self
    }

    /// The contents of the file at `path`, given to every worker as read-only bytes
    /// ([`offload::shared_bytes`](crate::shared_bytes)).
    ///
    /// [`build`](Self::build) copies the file once into a sealed memory file (inside the
    /// kernel, not through this process's heap) that every worker maps: later changes to the
    /// file on disk do not reach the workers, and no worker can see a half-written file.
    /// The copy costs the file's size in memory once for the whole pool. A file that cannot
    /// be read fails `build` with its path. Replaces any earlier shared data.
    pub fn shared_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.cfg.shared = SharedPayload::File(path.into());
        self
    }

    /// The size from which shared data is mapped from one memory file instead of copied into
    /// every worker's setup frame (default [`DEFAULT_SHARED_MAP_THRESHOLD`]; 0 maps any
    /// non-empty data).
    pub fn shared_map_threshold(&mut self, bytes: usize) -> &mut Self {
        self.cfg.shared_map_threshold = bytes;
        self
    }

    /// A deadline for every task, counted from when its worker starts it; a task past it is
    /// killed with its worker and fails with "timed out". For a frame larger than the request
    /// pipe's buffer (`pipeline_depth` × 64 KiB by default), it counts from when an idle
    /// worker is claimed for it, before the write: a worker that never reads the arguments
    /// cannot hold the task past its deadline. Per task: [`ProcessPool::submit_timeout`].
    pub fn task_timeout(&mut self, d: Duration) -> &mut Self {
        self.cfg.task_timeout = Some(d);
        self
    }

    /// Tasks sent ahead to each worker (default [`DEFAULT_PIPELINE`]; 1 sends a task only to
    /// an idle worker).
    pub fn pipeline_depth(&mut self, n: usize) -> &mut Self {
        self.cfg.pipeline = n.max(1);
        self
    }

    /// Start failures in a row that break the pool (default [`DEFAULT_MAX_START_FAILURES`]).
    pub fn max_start_failures(&mut self, n: u32) -> &mut Self {
        self.cfg.max_start_failures = n.max(1);
        self
    }

    /// Sets an environment variable for the workers.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.cfg.env.push((key.into(), value.into()));
        self
    }

    /// How long a waiter spins for a result before it parks (default
    /// [`DEFAULT_RESULT_SPIN`]).
    pub fn result_spin(&mut self, d: Duration) -> &mut Self {
        self.cfg.result_spin = d;
        self
    }

    /// How long the first poll (`.await`) of a handle may block its thread reading the
    /// task's answer itself, while recent tasks are shorter than that (default
    /// [`DEFAULT_RESULT_WAIT`]; zero: never, the waiter parks at once and the pool's thread
    /// reads the answer and wakes it).
    pub fn result_wait(&mut self, d: Duration) -> &mut Self {
        self.cfg.result_wait = d;
        self
    }

    /// Starts the pool. The workers start in the background; a worker that cannot start is
    /// retried, and the crash-loop guard turns repeated failures into a pool error that
    /// every task then reports.
    ///
    /// Errors when [`init`](crate::init) did not run in this process, or a setting is invalid.
    pub fn build(&self) -> Result<ProcessPool, BuildError> {
        if let Some(p) = &self.problem {
            return Err(BuildError::invalid(p.clone()));
        }
        let Some(registry) = Registry::global() else {
            return Err(BuildError::invalid(format!(
                "offload::init was not called in this process: {FORGOT_INIT}"
            )));
        };
        let mut cfg = self.cfg.clone();
        if cfg.workers == 0 {
            return Err(BuildError::invalid(
                "a process pool needs at least 1 worker",
            ));
        }
        if let Some((name, _)) = &cfg.init {
            if !registry.contains(name) {
                return Err(BuildError::invalid(format!(
                    "the initializer {name:?} is not registered: {}",
                    not_registered_fix()
                )));
            }
        }
        cfg.shared = cfg
            .shared
            .resolve(cfg.shared_map_threshold)
            .map_err(BuildError::invalid)?;
        let inline = match &cfg.shared {
            SharedPayload::Inline(b) => b.len(),
            _ => 0,
        };
        let setup_len = inline + cfg.init.as_ref().map_or(0, |(_, a)| a.len()) + 64;
        if setup_len > cfg.max_frame {
            return Err(BuildError::invalid(format!(
                "the shared data and initializer arguments ({setup_len} bytes) exceed the \
                 maximum frame size ({} bytes)",
                cfg.max_frame
            )));
        }
        cfg.queue_capacity = self
            .queue_capacity
            .unwrap_or(DEFAULT_QUEUE_PER_WORKER * cfg.workers)
            .max(1);
        // Remote functions run in this process (inline or on threads, by placement) read the
        // same data as the workers.
        match &cfg.shared {
            SharedPayload::Inline(b) => crate::remote::adopt_bytes(b),
            SharedPayload::Mapped(f) => crate::remote::adopt_file(f),
            SharedPayload::File(_) => {}
        }
        let (tx, rx) = async_channel::bounded(cfg.queue_capacity);
        let workers = cfg.workers;
        let state = State {
            slots: (0..workers).map(|_| SlotState::default()).collect(),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(state),
            changed: Condvar::new(),
            deadlines: Condvar::new(),
            tx,
            rx,
            next_id: AtomicU64::new(1),
            counters: pool::Counters::default(),
            guard_sigpipe: sys::sigpipe_kills(),
        });
        let mut threads = Vec::with_capacity(workers + 1);
        let s = shared.clone();
        let watchdog = std::thread::Builder::new()
            .name("offload-proc-deadlines".into())
            .spawn(move || slot::watchdog(s));
        match watchdog {
            Ok(t) => threads.push(t),
            Err(e) => return Err(BuildError::io("could not start the deadline thread", e)),
        }
        for i in 0..workers {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("offload-proc-{i}"))
                .spawn(move || slot::run(s, i));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let owner = Owner {
                        shared,
                        threads: Mutex::new(threads),
                        stopped: Mutex::new(false),
                    };
                    owner.stop(ShutdownMode::Cancel, true);
                    return Err(BuildError::io("could not start a worker slot thread", e));
                }
            }
        }
        tracing::debug!(workers, "process tier started");
        Ok(ProcessPool {
            inner: Arc::new(Owner {
                shared,
                threads: Mutex::new(threads),
                stopped: Mutex::new(false),
            }),
        })
    }
}

fn not_registered_fix() -> &'static str {
    "list it in offload::init(&[...]) at the top of main"
}

/// Owns the pool's threads; the last clone of the pool stops it.
struct Owner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopped: Mutex<bool>,
}

impl Owner {
    fn stop(&self, mode: ShutdownMode, kill: bool) {
        let kill = kill || mode == ShutdownMode::Kill;
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.shared;
        s.tx.close();
        {
            let mut st = s.lock();
            st.closing = true;
            // Running tasks are waited for (or killed) now: their answers must be read.
            s.want_readers(&mut st);
            if mode.fails_queued() {
                s.fail_queued(&mut st, Error::shut_down);
            }
            if kill {
                st.stopping = true;
                s.deadlines.notify_all();
                for sl in st.slots.iter_mut() {
                    if let Some(c) = sl.child.as_mut() {
                        let _ = c.kill();
                    }
                }
            } else {
                while !(s.is_idle(&st) || st.broken.is_some()) {
                    st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.stopping = true;
                s.deadlines.notify_all();
                s.fail_queued(&mut st, Error::shut_down);
                for sl in st.slots.iter_mut() {
                    if let Some(conn) = sl.conn.clone() {
                        sl.retiring = true;
                        s.send_exit(&conn);
                    }
                }
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        *stopped = true;
        tracing::debug!("process tier stopped; every worker reaped");
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let done = *self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if !done {
            // Dropped without shutdown: do not wait for running tasks; kill and reap.
            self.stop(ShutdownMode::Cancel, true);
        }
    }
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
                &st.slots.iter().filter(|s| s.conn.is_some()).count(),
            )
            .field("queued", &(st.retry.len() + self.inner.shared.rx.len()))
            .field("broken", &st.broken.is_some())
            .field("closing", &st.closing)
            .finish()
    }
}

impl ProcessPool {
    /// Settings for a new pool.
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

    /// The process ids of the workers running now (slots between workers are skipped).
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
        P: pool::Pending + 'static,
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

    /// As [`submit`](Self::submit), with a deadline for this task: past `timeout` from its
    /// start (see [`ProcessPoolBuilder::task_timeout`]) its worker is killed and it fails with
    /// "timed out".
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
    /// [`MAP_CHUNK_TARGET`](crate::tier::MAP_CHUNK_TARGET) (one item per chunk until the first
    /// chunk reports its run time; at most [`MAP_MAX_CHUNK`](crate::tier::MAP_MAX_CHUNK)).
    /// Two chunks per worker are in flight; the input is pulled only as results are consumed,
    /// so an endless iterator is fine. A panic fails only its item; a worker that dies fails
    /// every item of its chunk.
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
    /// ([`ShutdownMode::Drain`]) or fail with "shut down" ([`ShutdownMode::Cancel`]); running
    /// tasks finish. Returns when every worker has exited and been reaped and every thread of
    /// the pool has ended. Safe to call twice.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        let owner = self.inner.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("offload-proc-shutdown".into())
            .spawn(move || {
                owner.stop(mode, false);
                let _ = tx.send(());
            });
        match joiner {
            Ok(j) => {
                let _ = rx.await;
                let _ = j.join();
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread for shutdown; stopping on the caller's thread");
                self.inner.stop(mode, false);
            }
        }
    }

    /// As [`shutdown`](Self::shutdown), blocking the calling thread (for sync code).
    pub fn shutdown_blocking(&self, mode: ShutdownMode) {
        self.inner.stop(mode, false);
    }
}
