//! The thread tier: the library's own pool.
//!
//! # Workers
//!
//! | role | default count | priority | takes |
//! | --- | --- | --- | --- |
//! | normal | cores − 1 (at least 1) | the I/O threads' | any work, short lane first |
//! | overflow | 1 on Linux with 2+ cores, else 0 | nice [`OVERFLOW_NICE`] | any work, when every normal worker is busy and a core is spare (or the work waited [`OVERFLOW_PATIENCE`]) |
//! | express | 1 | nice [`OVERFLOW_NICE`] | short-lane work, only while long work holds every other worker |
//! | surge | 0, up to [`SURGE_PER_CORE`] × cores on demand | the I/O threads' | any work, while the machine is busy with other threads (see below); leave after [`SURGE_KEEP_ALIVE`] without work |
//!
//! **No idle core.** Normal and overflow workers together are one per core
//! ([`default_thread_workers`]), so off-core work can use every core while the I/O threads do
//! not need it. Listing 5's "cores − 1" kept a core for the coordinator; here the last core
//! goes to a worker at a lower OS priority (Linux: `setpriority` on the thread's id, nice
//! [`OVERFLOW_NICE`]): when an I/O thread wakes on that core it gets ~90 % of it (CFS/EEVDF
//! weights 1024 : 110) and preempts at once. Why not every worker at low priority, or
//! `SCHED_IDLE`: beside other busy processes such workers get a few percent of a core, and an
//! ordered `map` stalls on the chunk one of them holds; so normal workers keep the I/O
//! threads' priority, and the overflow worker only steps in when they are all busy and the
//! system shows a spare core (or the work has waited [`OVERFLOW_PATIENCE`], so it never
//! starves). Elsewhere a thread's priority cannot be lowered alone (`setpriority` acts on the
//! whole process): there the default is cores − 1 normal workers and no overflow worker.
//! [`ThreadsBuilder::low_priority_workers`] overrides it. Measured (`cargo bench --bench
//! overhead -- heartbeat`, a 1 ms sleep on a one-thread runtime while every worker burns CPU,
//! 2 cores, a busy host): idle pool 2.08 ms; the old cores − 1 default 2.40 ms; this default
//! 2.36 ms; every worker at normal priority 2.71 ms; overflow at nice 19 2.46 ms. The default
//! costs the runtime no more than leaving a core idle did.
//!
//! **A busy machine.** Beside other busy threads each runnable thread gets its share of the
//! cores, so a pool of one worker per core gets about `workers / (workers + others)` of them,
//! while `spawn_blocking` takes a thread per call. When a normal (or surge) worker has been
//! busy for three windows of 20 ms in a row and ran less than three quarters of that time (its
//! own CPU clock), every normal worker is busy and work is still queued, the pool starts a
//! surge worker, at most one per [`OVERFLOW_PATIENCE`] and [`SURGE_PER_CORE`] × cores in all;
//! each leaves after [`SURGE_KEEP_ALIVE`] without work. On an idle machine the workers get
//! their cores and none starts (the I/O threads keep theirs). Measured
//! (`placement_quality --load`: one busy thread per core and a second process using the
//! library, 2 cores): always-offload 11.0 s without surge, 4.2 s with it, against
//! `spawn_blocking` 3.9 s in the same run. [`ThreadsBuilder::max_surge_workers`]`(0)` keeps the
//! pool fixed.
//!
//! **Short work never waits behind long work.** A job carries what its submitter said of its
//! run time ([`Job::expected`]; placement passes its prediction through
//! [`Executor::submit_expected`](crate::Executor::submit_expected)). Four lanes, served in
//! this order: predicted under [`SHORT_LANE_LIMIT`]; asked but not known yet (placement's
//! explorations and unknown keys: short-ish); plain submissions, which say nothing; predicted
//! long. After 16 jobs in a row from the others, a worker takes one long job, so long work is
//! never starved. When every normal and overflow worker is held by long work — a job predicted
//! long, or one already running [`SHORT_LANE_LIMIT`] — the express worker serves the first two
//! lanes, so such work waits at most about [`SHORT_LANE_LIMIT`], even behind a misprediction.
//! It runs at the overflow worker's lower priority: it is an extra thread beside one worker
//! per core, and at the I/O threads' priority it took their CPU (placement_quality, 2 cores:
//! adaptive's heartbeat p99 1.85 ms with it at normal priority, 0.04 and 0.95 ms in two runs at
//! nice 10). It never takes plain or long work (a plain `submit` gets exactly the workers the pool was
//! given, as before); after a not-yet-predicted job turned out long on it, it leaves that lane
//! alone for [`EXPRESS_COOLDOWN`] × that job's run time; it sleeps (no spinning) the rest of
//! the time.
//!
//! # Spinning: what it costs and when it stops
//!
//! A sleeping thread is woken through the hypervisor in ~25 µs on these machines; a spinning
//! one takes work in about a microsecond. So a normal worker that runs out of work spins up to
//! [`SPIN_BEFORE_PARK`] before it parks, and a caller awaiting a result spins up to
//! [`RESULT_SPIN`] before it parks. A spin costs its core for that long. It stops:
//! - when it has not paid: a worker whose last 3 spins found no work parks at once (it tries a
//!   spin again every 8th time); a caller spins only while most recent tasks finished within
//!   [`RESULT_SPIN`] of their submission;
//! - when another thread needs the core: a spin starts only while this process's spinners are
//!   fewer than the idle cores measured from the system (the kernel's runnable count, read at
//!   most every [`SAMPLE_EVERY`]), so two processes using this library, or a busy neighbour,
//!   do not lose their cores to each other's spinners;
//! - in any case after its bound: an idle pool uses no CPU ~50 µs after its last task.
//!
//! # Other contracts
//!
//! - Each lane is a bounded MPMC queue (async-channel): `push` waits for room, `try_push`
//!   hands the job back.
//! - Named threads (`offload-cpu-N`, the express worker `offload-cpu-x`).
//! - Panics are caught with their message; each task's own run time is measured on the worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use async_channel::TrySendError;

