//! # offload
//!
//! Keep an async service responsive while it does CPU-heavy work. I/O-bound tasks run
//! cooperatively on tokio; a CPU-heavy call runs on a tier — inline, the library's thread pool —
//! behind one concurrent.futures-style face: [`Executor::submit`], [`Executor::map`],
//! [`as_completed`], [`wait`], [`Executor::shutdown`].
//!
//! ```
//! use futures::StreamExt;
//! use offload::{Executor, ShutdownMode, TierKind};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let pool = Executor::threads(2)?;
//! assert_eq!(pool.tier(), TierKind::Threads);
//!
//! // submit: a handle that is a Future of the task's outcome.
//! let h = pool.submit(|| (1..=10u64).product::<u64>()).await?;
//! assert_eq!(h.await?, 3_628_800);
//!
//! // map: results in order, a bounded window in flight.
//! let squares: Vec<u64> = pool
//!     .map(1..=5u64, |x| x * x)
//!     .map(|r| r.expect("squares do not fail"))
//!     .collect()
//!     .await;
//! assert_eq!(squares, [1, 4, 9, 16, 25]);
//!
//! // A panic is an error of its own task, with its message.
//! let e = pool.submit(|| -> u32 { panic!("bad input") }).await?.await.unwrap_err();
//! assert!(e.is_panic() && e.to_string().contains("bad input"));
//!
//! pool.shutdown(ShutdownMode::Drain).await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Tiers
//!
//! | tier | runs a task | killable | use it for |
//! | --- | --- | --- | --- |
//! | [`tier::Inline`] | on the thread that first waits for it, once | no | no parallelism available; tests |
//! | [`tier::Threads`] | on named pool threads that spin before they park | no | CPU work in-process |
//! | [`ProcessPool`] | in worker processes: this binary re-executed | yes | isolation, killing, memory caps |
//! | `tier::mpi::Cluster` (feature `mpi`) | on the ranks of an `mpiexec` job | queued tasks only | more cores than one machine has |
//!
//! [`Executor::auto`] picks threads (inline on one core); [`RemotePool::auto`] picks the MPI
//! cluster under `mpiexec` with more than one rank, else worker processes, else threads.
//!
//! ## Remote functions and worker processes
//!
//! Work sent to another process is a [`RemoteFn`]: a named `fn(A) -> R` with serde arguments
//! and result, checked by type at the call site. Call [`init`] as the first statement of
//! `main`, listing the binary's remote functions; in a process a [`ProcessPool`] started, it
//! serves tasks and never returns. Read-only data given to a pool once (a table, a model, a
//! file) is read in every worker with [`shared`] or [`shared_bytes`]; from 64 KiB up it is one
//! sealed memory file that all workers map, so its memory is paid once per pool. The wire
//! protocol is described in `src/tier/process/README.md`.
//!
//! ## Placement: adaptive backgrounding
//!
//! A [`CallSite`] decides per call, before it runs, whether a CPU-heavy call runs inline (the
//! cost of a direct call) or off-core: from a user probe, or from what the model learned of the
//! key's past durations, per log2 of a size hint. Unknown keys start off-core; an inline call
//! that overruns moves its key off-core at once. [`Scheduler::placement_stats`] shows calls per
//! tier, mean and p99 durations and mispredictions per key. See [`placement`] and its
//! `README.md` for the model.
//!
//! ```
//! let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
//! let parse = sched.site("parse");
//! let words = sched.block_on(async {
//!     let text = "a few words".to_string();
//!     parse.sized(text.len() as u64).call(move || text.split(' ').count()).await
//! })?;
//! assert_eq!(words, 3);
//! # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Shutdown and drop
//!
//! Every type that runs work stops with the same four calls: `shutdown(mode).await`,
//! `shutdown_blocking(mode)`, and with a time limit past which it escalates to
//! [`ShutdownMode::Kill`], `shutdown_timeout(mode, limit).await` and
//! `shutdown_timeout_blocking(mode, limit)` (true when it stopped within the limit). The modes:
//! [`ShutdownMode::Drain`] runs what is queued, [`ShutdownMode::Cancel`] fails it with "shut
//! down", [`ShutdownMode::Kill`] also stops running tasks where the tier can. After any of
//! them no thread or child process of the library is left.
//!
//! Dropping the last handle without a shutdown:
//!
//! | type | queued tasks | running tasks | the drop |
//! | --- | --- | --- | --- |
//! | [`Executor`] (threads) | run | finish | returns at once; the threads exit when the queue is empty |
//! | [`ProcessPool`] | fail "shut down" | fail "shut down": workers killed | blocks until every worker is reaped (no orphan process may outlive its pool) |
//! | `Cluster` (feature `mpi`) | run | finish | drains: blocks on a plain thread; inside a runtime returns at once and the runtime waits |
//! | [`Scheduler`] | CPU work runs, named tasks are cancelled | finish | returns at once; an owned runtime shuts down in the background |
//! | [`TaskHandle`] | withdrawn (unless [`TaskHandle::detach`]ed) | finish (a process task keeps running; [`TaskHandle::cancel`] kills it) | returns at once |
//!
//! The table is the fallback: call a shutdown where the program knows it is done.
//!
//! ## Scheduler
//!
//! [`Scheduler`] owns (or attaches to) a tokio runtime, runs named I/O tasks in groups
//! ([`TaskGroup`]), reports every poll longer than a threshold by task name, and shuts
//! everything down with a deadline.
//!
//! ## Examples
//!
//! In `examples/` (`cargo run --release --example NAME`; `examples/README.md` has small inputs):
//!
//! - `showcase`: the compute server under echo and compute clients, once per policy (inline,
//!   offload, adaptive), with a latency table, `results.json` and an SVG chart.
//! - `echo_server`: a listener and one handler per client, with limits and graceful shutdown.
//! - `compute_server`: CPU requests of varying cost served through adaptive calls.
//! - `tour`: submit, map, wait, a task group, the watchdog, shutdown.
//! - `sum_primes`: parallelpython's benchmark, sequential vs threads vs processes.
//! - `precalc`: a large precomputed table given to every worker process once, mapped, not
//!   copied.
//! - `pi`: Monte-Carlo π, a locked shared counter versus local sums reduced.
//! - `quicksort`: recursive quicksort on the pool.
//! - `sweep`: a parameter sweep with ordered `map` and a progress bar.
//! - `worker_queue`: workers on bounded queues, exit statuses and job errors checked.
//! - `staged`: a legacy sequential function refactored into a staged call.
//! - `mpi_primes`, `mpi_pi`, `mpi_roundtrip` (feature `mpi`, under `mpiexec`): the cluster tier.
//!
//! ## Platform support
//!
//! Linux (the library is developed and tested there); other Unixes should work for the
//! in-process tiers. The process tier needs pipes, `poll`, `/proc/self/exe` (or
//! `current_exe`) and `RLIMIT_AS`; its fast round trip uses Linux's `ppoll` and `timerfd`
//! (elsewhere a caller's bounded wait uses `poll`'s own timeout). Large shared data is one
//! sealed memory file (`memfd_create`, Linux); elsewhere it travels in each worker's setup
//! frame.
//!
//! ## Unsafe code
//!
//! Denied crate-wide; allowed at a few sites of the process tier, each with a `SAFETY`
//! comment: `pre_exec` (clear close-on-exec on the worker's pipe ends and shared-data file,
//! `setrlimit`), adopting the inherited pipe descriptors in the worker, the system calls std
//! lacks, in `tier/process/sys.rs` (pipes and their size, `ppoll`, `timerfd`, blocking
//! `SIGPIPE` for a host that left it at its default), and the shared-data file in
//! `remote/shared.rs` (`memfd_create`, its seals, adopting the inherited descriptor, and
//! mapping it: sound because a sealed file can be neither written nor shrunk); and in the
//! thread tier, `gettid`/`setpriority` (lower one overflow worker's priority) and `sysconf`
//! (online CPUs).

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod error;
mod executor;
pub mod placement;
mod remote;
mod scheduler;
mod task;
pub mod tier;

