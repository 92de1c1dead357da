//! The state a pool's workers and submitters share: the two lanes, who is parked or spinning,
//! who runs what since when, and the wake-up rules after a push.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TryRecvError};

use super::{RESULT_SPIN, SHORT_LANE_LIMIT};
use crate::task::{Expect, Job, Ran};

/// One queue of jobs (a bounded MPMC channel; its own wake-ups are unused: workers park on a
/// [`Parking`]).
pub(super) struct Lane {
    pub(super) tx: Sender<Job>,
    pub(super) rx: Receiver<Job>,
}

impl Lane {
    pub(super) fn new(cap: usize) -> Self {
        let (tx, rx) = async_channel::bounded(cap);
        Lane { tx, rx }
    }

    pub(super) fn has_work(&self) -> bool {
        !self.rx.is_empty()
    }
}

/// Which lane a job goes to, by what its submitter said of its run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Predicted under [`SHORT_LANE_LIMIT`].
    Short,
    /// Asked and not known yet (placement's explorations and unknown keys): short-ish.
    Unknown,
    /// Nothing said (a plain submission).
    Plain,
    /// Predicted at [`SHORT_LANE_LIMIT`] or more.
    Long,
}

impl Class {
    /// Every class, in the order general workers serve them.
    pub(super) const ALL: [Class; 4] = [Class::Short, Class::Unknown, Class::Plain, Class::Long];

    /// The class of a job its submitter described as `expect`.
    pub(super) fn of(expect: Expect) -> Class {
        match expect {
            Expect::Unsaid => Class::Plain,
            Expect::Unknown => Class::Unknown,
            Expect::About(d) if d < SHORT_LANE_LIMIT => Class::Short,
            Expect::About(_) => Class::Long,
        }
    }

    /// Whether the express worker may serve it.
    pub(super) fn is_express(self) -> bool {
        matches!(self, Class::Short | Class::Unknown)
    }
}

/// What a take from the lanes found.
pub(super) enum Take {
    /// A job, and the lane it came from.
    Job(Job, Class),
    /// Nothing queued now.
    Empty,
    /// Both lanes closed and empty: the worker exits.
    Closed,
}

/// Where idle threads of one role sleep. A submitter wakes one after a push only when one is
/// parked (an atomic load otherwise). The parked count is raised under the lock before the
/// sleeper checks for work, and the submitter reads it after its push (both with SeqCst
/// fences), so a push is either seen by the check or followed by a wake-up.
#[derive(Default)]
pub(super) struct Parking {
    parked: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Parking {
    /// Sleeps until woken or `timeout`, unless `ready()` holds once this thread counts as
    /// parked.
    pub(super) fn park(&self, timeout: Option<Duration>, ready: impl Fn() -> bool) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.parked.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !ready() {
            let _guard = match timeout {
                Some(t) => {
                    self.cond
                        .wait_timeout(guard, t)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.cond.wait(guard).unwrap_or_else(|p| p.into_inner()),
            };
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes one parked thread; false when none is parked.
    pub(super) fn wake_one(&self) -> bool {
        if self.parked.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.cond.notify_one();
        true
    }

    /// Wakes every parked thread (shutdown).
    pub(super) fn wake_all(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.cond.notify_all();
    }
}

/// What one general worker runs: since when (ns since the pool's epoch, plus one; 0 when idle),
/// and whether that job was predicted long.
#[derive(Default)]
pub(super) struct Running {
    since: AtomicU64,
    long: AtomicBool,
}

/// Counters of the pool.
#[derive(Debug)]
pub(super) struct Counters {
    pub(super) completed: AtomicU64,
    pub(super) panicked: AtomicU64,
    pub(super) ewma_run_ns: AtomicU64,
    /// Share of recent jobs that finished within [`RESULT_SPIN`] of their submission, × 1024:
    /// whether a waiter's spin would have paid.
    pub(super) quick_share: AtomicU64,
    pub(super) busy: AtomicUsize,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            completed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            ewma_run_ns: AtomicU64::new(0),
            // Optimistic at start: the first waiters spin, and the share learns from them.
            quick_share: AtomicU64::new(1024),
            busy: AtomicUsize::new(0),
        }
    }
}

impl Counters {
    /// Takes in what running one job did. The averages are racy between workers, which only
    /// blurs an estimate.
    pub(super) fn record(&self, ran: &Ran) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if ran.panicked {
            self.panicked.fetch_add(1, Ordering::Relaxed);
        }
        let x = u64::try_from(ran.run_time.as_nanos()).unwrap_or(u64::MAX);
        let old = self.ewma_run_ns.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { old - old / 8 + x / 8 };
        self.ewma_run_ns.store(new, Ordering::Relaxed);
        let quick = if ran.queued + ran.run_time <= RESULT_SPIN {
            1024
        } else {
            0
        };
        let old = self.quick_share.load(Ordering::Relaxed);
        self.quick_share
            .store(old - old / 16 + quick / 16, Ordering::Relaxed);
    }
}