use super::{PushError, PushFuture, ShutdownMode, Tier, TierKind, TierStats};
use crate::error::BuildError;
use crate::task::Job;

mod priority;
mod shared;
pub(crate) mod spin;
mod worker;

use shared::{Class, Shared};
use worker::{Role, Worker};

thread_local! {
    /// The pool whose worker this thread is (the address of its shared state; 0 elsewhere).
    static OWN_POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The default prefix of worker thread names, before the pool's number.
const DEFAULT_NAME: &str = "offload-cpu";

/// How long an idle worker keeps looking for work before it parks. Twice the measured cost of
/// waking a parked thread here (~25 µs): a burst of submissions a few microseconds apart never
/// pays a wake-up, and an idle pool stops burning its cores within 50 µs.
pub(crate) const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// How long a waiter spins for the result of a task before it parks, when the pool's recent
/// tasks finish this soon after their submission. Equal to the cost of one thread wake-up:
/// spinning longer than a wake-up costs could never pay.
pub(crate) const RESULT_SPIN: Duration = Duration::from_micros(25);

/// Default queue capacity per worker (each lane). Large enough that a burst keeps every worker
/// fed, small enough that an endless producer is held back (bounded memory, DESIGN.md §3.3).
pub(crate) const DEFAULT_QUEUE_PER_WORKER: usize = 256;

/// Work predicted to run under this (or not predicted) goes to the short lane. Five times the
/// inline budget: work placement sends off-core because it is a little over the budget stays
/// short; a millisecond is also the longest a short task waits for the express worker once
/// long work holds every other worker.
pub(crate) const SHORT_LANE_LIMIT: Duration = Duration::from_millis(1);

/// After a not-yet-predicted job it ran turned out long (over [`SHORT_LANE_LIMIT`]), the
/// express worker takes no such work for this many times that job's run time: it is there for
/// short work, and gives long work that nobody could predict at most ~2 % of a core beyond the
/// workers the pool was given.
pub(crate) const EXPRESS_COOLDOWN: u32 = 50;

/// The overflow worker's nice value (Linux). At 10 a busy overflow worker gets about a tenth of
/// a core that a normal-priority thread also wants (weights 110 : 1024): the I/O threads keep
/// ~90 % of it, and work the overflow worker holds still progresses when the machine is busy.
/// Nice 19 or `SCHED_IDLE` would leave it ~1.5 % or nothing.
pub(crate) const OVERFLOW_NICE: i32 = 10;

/// Queued work the overflow worker leaves to the normal workers (or to a busy system) waits at
/// most this long before the overflow worker takes it anyway. Long against a thread wake-up,
/// short against the work worth sending off-core.
pub(crate) const OVERFLOW_PATIENCE: Duration = Duration::from_millis(5);

/// Surge workers a pool may add per core (default of [`ThreadsBuilder::max_surge_workers`]:
/// this × cores). A fixed pool on a machine kept busy by other threads gets only its share of
/// the cores (one runnable thread's worth per worker), while `spawn_blocking` takes a thread
/// per call; so while work is queued, every normal worker is busy and a worker that has been
/// busy for 60 ms got less than three quarters of its core (its own CPU clock), the pool starts
/// one more worker at normal priority, at most one per [`OVERFLOW_PATIENCE`]. On an idle
/// machine none starts: the pool's own workers get their cores.
pub(crate) const SURGE_PER_CORE: usize = 3;

/// A surge worker that found no work for this long exits.
pub(crate) const SURGE_KEEP_ALIVE: Duration = Duration::from_millis(200);

/// The default number of normal-priority workers, and the process tier's default worker count:
/// cores − 1, at least 1 (Listing 5).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The default number of general thread-tier workers: one per core where the last one can run
/// at a lower priority (Linux), [`default_workers`] elsewhere. See the module docs.
pub fn default_thread_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if priority::SUPPORTED && cores > 1 {
        cores
    } else {
        default_workers()
    }
}

