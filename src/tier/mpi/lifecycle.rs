//! Rank 0's MPI thread as the handles see it: the message tags, the state shared with the MPI
//! thread ([`ServiceState`]), starting the thread ([`start_up`]), stopping it (drain, cancel,
//! kill, with or without a deadline), and [`finish`] for a job that builds no cluster.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::error::Error;
use crate::tier::ShutdownMode;
use crate::tier::process::Pending;

use super::detect::{Detected, detect};
use super::service;
use super::table::Table;
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
    pub(super) world: Mutex<Option<Result<WorldInfo, String>>>,
    pub(super) world_set: Condvar,
    pub(super) stop: AtomicU8,
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) ewma_run_ns: AtomicU64,
}

/// How long a worker rank's `MPI_Finalize` may last before the rank exits without it.
/// OpenMPI 4.1 ends `MPI_Finalize` with a fence over every process of the job, which a lost
/// rank never joins (nor rank 0, which skips finalizing after a loss: see `liveness.rs`). A
/// healthy finalize takes milliseconds.
pub(super) const FINALIZE_GRACE: Duration = Duration::from_secs(2);

impl ServiceState {
    pub(super) fn set_world(&self, w: Result<WorldInfo, String>) {
        *self.world.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        self.world_set.notify_all();
    }

    pub(super) fn wait_world(&self) -> Result<WorldInfo, String> {
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
pub(super) struct Service {
    pub(super) tx: Sender<Command>,
    pub(super) rx: Receiver<Command>,
    pub(super) state: Arc<ServiceState>,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// The MPI thread, to unpark it (see [`Service::ring`]).
    pub(super) waker: Option<Thread>,
    pub(super) taken: AtomicBool,
}

impl Service {
    /// Wakes the MPI thread if it is parked: after every command queued, the queue closed, a
    /// task handed over. Costs an atomic swap when it is not parked.
    pub(super) fn ring(&self) {
        if let Some(t) = &self.waker {
            t.unpark();
        }
    }
}

pub(super) static SERVICE: OnceLock<Service> = OnceLock::new();

pub(super) fn start_service() -> &'static Service {
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
                    Some((universe, t)) => worker::serve(universe, t >= mpi::Threading::Serialized),
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

/// Tells the worker ranks to exit and finalizes MPI on rank 0 when no [`Cluster`](super::Cluster) was built
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

/// Tells the MPI thread to stop (drain or cancel its queue, kill running tasks for
/// [`ShutdownMode::Kill`], stop the ranks, finalize MPI) without waiting for it. A later call
/// may only make the stop harsher (Drain, then Cancel, then Kill).
pub(super) fn request_stop(service: &Service, mode: ShutdownMode) {
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

pub(super) fn shutdown_service(service: &Service, mode: ShutdownMode) {
    request_stop(service, mode);
    join_service(service, mode);
}

/// Shuts down per `mode`; past `limit`, escalates to [`ShutdownMode::Kill`]. True when it
/// finished within `limit`.
pub(super) fn shutdown_service_within(
    service: &Service,
    mode: ShutdownMode,
    limit: Duration,
) -> bool {
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
        tracing::warn!(
            ?mode,
            ?limit,
            "the cluster did not stop in time: killing its running tasks"
        );
        request_stop(service, ShutdownMode::Kill);
    }
    join_service(service, mode);
    in_time
}

/// Waits for the MPI thread to end (after [`request_stop`]).
pub(super) fn join_service(service: &Service, mode: ShutdownMode) {
    let t = service
        .thread
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(t) = t {
        if t.thread().id() == std::thread::current().id() {
            return;
        }
        // After a lost rank the MPI thread does not finalize (the closing fence would wait
        // for it for ever), so this ends in milliseconds.
        if t.join().is_err() {
            tracing::error!("the MPI thread panicked");
        }
        tracing::debug!(?mode, "cluster tier shut down; MPI finalized");
    }
}

/// Runs `f` on a thread of its own and awaits its result (on this thread if none can start).
pub(super) async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
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