/// Everything the workers and the submitters of one pool share.
pub(super) struct Shared {
    pub(super) epoch: Instant,
    pub(super) short: Lane,
    pub(super) unknown: Lane,
    pub(super) plain: Lane,
    pub(super) long: Lane,
    /// Normal-priority workers.
    pub(super) normal: usize,
    pub(super) normal_park: Parking,
    pub(super) overflow_park: Parking,
    pub(super) express_park: Parking,
    /// Normal workers spinning for work now.
    pub(super) spinning: AtomicUsize,
    /// Normal workers running a job now.
    pub(super) normal_busy: AtomicUsize,
    /// Per general worker (normal, then overflow): what it runs.
    pub(super) running: Vec<Running>,
    /// Whether the express worker sleeps without a timeout (a push must wake it).
    pub(super) express_idle: AtomicBool,
    /// Overflow workers asleep without a timeout (a push must wake one); one that declined
    /// queued work sleeps with a timeout and looks again on its own.
    pub(super) overflow_idle: AtomicUsize,
    pub(super) cancelling: AtomicBool,
    pub(super) counters: Counters,
    /// Surge workers alive now, and the most there may be (see [`SURGE_PER_CORE`]).
    ///
    /// [`SURGE_PER_CORE`]: super::SURGE_PER_CORE
    pub(super) surge_live: AtomicUsize,
    pub(super) surge_max: usize,
    /// Surge workers started so far (their names and indexes).
    pub(super) surge_seq: AtomicUsize,
    /// When the last surge worker started (ns since the epoch, plus one; 0: never).
    pub(super) surge_at: AtomicU64,
    /// Every worker thread, surge workers included: joined at shutdown. A surge worker is
    /// started only under this lock and only while the pool is open, so a shutdown that takes
    /// the list after closing the pool joins every thread there will ever be.
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Jobs a general worker takes from the short lane in a row while long work waits, before it
/// takes one long job: short work first, long work never starved.
const SHORT_STREAK: u32 = 16;

impl Shared {
    pub(super) fn new(cap: usize, normal: usize, general: usize, surge_max: usize) -> Self {
        Shared {
            epoch: Instant::now(),
            short: Lane::new(cap),
            unknown: Lane::new(cap),
            plain: Lane::new(cap),
            long: Lane::new(cap),
            normal,
            normal_park: Parking::default(),
            overflow_park: Parking::default(),
            express_park: Parking::default(),
            spinning: AtomicUsize::new(0),
            normal_busy: AtomicUsize::new(0),
            running: (0..general).map(|_| Running::default()).collect(),
            express_idle: AtomicBool::new(false),
            overflow_idle: AtomicUsize::new(0),
            cancelling: AtomicBool::new(false),
            counters: Counters::default(),
            surge_live: AtomicUsize::new(0),
            surge_max,
            surge_seq: AtomicUsize::new(0),
            surge_at: AtomicU64::new(0),
            threads: Mutex::new(Vec::with_capacity(general + 1)),
        }
    }

