//! The cluster's public handle, [`Cluster`]: submit, map, the direct path's send
//! ([`Cluster::try_direct`]), the raw ping-pong baseline, and shutdown.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::Duration;

use async_channel::TrySendError;
use futures::stream::Stream;
use mpi::topology::SimpleCommunicator;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, TrySubmitError};
use crate::remote::RemoteFn;
use crate::remote::wire::{DEFAULT_MAX_FRAME, Request};
use crate::task::{TaskHandle, remote_task};
use crate::tier::map::{ChunkStats, chunked_map};
use crate::tier::process::{Batch, One};
use crate::tier::{ShutdownMode, TierKind, TierStats};

use super::builder::ClusterBuilder;
use super::direct::Watch;
use super::lifecycle::{
    Command, Service, Task, join_service, off_thread, request_stop, shutdown_service,
    shutdown_service_within,
};
use super::service::CALLER_LEASE;

pub(super) struct Inner {
    pub(super) service: &'static Service,
    pub(super) ranks: usize,
    pub(super) chunk_size: Option<usize>,
    pub(super) result_spin: Duration,
    pub(super) direct_spin: Duration,
    pub(super) task_timeout: Option<Duration>,
    pub(super) closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle: the MPI thread drains, stops the ranks and finalizes MPI. Inside
        // an async runtime the wait for it goes to the runtime's blocking pool, which the
        // runtime waits for when it is dropped (so MPI is finalized before a `#[tokio::main]`
        // returns); elsewhere this thread waits, as `shutdown_blocking` does.
        request_stop(self.service, ShutdownMode::Drain);
        let service = self.service;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || join_service(service, ShutdownMode::Drain))),
            Err(_) => join_service(service, ShutdownMode::Drain),
        }
    }
}

/// The cluster tier: runs [`RemoteFn`]s on the worker ranks of an MPI job. See the module
/// docs. A cheap `Clone` handle.
///
/// Dropping the last handle shuts the cluster down as [`shutdown`](Self::shutdown) with
/// [`ShutdownMode::Drain`] does: rank 0's MPI thread finishes the queued and running tasks,
/// stops the worker ranks and finalizes MPI. Where the drop waits for that depends on the
/// thread:
///
/// - **inside a tokio runtime** (a task, `block_on`): the drop returns at once and the wait
///   runs on the runtime's blocking pool. Dropping the runtime waits for it, so a
///   `#[tokio::main]` that drops its cluster still finalizes MPI before it returns (after the
///   remaining tasks end). A runtime shut down with `shutdown_background` or
///   `shutdown_timeout` does not wait: call [`shutdown`](Self::shutdown) (or [`finish`](super::finish))
///   before that, or rank 0 may exit before `MPI_Finalize`.
/// - **elsewhere** (a plain thread, another executor): the drop blocks that thread until every
///   queued and running task has ended and MPI is finalized, as
///   [`shutdown_blocking`](Self::shutdown_blocking) does.
///
/// Call `shutdown` to choose the point where the program waits.
#[derive(Clone)]
pub struct Cluster {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("ranks", &self.inner.ranks)
            .field("queued", &self.inner.service.tx.len())
            .field("closed", &self.is_shut_down())
            .finish()
    }
}

impl Cluster {
    /// Settings for the cluster.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The tier: [`TierKind::Cluster`].
    pub fn tier(&self) -> TierKind {
        TierKind::Cluster
    }

    /// Number of ranks in the job, rank 0 included.
    pub fn ranks(&self) -> usize {
        self.inner.ranks
    }

