//! The pool's shared state: the queue, the workers' in-flight tasks, dispatch, and who reads
//! each worker's answers.
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
//! ([`ReaderRole`]); the rules that make sure an awaited answer is always read are on
//! [`Shared::pump`] and [`Shared::want_readers`].

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;

use super::Config;
use crate::error::{Error, ErrorKind};
use crate::remote::wire::ItemOutcome;
use crate::task::{Completer, RemoteLink};
use crate::tier::map::ChunkStats;
use crate::tier::{RunInfo, TierKind};

/// A task's completer with its result type erased: the reader hands it the body bytes.
pub(crate) trait Pending: Send {
    /// Claims the task for running; false when it was cancelled while queued.
    fn start(&self) -> bool;
    /// When the task was submitted.
    fn submitted(&self) -> Instant;
    /// Whether its handle waits for it (parked, blocked, probing): then the pool reads its
    /// answer without waiting for the handle to do it.
    fn is_waited(&self) -> bool;
    /// Decodes the result from `body` and completes the task.
    fn succeed(self: Box<Self>, body: &[u8], info: RunInfo);
    /// Completes the task with `e`.
    fn fail(self: Box<Self>, e: Error, info: RunInfo);
    /// Drops the task whose slot already holds its outcome (cancelled while queued).
    fn discard(self: Box<Self>);
}

/// A single call: the body is one encoded `R`.
pub(crate) struct One<R> {
    pub(crate) completer: Completer<R>,
}

impl<R: DeserializeOwned + Send + 'static> Pending for One<R> {
    fn start(&self) -> bool {
        self.completer.start()
    }
    fn submitted(&self) -> Instant {
        self.completer.submitted()
    }
    fn is_waited(&self) -> bool {
        self.completer.is_waited()
    }
    fn succeed(self: Box<Self>, body: &[u8], info: RunInfo) {
        let outcome = postcard::from_bytes::<R>(body).map_err(|e| {
            Error::new(
                ErrorKind::Encoding,
                format!(
                    "could not decode the result as {}: {e}",
                    std::any::type_name::<R>()
                ),
            )
        });
        self.completer.finish(outcome, info);
    }
    fn fail(self: Box<Self>, e: Error, info: RunInfo) {
        self.completer.finish(Err(e), info);
    }
    fn discard(self: Box<Self>) {
        self.completer.disarm();
    }
}

/// A batch of `map` items: the body is an encoded `Vec<ItemOutcome<R>>`.
pub(crate) struct Batch<R> {
    pub(crate) completer: Completer<Vec<Result<R, Error>>>,
    pub(crate) items: usize,
    pub(crate) stats: Arc<ChunkStats>,
}

impl<R: DeserializeOwned + Send + 'static> Pending for Batch<R> {
    fn start(&self) -> bool {
        self.completer.start()
    }
    fn submitted(&self) -> Instant {
        self.completer.submitted()
    }
    fn is_waited(&self) -> bool {
        self.completer.is_waited()
    }
    fn succeed(self: Box<Self>, body: &[u8], info: RunInfo) {
        let run_ns = u64::try_from(info.run_time.as_nanos()).unwrap_or(u64::MAX);
        self.stats.record(self.items, run_ns);
        let outcome = postcard::from_bytes::<Vec<ItemOutcome<R>>>(body)
            .map(|v| v.into_iter().map(ItemOutcome::into_result).collect())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Encoding,
                    format!(
                        "could not decode a batch of results as {}: {e}",
                        std::any::type_name::<R>()
                    ),
                )
            });
        self.completer.finish(outcome, info);
    }
    fn fail(self: Box<Self>, e: Error, info: RunInfo) {
        self.completer.finish(Err(e), info);
    }
    fn discard(self: Box<Self>) {
        self.completer.disarm();
    }
}

/// A queued task: its frame, ready to write, and its completer.
pub(crate) struct Req {
    pub(crate) id: u64,
    pub(crate) frame: Vec<u8>,
    pub(crate) task: Box<dyn Pending>,
    pub(crate) timeout: Option<Duration>,
    /// Claimed already (a task put back after its worker died before starting it).
    pub(crate) started: bool,
    /// Writes of this task's frame that failed because its worker went away mid-write.
    pub(crate) failed_writes: u32,
}