    pub(super) fn lock_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a surge worker may start now: work is queued, every normal worker is busy,
    /// there is room under the cap, the last one started at least [`OVERFLOW_PATIENCE`] ago,
    /// and the calling worker is `starved` (asked last, see `Starve` in worker.rs). On success the slot is taken (count
    /// and time); the caller starts the thread or gives the slot back.
    ///
    /// [`OVERFLOW_PATIENCE`]: super::OVERFLOW_PATIENCE
    pub(super) fn claim_surge(&self, starved: impl FnOnce() -> bool) -> bool {
        if self.surge_max == 0
            || !self.has_work()
            || self.normal_busy.load(Ordering::SeqCst) < self.normal
            || self.surge_live.load(Ordering::SeqCst) >= self.surge_max
        {
            return false;
        }
        let now = self.now_ns();
        let at = self.surge_at.load(Ordering::Relaxed);
        let patience = u64::try_from(super::OVERFLOW_PATIENCE.as_nanos()).unwrap_or(u64::MAX);
        if at != 0 && now.saturating_sub(at - 1) < patience {
            return false;
        }
        if !starved() {
            return false;
        }
        if self
            .surge_at
            .compare_exchange(at, now + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if self.surge_live.fetch_add(1, Ordering::SeqCst) >= self.surge_max {
            self.surge_live.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(super) fn lane(&self, class: Class) -> &Lane {
        match class {
            Class::Short => &self.short,
            Class::Unknown => &self.unknown,
            Class::Plain => &self.plain,
            Class::Long => &self.long,
        }
    }

    pub(super) fn has_work(&self) -> bool {
        Class::ALL.iter().any(|&c| self.lane(c).has_work())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.short.rx.is_closed()
    }

    pub(super) fn queued(&self) -> usize {
        Class::ALL.iter().map(|&c| self.lane(c).rx.len()).sum()
    }

    /// Closes every lane (queued work stays to be taken).
    pub(super) fn close(&self) {
        for c in Class::ALL {
            self.lane(c).tx.close();
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A general worker's take: short lane, then unknown, plain, long; after [`SHORT_STREAK`]
    /// jobs in a row from the others, one long job if one waits.
    pub(super) fn take(&self, streak: &mut u32) -> Take {
        if *streak >= SHORT_STREAK {
            *streak = 0;
            if let Ok(job) = self.long.rx.try_recv() {
                return Take::Job(job, Class::Long);
            }
        }
        let mut closed = true;
        for class in Class::ALL {
            match self.lane(class).rx.try_recv() {
                Ok(job) => {
                    *streak = if class == Class::Long { 0 } else { *streak + 1 };
                    return Take::Job(job, class);
                }
                Err(TryRecvError::Empty) => closed = false,
                Err(TryRecvError::Closed) => {}
            }
        }
        if closed { Take::Closed } else { Take::Empty }
    }

    /// The express worker's take: the short lane, then (`unknown_too`) the unknown one.
    pub(super) fn take_express(&self, unknown_too: bool) -> Take {
        let classes: &[Class] = if unknown_too {
            &[Class::Short, Class::Unknown]
        } else {
            &[Class::Short]
        };
        let mut closed = true;
        for &class in classes {
            match self.lane(class).rx.try_recv() {
                Ok(job) => return Take::Job(job, class),
                Err(TryRecvError::Empty) => closed = false,
                Err(TryRecvError::Closed) => {}
            }
        }
        if closed { Take::Closed } else { Take::Empty }
    }

    /// Whether the express worker has work it may take.
    pub(super) fn express_work(&self, unknown_too: bool) -> bool {
        self.short.has_work() || (unknown_too && self.unknown.has_work())
    }

    /// Marks general worker `i` as running a job (predicted long or not) from now.
    pub(super) fn started(&self, i: usize, long: bool) {
        let r = &self.running[i];
        r.long.store(long, Ordering::Relaxed);
        r.since.store(self.now_ns() + 1, Ordering::Release);
    }

    /// Marks general worker `i` idle.
    pub(super) fn finished(&self, i: usize) {
        self.running[i].since.store(0, Ordering::Release);
    }

    /// Whether long work holds every general worker: each runs a job predicted long, or one
    /// that has already run [`SHORT_LANE_LIMIT`]. `Err(Some(d))`: not yet, ask again in `d`;
    /// `Err(None)`: a general worker is idle.
    pub(super) fn held_by_long_work(&self) -> Result<(), Option<Duration>> {
        let now = self.now_ns();
        let limit = u64::try_from(SHORT_LANE_LIMIT.as_nanos()).unwrap_or(u64::MAX);
        let mut wait = 0u64;
        for r in &self.running {
            let since = r.since.load(Ordering::Acquire);
            if since == 0 {
                return Err(None);
            }
            if r.long.load(Ordering::Relaxed) {
                continue;
            }
            let age = now.saturating_sub(since - 1);
            if age < limit {
                wait = wait.max(limit - age);
            }
        }
        if wait == 0 {
            Ok(())
        } else {
            Err(Some(Duration::from_nanos(wait)))
        }
    }

    /// After a push to the lane of `class`: wake a worker unless a spinning one will take the
    /// job. Normal workers first; then the overflow worker (it decides whether to take the
    /// job); for short-ish work the express worker too, when it sleeps without a timeout (it
    /// checks whether long work holds every worker).
    pub(super) fn after_push(&self, class: Class) {
        fence(Ordering::SeqCst);
        if self.spinning.load(Ordering::SeqCst) >= self.queued() {
            return;
        }
        if self.normal_park.wake_one() {
            return;
        }
        if self.overflow_idle.load(Ordering::SeqCst) > 0 {
            self.overflow_park.wake_one();
        }
        if class.is_express() && self.express_idle.load(Ordering::SeqCst) {
            self.express_park.wake_one();
        }
    }

    /// After a worker took a job and more is queued: wake another worker the same way, so
    /// that a wake-up that went to a worker already waking (or taken by a spinner) is passed
    /// on rather than lost.
    pub(super) fn pass_on(&self) {
        fence(Ordering::SeqCst);
        if !self.has_work() || self.spinning.load(Ordering::SeqCst) >= self.queued() {
            return;
        }
        if self.normal_park.wake_one() {
            return;
        }
        if self.overflow_idle.load(Ordering::SeqCst) > 0 {
            self.overflow_park.wake_one();
        }
    }

    /// Wakes every sleeping worker (the lanes closed).
    pub(super) fn wake_all(&self) {
        self.normal_park.wake_all();
        self.overflow_park.wake_all();
        self.express_park.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_follow_the_prediction() {
        assert_eq!(Class::of(Expect::Unsaid), Class::Plain);
        assert_eq!(Class::of(Expect::Unknown), Class::Unknown);
        let about = |d| Class::of(Expect::About(d));
        assert_eq!(about(Duration::from_micros(30)), Class::Short);
        assert_eq!(about(SHORT_LANE_LIMIT), Class::Long);
        assert_eq!(about(Duration::from_secs(1)), Class::Long);
        assert!(Class::Short.is_express() && Class::Unknown.is_express());
        assert!(!Class::Plain.is_express() && !Class::Long.is_express());
    }

    #[test]
    fn long_work_holds_the_workers_only_when_every_one_runs_long() {
        let sh = Shared::new(4, 1, 2, 0);
        assert_eq!(sh.held_by_long_work(), Err(None), "idle workers");
        sh.started(0, true);
        assert_eq!(sh.held_by_long_work(), Err(None), "one idle");
        sh.started(1, false);
        // Worker 1 runs unpredicted-short work that just started: ask again within the limit.
        match sh.held_by_long_work() {
            Err(Some(d)) => assert!(d <= SHORT_LANE_LIMIT),
            other => panic!("{other:?}"),
        }
        sh.started(1, true);
        assert_eq!(sh.held_by_long_work(), Ok(()));
        sh.finished(0);
        assert_eq!(sh.held_by_long_work(), Err(None));
    }
}