    /// Number of worker ranks (ranks − 1).
    pub fn workers(&self) -> usize {
        self.inner.ranks.saturating_sub(1)
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// A snapshot of the counters (`panicked` counts every task that ended in an error on a
    /// rank).
    pub fn stats(&self) -> TierStats {
        let s = &self.inner.service.state;
        TierStats {
            workers: self.workers(),
            queued: self.inner.service.tx.len(),
            completed: s.completed.load(Ordering::Relaxed),
            panicked: s.failed.load(Ordering::Relaxed),
            mean_run_time: Duration::from_nanos(s.ewma_run_ns.load(Ordering::Relaxed)),
        }
    }

    fn spin(&self) -> Duration {
        let ewma = self.inner.service.state.ewma_run_ns.load(Ordering::Relaxed);
        if Duration::from_nanos(ewma) < self.inner.result_spin {
            self.inner.result_spin
        } else {
            Duration::ZERO
        }
    }

    fn refuse(&self, func: &'static str) -> Error {
        Error::shut_down()
            .with_tier(TierKind::Cluster)
            .with_task(func)
    }

    fn task<A: Serialize, R: DeserializeOwned + Send + 'static>(
        &self,
        f: &RemoteFn<A, R>,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<(Task, TaskHandle<R>), Error> {
        let func = f.name();
        let bytes = postcard::to_allocvec(args).map_err(|e| {
            Error::new(
                ErrorKind::Encoding,
                format!("could not encode the arguments: {e}"),
            )
            .with_task(func)
            .with_tier(TierKind::Cluster)
        })?;
        // Refused here, as the process tier does at submit, rather than failing the handle
        // later. The smallest task id makes the bound a floor: a request within a few bytes of
        // the limit may still fail its handle when sent.
        let least = min_call_frame(func, bytes.len());
        if least > DEFAULT_MAX_FRAME {
            return Err(Error::new(
                ErrorKind::Encoding,
                format!(
                    "a frame of at least {least} bytes exceeds the maximum frame size of \
                     {DEFAULT_MAX_FRAME} bytes"
                ),
            )
            .with_task(func)
            .with_tier(TierKind::Cluster));
        }
        let (completer, handle) =
            remote_task::<R>(Some(func.into()), TierKind::Cluster, self.spin(), None);
        let task = Task {
            func,
            batch: false,
            args: bytes,
            deliver: Box::new(One { completer }),
            timeout,
        };
        Ok((task, handle))
    }

    /// The direct path: when the MPI lock is free, nothing is queued and a worker rank is
    /// free, sends `task` from this thread and gives `handle` the job of watching for the
    /// reply when it is first waited on (see [`Watch`]). Hands `task` back otherwise, for the
    /// queue to the MPI thread.
    fn try_direct<R>(&self, task: Task, handle: &mut TaskHandle<R>) -> Option<Task> {
        let service = self.inner.service;
        let spin = self.inner.direct_spin;
        if spin.is_zero()
            || !service.tx.is_empty()
            || service.tx.is_closed()
            || Duration::from_nanos(service.state.ewma_run_ns.load(Ordering::Relaxed)) >= spin
        {
            return Some(task);
        }
        let mut t = match service.state.table.try_lock() {
            Ok(t) => t,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Some(task),
        };
        if !t.direct || t.stashed {
            return Some(task);
        }
        let Some(rank) = t.take_free() else {
            return Some(task);
        };
        let world = SimpleCommunicator::world();
        let Some(id) = t.dispatch(&world, rank, task, Some(CALLER_LEASE)) else {
            // Failed to encode: the handle has its error already.
            return None;
        };
        // A thread parked without a deadline must learn of the lease, to take the task over
        // if the caller never waits for it.
        let wake = std::mem::take(&mut t.parked_idle);
        drop(t);
        if wake {
            service.ring();
        }
        handle.set_lazy(Watch::job(Watch {
            service,
            rank,
            id,
            spin,
            armed: true,
        }));
        None
    }

    /// Submits `f(args)` to the next free worker rank, waiting while the queue is full. The
    /// handle is a `Future` of the outcome. Errors at once, with an [`Error::is_encoding`]
    /// error, when the arguments cannot be encoded or their request exceeds
    /// 64 MiB; and when the cluster is shut down.
    ///
    /// A short task may go straight from this thread to a free rank (the direct path, see the
    /// module docs on the round trip); its handle's first poll then watches for the reply for
    /// up to 50 µs before it parks.
    pub async fn submit<A, R>(&self, f: &RemoteFn<A, R>, args: A) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_inner(f, args, self.inner.task_timeout).await
    }