/// Settings for a [`Threads`] pool.
#[derive(Clone)]
pub struct ThreadsBuilder {
    initializer: Option<Initializer>,
    workers: usize,
    low_priority: usize,
    express: bool,
    nice: i32,
    surge: Option<usize>,
    queue_capacity: Option<usize>,
    spin: Duration,
    name: String,
}

/// What every worker thread runs once, before its first task (Python's `initializer`).
pub(crate) type Initializer = Arc<dyn Fn(usize) + Send + Sync + 'static>;

impl std::fmt::Debug for ThreadsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadsBuilder")
            .field("workers", &self.workers)
            .field("low_priority", &self.low_priority)
            .field("express", &self.express)
            .field("queue_capacity", &self.queue_capacity)
            .field("initializer", &self.initializer.is_some())
            .field("name", &self.name)
            .finish()
    }
}

impl Default for ThreadsBuilder {
    fn default() -> Self {
        ThreadsBuilder {
            initializer: None,
            workers: default_thread_workers(),
            low_priority: usize::from(priority::SUPPORTED),
            express: true,
            nice: OVERFLOW_NICE,
            surge: None,
            queue_capacity: None,
            spin: SPIN_BEFORE_PARK,
            name: DEFAULT_NAME.to_string(),
        }
    }
}

impl ThreadsBuilder {
    /// Runs `init(worker_index)` on every worker thread (the express worker too, with the index
    /// after the last general worker) once, before it takes its first task: thread-local set-up
    /// such as a per-thread buffer or a seeded RNG (Python's `ThreadPoolExecutor(initializer=)`).
    /// A panic in it is caught and logged; the worker then serves as usual.
    pub fn initializer(&mut self, init: impl Fn(usize) + Send + Sync + 'static) -> &mut Self {
        self.initializer = Some(Arc::new(init));
        self
    }

    /// Number of general worker threads, normal and overflow together (default
    /// [`default_thread_workers`]: one per core on Linux).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = n;
        self
    }

    /// How many of the workers are overflow workers at a lower priority (default 1 on Linux,
    /// 0 elsewhere; always at least one normal worker remains). See the module docs.
    pub fn low_priority_workers(&mut self, n: usize) -> &mut Self {
        self.low_priority = n;
        self
    }

    /// The overflow workers' nice value (default 10).
    pub fn low_priority_nice(&mut self, nice: i32) -> &mut Self {
        self.nice = nice;
        self
    }

    /// The most surge workers the pool may add while other work keeps the machine's cores
    /// busy (default 3 × cores; 0: a fixed pool). See the module docs.
    pub fn max_surge_workers(&mut self, n: usize) -> &mut Self {
        self.surge = Some(n);
        self
    }

    /// Whether to start the express worker for short work (default true). Without it, short
    /// work waits when long work holds every worker.
    pub fn express_worker(&mut self, on: bool) -> &mut Self {
        self.express = on;
        self
    }

    /// Capacity of each lane (default: 256 × workers).
    pub fn queue_capacity(&mut self, n: usize) -> &mut Self {
        self.queue_capacity = Some(n);
        self
    }

    /// How long idle workers spin before they park (default 50 µs; zero parks at
    /// once, which saves CPU on a busy machine and costs a wake-up per hand-off).
    pub fn spin_before_park(&mut self, d: Duration) -> &mut Self {
        self.spin = d;
        self
    }

    /// Prefix of the worker thread names (default `offload-cpuP`, with `P` numbering the pools
    /// of this process, so two default pools never share a name: `offload-cpu0-0`,
    /// `offload-cpu1-0`, ...; the express worker is `...-x`).
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
        let overflow = if priority::SUPPORTED {
            self.low_priority.min(self.workers - 1)
        } else {
            0
        };
        let normal = self.workers - overflow;
        let prefix = if self.name == DEFAULT_NAME {
            static POOLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            format!(
                "{DEFAULT_NAME}{}",
                POOLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        } else {
            self.name.clone()
        };
        let surge = self
            .surge
            .unwrap_or_else(|| SURGE_PER_CORE * spin::online_cores());
        let shared = Arc::new(Shared::new(cap, normal, self.workers, surge));
        let pool = Threads {
            shared: shared.clone(),
            workers: self.workers,
        };
        let prefix: Arc<str> = prefix.into();
        let roles = (0..self.workers)
            .map(|i| {
                if i < normal {
                    Role::Normal
                } else {
                    Role::Overflow
                }
            })
            .chain(self.express.then_some(Role::Express));
        for (index, role) in roles.enumerate() {
            let w = Worker {
                index,
                role,
                shared: shared.clone(),
                spin: self.spin,
                nice: self.nice,
                init: self.initializer.clone(),
                prefix: prefix.clone(),
                starve: Default::default(),
            };
            let name = match role {
                Role::Express => format!("{prefix}-x"),
                _ => format!("{prefix}-{index}"),
            };
            let started = std::thread::Builder::new()
                .name(name)
                .spawn(move || w.run());
            match started {
                Ok(h) => pool.lock_threads().push(h),
                Err(e) => {
                    pool.shutdown(ShutdownMode::Cancel);
                    return Err(BuildError::io("could not start a worker thread", e));
                }
            }
        }
        tracing::debug!(
            normal,
            overflow,
            express = self.express,
            capacity = cap,
            "thread tier started"
        );
        Ok(pool)
    }
}

