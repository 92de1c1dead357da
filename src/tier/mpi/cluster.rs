//! The cluster's rank-0 side: the public [`Cluster`] handle, its builder, start-up, and the
//! types shared with the MPI thread ([`super::service`]) and the worker loop ([`super::worker`]).
//!
//! The direct path lives here too: [`Cluster::try_direct`] sends a caller's task under the MPI
//! lock, and a [`Watch`] (the handle's lazy job) polls for its reply or hands it over.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TrySendError};
use futures::stream::Stream;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BuildError, Error, ErrorKind, TrySubmitError};
use crate::remote::RemoteFn;
use crate::remote::wire::{DEFAULT_MAX_FRAME, Request, SharedData, encode_payload};
use crate::task::{Job, TaskHandle, closure_task, remote_task};
use crate::tier::map::{ChunkStats, chunked_map};
use crate::tier::process::{Batch, One, Pending};
use crate::tier::{ShutdownMode, TierKind, TierStats};

use super::detect::{Detected, detect};
use super::service::{self, CALLER_LEASE, Table};
use super::worker;

pub(super) const TAG_TO_WORKER: i32 = 11;
pub(super) const TAG_TO_MASTER: i32 = 12;
pub(super) const TAG_PING: i32 = 13;
pub(super) const TAG_HOST: i32 = 14;
/// A request over [`SMALL_REQUEST`] bytes is announced by its length (8 bytes, little-endian)
/// with this tag, and its bytes follow with [`TAG_BIG_BODY`].
pub(super) const TAG_BIG: i32 = 15;
pub(super) const TAG_BIG_BODY: i32 = 16;

/// The largest message rank 0 sends a worker rank in one piece (the worker receives into a
/// buffer of this size with a plain `MPI_Recv`, which saves ~0.25 µs per task against
/// `MPI_Mprobe` + `MPI_Mrecv` on the development VM). Larger requests are announced first
/// ([`TAG_BIG`]); 64 KiB keeps that extra 8-byte message to requests whose transfer costs
/// far more than it, and is what a worker rank holds for it.
pub(super) const SMALL_REQUEST: usize = 64 << 10;

pub(super) const STOP_NONE: u8 = 0;
pub(super) const STOP_DRAIN: u8 = 1;
pub(super) const STOP_CANCEL: u8 = 2;
pub(super) const STOP_KILL: u8 = 3;

/// Default capacity of the queue to the MPI thread, per worker rank: enough to keep every rank
/// fed through a burst, small enough that an endless producer waits (DESIGN.md §3.3).
pub const DEFAULT_QUEUE_PER_RANK: usize = 64;

/// How long a waiter spins for a result before it parks, while the cluster's recent tasks are
/// this short: one thread wake-up (~25 µs here). Longer tasks park at once. Used only when
/// rank 0 may run on at least [`SPIN_MIN_CORES`] cores: with fewer, the waiter, the MPI thread
/// and a local worker rank fight for the cores and spinning makes the round trip slower, not
/// faster (measured: 37 µs spinning against 12 µs parking on a 2-core VM, `mpiexec -n 2`).
pub const RESULT_SPIN: Duration = Duration::from_micros(25);

/// How long a caller that sent its task itself (the direct path, see the module docs) polls
/// for the reply before it hands the task to the MPI thread and parks; also the longest recent
/// mean run time for which a task takes the direct path at all. Two thread wake-ups here
/// (~25 µs each): what handing over costs a task that ends just after the spin, so a task
/// never pays much more than twice its run time to the spin, and a long task (ms) never
/// spins.
pub const DIRECT_SPIN: Duration = Duration::from_micros(50);

/// The fewest cores rank 0 must be allowed to run on (its CPU affinity, which `mpiexec`'s
/// binding sets) before its waiters spin: one for the caller, one for the MPI thread, one
/// spare.
pub const SPIN_MIN_CORES: usize = 3;

fn default_result_spin() -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= SPIN_MIN_CORES {
        RESULT_SPIN
    } else {
        Duration::ZERO
    }
}

