//! The worker loops, one per role: normal workers, the overflow worker, the express worker.
//! See the module docs of the thread tier for what each role takes and when.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::shared::{Shared, Take};
use super::{OVERFLOW_PATIENCE, SHORT_LANE_LIMIT, priority, spin};
use crate::task::{Job, WorkerCtx};
use crate::tier::TierKind;

/// Spin episodes in a row that found no work, after which a worker parks at once ...
const UNPAID_SPINS: u32 = 3;
/// ... except every this many times, to notice that spinning pays again.
const PROBE_EVERY: u32 = 8;

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
}

pub(super) struct Worker {
    /// General workers: their index (normal ones first); the express worker: past the last.
    pub(super) index: usize,
    pub(super) role: Role,
    pub(super) shared: Arc<Shared>,
    pub(super) spin: Duration,
    pub(super) nice: i32,
}

impl Worker {
    pub(super) fn run(self) {
        if self.role == Role::Overflow {
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
        loop {
            let next = match self.role {
                Role::Normal => self.next_normal(&mut streak, &mut unpaid, &mut parks),
                Role::Overflow => self.next_overflow(&mut streak),
                Role::Express => self.next_express(),
            };
            let Some((job, long)) = next else { break };
            if sh.cancelling.load(Ordering::Acquire) {
                // Shutdown(Cancel): the job's destructor fails its task with "shut down".
                drop(job);
                continue;
            }
            self.run_one(job, long, ctx);
        }
        tracing::trace!(worker = self.index, role = ?self.role, "thread worker exits");
    }

    fn run_one(&self, job: Job, long: bool, ctx: WorkerCtx) {
        let sh = &*self.shared;
        let general = self.role != Role::Express;
        if self.role == Role::Normal {
            sh.normal_busy.fetch_add(1, Ordering::SeqCst);
        }
        if general {
            sh.started(self.index, long);
        }
        sh.counters.busy.fetch_add(1, Ordering::Relaxed);
        if let Some(ran) = job.run(ctx) {
            sh.counters.record(&ran);
        }
        sh.counters.busy.fetch_sub(1, Ordering::Relaxed);
        if general {
            sh.finished(self.index);
        }
        if self.role == Role::Normal {
            sh.normal_busy.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A normal worker's next job: take one, else spin while spinning has paid lately and the
    /// system has a core to spare, else park.
    fn next_normal(
        &self,
        streak: &mut u32,
        unpaid: &mut u32,
        parks: &mut u32,
    ) -> Option<(Job, bool)> {
        let sh = &*self.shared;
        loop {
            match sh.take(streak) {
                Take::Job(job, long) => return Some((job, long)),
                Take::Closed => return None,
                Take::Empty => {}
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
                        Some(Take::Job(job, long)) => {
                            *unpaid = 0;
                            return Some((job, long));
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
    fn next_overflow(&self, streak: &mut u32) -> Option<(Job, bool)> {
        let sh = &*self.shared;
        let mut waiting_since: Option<Instant> = None;
        loop {
            if !sh.has_work() {
                if sh.is_closed() {
                    return None;
                }
                waiting_since = None;
                sh.overflow_park
                    .park(None, || sh.has_work() || sh.is_closed());
                continue;
            }
            let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
            let needed = sh.normal_busy.load(Ordering::SeqCst) >= sh.normal;
            if waited >= OVERFLOW_PATIENCE || (needed && spin::spare_core()) {
                match sh.take(streak) {
                    Take::Job(job, long) => return Some((job, long)),
                    Take::Closed => return None,
                    Take::Empty => continue,
                }
            }
            let left = OVERFLOW_PATIENCE.saturating_sub(waited);
            sh.overflow_park.park(Some(left), || false);
        }
    }

    /// The express worker's next job: short-lane work while long work holds every general
    /// worker (see [`Shared::held_by_long_work`]).
    fn next_express(&self) -> Option<(Job, bool)> {
        let sh = &*self.shared;
        loop {
            if !sh.short.has_work() {
                if sh.short.rx.is_closed() {
                    return None;
                }
                sh.express_idle.store(true, Ordering::SeqCst);
                sh.express_park
                    .park(None, || sh.short.has_work() || sh.short.rx.is_closed());
                sh.express_idle.store(false, Ordering::SeqCst);
                continue;
            }
            match sh.held_by_long_work() {
                Ok(()) => match sh.take_short() {
                    Take::Job(job, _) => return Some((job, false)),
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
