//! The pool's shared state: the queue, the worker slots ([`SlotState`], whose phase changes
//! only through the transitions in `worker.rs`), dispatch, and cancel.
//!
//! One mutex guards the state. Dispatch ([`Shared::pump`]) runs under it, from a submitter
//! (when a worker has room) or from whoever reads a worker's answers (when a result frees
//! room), and writes the frames straight to the worker's request pipe: no dispatcher thread,
//! so no extra wake-up between a submit and the worker. A frame too large for the request
//! pipe's buffer is the exception: its write may wait for the worker to read, so it is claimed
//! under the lock and written by the worker's slot thread with the lock released
//! ([`BigWrite`]).
//!
//! A worker's answers are read by its slot thread or by a caller waiting for its own task
//! ([`ReaderRole`](super::worker::ReaderRole)); the rules that make sure an awaited answer is always read are on
//! [`Shared::pump`] and [`Shared::want_readers`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};

use super::Config;
use super::worker::{
    BigWrite, Cancelled, FnKey, InFlight, MAX_FAILED_WRITES, Phase, Req, SlotState, Take, not_run,
};
use crate::error::{Error, ErrorKind};
use crate::task::RemoteLink;

/// The mutable state under the pool's lock.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) slots: Vec<SlotState>,
    /// Tasks to run before the queue's: those whose worker died before starting them.
    pub(crate) retry: VecDeque<Req>,
    /// Set by the crash-loop guard: the pool cannot start workers.
    pub(crate) broken: Option<Error>,
    /// Consecutive start-up failures, over all slots (kills from outside not counted).
    pub(crate) start_failures: u32,
    /// Consecutive starting workers killed from outside (they only slow the next start).
    pub(crate) start_kills: u32,
    /// No new tasks (shutdown called).
    pub(crate) closing: bool,
    /// Workers exit once idle and are not replaced.
    pub(crate) stopping: bool,
    /// Stopping by killing the workers: a worker still in its handshake is killed too.
    pub(crate) killing: bool,
    /// Each function's learned run time (an average, in nanoseconds): dispatch writes a task
    /// behind running ones only when they are known to be short
    /// ([`DEFAULT_PIPELINE_SHORT`](super::DEFAULT_PIPELINE_SHORT)).
    pub(crate) run_times: HashMap<FnKey, u64>,
}

/// Counters for stats.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) respawned: AtomicU64,
    pub(crate) ewma_run_ns: AtomicU64,
}

/// What every thread of the pool shares.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) state: Mutex<State>,
    /// Signalled when the pool becomes idle or a slot changes (shutdown waits on it).
    pub(crate) changed: Condvar,
    /// Signalled when a task with a deadline starts (the watchdog waits on it).
    pub(crate) deadlines: Condvar,
    pub(crate) tx: Sender<Req>,
    pub(crate) rx: Receiver<Req>,
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Counters,
    /// `SIGPIPE` would kill this process: writes to workers block it meanwhile.
    pub(crate) guard_sigpipe: bool,
}

/// A task's handle's link to its pool: kills the task, reads its answer, asks for a reader.
pub(crate) struct Link {
    pub(crate) pool: Weak<Shared>,
    pub(crate) id: u64,
    /// Whether the first poll may read the answer itself: single calls only. A `map` keeps
    /// several chunks in flight and awaits them in order from one task; a chunk's handle
    /// blocking that thread on one worker would stall the stream and leave the other
    /// workers' answers unread (measured: `map` of 20k trivial items 20% slower).
    pub(crate) read_own: bool,
}

impl RemoteLink for Link {
    fn kill(&self) -> bool {
        self.pool.upgrade().is_some_and(|p| {
            super::reader::read_waiting_answers(&p, self.id);
            p.cancel_running(self.id)
        })
    }

    fn wait_briefly(&self, done: &dyn Fn() -> bool) {
        if !self.read_own {
            return;
        }
        if let Some(p) = self.pool.upgrade() {
            super::reader::read_own_answer(&p, self.id, done);
        }
    }

    fn ensure_reader(&self) {
        if let Some(p) = self.pool.upgrade() {
            let mut st = p.lock();
            if let Some(sl) = st
                .slots
                .iter_mut()
                .find(|s| s.inflight.iter().any(|t| t.id == self.id))
            {
                sl.want_reader();
            }
            // A queued task: the rule at the end of `pump` keeps every busy worker read.
        }
    }
}

