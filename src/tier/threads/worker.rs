//! The worker loops, one per role: normal workers, the overflow worker, the express worker,
//! and surge workers, started on demand while other work keeps the machine's cores busy.
//! See the module docs of the thread tier for what each role takes and when.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::shared::{Class, Shared, Take};
use super::{
    EXPRESS_COOLDOWN, OVERFLOW_PATIENCE, SHORT_LANE_LIMIT, SURGE_KEEP_ALIVE, priority, spin,
};
use crate::task::{Job, WorkerCtx};
use crate::tier::TierKind;

/// Spin episodes in a row that found no work, after which a worker parks at once ...
const UNPAID_SPINS: u32 = 3;
/// ... except every this many times, to notice that spinning pays again.
const PROBE_EVERY: u32 = 8;

/// How often an overflow worker that declined queued work looks again (pushes do not wake it
/// meanwhile: a submitter never pays a wake-up for a worker that would decline).
const OVERFLOW_RECHECK: Duration = Duration::from_millis(1);

/// A worker's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Normal priority; takes any work at once, spins before it parks.
    Normal,
    /// Lower priority; takes work only when every normal worker is busy and a core is spare
    /// (or the work has waited [`OVERFLOW_PATIENCE`]).
    Overflow,
    /// Normal priority; short-lane work only, and only while long work holds every general
    /// worker.
    Express,
    /// Normal priority, started on demand (see [`SURGE_PER_CORE`](super::SURGE_PER_CORE));
    /// takes any work; exits after [`SURGE_KEEP_ALIVE`] without any.
    Surge,
}

/// How long a worker measures its share of a core before it judges it (a few scheduler
/// slices: not noise, and a few surge steps within a second).
const STARVE_WINDOW: Duration = Duration::from_millis(20);

/// Windows in a row that must find a worker starved: a VM's host taking a virtual CPU away for
/// a few milliseconds, or a short burst of other work, is not a busy machine.
const STARVED_WINDOWS: u32 = 3;

/// Whether a busy worker is starved of CPU: it is measured over windows of [`STARVE_WINDOW`]
/// of uninterrupted work (a worker that finds no work starts over), and starved after
/// [`STARVED_WINDOWS`] windows in a row in which it ran less than three quarters of the wall
/// time. On an idle machine a worker at normal priority runs nearly all of it; beside other
/// busy threads it gets its share, and a fixed pool falls behind `spawn_blocking`'s thread per
/// call. Its own CPU clock, read at most once per window.
#[derive(Default)]
pub(super) struct Starve {
    since: std::cell::Cell<Option<(Instant, u64)>>,
    streak: std::cell::Cell<u32>,
}

impl Starve {
    /// Forget the window: the worker is about to wait for work.
    fn reset(&self) {
        self.since.set(None);
        self.streak.set(0);
    }

    /// Measures, at most once per window; whether the worker is starved now.
    fn check(&self) -> bool {
        let now = Instant::now();
        match self.since.get() {
            Some((t0, _)) if now.duration_since(t0) < STARVE_WINDOW => {}
            Some((t0, cpu0)) => {
                let Some(cpu) = spin::thread_cpu_ns() else {
                    return false;
                };
                let wall = u64::try_from(now.duration_since(t0).as_nanos()).unwrap_or(u64::MAX);
                let ran = cpu.saturating_sub(cpu0);
                if ran.saturating_mul(4) < wall.saturating_mul(3) {
                    self.streak.set(self.streak.get().saturating_add(1));
                } else {
                    self.streak.set(0);
                }
                self.since.set(Some((now, cpu)));
            }
            None => {
                if let Some(cpu) = spin::thread_cpu_ns() {
                    self.since.set(Some((now, cpu)));
                }
            }
        }
        self.streak.get() >= STARVED_WINDOWS
    }
}

pub(super) struct Worker {
    /// General workers: their index (normal ones first); the express worker: past the last.
    pub(super) index: usize,
    pub(super) role: Role,
    pub(super) shared: Arc<Shared>,
    pub(super) spin: Duration,
    pub(super) nice: i32,
    pub(super) init: Option<super::Initializer>,
    /// The pool's thread-name prefix (surge workers are named from it).
    pub(super) prefix: Arc<str>,
    /// Whether this worker gets its core (normal and surge workers: see [`Starve`]).
    pub(super) starve: Starve,
}