pub use error::{BuildError, Error, ErrorKind, ExitInfo, TrySubmitError};
pub use executor::{Executor, ExecutorBuilder, WaitMode, Waited, as_completed, wait, wait_timeout};
pub use placement::{
    BucketStats, Call, CallSite, KeyStats, Placement, PlacementConfig, PlacementStats,
    PlacementTier, Stage, TierCost,
};
pub use remote::{AnyRemoteFn, CallFailure, Registry, RemoteFn, init, shared, shared_bytes};
pub use scheduler::{
    Cooperate, Scheduler, SchedulerBuilder, SchedulerStats, TaskExit, TaskGroup, yield_now,
};
pub use task::TaskHandle;
/// What most programs need, in one `use offload::prelude::*;`: the executor face, the
/// scheduler and call sites, the process pool, and [`StreamExt`](futures::StreamExt) for the
/// streams that [`Executor::map`] and [`as_completed`] return (so a program needs no
/// `futures` dependency of its own).
pub mod prelude {
    pub use crate::{
        CallSite, Error, ErrorKind, Executor, ProcessPool, RemoteFn, RemotePool, Scheduler,
        ShutdownMode, TaskHandle, TierKind, WaitMode, as_completed, wait,
    };
    pub use futures::StreamExt;
}

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use tier::{ProcessPool, ProcessPoolBuilder, RemotePool, RunInfo, ShutdownMode, TierKind};