/// What rank 0 knows of a worker rank after the setup.
#[derive(Debug, Clone, Default)]
pub(super) struct RankInfo {
    pub(super) pid: Option<u32>,
    pub(super) host: String,
    pub(super) ready: bool,
    pub(super) dead: bool,
    /// A task on it timed out: it is never given work again (see [`ClusterBuilder::task_timeout`]).
    pub(super) retired: bool,
    /// Told to end mid-task by a Kill shutdown: it finalizes on its own, without an exit
    /// message.
    pub(super) killed: bool,
    /// The first liveness ping it has not answered yet was sent then (see `liveness.rs`).
    pub(super) unanswered_since: Option<Instant>,
}

impl RankInfo {
    /// Whether the rank may be given work.
    pub(super) fn usable(&self) -> bool {
        !self.dead && !self.retired && !self.killed
    }

    /// Whether rank 0 pings it: set up, neither lost nor killed (retired ranks too: they must
    /// not take rank 0 for gone).
    pub(super) fn watched(&self) -> bool {
        self.ready && !self.dead && !self.killed
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct WorldInfo {
    pub(super) size: usize,
}

pub(super) struct Task {
    pub(super) func: &'static str,
    pub(super) batch: bool,
    pub(super) args: Vec<u8>,
    pub(super) deliver: Box<dyn Pending>,
    /// The most the task may run once sent; past it the task fails "timed out" and its rank
    /// is retired.
    pub(super) timeout: Option<Duration>,
}

pub(super) enum Command {
    Setup {
        payload: Vec<u8>,
        reply: std::sync::mpsc::SyncSender<Result<Vec<RankInfo>, Error>>,
    },
    Task(Task),
    PingPong {
        rank: usize,
        rounds: u32,
        reply: std::sync::mpsc::SyncSender<Result<Vec<Duration>, Error>>,
    },
}

/// State shared between rank 0's MPI thread and the cluster handles.
pub(super) struct ServiceState {
    /// The MPI lock: held for every MPI call after the setup, and for any change to which
    /// rank runs what.
    pub(super) table: Mutex<Table>,
    world: Mutex<Option<Result<WorldInfo, String>>>,
    world_set: Condvar,
    pub(super) stop: AtomicU8,
    completed: AtomicU64,
    failed: AtomicU64,
    ewma_run_ns: AtomicU64,
    /// Set by the MPI thread as it enters `MPI_Finalize` after a rank died: the closing fence
    /// may never complete (see [`FINALIZE_GRACE`]).
    pub(super) finalize_unsure: Mutex<Option<Instant>>,
}

/// How long the wait for rank 0's `MPI_Finalize`, and a worker rank's own, may last once a
/// rank of the job died. OpenMPI 4.1 ends `MPI_Finalize` with a fence over every process;
/// with a dead one (under `--enable-recovery`) that fence sometimes never completes (about 1
/// run in 20–50 on the development VM). A healthy finalize takes milliseconds. (A rank that
/// was only retired after a timeout is waited for: it finalizes once its task ends.)
pub(super) const FINALIZE_GRACE: Duration = Duration::from_secs(2);

/// The body of the exit message to the worker ranks when a rank of the job died: they then
/// bound their own `MPI_Finalize` by [`FINALIZE_GRACE`]. An empty body: no rank died.
pub(super) const EXIT_AFTER_LOSS: u8 = 1;

impl ServiceState {
    pub(super) fn set_world(&self, w: Result<WorldInfo, String>) {
        *self.world.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        self.world_set.notify_all();
    }

    fn wait_world(&self) -> Result<WorldInfo, String> {
        let mut g = self.world.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(w) = g.as_ref() {
                return w.clone();
            }
            g = self.world_set.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn record(&self, run_ns: u64, failed: bool) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let old = self.ewma_run_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            run_ns
        } else {
            old - old / 8 + run_ns / 8
        };
        self.ewma_run_ns.store(new, Ordering::Relaxed);
    }
}

/// Rank 0's MPI thread, started by [`crate::init`] and owned by the first cluster built.
struct Service {
    tx: Sender<Command>,
    rx: Receiver<Command>,
    state: Arc<ServiceState>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The MPI thread, to unpark it (see [`Service::ring`]).
    waker: Option<Thread>,
    taken: AtomicBool,
}

impl Service {
    /// Wakes the MPI thread if it is parked: after every command queued, the queue closed, a
    /// task handed over. Costs an atomic swap when it is not parked.
    fn ring(&self) {
        if let Some(t) = &self.waker {
            t.unpark();
        }
    }
}

static SERVICE: OnceLock<Service> = OnceLock::new();

fn start_service() -> &'static Service {
    SERVICE.get_or_init(|| {
        // The queue is sized once the world size is known; until then an unbounded bootstrap
        // would do, but one bound for all keeps it simple: ranks are known from the launcher.
        let size = detect().launch().and_then(|l| l.size).unwrap_or(2);
        let (tx, rx) = async_channel::bounded(DEFAULT_QUEUE_PER_RANK * size.max(2));
        let state = Arc::new(ServiceState {
            table: Mutex::new(Table::new()),
            world: Mutex::new(None),
            world_set: Condvar::new(),
            stop: AtomicU8::new(STOP_NONE),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ewma_run_ns: AtomicU64::new(0),
            finalize_unsure: Mutex::new(None),
        });
        let (rx2, st2) = (rx.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("offload-mpi".into())
            .spawn(move || service::run(rx2, st2));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                state.set_world(Err(format!("could not start the MPI thread: {e}")));
                None
            }
        };
        Service {
            tx,
            rx,
            state,
            waker: thread.as_ref().map(|t| t.thread().clone()),
            thread: Mutex::new(thread),
            taken: AtomicBool::new(false),
        }
    })
}