impl InFlight {
    /// `req`, sent (or claimed) at `sent`, started at `started`.
    fn sent(req: Req, started: Option<Instant>, sent: Instant) -> InFlight {
        InFlight {
            id: req.id,
            task: req.task,
            frame: req.frame,
            timeout: req.timeout,
            started,
            sent,
            killed: None,
            failed_writes: req.failed_writes,
        }
    }

    /// Back to the queue's form, for a task that did not run (claimed already).
    pub(crate) fn unsent(self) -> Req {
        Req {
            id: self.id,
            frame: self.frame,
            task: self.task,
            timeout: self.timeout,
            started: true,
            failed_writes: self.failed_writes,
        }
    }
}

/// The run info of a task that never ran: failed before or while it was sent to `worker`.
pub(crate) fn not_run(worker: Option<usize>, task: &dyn Pending) -> RunInfo {
    RunInfo {
        tier: TierKind::Processes,
        worker,
        run_time: Duration::ZERO,
        queued: task.submitted().elapsed(),
        pid: None,
    }
}

/// A task whose frame could not be written to this many workers in a row fails with "worker
/// died" instead of trying another: a frame that kills the worker reading it (an argument
/// over the memory cap) would otherwise restart workers for ever. Two, so that one worker that
/// dies for its own reasons during the write does not fail an innocent task.
pub(crate) const MAX_FAILED_WRITES: u32 = 2;

/// Why the pool killed a worker while it ran a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    Timeout(Duration),
    Cancel,
}

/// A task sent to a worker, not yet answered.
pub(crate) struct InFlight {
    pub(crate) id: u64,
    pub(crate) task: Box<dyn Pending>,
    pub(crate) frame: Vec<u8>,
    pub(crate) timeout: Option<Duration>,
    /// When the worker started it (when it became the worker's first unanswered task; for a
    /// frame written without the lock and a deadline, when the worker was claimed for it).
    pub(crate) started: Option<Instant>,
    pub(crate) sent: Instant,
    pub(crate) killed: Option<KillReason>,
    /// Writes of this task's frame that failed before (see [`MAX_FAILED_WRITES`]).
    pub(crate) failed_writes: u32,
}

/// A frame written to a worker with the pool's lock released: one too large for the request
/// pipe's buffer ([`SlotState::unlocked_write_over`]), whose write may last as long as the
/// worker takes to read it (tens of milliseconds for 64 MiB), and would stall every submit,
/// answer and reader of the pool if the lock were held meanwhile.
///
/// Dispatch claims an idle worker for such a task: the task becomes the worker's only one in
/// flight (its deadline, if any, counts from the claim; its handle may wait as for any other) and
/// the slot is marked [`Claimed`](Self::Claimed), which keeps every other write off its
/// request pipe (dispatch skips it; `Exit` is only sent to an idle pool or after an answer,
/// and an answer to this task means its frame was read whole). The slot thread then takes the
/// frame out, marks the slot [`Writing`](Self::Writing), writes without the lock, and settles
/// the result under it (`slot::write_claimed`):
///
/// - written: the task is started (a task without a deadline: from now), unless a reader
///   already took its answer;
/// - failed, the task killed meanwhile (a cancel or its deadline kills the worker: it holds
///   only this task) or the pool stopping: the task stays in flight, and the slot thread
///   fails it when it reaps the worker (`cancelled`, `timed out`, `shut down`);
/// - failed otherwise (the worker died while reading): the worker is killed (a half-written
///   frame leaves it nothing to read) and sent nothing more, and the task goes the way of any
///   failed write: tried elsewhere, failed after [`MAX_FAILED_WRITES`].
///
/// A cancel of a claimed task not being written yet takes it back without touching the
/// worker. A worker that goes away before its slot thread wrote the claimed frame puts the
/// task back at the front of the queue (it never ran), or fails it "shut down" when the pool
/// stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BigWrite {
    /// No frame waits for the slot thread or is being written by it.
    #[default]
    None,
    /// Task `id`, the worker's only one in flight, waits for the slot thread to write it.
    Claimed(u64),
    /// The slot thread is writing task `id`'s frame (taken out of its [`InFlight`]).
    Writing(u64),
}

