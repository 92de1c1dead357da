//! The cluster tier: registered functions on MPI ranks, launched by `mpiexec`.
//!
//! ```text
//! mpiexec -n 4 target/release/examples/mpi_primes
//! ```
//!
//! Every rank runs the same binary. [`crate::init`] (the first line of `main`) reads the
//! launcher's environment ([`detect()`]); on ranks 1.. it initialises MPI, takes the setup that
//! rank 0 broadcasts, serves calls until rank 0 shuts the cluster down, finalizes MPI and exits
//! with status 0 — it never returns there. On rank 0 it starts one dedicated MPI thread
//! (`MPI_THREAD_FUNNELED`: no other thread calls MPI) and returns; the application then builds
//! a [`Cluster`] (or lets `auto()` pick it) and submits [`RemoteFn`](crate::RemoteFn)s as on the process tier:
//! the same registry, wire format and outcomes.
//!
//! - **Hand-off**: the async side puts tasks in a bounded channel; the MPI thread sends each
//!   to whichever worker rank is free (one task per rank at a time) and completes its
//!   [`TaskHandle`](crate::TaskHandle) when the reply comes.
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
//! survives, the cluster serves on, and shuts down with status 0. Ranks on other hosts are not
//! watched: there, only OpenMPI's abort reports the death.
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
//! the same run. On the 2-vCPU development VM (`mpiexec -n 2`, OpenMPI 4.1, default binding),
//! medians: raw ping-pong 0.46 µs; cluster round trip 7.0 µs (sync) / 8.0 µs (async), about
//! 15–17× the raw exchange. The difference is two thread hand-offs on rank 0 (caller → MPI
//! thread → caller), which share one core there because `mpiexec` binds rank 0 to one core;
//! MPI itself costs the same on both paths.
//!
//! # Limits
//!
//! Running tasks cannot be stopped (stopping a rank would abort the job); only queued tasks can
//! be cancelled. Results and arguments are limited to
//! [`DEFAULT_MAX_FRAME`](crate::remote::wire::DEFAULT_MAX_FRAME) per message.

// Without the `mpi` feature only `detect` exists here, and the links above to the cluster's
// items have nothing to point to; with it (docs.rs builds with it) every link resolves.
#![cfg_attr(not(feature = "mpi"), allow(rustdoc::broken_intra_doc_links))]

pub mod detect;

#[cfg(feature = "mpi")]
mod cluster;
#[cfg(feature = "mpi")]
mod service;
#[cfg(feature = "mpi")]
mod worker;

pub use detect::{Detected, Launch, Launcher, detect};

#[cfg(feature = "mpi")]
pub(crate) use cluster::start_up;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use cluster::{
    Cluster, ClusterBuilder, DEFAULT_QUEUE_PER_RANK, DIRECT_SPIN, RESULT_SPIN, SPIN_MIN_CORES,
    finish, launched_with_workers,
};
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use service::{LIVENESS_INTERVAL, MAX_POLL_INTERVAL, SPIN};