/// Called by [`crate::init`]: on a worker rank, serves and exits; on rank 0 of a job with
/// workers, starts the MPI thread; elsewhere does nothing.
pub(crate) fn start_up() {
    match detect() {
        Detected::Launched(l) if l.size != Some(1) => {
            if l.is_master() {
                tracing::debug!(launcher = %l.launcher, size = ?l.size, "rank 0: starting the MPI thread");
                start_service();
            } else {
                // SERIALIZED: the watcher thread answers for the rank while a task runs.
                match mpi::initialize_with_threading(mpi::Threading::Serialized) {
                    Some((universe, t)) => {
                        worker::serve(universe, t >= mpi::Threading::Serialized)
                    }
                    None => tracing::error!("MPI was initialised before offload::init"),
                }
            }
        }
        Detected::Malformed { var, value } => {
            tracing::warn!(
                var,
                value,
                "malformed MPI launcher variable; not a cluster rank"
            );
        }
        _ => {}
    }
}

/// Whether this process is rank 0 of an MPI job with worker ranks: what `auto()` asks before it
/// picks the cluster tier. Reads the launcher's environment only (no MPI call), except under a
/// PMIx launcher that does not export the size, where it waits for rank 0's MPI thread.
pub fn launched_with_workers() -> bool {
    match detect().launch() {
        Some(l) if l.is_master() => match l.has_workers() {
            Some(w) => w,
            None => SERVICE
                .get()
                .is_some_and(|s| s.state.wait_world().is_ok_and(|w| w.size > 1)),
        },
        _ => false,
    }
}

/// Tells the worker ranks to exit and finalizes MPI on rank 0 when no [`Cluster`] was built
/// (a built cluster does this at shutdown). Returns once MPI is finalized; does nothing outside
/// an MPI job.
pub fn finish() {
    if let Some(s) = SERVICE.get() {
        s.tx.close();
        s.ring();
        let t = s.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            if t.join().is_err() {
                tracing::error!("the MPI thread panicked");
            }
        }
    }
}

/// Broadcasts a setup payload from rank 0: its length, then its bytes.
pub(super) fn write_setup_broadcast(world: &SimpleCommunicator, payload: &[u8]) {
    let root = world.process_at_rank(0);
    let mut len = payload.len() as u64;
    root.broadcast_into(&mut len);
    let mut buf = payload.to_vec();
    root.broadcast_into(&mut buf[..]);
}