/// The library's thread pool tier. See the module docs.
pub struct Threads {
    shared: Arc<Shared>,
    workers: usize,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("workers", &self.workers)
            .field("queued", &self.shared.queued())
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl Threads {
    /// Settings for a new pool.
    pub fn builder() -> ThreadsBuilder {
        ThreadsBuilder::default()
    }

    /// Number of general worker threads (normal and overflow; the express worker not counted).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Tasks running right now.
    pub fn busy(&self) -> usize {
        self.shared.counters.busy.load(Ordering::Relaxed)
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.shared.lock_threads()
    }

    fn close(&self) {
        self.shared.close();
        self.shared.wake_all();
    }
}

impl Tier for Threads {
    fn kind(&self) -> TierKind {
        TierKind::Threads
    }

    fn try_push(&self, job: Job) -> Result<(), PushError> {
        let class = Class::of(job.expect());
        match self.shared.lane(class).tx.try_send(job) {
            Ok(()) => {
                self.shared.after_push(class);
                Ok(())
            }
            Err(TrySendError::Full(j)) => Err(PushError::Full(j)),
            Err(TrySendError::Closed(j)) => Err(PushError::Closed(j)),
        }
    }

    fn push(&self, job: Job) -> PushFuture<'_> {
        Box::pin(async move {
            let class = Class::of(job.expect());
            let lane = self.shared.lane(class);
            match lane.tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Closed(j)) => return Err(j),
                Err(TrySendError::Full(j)) => lane.tx.send(j).await.map_err(|e| e.into_inner())?,
            }
            self.shared.after_push(class);
            Ok(())
        })
    }

    fn is_own_worker(&self) -> bool {
        OWN_POOL.with(|p| p.get() == Arc::as_ptr(&self.shared) as usize)
    }

    fn push_blocking(&self, job: Job) -> Result<(), Job> {
        let class = Class::of(job.expect());
        self.shared
            .lane(class)
            .tx
            .send_blocking(job)
            .map_err(|e| e.into_inner())?;
        self.shared.after_push(class);
        Ok(())
    }

    fn result_spin(&self) -> Duration {
        // Spin only while it has paid: most recent tasks finished within RESULT_SPIN of their
        // submission. Whether a core is free to spin on is asked when the spin starts.
        if self.shared.counters.quick_share.load(Ordering::Relaxed) >= 512 {
            RESULT_SPIN
        } else {
            Duration::ZERO
        }
    }

    fn shutdown(&self, mode: ShutdownMode) {
        let sh = &*self.shared;
        if mode.fails_queued() {
            sh.cancelling.store(true, Ordering::Release);
        }
        self.close();
        if mode.fails_queued() {
            for class in Class::ALL {
                while let Ok(job) = sh.lane(class).rx.try_recv() {
                    drop(job);
                }
            }
        }
        let threads = std::mem::take(&mut *self.lock_threads());
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
        let c = &self.shared.counters;
        TierStats {
            workers: self.workers,
            queued: self.shared.queued(),
            completed: c.completed.load(Ordering::Relaxed),
            panicked: c.panicked.load(Ordering::Relaxed),
            mean_run_time: Duration::from_nanos(c.ewma_run_ns.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // Dropping the pool drains: queued work still runs, the workers exit on their own.
        self.close();
    }
}