/// Frames up to this size may queue behind a running task in a worker's request pipe, whose
/// buffer is sized for `pipeline_depth` of them (so writing one never blocks on a busy
/// worker); larger ones go only to an idle worker. 64 KiB: a default pipe buffer, ample for
/// the arguments of one call or a `map` chunk of small items. When the kernel refuses the
/// larger buffer, a slot's limit is its pipe's size divided by the depth.
pub(crate) const PIPELINE_FRAME_LIMIT: usize = 64 * 1024;

impl Shared {
    /// Tells a worker to exit (best effort: a dead worker needs no telling).
    pub(crate) fn send_exit(&self, conn: &File) {
        let mut out = bytes::BytesMut::new();
        let exit = crate::remote::wire::Request::Exit;
        if crate::remote::wire::encode_frame(&exit, &[], self.cfg.max_frame, &mut out).is_ok() {
            let _ = super::sys::write_all(conn, &out, self.guard_sigpipe);
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves the state consistent at every await point we
        // have (we never panic between two related updates), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the first poll of a handle may read its own answer: the configured budget
    /// while recent tasks run shorter than it, else zero (the caller parks at once).
    pub(crate) fn result_wait(&self) -> Duration {
        let budget = self.cfg.result_wait;
        let ewma = Duration::from_nanos(self.counters.ewma_run_ns.load(Ordering::Relaxed));
        if ewma < budget {
            budget
        } else {
            Duration::ZERO
        }
    }

    /// Makes the slot thread the reader of every worker that has unanswered tasks and no
    /// reader. Call with the lock held.
    ///
    /// An answer is left unread (no thread woken) only while its handle has not waited yet:
    /// the handle then reads it itself or asks for a reader. Everything else that waits on
    /// answers asks for readers: a queue that is not empty ([`pump`](Self::pump)), a handle
    /// that waits ([`Link`]), a task with a deadline, shutdown, a cancel.
    pub(crate) fn want_readers(&self, st: &mut State) {
        for sl in st.slots.iter_mut() {
            sl.want_reader();
        }
    }

    /// Sends queued tasks to workers with room. Call with the lock held.
    ///
    /// A frame over [`SlotState::unlocked_write_over`] is not written here: the idle worker is
    /// claimed for it and its slot thread writes it with the lock released ([`BigWrite`]).
    ///
    /// A task sent to a worker nobody reads gets the slot thread as reader when its handle
    /// already waits, when it has a deadline (the watchdog must not see an answered task as
    /// running), or during shutdown. Tasks left queued afterwards depend on answers being
    /// read, so then every busy worker gets a reader.
    pub(crate) fn pump(&self, st: &mut State) {
        self.pump_queue(st);
        if !(st.retry.is_empty() && self.rx.is_empty()) {
            self.want_readers(st);
        }
        // Shutdown waits for the pool to become idle (and sets `closing` first): any change
        // that empties it passes through here.
        if st.closing && self.is_idle(st) {
            self.changed.notify_all();
        }
    }

    fn pump_queue(&self, st: &mut State) {
        if st.broken.is_some() {
            return;
        }
        let depth = self.cfg.pipeline.max(1);
        loop {
            if !st
                .slots
                .iter()
                .any(|s| s.phase == Phase::Serving && s.big_write == BigWrite::None)
            {
                return;
            }
            let req = match st.retry.pop_front() {
                Some(r) => r,
                None => match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            // The worker with the fewest unanswered tasks that takes it (see
            // `SlotState::takes`): an idle one first, behind short tasks only when none is.
            let run_times = &st.run_times;
            let short_ns = u64::try_from(self.cfg.pipeline_short.as_nanos()).unwrap_or(u64::MAX);
            let short = |t: &InFlight| run_times.get(&t.key).is_some_and(|&ns| ns < short_ns);
            let pick = (0..st.slots.len())
                .filter_map(|i| {
                    st.slots[i]
                        .takes(&req, depth, self.cfg.max_tasks, short)
                        .map(|t| (i, t))
                })
                .min_by_key(|&(i, _)| st.slots[i].inflight.len());
            let Some((w, take)) = pick else {
                // No worker takes it now: it waits at the front for the first that frees.
                st.retry.push_front(req);
                return;
            };
            if !req.started && !req.task.start() {
                // Cancelled while queued: its handle already has the outcome.
                req.task.discard();
                continue;
            }
            let closing = st.closing;
            let slot = &mut st.slots[w];
            let needs_reader = req.timeout.is_some() || closing || req.task.is_waited();
            let now = Instant::now();
            if take == Take::Claim {
                // The worker is idle. Claimed for this task; its slot thread writes the frame
                // with the lock released (see `BigWrite`). A deadline counts from the claim
                // until the write ends (then from the write's end): a worker that never reads
                // the frame cannot hold the task past its deadline.
                let started = req.timeout.map(|_| now);
                if started.is_some() {
                    self.deadlines.notify_one();
                }
                let id = req.id;
                slot.inflight.push_back(InFlight::sent(req, started, now));
                slot.sent += 1;
                slot.big_write = BigWrite::Claimed(id);
                slot.wake_thread();
                if needs_reader {
                    slot.want_reader();
                }
                continue;
            }
            let written = match &slot.conn {
                Some(conn) => super::sys::write_all(conn, &req.frame, self.guard_sigpipe),
                None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            };
            if let Err(e) = written {
                // The worker is going away; its reader will notice.
                self.failed_write(st, w, req, &e);
                continue;
            }
            // Written to an idle worker, which is blocked reading: it starts the task now.
            let started = slot.inflight.is_empty().then_some(now);
            if started.is_some() && req.timeout.is_some() {
                self.deadlines.notify_one();
            }
            slot.inflight.push_back(InFlight::sent(req, started, now));
            slot.sent += 1;
            if needs_reader {
                slot.want_reader();
            }
        }
    }

    /// A task whose frame could not be written to worker `w` (it went away mid-write): the
    /// worker is sent nothing more (its reader notices its end), and the task is tried
    /// elsewhere, unless its frame already killed a worker before. Call with the lock held.
    pub(crate) fn failed_write(&self, st: &mut State, w: usize, mut req: Req, e: &std::io::Error) {
        st.slots[w].transition_to_killed();
        req.failed_writes += 1;
        if req.failed_writes >= MAX_FAILED_WRITES {
            let info = not_run(Some(w), req.task.as_ref());
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            req.task.fail(
                Error::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "{MAX_FAILED_WRITES} workers in a row went away while this task's \
                         arguments ({} bytes) were sent to them (the last: {e}); an argument \
                         over the memory cap kills the worker reading it",
                        req.frame.len()
                    ),
                ),
                info,
            );
            return;
        }
        req.started = true;
        st.retry.push_front(req);
    }

    /// Whether there is nothing queued or running (nor a frame being written).
    pub(crate) fn is_idle(&self, st: &State) -> bool {
        st.retry.is_empty()
            && self.rx.is_empty()
            && st
                .slots
                .iter()
                .all(|s| s.inflight.is_empty() && s.big_write == BigWrite::None)
    }

    /// Fails every queued task with `make()`. Call with the lock held.
    pub(crate) fn fail_queued(&self, st: &mut State, make: impl Fn() -> Error) {
        let mut reqs: Vec<Req> = st.retry.drain(..).collect();
        while let Ok(r) = self.rx.try_recv() {
            reqs.push(r);
        }
        for r in reqs {
            if !r.started && !r.task.start() {
                r.task.discard();
                continue;
            }
            let info = not_run(None, r.task.as_ref());
            r.task.fail(make(), info);
        }
    }

    /// Stops task `id` if it runs or waits for a retry: kills its worker (the reader then
    /// fails it as cancelled) or fails it at once. Returns whether it found the task.
    pub(crate) fn cancel_running(&self, id: u64) -> bool {
        let mut st = self.lock();
        for w in 0..st.slots.len() {
            let failed = match st.slots[w].cancel(id) {
                Cancelled::NotHere => continue,
                Cancelled::Killing => {
                    tracing::debug!(task = id, pid = ?st.slots[w].pid, "cancel: killed the worker running the task");
                    return true;
                }
                Cancelled::TakenBack(t) => t.task,
                Cancelled::Withdrawn(task) => Some(task),
            };
            self.pump(&mut st);
            drop(st);
            if let Some(task) = failed {
                let info = not_run(None, task.as_ref());
                task.fail(Error::cancelled(), info);
            }
            return true;
        }
        if let Some(pos) = st.retry.iter().position(|r| r.id == id) {
            if let Some(r) = st.retry.remove(pos) {
                self.pump(&mut st);
                drop(st);
                if !r.started && !r.task.start() {
                    r.task.discard();
                    return true;
                }
                let info = not_run(None, r.task.as_ref());
                r.task.fail(Error::cancelled(), info);
                return true;
            }
        }
        false
    }
}
