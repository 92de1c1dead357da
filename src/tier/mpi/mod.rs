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
//! # Dead, frozen and unreachable ranks
//!
//! MPI 4.1 gives rank 0 no error when a rank dies or its host drops off the network: a
//! receive from it simply waits. So the cluster watches every rank itself, on every host
//! (the protocol is in `liveness.rs`):
//!
//! - rank 0 pings every worker rank every [`PING_INTERVAL`] (200 ms); a worker answers from its
//!   serving loop when idle, and from a *watcher* thread while a task runs (the task runs on
//!   the main thread; the two share MPI under a lock, `MPI_THREAD_SERIALIZED`);
//! - a rank that leaves a ping unanswered for [`SILENCE_LIMIT`] (1 s) is lost: it died, hangs
//!   outside a task, or is unreachable. Its task fails with
//!   [`Error::is_worker_died`](crate::Error::is_worker_died) (rank, host and pid in the
//!   message), at most 1.2 s after the rank went quiet; the rank is never used again and the
//!   cluster serves on with the others. No time limit is needed for that;
//!   [`ClusterBuilder::task_timeout`] remains for tasks that run too long.
//! - on rank 0's own host the worker processes are also checked in `/proc` every
//!   [`LIVENESS_INTERVAL`] while tasks run: a local death fails its task within 200 ms;
//! - rank 0 never blocks on a send to a worker (`MPI_Isend`, see `outbox.rs`): a blocking send
//!   to a dead peer over TCP waits for ever inside OpenMPI;
//! - a worker rank that hears nothing from rank 0 for [`RANK0_SILENCE`] (3 s) ends its
//!   process: rank 0 is gone or its host is cut off.
//!
//! By default OpenMPI aborts the whole job, rank 0 included, when a rank *dies* (`mpiexec
//! noticed that process rank N ... exited on signal S`; status 134 for SIGABRT): run under
//! `mpiexec --enable-recovery` for the cluster to serve on. A frozen or unreachable rank does
//! not trigger that abort: the cluster serves on either way.
//!
//! **The job ends.** After a loss rank 0 does not call `MPI_Finalize` (it ends with a fence
//! over every process, which the lost rank never joins): the shutdown returns at once, and
//! when rank 0's process exits it calls `MPI_Abort` with code 0, so that `mpiexec` ends every
//! process left (and prints its `MPI_ABORT was invoked on rank 0 ... errorcode 0` banner).
//! Worker ranks bound their own finalize by 2 s. Measured with `tests/multihost/run.sh`
//! (two simulated hosts, the failing rank on the other one), from the failure to the end of
//! every process of the job on both hosts: a dead rank 5–6 s (status 0), a cut link 3–5 s
//! (`mpiexec` loses its daemon there and exits 1), a frozen rank 1–3 s (without
//! `--enable-recovery`). **Limit**: under `--enable-recovery`, OpenMPI 4.1 never reaps a
//! frozen (SIGSTOPped) process: `mpiexec` waits for it even after rank 0's `MPI_Abort`.
//!
//! [`ClusterBuilder::task_timeout`] and [`Cluster::submit_timeout`] still bound a task's run
//! time: past the limit the task fails with [`Error::is_timeout`](crate::Error::is_timeout)
//! and its rank is *retired*, never given work again (MPI cannot stop a running task except by
//! ending the rank). A retired rank is still pinged and told to exit at shutdown.
//!
//! # Shutdown
//!
//! [`Cluster::shutdown`] with [`ShutdownMode::Drain`](crate::ShutdownMode::Drain) or
//! [`Cancel`](crate::ShutdownMode::Cancel) waits for the running tasks;
//! [`Kill`](crate::ShutdownMode::Kill) fails each running task with "shut down" at once and
//! tells its rank to end (its watcher finalizes MPI and exits the process mid-task).
//! [`Cluster::shutdown_timeout`] (and `_blocking`) shuts down per mode and escalates to `Kill`
//! past a deadline: `shutdown_timeout(Drain, limit)` is a drain with a deadline.
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
//! mpiexec --hostfile hosts.txt -n 16 --enable-recovery \
//!     --mca btl_tcp_if_include 10.0.0.0/24 --mca oob_tcp_if_include 10.0.0.0/24 \
//!     --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 \
//!     --mca oob_tcp_keepalive_probes 2 target/release/examples/mpi_primes
//! ```
//!
//! Rank 0 (the application) runs on the first host. Every rank must run the same binary: the
//! setup compares build ids and the cluster refuses to start otherwise. The README explains
//! each setting, and `tests/multihost/` runs the same commands over simulated hosts.
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
//! A running task cannot be cancelled on its own (only by ending its rank: a
//! [`ShutdownMode::Kill`](crate::ShutdownMode::Kill) shutdown); queued tasks can be. A time
//! limit fails a task but retires its rank (see
//! [Dead ranks](#dead-frozen-and-unreachable-ranks)). Results and arguments are limited to
//! 64 MiB per message.

// Without the `mpi` feature only `detect` exists here, and the links above to the cluster's
// items have nothing to point to; with it (docs.rs builds with it) every link resolves.
#![cfg_attr(
    not(feature = "mpi"),
    allow(rustdoc::broken_intra_doc_links, rustdoc::private_intra_doc_links)
)]

mod detect;

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
mod table;
#[cfg(feature = "mpi")]
mod worker;

#[cfg(not(feature = "mpi"))]
pub(crate) use detect::detect;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use detect::{Detected, Launch, Launcher, detect};

#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use builder::{ClusterBuilder, DIRECT_SPIN, RESULT_SPIN, SPIN_MIN_CORES};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use cluster::Cluster;
#[cfg(feature = "mpi")]
pub(crate) use lifecycle::start_up;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use lifecycle::{DEFAULT_QUEUE_PER_RANK, finish, launched_with_workers};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use liveness::{PING_INTERVAL, RANK0_SILENCE, SILENCE_LIMIT};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use service::{LIVENESS_INTERVAL, MAX_POLL_INTERVAL, SPIN};
