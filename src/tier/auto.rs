//! [`RemotePool`]: one face for [`RemoteFn`]s on whichever tier this run offers, and
//! [`RemotePool::auto`], Listing 3's "use MPI if we were launched for it, else fall back",
//! decided from the launcher's environment (never from `ps`).

use std::fmt;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BuildError, Error};
use crate::executor::Executor;
use crate::remote::RemoteFn;
use crate::task::TaskHandle;
use crate::tier::{ProcessPool, ShutdownMode, TierKind, TierStats};

/// Registered functions on one tier: an MPI cluster, worker processes, or in-process (threads
/// or inline, calling the function directly). Built by [`auto`](Self::auto), or wrapped from a
/// tier you built yourself with `From`.
#[derive(Clone)]
#[non_exhaustive]
pub enum RemotePool {
    /// The worker ranks of an MPI job.
    #[cfg(feature = "mpi")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
    Cluster(crate::tier::mpi::Cluster),
    /// Worker processes.
    Processes(ProcessPool),
    /// In this process: the function runs as a closure on an in-process executor.
    Local(Executor),
}

impl fmt::Debug for RemotePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.fmt(f),
            RemotePool::Processes(p) => p.fmt(f),
            RemotePool::Local(e) => e.fmt(f),
        }
    }
}

#[cfg(feature = "mpi")]
impl From<crate::tier::mpi::Cluster> for RemotePool {
    fn from(c: crate::tier::mpi::Cluster) -> Self {
        RemotePool::Cluster(c)
    }
}

impl From<ProcessPool> for RemotePool {
    fn from(p: ProcessPool) -> Self {
        RemotePool::Processes(p)
    }
}

impl From<Executor> for RemotePool {
    fn from(e: Executor) -> Self {
        RemotePool::Local(e)
    }
}

impl RemotePool {
    /// The best tier this run offers, in the order of DESIGN.md §5: the MPI cluster when this
    /// is rank 0 of an `mpiexec` job with more than one rank (feature `mpi`), else worker
    /// processes (when [`crate::init`] ran), else threads or inline ([`Executor::auto`]).
    /// Says which it picked, and why the better ones were skipped, in `tracing` events at info
    /// level; [`tier`](Self::tier) tells it too.
    ///
    /// Call [`crate::init`] first. Under `mpiexec` only rank 0 gets here: the other ranks
    /// became workers inside `init`.
    pub fn auto() -> Self {
        #[cfg(feature = "mpi")]
        {
            if crate::tier::mpi::launched_with_workers() {
                match crate::tier::mpi::Cluster::builder().build() {
                    Ok(c) => {
                        tracing::info!(tier = "cluster", ranks = c.ranks(), "auto() picked a tier");
                        return RemotePool::Cluster(c);
                    }
                    Err(why) => tracing::info!(%why, "auto(): no cluster tier"),
                }
            } else {
                tracing::info!("auto(): not rank 0 of an mpiexec job with workers; no cluster");
            }
        }
        #[cfg(not(feature = "mpi"))]
        if let Some(l) = crate::tier::mpi::detect().launch() {
            tracing::warn!(
                launcher = %l.launcher, rank = l.rank, size = ?l.size,
                "auto(): launched by an MPI launcher, but offload was built without the \
                 `mpi` feature; every rank runs the application on its own"
            );
        }
        match Self::processes() {
            Ok(p) => {
                tracing::info!(
                    tier = "processes",
                    workers = p.workers(),
                    "auto() picked a tier"
                );
                RemotePool::Processes(p)
            }
            Err(why) => {
                tracing::info!(%why, "auto(): no process tier");
                RemotePool::Local(Executor::auto())
            }
        }
    }

    fn processes() -> Result<ProcessPool, BuildError> {
        if crate::remote::Registry::global().is_none() {
            return Err(BuildError::invalid(
                "offload::init was not called: worker processes could not serve",
            ));
        }
        ProcessPool::builder().build()
    }

    /// The tier the functions run on.
    pub fn tier(&self) -> TierKind {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(_) => TierKind::Cluster,
            RemotePool::Processes(_) => TierKind::Processes,
            RemotePool::Local(e) => e.tier(),
        }
    }

    /// Number of workers (ranks, processes or threads; 0 for inline).
    pub fn workers(&self) -> usize {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.workers(),
            RemotePool::Processes(p) => p.workers(),
            RemotePool::Local(e) => e.workers(),
        }
    }

    /// Queue and run-time figures of the tier (see [`TierStats`]).
    pub fn stats(&self) -> TierStats {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.stats(),
            RemotePool::Processes(p) => p.stats(),
            RemotePool::Local(e) => e.stats(),
        }
    }

    /// Submits `f(args)`, waiting while the queue is full; the handle is a `Future` of the
    /// outcome.
    pub async fn submit<A, R>(&self, f: &RemoteFn<A, R>, args: A) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.submit(f, args).await,
            RemotePool::Processes(p) => p.submit(f, args).await,
            RemotePool::Local(e) => {
                let (name, func) = (f.name(), f.function());
                e.submit_named(name, move || func(args)).await
            }
        }
    }

    /// Applies `f` to every item, results in input order, one per item.
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map<A, R, I>(&self, f: &RemoteFn<A, R>, items: I) -> BoxStream<'static, Result<R, Error>>
    where
        I: IntoIterator<Item = A> + 'static,
        I::IntoIter: Send + 'static,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.map(f, items).boxed(),
            RemotePool::Processes(p) => p.map(f, items).boxed(),
            RemotePool::Local(e) => {
                let func = f.function();
                e.map(items, func).boxed()
            }
        }
    }

    /// Shuts the tier down (see each tier's `shutdown`).
    pub async fn shutdown(&self, mode: ShutdownMode) {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.shutdown(mode).await,
            RemotePool::Processes(p) => p.shutdown(mode).await,
            RemotePool::Local(e) => e.shutdown(mode).await,
        }
    }

    /// As [`shutdown`](Self::shutdown), blocking the calling thread.
    pub fn shutdown_blocking(&self, mode: ShutdownMode) {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.shutdown_blocking(mode),
            RemotePool::Processes(p) => p.shutdown_blocking(mode),
            RemotePool::Local(e) => e.shutdown_blocking(mode),
        }
    }

    /// Shuts down per `mode` within `limit`, then escalates to [`ShutdownMode::Kill`]; true
    /// when it finished without escalating (see each tier's `shutdown_timeout`).
    pub async fn shutdown_timeout(&self, mode: ShutdownMode, limit: Duration) -> bool {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.shutdown_timeout(mode, limit).await,
            RemotePool::Processes(p) => p.shutdown_timeout(mode, limit).await,
            RemotePool::Local(e) => e.shutdown_timeout(mode, limit).await,
        }
    }

    /// As [`shutdown_timeout`](Self::shutdown_timeout), blocking the calling thread.
    pub fn shutdown_timeout_blocking(&self, mode: ShutdownMode, limit: Duration) -> bool {
        match self {
            #[cfg(feature = "mpi")]
            RemotePool::Cluster(c) => c.shutdown_timeout_blocking(mode, limit),
            RemotePool::Processes(p) => p.shutdown_timeout_blocking(mode, limit),
            RemotePool::Local(e) => e.shutdown_timeout_blocking(mode, limit),
        }
    }
}