impl Worker {
    pub(super) fn run(self) {
        super::OWN_POOL.with(|p| p.set(Arc::as_ptr(&self.shared) as usize));
        if let Some(init) = &self.init {
            let index = self.index;
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| init(index))) {
                tracing::error!(
                    worker = index,
                    panic = %crate::error::panic_message(&*p),
                    "the thread pool's initializer panicked; the worker serves on"
                );
            }
        }
        if matches!(self.role, Role::Overflow | Role::Express) {
            priority::lower_this_thread(self.nice);
        }
        let ctx = WorkerCtx {
            tier: TierKind::Threads,
            worker: Some(self.index),
        };
        let sh = &*self.shared;
        let mut unpaid = 0u32;
        let mut parks = 0u32;
        let mut streak = 0u32;
        // The express worker: no unpredicted work until then (see EXPRESS_COOLDOWN).
        let mut cooldown: Option<Instant> = None;
        loop {
            let next = match self.role {
                Role::Normal => self.next_normal(&mut streak, &mut unpaid, &mut parks),
                Role::Overflow => self.next_overflow(&mut streak),
                Role::Express => self.next_express(&mut cooldown),
                Role::Surge => self.next_surge(&mut streak),
            };
            let Some((job, class)) = next else { break };
            if self.role != Role::Express {
                sh.pass_on();
            }
            if sh.cancelling.load(Ordering::Acquire) {
                // Shutdown(Cancel): the job's destructor fails its task with "shut down".
                drop(job);
                continue;
            }
            let ran = self.run_one(job, class, ctx);
            if self.role == Role::Express && class == Class::Unknown && ran > SHORT_LANE_LIMIT {
                cooldown = Some(Instant::now() + ran.saturating_mul(EXPRESS_COOLDOWN));
            }
        }
        if self.role == Role::Surge {
            sh.surge_live.fetch_sub(1, Ordering::SeqCst);
        }
        tracing::trace!(worker = self.index, role = ?self.role, "thread worker exits");
    }

    /// Starts a surge worker in the slot [`Shared::claim_surge`] took (gives it back when the
    /// pool has closed or the thread cannot start).
    fn start_surge(&self) {
        let sh = &self.shared;
        let mut threads = sh.lock_threads();
        if sh.is_closed() {
            sh.surge_live.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let n = sh.surge_seq.fetch_add(1, Ordering::Relaxed);
        let w = Worker {
            index: sh.running.len() + 1 + n,
            role: Role::Surge,
            shared: sh.clone(),
            spin: self.spin,
            nice: self.nice,
            init: self.init.clone(),
            prefix: self.prefix.clone(),
            starve: Starve::default(),
        };
        let started = std::thread::Builder::new()
            .name(format!("{}-s{n}", self.prefix))
            .spawn(move || w.run());
        match started {
            Ok(h) => {
                threads.push(h);
                tracing::debug!(
                    surge = sh.surge_live.load(Ordering::Relaxed),
                    "the machine is busy: a surge worker started"
                );
            }
            Err(e) => {
                sh.surge_live.fetch_sub(1, Ordering::SeqCst);
                tracing::debug!(error = %e, "could not start a surge worker");
            }
        }
    }

    /// A surge worker's next job: any queued work; `None` after [`SURGE_KEEP_ALIVE`] without
    /// any (it exits), or when the pool closed.
    fn next_surge(&self, streak: &mut u32) -> Option<(Job, Class)> {
        let sh = &*self.shared;
        let since = Instant::now();
        loop {
            match sh.take(streak) {
                Take::Job(job, class) => return Some((job, class)),
                Take::Closed => return None,
                Take::Empty => self.starve.reset(),
            }
            let left = SURGE_KEEP_ALIVE.saturating_sub(since.elapsed());
            if left.is_zero() {
                return None;
            }
            // Parked beside the normal workers: a push wakes one of them or this one.
            sh.normal_park
                .park(Some(left), || sh.has_work() || sh.is_closed());
        }
    }

    /// Runs `job`; returns its run time (zero when it had been cancelled).
    fn run_one(&self, job: Job, class: Class, ctx: WorkerCtx) -> Duration {
        let sh = &*self.shared;
        let general = matches!(self.role, Role::Normal | Role::Overflow);
        if self.role == Role::Normal {
            sh.normal_busy.fetch_add(1, Ordering::SeqCst);
        }
        if general {
            sh.started(self.index, class == Class::Long);
        }
        // With this job counted: more queued behind it on a busy machine starts a surge
        // worker. Only threads at normal priority start them: a thread inherits the nice value
        // of the thread that starts it, and cannot raise it again unprivileged.
        if matches!(self.role, Role::Normal | Role::Surge) && sh.claim_surge(|| self.starve.check())
        {
            self.start_surge();
        }
        sh.counters.busy.fetch_add(1, Ordering::Relaxed);
        let mut run_time = Duration::ZERO;
        let running = spin::running();
        if let Some(ran) = job.run(ctx) {
            sh.counters.record(&ran);
            run_time = ran.run_time;
        }
        drop(running);
        sh.counters.busy.fetch_sub(1, Ordering::Relaxed);
        if general {
            sh.finished(self.index);
        }
        if self.role == Role::Normal {
            sh.normal_busy.fetch_sub(1, Ordering::SeqCst);
        }
        run_time
    }

    /// A normal worker's next job: take one, else spin while spinning has paid lately and the
    /// system has a core to spare, else park.
    fn next_normal(
        &self,
        streak: &mut u32,
        unpaid: &mut u32,
        parks: &mut u32,
    ) -> Option<(Job, Class)> {
        let sh = &*self.shared;
        loop {
            match sh.take(streak) {
                Take::Job(job, class) => return Some((job, class)),
                Take::Closed => return None,
                Take::Empty => self.starve.reset(),
            }
            *parks = parks.wrapping_add(1);
            let worth = *unpaid < UNPAID_SPINS || *parks % PROBE_EVERY == 0;
            if !self.spin.is_zero() && worth {
                if let Some(slot) = spin::try_spin() {
                    sh.spinning.fetch_add(1, Ordering::SeqCst);
                    let found = self.spin_for_work(streak);
                    sh.spinning.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                    match found {
                        Some(Take::Job(job, class)) => {
                            *unpaid = 0;
                            return Some((job, class));
                        }
                        Some(Take::Closed) => return None,
                        _ => *unpaid = unpaid.saturating_add(1),
                    }
                }
            }
            sh.normal_park
                .park(None, || sh.has_work() || sh.is_closed());
        }
    }

    /// Spins up to the spin bound looking for work; `None` when none came.
    fn spin_for_work(&self, streak: &mut u32) -> Option<Take> {
        let sh = &*self.shared;
        let t0 = Instant::now();
        let mut i = 0u32;
        loop {
            std::hint::spin_loop();
            if sh.has_work() || sh.is_closed() {
                match sh.take(streak) {
                    Take::Empty => {}
                    t => return Some(t),
                }
            }
            i = i.wrapping_add(1);
            if i % 16 == 0 && t0.elapsed() >= self.spin {
                return None;
            }
        }
    }

    /// The overflow worker's next job: only while every normal worker is busy, and then when a
    /// core is spare or the work has waited [`OVERFLOW_PATIENCE`].
    fn next_overflow(&self, streak: &mut u32) -> Option<(Job, Class)> {
        let sh = &*self.shared;
        let mut waiting_since: Option<Instant> = None;
        loop {
            if !sh.has_work() {
                if sh.is_closed() {
                    return None;
                }
                waiting_since = None;
                sh.overflow_idle.fetch_add(1, Ordering::SeqCst);
                sh.overflow_park
                    .park(None, || sh.has_work() || sh.is_closed());
                sh.overflow_idle.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
            let needed = sh.normal_busy.load(Ordering::SeqCst) >= sh.normal;
            if waited >= OVERFLOW_PATIENCE || (needed && spin::spare_core()) {
                match sh.take(streak) {
                    Take::Job(job, class) => return Some((job, class)),
                    Take::Closed => return None,
                    Take::Empty => continue,
                }
            }
            // Look again soon: the normal workers may all be busy by then, or a core spare.
            let left = OVERFLOW_PATIENCE.saturating_sub(waited);
            sh.overflow_park
                .park(Some(left.min(OVERFLOW_RECHECK)), || false);
        }
    }

    /// The express worker's next job: short-lane work — and unpredicted work, unless an
    /// unpredicted job it ran turned out long (`cooldown`) — while long work holds every
    /// general worker (see [`Shared::held_by_long_work`]).
    fn next_express(&self, cooldown: &mut Option<Instant>) -> Option<(Job, Class)> {
        let sh = &*self.shared;
        loop {
            let now = Instant::now();
            let cooling = cooldown.and_then(|t| t.checked_duration_since(now));
            if cooling.is_none() {
                *cooldown = None;
            }
            let unknown_too = cooling.is_none();
            if !sh.express_work(unknown_too) {
                if sh.is_closed() {
                    return None;
                }
                // Pushes of short-ish work wake it; the cooldown's end too, if unpredicted
                // work is waiting.
                sh.express_idle.store(true, Ordering::SeqCst);
                sh.express_park
                    .park(cooling, || sh.express_work(unknown_too) || sh.is_closed());
                sh.express_idle.store(false, Ordering::SeqCst);
                continue;
            }
            match sh.held_by_long_work() {
                Ok(()) => match sh.take_express(unknown_too) {
                    Take::Job(job, class) => return Some((job, class)),
                    Take::Closed => return None,
                    Take::Empty => {}
                },
                Err(wait) => {
                    let wait = wait.unwrap_or(SHORT_LANE_LIMIT).min(SHORT_LANE_LIMIT);
                    sh.express_park.park(Some(wait), || false);
                }
            }
        }
    }
}
