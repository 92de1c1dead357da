//! The cluster tier: registered functions on MPI ranks, launched by `mpiexec`.
//!
//! ```text
//! mpiexec -n 4 target/release/examples/mpi_primes
//! ```
//!
//! Every rank runs the same binary. [`crate::init`] (the first line of `main`) reads the
//! launcher's environment ([`detect()`]); on ranks 1.. it initialises MPI, takes the setup that
//! rank 0 broadcasts, serves calls until rank 0 shuts the cluster down, finalizes MPI and exits
//! with status 0 — it never returns there. On rank 0 it starts one dedicated MPI thread, which
//! initialises MPI with `MPI_THREAD_SERIALIZED` (every MPI call on rank 0 is then made under
//! one lock), and returns; the application then builds a [`Cluster`] (or lets `auto()` pick
//! it) and submits [`RemoteFn`](crate::RemoteFn)s as on the process tier: the same registry,
//! wire format and outcomes.
//!
//! - **Hand-off**: one task per worker rank at a time, to whichever rank is free. A short task
//!   submitted while nothing is queued, a rank is free and nobody holds the MPI lock goes
//!   straight from the caller's thread to the rank, and the caller collects its reply itself
//!   (the *direct path*, see [Round trip](#round-trip)). Every other task goes through a
//!   bounded channel to the MPI thread, which sends it when a rank is free and completes its
//!   [`TaskHandle`](crate::TaskHandle) when the reply comes (the *queue path*).
//! - **`map`** sends items in chunks (one MPI message each way per chunk), sized as on the
//!   process tier, with a bounded window of chunks in flight; results come back in order and
//!   each item keeps its own outcome.
//! - **Shared data** ([`ClusterBuilder::shared_data`]): encoded once and sent to every rank
//!   with one `MPI_Bcast` at build time; remote functions read it with [`crate::shared`]
//!   (Listing 2's precomputed data, without the filesystem).
//! - **Panics**: a panicking task is a [`Error::is_panic`](crate::Error::is_panic) error with the rank's message and
//!   backtrace; the rank serves on.
//! - **Shutdown** ([`Cluster::shutdown`], or dropping the last handle, or [`finish`] when no
//!   cluster was built): every worker rank
//!   leaves its loop and finalizes; rank 0 finalizes on the MPI thread; the job exits 0.
//!   Dropping the last handle inside a tokio runtime does not block (the runtime waits for the
//!   drain when it is dropped); elsewhere it blocks until the tasks end (see [`Cluster`]).
//! - **Outcomes**: every task ends in exactly one outcome. A request a worker rank cannot
//!   decode fails its task ([`Error::is_encoding`](crate::Error::is_encoding)) and the rank
//!   serves on; a protocol error (a second setup) fails it as
//!   [`Error::is_remote`](crate::Error::is_remote).
//!
//! # Dead ranks
//!
//! By default OpenMPI (4.1, checked here) aborts the whole job when any rank dies: `mpiexec`
//! prints `mpiexec noticed that process rank N with PID P on node H exited on signal S (...)`
//! (or "returned a non-zero exit code"), kills every other rank, rank 0 included, and exits
//! with a non-zero status (134 for a rank killed by SIGABRT). MPI 4.1 itself gives rank 0 no
//! error: a receive from the dead rank would simply wait. So rank 0's MPI thread watches: every
//! [`LIVENESS_INTERVAL`] while a task is in flight it checks that the worker processes on its
//! own host still exist, and a dead one fails its task with
//! [`Error::is_worker_died`](crate::Error::is_worker_died) (rank and pid in the message), is
//! never used again, and the cluster serves on with the other ranks. Under plain `mpiexec`
//! this report comes before the abort reaches rank 0 (seen in `tests/mpi_dead_rank.rs`), but
//! the job still ends with mpiexec's non-zero status; under `mpiexec --enable-recovery` the job
//! survives, the cluster serves on, and shuts down with status 0. The check runs on its own
//! timer, whether or not other ranks' results keep coming.
//!
//! **Ranks on other hosts are not watched**: rank 0 cannot see their processes, and a receive
//! from a dead or unreachable one waits forever. There, set a time limit
//! ([`ClusterBuilder::task_timeout`] for every task and `map` chunk, or
//! [`Cluster::submit_timeout`] for one task): a task still running past it fails with
//! [`Error::is_timeout`](crate::Error::is_timeout) ("timed out"), and its rank is *retired*,
//! never given work again, because MPI can neither stop a running task nor tell a slow rank
//! from a lost one. A retired rank that was only slow is still told to exit at shutdown and
//! finalizes once its task ends. Pick a limit well above the longest task you expect, or a
//! healthy rank is lost for the rest of the job.
//!
//! **Finalizing after a dead rank.** OpenMPI's `MPI_Finalize` ends with a fence over every
//! process of the job. After a rank died, that fence sometimes never completes (4 runs in 80
//! of `tests/mpi_dead_rank.rs` under load here). So once a rank died, shutting the cluster
//! down waits at most `FINALIZE_GRACE` (10 s) for rank 0's finalize, logs a warning and
//! returns, leaving the MPI thread inside it; the exit message tells the worker ranks, which
//! then also exit after the same grace (their work is done). Under `--enable-recovery`, which
//! a job that survives a dead rank runs under, mpiexec takes both as a normal end (status 0).
//! A rank only retired after a timeout is waited for as before.
//!
//! # Running on several machines
//!
//! Install the same build of the program at the same path on every machine (or on a shared
//! filesystem), make sure the machines reach each other by `ssh` without a password, and list
//! them in a hostfile with the number of ranks each should run:
//!
//! ```text
//! # hosts.txt
//! node1 slots=8
//! node2 slots=8
//! ```
//!
//! ```text
//! mpiexec --hostfile hosts.txt -n 16 target/release/examples/mpi_primes
//! ```
//!
//! Rank 0 (the application) runs on the first host. Every rank must run the same binary: the
//! setup compares build ids and the cluster refuses to start otherwise.
//!
//! # A job that builds no cluster
//!
//! The worker ranks wait inside [`crate::init`] for rank 0's setup. A program that, under
//! `mpiexec`, ends without building a [`Cluster`] (neither [`RemotePool::auto`] nor
//! [`Cluster::builder`]) must call [`finish`] before `main` returns, or the worker ranks wait
//! forever (OpenMPI then reports rank 0 as having exited without finalizing).
//!
//! [`RemotePool::auto`]: crate::RemotePool::auto
//!
//! # Round trip
//!
//! `examples/mpi_roundtrip.rs` measures one trivial task against a raw 8-byte MPI ping-pong in
//! the same run. Rank 0 has two ways to run a task:
//!
//! - **Direct path**: `submit` (`submit_blocking`, `try_submit`) finds the MPI lock free,
//!   nothing queued and a worker rank free, and sends the task from the caller's thread. The
//!   handle's first `.await` or `blocking_wait` then polls for the reply itself
//!   (`MPI_Improbe` under the lock) for up to [`DIRECT_SPIN`]; if it has not come by then, the
//!   task is handed to the MPI thread and the caller parks as on the queue path. No thread
//!   hand-off on the round trip. While a caller watches its task the MPI thread stays parked
//!   (it does not poll for that reply), so on a one-core rank 0 the two do not fight for the
//!   core. A handle that is never waited on is taken over by the MPI thread when it is
//!   dropped or at the latest 1 ms after the send. Tasks whose recent mean run time is
//!   [`DIRECT_SPIN`] or more, `map` chunks, and tasks submitted while others wait take the
//!   queue path. Note that the first poll of a direct task's handle may hold its thread (an
//!   async runtime's worker, say) for up to [`DIRECT_SPIN`], like [`RESULT_SPIN`].
//! - **Queue path**: the channel to the MPI thread and back: two thread hand-offs on rank 0
//!   (caller → MPI thread → caller). It is the only path when MPI grants less than
//!   `MPI_THREAD_SERIALIZED` (then only the MPI thread calls MPI, the `FUNNELED` contract), or
//!   with [`ClusterBuilder::direct_spin`] set to zero.
//!
//! Medians on the 2-vCPU development VM (`mpiexec -n 2`, OpenMPI 4.1, default binding, 2000
//! rounds; the range over 3–4 runs, each ratio against the same run's raw ping-pong; another
//! process kept much of one core busy throughout):
//!
//! | path | raw ping-pong | async `submit` + `.await` | `submit_blocking` + `blocking_wait` |
//! | --- | --- | --- | --- |
//! | direct (default) | 0.54–0.69 µs | 1.7–2.3 µs (2.8–3.5×) | 1.7–2.3 µs (2.8–4.1×) |
//! | queue (`direct_spin` 0) | 0.48–0.70 µs | 7.5–11.5 µs (15–19×) | 6.7–10.2 µs (14–19×) |
//!
//! What costs what on the direct path, about 1.1–1.6 µs over the raw exchange (from
//! `perf`, microbenchmarks of the pieces and A/B runs; approximate, the VM is noisy):
//!
//! - the caller's side up to the send (encode the arguments, make the handle and its watch,
//!   take the lock, encode the header, `MPI_Send`): ~0.45 µs, of which the send ~0.15 µs;
//! - the watch itself is built as a closure task (two allocations, four clock reads, a mutex):
//!   ~0.2 µs of the above and of the wait, the largest single item the library adds;
//! - receiving the reply by polling (`MPI_Improbe` + `MPI_Mrecv`, so that the caller can give
//!   up after a bounded spin) instead of a blocking `MPI_Recv`: ~0.2–0.3 µs. (Worker ranks
//!   take requests with one plain `MPI_Recv` into a kept buffer; the probe-and-receive they
//!   used before cost another ~0.25 µs.)
//! - on the worker: decode, registry lookup, the call, encode the reply: ~0.1–0.2 µs;
//! - decoding the reply and completing the handle: ~0.1 µs.
//!
//! The queue path adds two wake-ups of a parked thread that share one core: `mpiexec` binds
//! rank 0 to one core by default, so the caller and the MPI thread cannot spin for each other
//! (a spinner only delays the thread it waits for: a 25 µs result spin there measured 85 µs
//! per async round trip), and each hand-off is a futex wake and a context switch, ~3 µs each
//! here. The MPI thread's own [`SPIN`] after an event is what keeps it at that: without it the
//! first poll waits for a timer (~160 µs per round trip measured).
//!
//! **Binding.** Keep `mpiexec`'s default binding (or `--bind-to core`) with no more ranks than
//! cores. `--bind-to none` left the direct path as it was (1.3–2.7 µs, 2.8–3.8×) but made the
//! queue path erratic (9.5 µs to 240 µs medians): unbound, rank 0's threads share cores with
//! worker ranks, which busy-poll inside MPI while they wait for work.
//!
//! # Limits
//!
//! Running tasks cannot be stopped (stopping a rank would abort the job); only queued tasks can
//! be cancelled. A time limit fails a task but retires its rank (see [Dead ranks](#dead-ranks)). Results and arguments are limited to
//! [`DEFAULT_MAX_FRAME`](crate::remote::wire::DEFAULT_MAX_FRAME) per message.

