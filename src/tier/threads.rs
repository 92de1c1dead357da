//! The thread tier: the library's own pool.
//!
//! - A bounded MPMC queue (async-channel): `push` waits for room, `try_push` hands the job back.
//! - Named threads (`offload-cpu-N`), default count cores − 1, at least 1 (Listing 5: leave a
//!   core for the coordinator).
//! - Panics are caught with their message; each task's own run time is measured on the worker.
//! - Workers spin for [`SPIN_BEFORE_PARK`] looking for work before they park: a sleeping thread
//!   is woken through the hypervisor in ~25 µs on these machines, a spinning one takes work in
//!   about a microsecond. Waiters spin for results the same way when tasks are short
//!   ([`Tier::result_spin`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::{PushError, PushFuture, ShutdownMode, Tier, TierKind, TierStats};
use crate::error::BuildError;
use crate::task::{Job, WorkerCtx};

/// How long an idle worker keeps looking for work before it parks. Twice the measured cost of
/// waking a parked thread here (~25 µs): a burst of submissions a few microseconds apart never
/// pays a wake-up, and an idle pool stops burning its cores within 50 µs.
pub const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// How long a waiter spins for the result of a task before it parks, when the pool's recent
/// tasks are this short. Equal to the cost of one thread wake-up: spinning longer than a
/// wake-up costs could never pay.
pub const RESULT_SPIN: Duration = Duration::from_micros(25);

/// Default queue capacity per worker. Large enough that a burst keeps every worker fed, small
/// enough that an endless producer is held back (bounded memory, DESIGN.md §3.3).
pub const DEFAULT_QUEUE_PER_WORKER: usize = 256;

/// The default number of CPU workers: cores − 1, at least 1 (Listing 5).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    panicked: AtomicU64,
    ewma_run_ns: AtomicU64,
    busy: AtomicUsize,
}

/// Settings for a [`Threads`] pool.
#[derive(Debug, Clone)]
pub struct ThreadsBuilder {
    workers: usize,
    queue_capacity: Option<usize>,
    spin: Duration,
    name: String,
}

impl Default for ThreadsBuilder {
    fn default() -> Self {
        ThreadsBuilder {
            workers: default_workers(),
            queue_capacity: None,
            spin: SPIN_BEFORE_PARK,
            name: "offload-cpu".to_string(),
        }
    }
}

impl ThreadsBuilder {
    /// Number of worker threads (default: cores − 1, at least 1).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = n;
        self
    }

    /// Queue capacity (default: [`DEFAULT_QUEUE_PER_WORKER`] × workers).
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = Some(n);
        self
    }

    /// How long idle workers spin before they park (default [`SPIN_BEFORE_PARK`]; zero parks at
    /// once, which saves CPU on a busy machine and costs a wake-up per hand-off).
    pub fn spin_before_park(&mut self, d: Duration) -> &mut Self {
        self.spin = d;
        self
    }

    /// Prefix of the worker thread names (default `offload-cpu`).
    pub fn thread_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = name.into();
        self
    }

    /// Starts the pool.
    pub fn build(&self) -> Result<Threads, BuildError> {
        if self.workers == 0 {
            return Err(BuildError::invalid("a thread pool needs at least 1 worker"));
        }
        let cap = self
            .queue_capacity
            .unwrap_or(DEFAULT_QUEUE_PER_WORKER * self.workers);
        if cap == 0 {
            return Err(BuildError::invalid("the queue capacity must be at least 1"));
        }
        let (tx, rx) = async_channel::bounded::<Job>(cap);
        let counters = Arc::new(Counters::default());
        let cancelling = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(self.workers);
        for i in 0..self.workers {
            let w = Worker {
                index: i,
                rx: rx.clone(),
                counters: counters.clone(),
                cancelling: cancelling.clone(),
                spin: self.spin,
            };
            let handle = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || w.run())
                .map_err(|e| BuildError::io("could not start a worker thread", e))?;
            threads.push(handle);
        }
        tracing::debug!(
            workers = self.workers,
            capacity = cap,
            "thread tier started"
        );
        Ok(Threads {
            tx,
            rx,
            workers: self.workers,
            counters,
            cancelling,
            threads: Mutex::new(threads),
        })
    }
}

