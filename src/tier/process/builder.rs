//! The builder of a [`ProcessPool`] and the settings it fixes.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::pool::{self, Shared, State};
use super::shutdown::Owner;
use super::worker::SlotState;
use super::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_START_FAILURES, DEFAULT_PIPELINE,
    DEFAULT_PIPELINE_SHORT, DEFAULT_RESULT_SPIN, DEFAULT_RESULT_WAIT, DEFAULT_SHARED_MAP_THRESHOLD,
    FORGOT_INIT, ProcessPool, not_registered_fix, slot, sys,
};
use crate::error::BuildError;
use crate::remote::wire::DEFAULT_MAX_FRAME;
use crate::remote::{Registry, RemoteFn, SealedFile};
use crate::tier::{DEFAULT_QUEUE_PER_WORKER, ShutdownMode, default_workers};

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
    pub(crate) pipeline_short: Duration,
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
                pipeline_short: DEFAULT_PIPELINE_SHORT,
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

    /// Queue capacity: tasks waiting for a worker (default 256 ×
    /// workers). `submit` waits for room; `try_submit` hands the arguments back.
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Largest frame either side sends or accepts (default 64 MiB). Arguments
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
    /// 10 s).
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
    /// every worker's setup frame (default 64 KiB; 0 maps any
    /// non-empty data).
    pub fn shared_map_threshold(&mut self, bytes: usize) -> &mut Self {
        self.cfg.shared_map_threshold = bytes;
        self
    }

    /// A deadline for every task, counted from when its worker starts it (time in the queue
    /// does not count); a task past it is killed with its worker and fails with "timed out".
    /// A task with a deadline goes only to an idle worker, which starts it as soon as its
    /// frame is written. For a frame larger than the request pipe's buffer
    /// (`pipeline_depth` × 64 KiB by default), written while the worker reads it, it counts
    /// from the end of that write, and during the write from when the worker was claimed for
    /// it: a worker that never reads its arguments cannot hold the task past its deadline.
    /// Per task: [`ProcessPool::submit_timeout`].
    pub fn task_timeout(&mut self, d: Duration) -> &mut Self {
        self.cfg.task_timeout = Some(d);
        self
    }

    /// Tasks sent ahead to each worker (default 2; 1 sends a task only to
    /// an idle worker).
    pub fn pipeline_depth(&mut self, n: usize) -> &mut Self {
        self.cfg.pipeline = n.max(1);
        self
    }

    /// A task is written behind the tasks of a busy worker only when each of them is of a
    /// function whose learned run time is under `d`, and no worker is idle (default
    /// 10 ms); zero never writes a task behind another. The longest a
    /// task may wait behind another when a worker frees meanwhile.
    pub fn pipeline_short(&mut self, d: Duration) -> &mut Self {
        self.cfg.pipeline_short = d;
        self
    }

    /// Start failures in a row that break the pool (default 3).
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
    /// 0).
    pub fn result_spin(&mut self, d: Duration) -> &mut Self {
        self.cfg.result_spin = d;
        self
    }

    /// How long the first poll (`.await`) of a handle may block its thread reading the
    /// task's answer itself, while recent tasks are shorter than that (default
    /// 100 µs; zero: never, the waiter parks at once and the pool's thread
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
                    owner.stop(ShutdownMode::Kill, None);
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