/// Receives rank 0's setup broadcast on a worker rank.
pub(super) fn read_setup_broadcast(world: &SimpleCommunicator) -> Vec<u8> {
    let root = world.process_at_rank(0);
    let mut len = 0u64;
    root.broadcast_into(&mut len);
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    root.broadcast_into(&mut buf[..]);
    buf
}

/// Settings for a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    /// The encoded shared data, or why it could not be encoded (reported by `build`).
    shared: Result<Vec<u8>, String>,
    chunk_size: Option<usize>,
    result_spin: Duration,
    direct_spin: Duration,
    task_timeout: Option<Duration>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            shared: Ok(Vec::new()),
            chunk_size: None,
            result_spin: default_result_spin(),
            direct_spin: DIRECT_SPIN,
            task_timeout: None,
        }
    }
}

impl ClusterBuilder {
    /// Read-only data every worker rank gets once, by one `MPI_Bcast` when the cluster starts;
    /// remote functions read it with [`crate::shared`]. Errors at [`build`](Self::build) when
    /// it cannot be encoded or is over [`DEFAULT_MAX_FRAME`].
    pub fn shared_data<T: Serialize + ?Sized>(&mut self, data: &T) -> &mut Self {
        self.shared = postcard::to_allocvec(data)
            .map_err(|e| format!("the shared data could not be encoded: {e}"));
        self
    }

    /// Raw read-only bytes every worker rank gets once, read with
    /// [`crate::shared_bytes`] (the cluster's side of
    /// [`ProcessPoolBuilder::shared_bytes`](crate::tier::ProcessPoolBuilder::shared_bytes)).
    /// Ranks may sit on other hosts, so the bytes are broadcast, never mapped; errors at
    /// [`build`](Self::build) when over [`DEFAULT_MAX_FRAME`].
    pub fn shared_bytes(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.shared = Ok(bytes.into());
        self
    }

    /// The contents of the file at `path`, read on rank 0 and broadcast to every worker rank
    /// as with [`shared_bytes`](Self::shared_bytes). A file that cannot be read fails
    /// [`build`](Self::build) with its path.
    pub fn shared_file(&mut self, path: impl AsRef<std::path::Path>) -> &mut Self {
        let path = path.as_ref();
        self.shared = std::fs::read(path)
            .map_err(|e| format!("could not read the shared file {}: {e}", path.display()));
        self
    }

    /// The longest a task (or a [`Cluster::map`] chunk: one message) may run on a worker
    /// rank, from when it is sent (default: no limit). Past it the task fails with
    /// [`Error::is_timeout`] and its rank is *retired*: never given work again, since a
    /// running MPI task cannot be stopped and MPI cannot tell a busy rank from an unreachable
    /// one. This is how a task on a dead rank on another host fails instead of waiting
    /// forever (rank 0 watches only the processes on its own host; see the module docs on
    /// dead ranks). [`Cluster::submit_timeout`] sets a limit for one task.
    pub fn task_timeout(&mut self, limit: Duration) -> &mut Self {
        self.task_timeout = Some(limit);
        self
    }

    /// A fixed number of items per MPI message in [`Cluster::map`] (default: adaptive, as
    /// on the process tier).
    pub fn chunk_size(&mut self, n: usize) -> &mut Self {
        self.chunk_size = Some(n);
        self
    }

    /// How long a waiter spins for a short task's result before it parks (default
    /// [`RESULT_SPIN`] when rank 0 may use [`SPIN_MIN_CORES`] cores or more, else zero: park
    /// at once).
    pub fn result_spin(&mut self, d: Duration) -> &mut Self {
        self.result_spin = d;
        self
    }

    /// How long a caller that sent its task itself polls for the reply before handing it to
    /// the MPI thread (default [`DIRECT_SPIN`]); zero turns the direct path off, so that every
    /// task goes through rank 0's MPI thread. See the module docs on the round trip.
    pub fn direct_spin(&mut self, d: Duration) -> &mut Self {
        self.direct_spin = d;
        self
    }