struct Worker {
    index: usize,
    rx: Receiver<Job>,
    counters: Arc<Counters>,
    cancelling: Arc<AtomicBool>,
    spin: Duration,
}

impl Worker {
    fn next(&self) -> Option<Job> {
        match self.rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Closed) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if !self.spin.is_zero() {
            let t0 = Instant::now();
            let mut i = 0u32;
            loop {
                std::hint::spin_loop();
                match self.rx.try_recv() {
                    Ok(job) => return Some(job),
                    Err(TryRecvError::Closed) => return None,
                    Err(TryRecvError::Empty) => {}
                }
                i = i.wrapping_add(1);
                if i % 16 == 0 && t0.elapsed() >= self.spin {
                    break;
                }
            }
        }
        self.rx.recv_blocking().ok()
    }

    fn run(self) {
        let ctx = WorkerCtx {
            tier: TierKind::Threads,
            worker: Some(self.index),
        };
        while let Some(job) = self.next() {
            if self.cancelling.load(Ordering::Acquire) {
                // Shutdown(Cancel): the job's destructor fails its task with "shut down".
                drop(job);
                continue;
            }
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            if let Some(ran) = job.run(ctx) {
                let c = &self.counters;
                c.completed.fetch_add(1, Ordering::Relaxed);
                if ran.panicked {
                    c.panicked.fetch_add(1, Ordering::Relaxed);
                }
                let x = u64::try_from(ran.run_time.as_nanos()).unwrap_or(u64::MAX);
                let old = c.ewma_run_ns.load(Ordering::Relaxed);
                // EWMA with weight 1/8; racy between workers, which only blurs an estimate.
                let new = if old == 0 { x } else { old - old / 8 + x / 8 };
                c.ewma_run_ns.store(new, Ordering::Relaxed);
            }
            self.counters.busy.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::trace!(worker = self.index, "thread worker exits");
    }
}

/// The library's thread pool tier. See the module docs.
pub struct Threads {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    workers: usize,
    counters: Arc<Counters>,
    cancelling: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("workers", &self.workers)
            .field("queued", &self.tx.len())
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl Threads {
    /// Settings for a new pool.
    pub fn builder() -> ThreadsBuilder {
        ThreadsBuilder::default()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Tasks running right now.
    pub fn busy(&self) -> usize {
        self.counters.busy.load(Ordering::Relaxed)
    }
}

impl Tier for Threads {
    fn kind(&self) -> TierKind {
        TierKind::Threads
    }

    fn try_push(&self, job: Job) -> Result<(), PushError> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) => Err(PushError::Full(j)),
            Err(TrySendError::Closed(j)) => Err(PushError::Closed(j)),
        }
    }

    fn push(&self, job: Job) -> PushFuture<'_> {
        Box::pin(async move {
            match self.tx.try_send(job) {
                Ok(()) => Ok(()),
                Err(TrySendError::Closed(j)) => Err(j),
                Err(TrySendError::Full(j)) => self.tx.send(j).await.map_err(|e| e.into_inner()),
            }
        })
    }

    fn push_blocking(&self, job: Job) -> Result<(), Job> {
        self.tx.send_blocking(job).map_err(|e| e.into_inner())
    }

    fn result_spin(&self) -> Duration {
        let ewma = Duration::from_nanos(self.counters.ewma_run_ns.load(Ordering::Relaxed));
        if ewma < RESULT_SPIN {
            RESULT_SPIN
        } else {
            Duration::ZERO
        }
    }

    fn shutdown(&self, mode: ShutdownMode) {
        if mode.fails_queued() {
            self.cancelling.store(true, Ordering::Release);
        }
        self.tx.close();
        if mode.fails_queued() {
            while let Ok(job) = self.rx.try_recv() {
                drop(job);
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() == me {
                // Shut down from one of our own tasks: that worker exits when the task returns.
                continue;
            }
            if t.join().is_err() {
                tracing::error!("a thread worker panicked outside a task");
            }
        }
        tracing::debug!(?mode, "thread tier shut down");
    }

    fn stats(&self) -> TierStats {
        let c = &self.counters;
        TierStats {
            workers: self.workers,
            queued: self.tx.len(),
            completed: c.completed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            mean_run_time: Duration::from_nanos(c.ewma_run_ns.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // Dropping the pool drains: queued work still runs, the workers exit on their own.
        self.tx.close();
    }
}
