//! The unit of work and its handle.
//!
//! A submitted task is split in two: the [`Job`] a tier runs, and the [`TaskHandle`] the caller
//! keeps. They share one slot where the outcome lands exactly once: the job writes the value or
//! the panic; a cancel writes "cancelled" if the job has not started; a job dropped unrun (a
//! shutdown) writes "shut down" from its destructor. So every task ends in one outcome, and no
//! waiter waits forever (DESIGN.md §3.1).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, panic_message};
use crate::tier::{RunInfo, TierKind};

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

struct Cell<T> {
    outcome: Option<Result<T, Error>>,
    info: Option<RunInfo>,
    waker: Option<Waker>,
    failed: bool,
    /// The outcome is a cancellation (by a cancel, or a remote tier's kill on cancel).
    cancelled: bool,
    blocking_waiters: usize,
}

/// Where a task's outcome lands; shared by its job and its handle.
pub(crate) struct Slot<T> {
    state: AtomicU8,
    /// Set once the handle waits (a stored waker, a blocking waiter, an `is_finished` probe):
    /// from then on a remote tier must read the task's answer without the handle's help.
    waited: AtomicBool,
    cell: Mutex<Cell<T>>,
    cond: Condvar,
}

impl<T> Slot<T> {
    fn new() -> Self {
        Slot {
            state: AtomicU8::new(QUEUED),
            waited: AtomicBool::new(false),
            cell: Mutex::new(Cell {
                outcome: None,
                info: None,
                waker: None,
                failed: false,
                cancelled: false,
                blocking_waiters: 0,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cell<T>> {
        // A poisoned lock only means a waker panicked while we held it; the cell stays valid.
        self.cell.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Claims the task for running; false when it was cancelled first.
    fn start(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Stores the outcome unless one is already there; wakes the waiters.
    fn complete(&self, outcome: Result<T, Error>, info: Option<RunInfo>) -> bool {
        let (waker, notify) = {
            let mut cell = self.lock();
            if self.state.load(Ordering::Acquire) == DONE {
                return false;
            }
            cell.failed = outcome.is_err();
            cell.cancelled = matches!(&outcome, Err(e) if e.is_cancelled());
            cell.outcome = Some(outcome);
            cell.info = info;
            self.state.store(DONE, Ordering::Release);
            (cell.waker.take(), cell.blocking_waiters > 0)
        };
        if notify {
            self.cond.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Marks a queued task cancelled; false when it already started or finished.
    fn cancel(&self) -> bool {
        let (waker, notify) = {
            let mut cell = self.lock();
            if self
                .state
                .compare_exchange(QUEUED, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return false;
            }
            cell.failed = true;
            cell.cancelled = true;
            cell.outcome = Some(Err(Error::cancelled()));
            (cell.waker.take(), cell.blocking_waiters > 0)
        };
        if notify {
            self.cond.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

/// Fills a task's slot with "shut down" if its job is dropped before it ran.
pub(crate) struct Completer<T> {
    slot: Arc<Slot<T>>,
    name: Option<Arc<str>>,
    tier: TierKind,
    submitted: Instant,
    armed: bool,
}

impl<T> Completer<T> {
    /// Claims the task for running; false when it was cancelled first (the slot then holds
    /// its outcome, and this completer should be [`disarm`](Self::disarm)ed).
    pub(crate) fn start(&self) -> bool {
        self.slot.start()
    }

    /// When the task was submitted.
    pub(crate) fn submitted(&self) -> Instant {
        self.submitted
    }

    /// Whether the handle waits for the outcome (see [`RemoteLink`]): a remote tier must then
    /// read the task's answer itself rather than leave it to the handle.
    pub(crate) fn is_waited(&self) -> bool {
        self.slot.waited.load(Ordering::SeqCst)
    }

    /// Drops the completer without touching the slot (its outcome is already there).
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    pub(crate) fn finish(mut self, outcome: Result<T, Error>, info: RunInfo) {
        self.armed = false;
        let outcome = outcome.map_err(|e| e.fill(self.name.as_ref(), self.tier, info.worker));
        self.slot.complete(outcome, Some(info));
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if self.armed {
            let e = Error::shut_down().fill(self.name.as_ref(), self.tier, None);
            self.slot.complete(Err(e), None);
        }
    }
}

/// Context a tier gives a job when it runs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerCtx {
    /// The tier running the job.
    pub tier: TierKind,
    /// The worker index, if the tier has workers.
    pub worker: Option<usize>,
}

/// What running a [`Job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ran {
    /// The task's own run time.
    pub run_time: Duration,
    /// Whether it panicked.
    pub panicked: bool,
    /// From submission to the start of the run (queueing and hand-off).
    pub queued: Duration,
}

trait RunJob: Send {
    fn run(self: Box<Self>, ctx: WorkerCtx) -> Option<Ran>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

struct ClosureJob<F, T> {
    f: F,
    completer: Completer<T>,
}

impl<F, T> RunJob for ClosureJob<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, ctx: WorkerCtx) -> Option<Ran> {
        let ClosureJob { f, completer } = *self;
        if !completer.slot.start() {
            // Cancelled while queued: the slot already holds its outcome.
            let mut c = completer;
            c.armed = false;
            return None;
        }
        let queued = completer.submitted.elapsed();
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(f));
        let run_time = t0.elapsed();
        let panicked = result.is_err();
        let outcome = result.map_err(|p| Error::panicked(panic_message(&*p), None));
        let info = RunInfo {
            tier: ctx.tier,
            worker: ctx.worker,
            run_time,
            queued,
            pid: None,
        };
        completer.finish(outcome, info);
        Some(Ran {
            run_time,
            panicked,
            queued,
        })
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A unit of work a [`Tier`](crate::tier::Tier) runs: the user's closure together with the slot
/// its outcome goes to. Dropping a job unrun fails its task with "shut down".
pub(crate) struct Job {
    inner: Box<dyn RunJob>,
    /// What the submitter said about the task's run time.
    expect: Expect,
}

/// What the submitter of a job said about its run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Expect {
    /// Nothing: a plain submission.
    #[default]
    Unsaid,
    /// Asked, and not known yet (placement's unknown keys and explorations).
    Unknown,
    /// Predicted to run about this long.
    About(Duration),
}

impl Expect {
    /// From a prediction that may be missing (`None`: asked, not known).
    pub(crate) fn from_prediction(p: Option<Duration>) -> Self {
        p.map_or(Expect::Unknown, Expect::About)
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Job")
    }
}

impl Job {
    /// Runs the job here and reports its outcome to its handle. Returns what happened, or
    /// `None` when it had been cancelled and did not run. Panics of the task are caught.
    pub(crate) fn run(self, ctx: WorkerCtx) -> Option<Ran> {
        self.inner.run(ctx)
    }

    /// What the submitter said about the run time.
    pub(crate) fn expect(&self) -> Expect {
        self.expect
    }

    /// Sets what the submitter said about the run time.
    pub(crate) fn set_expect(&mut self, expect: Expect) {
        self.expect = expect;
    }
}

/// Builds the job and the handle of a closure task.
pub(crate) fn closure_task<F, T>(
    f: F,
    name: Option<Arc<str>>,
    tier: TierKind,
    spin: Duration,
) -> (Job, TaskHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let slot = Arc::new(Slot::new());
    let completer = Completer {
        slot: slot.clone(),
        name: name.clone(),
        tier,
        submitted: Instant::now(),
        armed: true,
    };
    let job = Job {
        inner: Box::new(ClosureJob { f, completer }),
        expect: Expect::Unsaid,
    };
    let handle = TaskHandle {
        slot,
        lazy: Mutex::new(None),
        name,
        tier,
        spin,
        polled: false,
        detached: false,
        link: None,
    };
    (job, handle)
}

/// What the handle of a remote task can ask of the pool that runs it.
///
/// The process tier lets the caller read its own answer (no hand-off between threads on the
/// way back), so a handle tells its pool when it will wait, and the pool then makes sure some
/// thread reads the answer.
pub(crate) trait RemoteLink: Send + Sync {
    /// Stops the running task from outside (kills the worker process that runs it); returns
    /// whether it did.
    fn kill(&self) -> bool;

    /// On the first poll: may block a bounded time reading the task's answer on this thread;
    /// returns once `done()` or when the pool's budget is spent (at once if it has none).
    fn wait_briefly(&self, done: &dyn Fn() -> bool) {
        let _ = done;
    }

    /// The handle is about to wait (parks, blocks, or probes `is_finished`): make sure the
    /// task's answer is read without it.
    fn ensure_reader(&self) {}
}

/// Builds the handle of a task that something other than a [`Job`] completes (a remote tier's
/// reader), with the completer that fills it and an optional link to the pool that runs it
/// (to stop it while it runs, and to read its answer on the waiting thread).
pub(crate) fn remote_task<T>(
    name: Option<Arc<str>>,
    tier: TierKind,
    spin: Duration,
    link: Option<Arc<dyn RemoteLink>>,
) -> (Completer<T>, TaskHandle<T>) {
    let slot = Arc::new(Slot::new());
    let completer = Completer {
        slot: slot.clone(),
        name: name.clone(),
        tier,
        submitted: Instant::now(),
        armed: true,
    };
    let handle = TaskHandle {
        slot,
        lazy: Mutex::new(None),
        name,
        tier,
        spin,
        polled: false,
        detached: false,
        link,
    };
    (completer, handle)
}

/// Gets the closure back out of a job a tier refused (so `try_submit` can hand it back).
pub(crate) fn recover_closure<F, T>(job: Job) -> F
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match job.inner.into_any().downcast::<ClosureJob<F, T>>() {
        Ok(boxed) => {
            let ClosureJob { f, mut completer } = *boxed;
            completer.armed = false;
            f
        }
        Err(_) => unreachable!("a refused job is the one we just built, of this exact type"),
    }
}

/// The caller's side of a submitted task.
///
/// It is a [`Future`] of the task's outcome; it can also be waited for from plain sync code
/// ([`blocking_wait`](TaskHandle::blocking_wait)), cancelled, and asked whether it finished.
///
/// # Cancel safety
///
/// Dropping a handle whose task is still queued withdraws the task (it never runs, as with
/// [`cancel`](TaskHandle::cancel)); call [`detach`](TaskHandle::detach) to let it run anyway.
/// A task that already runs on a thread finishes: threads cannot be stopped from outside. A
/// task that already runs in a worker process finishes too when its handle is dropped; call
/// [`cancel`](TaskHandle::cancel) to kill it.
///
/// Because dropping withdraws, a handle must be used: `pool.submit(f).await?;` alone runs
/// nothing, and the compiler says so (`#[must_use]`; this example fails to build under
/// `deny(unused_must_use)`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// async fn fire_and_forget(pool: &offload::Executor) -> Result<(), offload::Error> {
///     pool.submit(|| 1 + 1).await?; // dropped at once: the task is withdrawn
///     Ok(())
/// }
/// ```
///
/// Await it, wait for it, or let it go on purpose:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let pool = offload::Executor::threads(1)?;
/// let h = pool.submit(|| 2 + 2).await?;
/// assert!(!h.is_cancelled());
/// assert_eq!(h.await?, 4);                          // await the outcome
/// pool.submit(|| println!("runs")).await?.detach(); // runs with nobody waiting
/// let mut h = pool.submit(|| 3).await?;
/// assert_eq!(h.blocking_wait_timeout(std::time::Duration::from_secs(5)).unwrap()?, 3);
/// pool.shutdown(offload::ShutdownMode::Drain).await;
/// # Ok::<(), offload::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "dropping a TaskHandle withdraws its task if it has not started yet: `.await` it, \
              or call `.detach()` to let it run with nobody waiting"]
pub struct TaskHandle<T> {
    slot: Arc<Slot<T>>,
    /// The inline tier's job, run by the first wait. In a `Mutex` only so that the handle is
    /// `Sync` (a job is `Send` only); it is reached through `get_mut`, never locked.
    lazy: Mutex<Option<Job>>,
    name: Option<Arc<str>>,
    tier: TierKind,
    spin: Duration,
    polled: bool,
    detached: bool,
    link: Option<Arc<dyn RemoteLink>>,
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> TaskHandle<T> {
    /// Stops the handle's first poll from spinning for the result (a stream that keeps several
    /// tasks in flight polls each new one long before it needs its result).
    pub(crate) fn no_spin(&mut self) {
        self.spin = Duration::ZERO;
    }

    pub(crate) fn set_lazy(&mut self, job: Job) {
        *self.lazy.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(job);
    }

    fn run_lazy(&mut self) {
        let lazy = self.lazy.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = lazy.take() {
            job.run(WorkerCtx {
                tier: self.tier,
                worker: None,
            });
        }
    }

    /// The tier the task was submitted to.
    pub fn tier(&self) -> TierKind {
        self.tier
    }

    /// The task's name, when it was given one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the task has an outcome (value or error) waiting to be taken.
    pub fn is_finished(&self) -> bool {
        if self.slot.is_done() {
            return true;
        }
        // Whoever probes will probe again: a remote tier must not leave the answer unread.
        self.mark_waited();
        self.slot.is_done()
    }

    /// Records that this handle waits, and tells a remote tier (once) to read the answer.
    fn mark_waited(&self) {
        if !self.slot.waited.swap(true, Ordering::SeqCst) {
            if let Some(link) = &self.link {
                link.ensure_reader();
            }
        }
    }

    /// Whether a running task of this handle can be stopped. False on the inline and thread
    /// tiers: a thread cannot be killed from outside; only queued tasks can be withdrawn.
    pub fn is_killable(&self) -> bool {
        self.tier.is_killable()
    }

    /// Withdraws the task if it has not started. Returns true when it was withdrawn; its outcome
    /// is then a "cancelled" error. Returns false when it already runs or finished with another
    /// outcome. Cancelling a cancelled task returns true again (as Python's `Future.cancel`).
    ///
    /// On a killable tier ([`is_killable`](Self::is_killable): worker processes) a running task
    /// is stopped too: its worker is killed (and replaced), the outcome is "cancelled", and
    /// this returns true.
    pub fn cancel(&self) -> bool {
        if self.slot.cancel() || self.is_cancelled() {
            return true;
        }
        match &self.link {
            Some(link) if !self.slot.is_done() => link.kill(),
            _ => false,
        }
    }

    /// Whether the task ended cancelled (Python's `Future.cancelled()`). Does not take the
    /// outcome.
    pub fn is_cancelled(&self) -> bool {
        self.slot.is_done() && self.slot.lock().cancelled
    }

    /// Whether the task is running now: started on a worker and not finished (Python's
    /// `Future.running()`). A queued task, and an inline task before it is first waited for,
    /// are not running.
    pub fn is_running(&self) -> bool {
        self.slot.state.load(Ordering::Acquire) == RUNNING
    }

    /// Lets the task run even if this handle is dropped before it starts.
    pub fn detach(mut self) {
        self.detached = true;
        self.run_lazy();
    }

    /// What the tier reported about the run (run time, queueing, worker), once it finished.
    pub fn run_info(&self) -> Option<RunInfo> {
        if !self.slot.is_done() {
            return None;
        }
        self.slot.lock().info
    }

    /// Whether the finished task ended in an error (false while it is unfinished).
    pub fn is_err(&self) -> bool {
        self.slot.is_done() && self.slot.lock().failed
    }

    /// Whether the task finished with an error other than a cancellation: what
    /// `FIRST_EXCEPTION` waits for (a cancelled task is not a failure there, as in Python).
    pub(crate) fn is_failure(&self) -> bool {
        if !self.slot.is_done() {
            return false;
        }
        let cell = self.slot.lock();
        cell.failed && !cell.cancelled
    }

    /// Polls for completion without taking the outcome (runs a lazy inline task).
    pub(crate) fn poll_finished(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.run_lazy();
        if self.slot.is_done() {
            return Poll::Ready(());
        }
        let mut cell = self.slot.lock();
        if self.slot.is_done() {
            return Poll::Ready(());
        }
        match &cell.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => cell.waker = Some(cx.waker().clone()),
        }
        drop(cell);
        self.mark_waited();
        Poll::Pending
    }

    fn take(&mut self) -> Result<T, Error> {
        self.slot.lock().outcome.take().unwrap_or_else(|| {
            Err(Error::new(
                crate::ErrorKind::Usage,
                "the outcome was already taken",
            ))
        })
    }

    /// Waits for the outcome from sync code, blocking this thread.
    ///
    /// Do not call it on an async runtime's thread: use `.await` there.
    pub fn blocking_wait(mut self) -> Result<T, Error> {
        self.run_lazy();
        self.mark_waited();
        let mut cell = self.slot.lock();
        cell.blocking_waiters += 1;
        while !self.slot.is_done() {
            cell = self.slot.cond.wait(cell).unwrap_or_else(|p| p.into_inner());
        }
        cell.blocking_waiters -= 1;
        drop(cell);
        self.take()
    }

    /// Waits up to `timeout` from sync code; `None` when the task has not finished by then (the
    /// handle stays valid and the task goes on).
    pub fn blocking_wait_timeout(&mut self, timeout: Duration) -> Option<Result<T, Error>> {
        self.run_lazy();
        self.mark_waited();
        let deadline = Instant::now() + timeout;
        let mut cell = self.slot.lock();
        cell.blocking_waiters += 1;
        while !self.slot.is_done() {
            let now = Instant::now();
            if now >= deadline {
                cell.blocking_waiters -= 1;
                return None;
            }
            cell = self
                .slot
                .cond
                .wait_timeout(cell, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        cell.blocking_waiters -= 1;
        drop(cell);
        Some(self.take())
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.polled {
            this.polled = true;
            this.run_lazy();
            // A remote tier may read the answer on this thread for a bounded time: cheaper than
            // having another thread read it and wake this one.
            if let Some(link) = &this.link {
                if !this.slot.is_done() {
                    let slot = &this.slot;
                    link.wait_briefly(&|| slot.is_done());
                }
            }
            // A tier whose tasks finish faster than a thread wake-up says so through `spin`:
            // waiting a few microseconds here beats parking the runtime and being woken.
            // Only while this process spins on fewer cores than the system has idle (see
            // `tier/threads/spin.rs`): never on a core another thread needs.
            let slot = if !this.spin.is_zero() && !this.slot.is_done() {
                crate::tier::threads::spin::try_spin()
            } else {
                None
            };
            if let Some(_slot) = slot {
                let t0 = Instant::now();
                let mut i = 0u32;
                while !this.slot.is_done() {
                    std::hint::spin_loop();
                    i = i.wrapping_add(1);
                    if i % 32 == 0 && t0.elapsed() >= this.spin {
                        break;
                    }
                }
            }
        }
        match this.poll_finished(cx) {
            Poll::Ready(()) => Poll::Ready(this.take()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        if !self.detached {
            self.slot.cancel();
        }
    }
}