    /// Sets the cluster up: broadcasts the setup and waits for every worker rank to answer.
    /// Blocks the calling thread for that exchange (milliseconds).
    ///
    /// Fails when this process is not rank 0 of an MPI job with worker ranks started through
    /// [`crate::init`], when a cluster was built already, or when a rank refuses the setup (for
    /// example because it runs another build).
    pub fn build(&self) -> Result<Cluster, BuildError> {
        if self.chunk_size == Some(0) {
            return Err(BuildError::invalid("the chunk size must be at least 1"));
        }
        let shared = self.shared.as_ref().map_err(BuildError::invalid)?;
        if shared.len() > DEFAULT_MAX_FRAME {
            return Err(BuildError::invalid(format!(
                "the shared data is {} bytes, over the {DEFAULT_MAX_FRAME}-byte limit",
                shared.len()
            )));
        }
        let Some(launch) = detect().launch() else {
            return Err(BuildError::invalid(
                "not launched by mpiexec: the cluster tier needs an MPI job (see auto())",
            ));
        };
        if !launch.is_master() {
            return Err(BuildError::invalid(format!(
                "rank {} is a worker rank: call offload::init() first in main",
                launch.rank
            )));
        }
        let Some(service) = SERVICE.get() else {
            return Err(BuildError::invalid(
                "the MPI thread is not running: call offload::init() first in main, under \
                 mpiexec with more than one rank",
            ));
        };
        let world = service.state.wait_world().map_err(BuildError::invalid)?;
        if world.size < 2 {
            return Err(BuildError::invalid(
                "the MPI job has one rank: no worker rank to run tasks",
            ));
        }
        if service.taken.swap(true, Ordering::AcqRel) {
            return Err(BuildError::invalid(
                "a cluster was built already in this process (clone its handle instead)",
            ));
        }
        let registry = crate::remote::Registry::global().ok_or_else(|| {
            BuildError::invalid("offload::init() was not called: no registry of remote functions")
        })?;
        let setup = Request::Setup {
            build_id: registry.build_id(),
            worker: 0,
            init: None,
            init_args_len: 0,
            shared: SharedData::Inline,
        };
        let payload = encode_payload(&setup, shared)
            .map_err(|e| BuildError::invalid(format!("cannot encode the setup: {e}")))?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        service
            .tx
            .send_blocking(Command::Setup { payload, reply })
            .map_err(|_| BuildError::invalid("the MPI thread has stopped"))?;
        let ranks = answer
            .recv()
            .map_err(|_| BuildError::invalid("the MPI thread stopped during the setup"))?
            .map_err(|e| BuildError::invalid(e.to_string()))?;
        tracing::info!(ranks = ranks.len(), "cluster tier ready");
        // Remote functions run on rank 0 itself (inline, by placement) read the same data.
        crate::remote::adopt_bytes(shared);
        Ok(Cluster {
            inner: Arc::new(Inner {
                service,
                ranks: ranks.len(),
                chunk_size: self.chunk_size,
                result_spin: self.result_spin,
                direct_spin: self.direct_spin,
                task_timeout: self.task_timeout,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

struct Inner {
    service: &'static Service,
    ranks: usize,
    chunk_size: Option<usize>,
    result_spin: Duration,
    direct_spin: Duration,
    task_timeout: Option<Duration>,
    closed: AtomicBool,
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

/// Tells the MPI thread to stop (drain or cancel its queue, kill running tasks for
/// [`ShutdownMode::Kill`], stop the ranks, finalize MPI) without waiting for it. A later call
/// may only make the stop harsher (Drain, then Cancel, then Kill).
fn request_stop(service: &Service, mode: ShutdownMode) {
    let flag = match mode {
        ShutdownMode::Drain => STOP_DRAIN,
        ShutdownMode::Cancel => STOP_CANCEL,
        ShutdownMode::Kill => STOP_KILL,
    };
    service.state.stop.fetch_max(flag, Ordering::AcqRel);
    if mode.fails_queued() {
        // Queued tasks fail with "shut down" as their completers drop.
        while service.rx.try_recv().is_ok() {}
    }
    service.tx.close();
    service.ring();
}

fn shutdown_service(service: &Service, mode: ShutdownMode) {
    request_stop(service, mode);
    join_service(service, mode);
}

/// Shuts down per `mode`; past `limit`, escalates to [`ShutdownMode::Kill`]. True when it
/// finished within `limit`.
fn shutdown_service_within(service: &Service, mode: ShutdownMode, limit: Duration) -> bool {
    request_stop(service, mode);
    let t0 = Instant::now();
    let in_time = loop {
        let done = service
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|t| t.is_finished());
        if done {
            break true;
        }
        if t0.elapsed() >= limit {
            break false;
        }
        std::thread::sleep((limit.saturating_sub(t0.elapsed())).min(Duration::from_millis(2)));
    };
    if !in_time && mode != ShutdownMode::Kill {
        tracing::warn!(?mode, ?limit, "the cluster did not stop in time: killing its running tasks");
        request_stop(service, ShutdownMode::Kill);
    }
    join_service(service, mode);
    in_time
}

/// Waits for the MPI thread to end (after [`request_stop`]).
fn join_service(service: &Service, mode: ShutdownMode) {
    let t = service
        .thread
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(t) = t {
        if t.thread().id() == std::thread::current().id() {
            return;
        }
        // A finalize after a lost rank may never end (see FINALIZE_GRACE): wait for it that
        // long, then leave the MPI thread in it. The process may exit meanwhile; mpiexec
        // with --enable-recovery takes that as a normal end.
        while !t.is_finished() {
            let unsure = *service
                .state
                .finalize_unsure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if unsure.is_some_and(|since| since.elapsed() > FINALIZE_GRACE) {
                tracing::warn!(
                    grace = ?FINALIZE_GRACE,
                    "MPI_Finalize has not ended after a rank of the job was lost (OpenMPI \
                     waits for every process there); going on without it"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.join().is_err() {
            tracing::error!("the MPI thread panicked");
        }
        tracing::debug!(?mode, "cluster tier shut down; MPI finalized");
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
///   `shutdown_timeout` does not wait: call [`shutdown`](Self::shutdown) (or [`finish`])
///   before that, or rank 0 may exit before `MPI_Finalize`.
/// - **elsewhere** (a plain thread, another executor): the drop blocks that thread until every
///   queued and running task has ended and MPI is finalized, as
///   [`shutdown_blocking`](Self::shutdown_blocking) does.
///
/// Call `shutdown` to choose the point where the program waits.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
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
    /// [`DEFAULT_MAX_FRAME`]; and when the cluster is shut down.
    ///
    /// A short task may go straight from this thread to a free rank (the direct path, see the
    /// module docs on the round trip); its handle's first poll then watches for the reply for
    /// up to [`DIRECT_SPIN`] before it parks.
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
    /// (never given work again: the task cannot be stopped). Use it where a rank may become
    /// unreachable on another host, where rank 0 cannot see it die.
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
    ///   [`DEFAULT_MAX_FRAME`] ([`submit`](Self::submit) returns the same error).
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
        (self.workers() * 2).max(crate::MIN_MAP_WINDOW)
    }

    /// Applies `f` to every item on the worker ranks; results in input order, one per item (a
    /// panic fails only its item).
    ///
    /// Items travel in chunks, many per MPI message, sized as on the process tier: one item
    /// per chunk until a chunk's run time has been measured (so that a few long items spread
    /// over the ranks), then as many items as take about
    /// [`MAP_CHUNK_TARGET`](crate::tier::MAP_CHUNK_TARGET) at the measured mean time per item
    /// (at most [`MAP_MAX_CHUNK`](crate::tier::MAP_MAX_CHUNK)).
    /// A [`ClusterBuilder::task_timeout`] applies to each chunk. At most
    /// [`default_window`](Self::default_window) chunks are in flight; the input is pulled only
    /// as results are consumed, so an endless iterator keeps memory flat. A fixed chunk size
    /// set with [`ClusterBuilder::chunk_size`] replaces the adaptive one.
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

/// Runs `f` on a thread of its own and awaits its result (on this thread if none can start).
async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = futures::channel::oneshot::channel();
    // Shared so that the closure is still here to run if no thread starts.
    let f = Arc::new(Mutex::new(Some(f)));
    let f2 = f.clone();
    let joiner = std::thread::Builder::new()
        .name("offload-mpi-shutdown".into())
        .spawn(move || {
            let f = f2.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(f) = f {
                let _ = tx.send(f());
            }
        });
    if let Ok(j) = joiner {
        if let Ok(v) = rx.await {
            let _ = j.join();
            return v;
        }
    }
    let f = f.lock().unwrap_or_else(|p| p.into_inner()).take();
    f.expect("the shutdown thread neither started nor ran it")()
}

/// The smallest request frame a call of `func` with `args_len` bytes of arguments makes: the
/// version byte, the header with a one-byte task id (a larger id adds up to 9 bytes), the
/// arguments. Over [`DEFAULT_MAX_FRAME`], the request is refused whatever its id.
fn min_call_frame(func: &'static str, args_len: usize) -> usize {
    let header = Request::Call { id: 0, func };
    let header_len = postcard::to_allocvec(&header).map_or(0, |v| v.len());
    1 + header_len + args_len
}

/// How many polling rounds a [`Watch`] makes between two looks at the clock: a round (lock,
/// `MPI_Improbe`) takes ~150 ns on the development VM, a clock read ~30 ns; every 4th round
/// keeps the clock's share small and overshoots the spin by well under a microsecond.
const WATCH_CLOCK_EVERY: u32 = 4;

/// A caller's watch over a task it sent itself (the direct path): the lazy job of the task's
/// handle, run when the handle is first awaited or waited on. It polls for replies under the
/// MPI lock for up to `spin`, completing whichever tasks they belong to, then hands its task
/// over to the MPI thread if the reply has not come. A handle dropped unwaited hands over from
/// `Drop`. Either way every directly sent task ends up watched by someone.
struct Watch {
    service: &'static Service,
    rank: usize,
    id: u64,
    spin: Duration,
    /// Still to hand over when dropped.
    armed: bool,
}

impl Watch {
    /// The handle's lazy job running this watch. The job comes with a handle of its own
    /// (a closure task's), detached so that it does not cancel the job.
    fn job(watch: Watch) -> Job {
        let (job, handle) =
            closure_task(move || watch.run(), None, TierKind::Cluster, Duration::ZERO);
        handle.detach();
        job
    }

    fn run(mut self) {
        let service = self.service;
        let world = SimpleCommunicator::world();
        let t0 = Instant::now();
        let mut renewed = false;
        let mut round = 0u32;
        loop {
            let table = match service.state.table.try_lock() {
                Ok(t) => Some(t),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut t) = table {
                if !t.is_in_flight(self.rank, self.id) {
                    // Someone else received the reply.
                    self.armed = false;
                    return;
                }
                if !t.direct {
                    break;
                }
                if !renewed {
                    // The caller may wait long after the send: the lease runs from now.
                    t.set_lease(self.rank, self.id, Some(t0 + CALLER_LEASE));
                    renewed = true;
                }
                let got = t.poll_results(&world, &service.state);
                // A rank freed here may be what a queued command waits for.
                let wake = got > 0 && (t.stashed || !service.rx.is_empty());
                let done = !t.is_in_flight(self.rank, self.id);
                drop(t);
                if wake {
                    service.ring();
                }
                if done {
                    self.armed = false;
                    return;
                }
            }
            // A clock read costs about a fifth of a round here: look every few rounds.
            round = round.wrapping_add(1);
            if round % WATCH_CLOCK_EVERY == 0 && t0.elapsed() >= self.spin {
                break;
            }
            std::hint::spin_loop();
        }
        // Drop hands the task over.
    }

    fn hand_over(&self) {
        let service = self.service;
        service
            .state
            .lock_table()
            .set_lease(self.rank, self.id, None);
        service.ring();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.armed {
            self.hand_over();
        }
    }
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