/// Who reads a worker's answers now. Only the holder touches the answer pipe (through the
/// [`Inbox`](super::slot::Inbox)), so frames are never split between two readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReaderRole {
    /// Nobody: the slot thread waits only for the worker's death or a wake-up, so an answer
    /// arriving wakes no thread of the pool; the caller waiting for it reads it itself.
    #[default]
    Nobody,
    /// The slot thread, blocked in `read`, until the worker has no unanswered task.
    Thread,
    /// A caller in the first poll of its handle, for a bounded time
    /// ([`DEFAULT_RESULT_WAIT`](super::DEFAULT_RESULT_WAIT)).
    Caller,
}

/// One worker slot as the pool sees it.
#[derive(Default)]
pub(crate) struct SlotState {
    /// Write end of the worker's request pipe; `None` while no worker can take a task: none
    /// started yet, it went away, or the pool is killing it (a deadline, a cancel, a bad
    /// frame), so that no task is written to a worker about to die.
    pub(crate) conn: Option<Arc<File>>,
    /// Frames up to this size may wait in the request pipe behind a running task (see
    /// [`PIPELINE_FRAME_LIMIT`]).
    pub(crate) pipeline_limit: usize,
    /// A frame written (or about to be) with the lock released; nothing else is written to
    /// this worker meanwhile.
    pub(crate) big_write: BigWrite,
    pub(crate) child: Option<Child>,
    pub(crate) pid: Option<u32>,
    pub(crate) inflight: VecDeque<InFlight>,
    /// Tasks sent to the current process.
    pub(crate) sent: u64,
    /// Told to exit (max tasks reached, or shutdown).
    pub(crate) retiring: bool,
    /// Who reads the worker's answers.
    pub(crate) reader: ReaderRole,
    /// The answer pipe and its undecoded bytes; taken out by the reader while it reads.
    pub(crate) inbox: Option<Box<super::slot::Inbox>>,
    /// Write end of the slot thread's wake-up socket (nonblocking).
    pub(crate) wake: Option<UnixStream>,
}

impl SlotState {
    /// Frames over this size go to an idle worker by its slot thread, with the lock released
    /// ([`BigWrite`]): they may not fit the request pipe's buffer (sized for `depth` frames
    /// of up to [`pipeline_limit`](Self::pipeline_limit)), so their write may wait for the
    /// worker to read. Smaller ones fit the empty pipe of an idle worker at once.
    pub(crate) fn unlocked_write_over(&self, depth: usize) -> usize {
        self.pipeline_limit.saturating_mul(depth.max(1))
    }

    /// Wakes the slot thread (it re-reads its role). A full wake-up socket already holds a
    /// wake-up, so a failed write loses nothing.
    pub(crate) fn wake_thread(&self) {
        if let Some(w) = &self.wake {
            let _ = (&*w).write(&[1]);
        }
    }

    /// Makes the slot thread the reader when unanswered tasks have none; see
    /// [`Shared::want_readers`].
    pub(crate) fn want_reader(&mut self) {
        if self.reader == ReaderRole::Nobody && !self.inflight.is_empty() {
            self.reader = ReaderRole::Thread;
            self.wake_thread();
        }
    }
}