    /// As [`submit`](Self::submit), with a time limit for this task in place of
    /// [`ClusterBuilder::task_timeout`]: once sent to a rank, the task fails with
    /// [`Error::is_timeout`] if it has not ended within `limit`, and that rank is retired
    /// (never given work again: the task cannot be stopped on its own). A lost rank needs no
    /// limit (see the module docs on dead ranks): this is for tasks that may run too long.
    pub async fn submit_timeout<A, R>(
        &self,
        f: &RemoteFn<A, R>,
        args: A,
        limit: Duration,
    ) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        self.submit_inner(f, args, Some(limit)).await
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
        if self.is_shut_down() {
            return Err(self.refuse(f.name()));
        }
        let (task, mut handle) = self.task(f, &args, timeout)?;
        let Some(task) = self.try_direct(task, &mut handle) else {
            return Ok(handle);
        };
        match self.inner.service.tx.send(Command::Task(task)).await {
            Ok(()) => {
                self.inner.service.ring();
                Ok(handle)
            }
            Err(_) => Err(self.refuse(f.name())),
        }
    }

    /// Submits `f(args)` if the queue has room now; otherwise hands `args` back:
    ///
    /// - [`TrySubmitError::Full`]: the queue is at capacity; try again later.
    /// - [`TrySubmitError::ShutDown`]: the cluster is shut down.
    /// - [`TrySubmitError::Rejected`], with the [`Error::is_encoding`] error that says why:
    ///   the arguments cannot be encoded, or their request would exceed
    ///   64 MiB ([`submit`](Self::submit) returns the same error).
    pub fn try_submit<A, R>(
        &self,
        f: &RemoteFn<A, R>,
        args: A,
    ) -> Result<TaskHandle<R>, TrySubmitError<A>>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        if self.is_shut_down() {
            return Err(TrySubmitError::ShutDown(args));
        }
        let (task, mut handle) = match self.task(f, &args, self.inner.task_timeout) {
            Ok(x) => x,
            Err(e) => return Err(TrySubmitError::Rejected(args, e)),
        };
        let Some(task) = self.try_direct(task, &mut handle) else {
            return Ok(handle);
        };
        match self.inner.service.tx.try_send(Command::Task(task)) {
            Ok(()) => {
                self.inner.service.ring();
                Ok(handle)
            }
            Err(TrySendError::Full(_)) => Err(TrySubmitError::Full(args)),
            Err(TrySendError::Closed(_)) => Err(TrySubmitError::ShutDown(args)),
        }
    }

    /// Submits `f(args)` from sync code, blocking while the queue is full.
    pub fn submit_blocking<A, R>(&self, f: &RemoteFn<A, R>, args: A) -> Result<TaskHandle<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        if self.is_shut_down() {
            return Err(self.refuse(f.name()));
        }
        let (task, mut handle) = self.task(f, &args, self.inner.task_timeout)?;
        let Some(task) = self.try_direct(task, &mut handle) else {
            return Ok(handle);
        };
        match self.inner.service.tx.send_blocking(Command::Task(task)) {
            Ok(()) => {
                self.inner.service.ring();
                Ok(handle)
            }
            Err(_) => Err(self.refuse(f.name())),
        }
    }

    /// The window of chunks in flight for [`map`](Self::map): two per worker rank, so every
    /// rank has its next chunk queued while it computes.
    pub fn default_window(&self) -> usize {
        (self.workers() * 2).max(crate::executor::MIN_MAP_WINDOW)
    }

    /// Applies `f` to every item on the worker ranks; results in input order, one per item (a
    /// panic fails only its item).
    ///
    /// Items travel in chunks, many per MPI message, sized as on the process tier: one item
    /// per chunk until a chunk's run time has been measured (so that a few long items spread
    /// over the ranks), then as many items as take about
    /// 2 ms at the measured mean time per item
    /// (at most 4,096).
    /// A [`ClusterBuilder::task_timeout`] applies to each chunk. At most
    /// [`default_window`](Self::default_window) chunks are in flight; the input is pulled only
    /// as results are consumed, so an endless iterator keeps memory flat. A fixed chunk size
    /// set with [`ClusterBuilder::chunk_size`] replaces the adaptive one.
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
        self.map_inner(f.name(), items, self.inner.chunk_size)
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
        func: &'static str,
        items: I,
        fixed: Option<usize>,
    ) -> impl Stream<Item = Result<R, Error>> + Send + use<A, R, I>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let this = self.clone();
        chunked_map(items, fixed, self.default_window(), move |chunk, stats| {
            // Encoded as the chunk is pulled (its items are freed at once); sent by the future.
            let sent = this.chunk_task::<A, R>(func, &chunk, stats);
            drop(chunk);
            let this = this.clone();
            async move {
                let (cmd, handle) = sent?;
                match this.inner.service.tx.send(cmd).await {
                    Ok(()) => {
                        this.inner.service.ring();
                        handle.await
                    }
                    Err(_) => Err(this.refuse(func)),
                }
            }
        })
    }

    #[allow(clippy::type_complexity)]
    fn chunk_task<A: Serialize, R: DeserializeOwned + Send + 'static>(
        &self,
        func: &'static str,
        chunk: &[A],
        stats: Arc<ChunkStats>,
    ) -> Result<(Command, TaskHandle<Vec<Result<R, Error>>>), Error> {
        if self.is_shut_down() {
            return Err(self.refuse(func));
        }
        let args = postcard::to_allocvec(chunk).map_err(|e| {
            Error::new(
                ErrorKind::Encoding,
                format!("could not encode a chunk: {e}"),
            )
            .with_task(func)
            .with_tier(TierKind::Cluster)
        })?;
        let (completer, handle) = remote_task::<Vec<Result<R, Error>>>(
            Some(func.into()),
            TierKind::Cluster,
            self.spin(),
            None,
        );
        let cmd = Command::Task(Task {
            func,
            batch: true,
            args,
            deliver: Box::new(Batch::<R> {
                completer,
                items: chunk.len(),
                stats,
            }),
            timeout: self.inner.task_timeout,
        });
        Ok((cmd, handle))
    }

    /// The raw MPI baseline: `rounds` blocking 8-byte send/receive pairs between rank 0's MPI
    /// thread and worker `rank`, timed one by one. Runs once the tasks in flight are done, in
    /// the same job as the tier's own traffic, so the two compare directly.
    pub fn raw_ping_pong(&self, rank: usize, rounds: u32) -> Result<Vec<Duration>, Error> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.inner
            .service
            .tx
            .send_blocking(Command::PingPong {
                rank,
                rounds,
                reply,
            })
            .map_err(|_| Error::shut_down().with_tier(TierKind::Cluster))?;
        self.inner.service.ring();
        answer
            .recv()
            .map_err(|_| Error::shut_down().with_tier(TierKind::Cluster))?
    }

    /// Stops the cluster: new submissions fail with "shut down"; queued tasks run
    /// ([`ShutdownMode::Drain`]) or fail with "shut down" ([`ShutdownMode::Cancel`],
    /// [`ShutdownMode::Kill`]); tasks running on ranks finish, except under `Kill`, where each
    /// fails at once with "shut down" and its rank is told to end (its watcher thread finalizes
    /// MPI and exits the process mid-task). Then every other worker rank finalizes MPI and exits
    /// 0, and rank 0 finalizes MPI. Returns when that is done. MPI cannot be started again in
    /// this process.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        self.inner.closed.store(true, Ordering::Release);
        let service = self.inner.service;
        off_thread(move || shutdown_service(service, mode)).await;
    }

    /// As [`shutdown`](Self::shutdown), but if the cluster has not stopped within `limit`,
    /// escalates to [`ShutdownMode::Kill`] (running tasks fail with "shut down", their ranks
    /// end). True when it finished within `limit` without escalating. (A `Drain` with a
    /// deadline: `shutdown_timeout(ShutdownMode::Drain, limit)`.)
    pub async fn shutdown_timeout(&self, mode: ShutdownMode, limit: Duration) -> bool {
        self.inner.closed.store(true, Ordering::Release);
        let service = self.inner.service;
        off_thread(move || shutdown_service_within(service, mode, limit)).await
    }

    /// As [`shutdown_timeout`](Self::shutdown_timeout), blocking the calling thread.
    pub fn shutdown_timeout_blocking(&self, mode: ShutdownMode, limit: Duration) -> bool {
        self.inner.closed.store(true, Ordering::Release);
        shutdown_service_within(self.inner.service, mode, limit)
    }

    /// As [`shutdown`](Self::shutdown), blocking the calling thread.
    pub fn shutdown_blocking(&self, mode: ShutdownMode) {
        self.inner.closed.store(true, Ordering::Release);
        shutdown_service(self.inner.service, mode);
    }
}

/// The smallest request frame a call of `func` with `args_len` bytes of arguments makes: the
/// version byte, the header with a one-byte task id (a larger id adds up to 9 bytes), the
/// arguments. Over [`DEFAULT_MAX_FRAME`], the request is refused whatever its id.
fn min_call_frame(func: &'static str, args_len: usize) -> usize {
    let header = Request::Call { id: 0, func };
    let header_len = postcard::to_allocvec(&header).map_or(0, |v| v.len());
    1 + header_len + args_len
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refused;
    impl Serialize for Refused {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused on purpose"))
        }
    }

    #[test]
    fn unencodable_shared_data_fails_the_build() {
        let e = ClusterBuilder::default()
            .shared_data(&Refused)
            .build()
            .expect_err("the build fails");
        assert!(
            e.to_string().contains("shared data could not be encoded"),
            "{e}"
        );
        // Replacing it with encodable data clears the error (the build then fails later,
        // here for want of mpiexec).
        let e = ClusterBuilder::default()
            .shared_data(&Refused)
            .shared_data(&[1u8, 2])
            .task_timeout(Duration::from_secs(1))
            .build()
            .expect_err("not under mpiexec");
        assert!(!e.to_string().contains("shared data"), "{e}");
    }
}