// Without the `mpi` feature only `detect` exists here, and the links above to the cluster's
// items have nothing to point to; with it (docs.rs builds with it) every link resolves.
#![cfg_attr(not(feature = "mpi"), allow(rustdoc::broken_intra_doc_links))]

pub mod detect;

#[cfg(feature = "mpi")]
mod builder;
#[cfg(feature = "mpi")]
mod cluster;
#[cfg(feature = "mpi")]
mod direct;
#[cfg(feature = "mpi")]
mod lifecycle;
#[cfg(feature = "mpi")]
mod liveness;
#[cfg(feature = "mpi")]
mod outbox;
#[cfg(feature = "mpi")]
mod service;
#[cfg(feature = "mpi")]
mod worker;

pub use detect::{Detected, Launch, Launcher, detect};

#[cfg(feature = "mpi")]
pub(crate) use lifecycle::start_up;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use builder::{ClusterBuilder, DIRECT_SPIN, RESULT_SPIN, SPIN_MIN_CORES};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use cluster::Cluster;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use lifecycle::{DEFAULT_QUEUE_PER_RANK, finish, launched_with_workers};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use liveness::{PING_INTERVAL, RANK0_SILENCE, SILENCE_LIMIT};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use service::{LIVENESS_INTERVAL, MAX_POLL_INTERVAL, SPIN};