/// The mutable state under the pool's lock.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) slots: Vec<SlotState>,
    /// Tasks to run before the queue's: those whose worker died before starting them.
    pub(crate) retry: VecDeque<Req>,
    /// Set by the crash-loop guard: the pool cannot start workers.
    pub(crate) broken: Option<Error>,
    /// Consecutive start-up failures, over all slots.
    pub(crate) start_failures: u32,
    /// No new tasks (shutdown called).
    pub(crate) closing: bool,
    /// Workers exit once idle and are not replaced.
    pub(crate) stopping: bool,
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
            super::slot::read_waiting_answers(&p, self.id);
            p.cancel_running(self.id)
        })
    }

    fn wait_briefly(&self, done: &dyn Fn() -> bool) {
        if !self.read_own {
            return;
        }
        if let Some(p) = self.pool.upgrade() {
            super::slot::read_own_answer(&p, self.id, done);
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
    }

    fn pump_queue(&self, st: &mut State) {
        if st.broken.is_some() {
            return;
        }
        let depth = self.cfg.pipeline.max(1);
        loop {
            // The worker with the fewest unanswered tasks that can take one more.
            let Some(w) = (0..st.slots.len())
                .filter(|&i| {
                    let s = &st.slots[i];
                    s.conn.is_some()
                        && !s.retiring
                        // One writer at a time: nothing is written behind a frame being written.
                        && s.big_write == BigWrite::None
                        && s.inflight.len() < depth
                        && self.cfg.max_tasks.is_none_or(|m| s.sent < m)
                        // Nothing is queued behind a task with a deadline: the watchdog's kill
                        // may land just after that task finished, and must not hit another.
                        && !s.inflight.iter().any(|t| t.timeout.is_some())
                })
                .min_by_key(|&i| st.slots[i].inflight.len())
            else {
                return;
            };
            let req = match st.retry.pop_front() {
                Some(r) => r,
                None => match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            if !req.started && !req.task.start() {
                // Cancelled while queued: its handle already has the outcome.
                req.task.discard();
                continue;
            }
            let slot = &mut st.slots[w];
            if !slot.inflight.is_empty()
                && (req.frame.len() > slot.pipeline_limit || req.timeout.is_some())
            {
                // Big frames wait for an idle worker (the chosen one has the fewest tasks, so
                // none is idle), so that writing never blocks on a busy one; so do tasks with a
                // deadline, so that their kill can only ever hit them.
                let mut req = req;
                req.started = true;
                st.retry.push_front(req);
                return;
            }
            if req.frame.len() > slot.unlocked_write_over(depth) {
                // The worker is idle (checked above). Claimed for this task; its slot thread
                // writes the frame with the lock released (see `BigWrite`).
                let needs_reader = req.timeout.is_some() || st.closing || req.task.is_waited();
                // A deadline counts from the claim: the write is part of the task's time, so a
                // worker that never reads the frame cannot hold the task past its deadline
                // (the watchdog kills it; it holds only this task).
                let now = Instant::now();
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
                None => return,
            };
            if let Err(e) = written {
                // The worker is going away; its reader will notice.
                self.failed_write(st, w, req, &e);
                continue;
            }
            let now = Instant::now();
            let started = slot.inflight.is_empty().then_some(now);
            if started.is_some() && req.timeout.is_some() {
                self.deadlines.notify_one();
            }
            let needs_reader = req.timeout.is_some() || st.closing || req.task.is_waited();
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
        st.slots[w].conn = None;
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
        for slot in st.slots.iter_mut() {
            if let Some(pos) = slot.inflight.iter().position(|t| t.id == id) {
                if slot.big_write == BigWrite::Claimed(id) {
                    // Claimed for this worker, not written yet: take it back; the worker
                    // never sees it, and is free for the next task.
                    slot.big_write = BigWrite::None;
                    let Some(t) = slot.inflight.remove(pos) else {
                        return false;
                    };
                    self.pump(&mut st);
                    let idle = st.closing && self.is_idle(&st);
                    drop(st);
                    if idle {
                        self.changed.notify_all();
                    }
                    let info = not_run(None, t.task.as_ref());
                    t.task.fail(Error::cancelled(), info);
                    return true;
                }
                if pos == 0 {
                    slot.inflight[0].killed = Some(KillReason::Cancel);
                    if let Some(child) = slot.child.as_mut() {
                        let _ = child.kill();
                    }
                    // Nothing more goes to a worker being killed (see `SlotState::conn`).
                    slot.conn = None;
                    tracing::debug!(task = id, pid = ?slot.pid, "cancel: killed the worker running the task");
                } else {
                    // Sent but not started: the worker will run it unless we stop it, and a
                    // frame cannot be taken back. Mark it; the reader fails it as cancelled
                    // (and kills the worker) when the task before it is answered.
                    slot.inflight[pos].killed = Some(KillReason::Cancel);
                    slot.want_reader();
                }
                return true;
            }
        }
        if let Some(pos) = st.retry.iter().position(|r| r.id == id) {
            if let Some(r) = st.retry.remove(pos) {
                drop(st);
                let info = not_run(None, r.task.as_ref());
                r.task.fail(Error::cancelled(), info);
                return true;
            }
        }
        false
    }
}
