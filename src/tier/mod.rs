//! Tiers: the interchangeable places where a task can run.
//!
//! | tier | module | where a task runs | killable | takes |
//! | --- | --- | --- | --- | --- |
//! | [`Inline`] | `inline.rs` | on the thread that first waits for its handle | no | closures |
//! | [`Threads`] | `threads/` | on the library's own pool of named threads | no | closures |
//! | [`ProcessPool`] | `process/` | in worker processes (this binary, re-executed) | yes | [`RemoteFn`](crate::RemoteFn)s |
//! | `mpi::Cluster` | `mpi/` | on the worker ranks of an MPI job (feature `mpi`) | no | [`RemoteFn`](crate::RemoteFn)s |
//!
//! The process tier takes named remote functions instead of closures and has its own face
//! ([`ProcessPool`]) with the same verbs; every tier but inline cuts a `map` into chunks the
//! same way (`map.rs`: chunk sizing, order, window). Every in-process tier implements the small
//! `Tier` trait: take a `Job` now or hand it back when full, take it after waiting for
//! room, shut down. Each job reports, when it finishes, its own run time measured where it ran
//! and the time it spent queued ([`RunInfo`]), so that placement learns each tier's real
//! overhead on this machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

mod auto;
mod inline;
pub(crate) mod map;
pub mod mpi;
pub(crate) mod process;
pub(crate) mod threads;

pub use auto::RemotePool;
pub use inline::Inline;
pub use process::{ProcessPool, ProcessPoolBuilder};
pub(crate) use threads::DEFAULT_QUEUE_PER_WORKER;
pub use threads::{Threads, ThreadsBuilder, default_thread_workers, default_workers};

pub(crate) use crate::task::Job;

/// Which tier a task ran on, or an executor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TierKind {
    /// On the caller's thread.
    Inline,
    /// On the library's thread pool.
    Threads,
    /// In a worker process.
    Processes,
    /// On an MPI rank.
    Cluster,
}

impl TierKind {
    /// The tier's short lowercase name, as printed in errors and stats.
    pub fn name(self) -> &'static str {
        match self {
            TierKind::Inline => "inline",
            TierKind::Threads => "threads",
            TierKind::Processes => "processes",
            TierKind::Cluster => "cluster",
        }
    }

    /// Whether a task running on this tier can be stopped (deadline or cancel). Not on the
    /// cluster: stopping a rank mid-task makes MPI abort the whole job, so only queued cluster
    /// tasks can be withdrawn.
    pub fn is_killable(self) -> bool {
        matches!(self, TierKind::Processes)
    }

    /// Whether this tier runs work outside the caller's thread.
    pub fn is_off_core(self) -> bool {
        !matches!(self, TierKind::Inline)
    }
}

impl fmt::Display for TierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a tier tells about one task it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInfo {
    /// The tier that ran it.
    pub tier: TierKind,
    /// The worker that ran it (thread index, process slot, rank), if any.
    pub worker: Option<usize>,
    /// The task's own run time, measured where it ran.
    pub run_time: Duration,
    /// From submission to the start of the run (queueing and hand-off).
    pub queued: Duration,
    /// The operating-system process that ran it: a worker process's pid on the process tier,
    /// `None` in-process and where the tier cannot tell (a remote rank).
    pub pid: Option<u32>,
}

/// How to shut an executor down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Finish every queued task, then stop.
    Drain,
    /// Fail every queued task with a "shut down" error; running tasks finish.
    Cancel,
    /// Fail every queued task with a "shut down" error and stop running tasks where the tier
    /// can: worker processes and ranks are killed, each running task fails "shut down"
    /// (Python 3.14's `kill_workers`). A running thread-tier task cannot be stopped: there,
    /// and inline, this is [`ShutdownMode::Cancel`].
    Kill,
}

impl ShutdownMode {
    /// Whether queued tasks fail with "shut down" (every mode but [`ShutdownMode::Drain`]).
    pub fn fails_queued(self) -> bool {
        self != ShutdownMode::Drain
    }
}

/// A point-in-time snapshot of a tier's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Worker count (threads, processes or ranks); 0 for inline.
    pub workers: usize,
    /// Tasks waiting in the queue right now.
    pub queued: usize,
    /// Tasks finished (value or panic).
    pub completed: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Running average of the tasks' own run time.
    pub mean_run_time: Duration,
}

/// A future a tier returns while it waits for room in its queue: the job comes back if the tier
/// shuts down meanwhile.
pub(crate) type PushFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Job>> + Send + 'a>>;

/// Why a tier did not take a job at once; the job comes back.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The queue is at capacity.
    Full(Job),
    /// The tier is shut down.
    Closed(Job),
}

/// An in-process place to run [`Job`]s.
///
/// Implementations keep the contracts of DESIGN.md §3: bounded queues, one outcome per job (a
/// job that is dropped unrun fails its task with "shut down"), and explicit shutdown after
/// which none of the tier's threads is left.
pub(crate) trait Tier: Send + Sync + fmt::Debug + 'static {
    /// Which tier this is.
    fn kind(&self) -> TierKind;

    /// Whether jobs run lazily on the thread that first waits for them (the inline tier).
    fn is_lazy(&self) -> bool {
        false
    }

    /// Takes `job` if there is room now.
    fn try_push(&self, job: Job) -> Result<(), PushError>;

    /// Takes `job`, waiting for room.
    fn push(&self, job: Job) -> PushFuture<'_>;

    /// Whether the calling thread is one of this tier's own workers (a task of this tier is
    /// submitting): a blocking submit there must not wait for room that only it could make.
    fn is_own_worker(&self) -> bool {
        false
    }

    /// Takes `job`, blocking the calling thread while the queue is full.
    fn push_blocking(&self, job: Job) -> Result<(), Job>;

    /// How long a waiter may spin for a result before it parks: a tier whose tasks finish in a
    /// few microseconds answers faster than a thread wake-up, so waiting for it by spinning pays.
    fn result_spin(&self) -> Duration {
        Duration::ZERO
    }

    /// Stops taking work, handles queued work per `mode`, and joins every thread of the tier.
    /// Blocks the calling thread until they are gone.
    fn shutdown(&self, mode: ShutdownMode);

    /// A snapshot of the counters.
    fn stats(&self) -> TierStats;
}
