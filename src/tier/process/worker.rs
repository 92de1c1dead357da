//! The state of one worker slot.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pending::Pending;
use crate::tier::{RunInfo, TierKind};

/// A function's name and whether the call is a `map` batch: what the pool learns run times by.
pub(crate) type FnKey = (&'static str, bool);

/// A queued task: its frame, ready to write, and its completer.
pub(crate) struct Req {
    pub(crate) id: u64,
    /// The function, and whether this is a `map` batch: the key of its learned run time.
    pub(crate) key: FnKey,
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
    pub(crate) fn sent(req: Req, started: Option<Instant>, sent: Instant) -> InFlight {
        InFlight {
            id: req.id,
            key: req.key,
            task: Some(req.task),
            frame: req.frame,
            timeout: req.timeout,
            started,
            sent,
            killed: None,
            failed_writes: req.failed_writes,
        }
    }

    /// Back to the queue's form, for a task that did not run (claimed already); `None` for a
    /// task withdrawn by a cancel (already failed).
    pub(crate) fn unsent(self) -> Option<Req> {
        Some(Req {
            id: self.id,
            key: self.key,
            frame: self.frame,
            task: self.task?,
            timeout: self.timeout,
            started: true,
            failed_writes: self.failed_writes,
        })
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
    pub(crate) key: FnKey,
    /// The task's completer; `None` once a cancel withdrew it (its handle has the outcome).
    pub(crate) task: Option<Box<dyn Pending>>,
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
/// [`Inbox`](super::reader::Inbox)), so frames are never split between two readers.
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

/// Where a slot's worker is in its life (the diagram is in `README.md`, "The life of a
/// worker"). Only the `transition_to_*` functions and [`SlotState::answered`] change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// No worker process: the slot thread is starting one (or the slot is done).
    #[default]
    Starting,
    /// Handshake done: the worker takes tasks.
    Serving,
    /// Told to exit (its task quota is served, or the pool stops): takes nothing more and
    /// exits once its tasks are answered.
    Retiring,
    /// Killed by the pool (a deadline, a cancel, a bad frame, a kill at shutdown): takes
    /// nothing more, so that a kill can only ever hit the tasks it was meant for.
    Killed,
}

/// How dispatch hands a task to a worker ([`SlotState::takes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Write its frame now, under the lock (it fits the request pipe's free buffer).
    Write,
    /// Claim the idle worker; its slot thread writes the frame with the lock released
    /// ([`BigWrite`]).
    Claim,
}

/// What the reader of an answer must do next ([`SlotState::answered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterAnswer {
    /// Nothing: the worker runs its next task, or waits for one.
    Nothing,
    /// Send `Exit`: the worker served its quota and is now [`Phase::Retiring`].
    SendExit,
}

/// What [`SlotState::cancel`] found and did.
pub(crate) enum Cancelled {
    /// The task is not on this worker.
    NotHere,
    /// Claimed for this worker and not written: taken back (the worker is free again); the
    /// caller fails it "cancelled".
    TakenBack(InFlight),
    /// Running: the worker is killed ([`Phase::Killed`]); its slot thread fails the task
    /// "cancelled" when it reaps the worker.
    Killing,
    /// Written behind the running task, not started: withdrawn now; the caller fails it
    /// "cancelled" at once. The worker is killed if it reaches the task
    /// ([`SlotState::answered`]), and the tasks behind it run elsewhere.
    Withdrawn(Box<dyn Pending>),
}

/// What a worker left when it went away ([`SlotState::transition_to_starting`]).
pub(crate) struct Gone {
    pub(crate) child: Option<Child>,
    pub(crate) inflight: VecDeque<InFlight>,
    /// It was told to exit (its death was expected).
    pub(crate) retiring: bool,
    /// It was killed by the pool.
    pub(crate) killed: bool,
    /// The claimed task whose frame was never written.
    pub(crate) unsent: Option<u64>,
}

/// One worker slot as the pool sees it: its [`Phase`], the tasks written to it, who reads its
/// answers. Every change of phase is a named transition here, called under the pool's lock.
#[derive(Default)]
pub(crate) struct SlotState {
    pub(crate) phase: Phase,
    /// Write end of the worker's request pipe (from the handshake to its death); written only
    /// while [`Phase::Serving`] (and `Exit` when retiring).
    pub(crate) conn: Option<Arc<File>>,
    /// Frames up to this size may wait in the request pipe behind a running task (see
    /// [`PIPELINE_FRAME_LIMIT`](super::pool::PIPELINE_FRAME_LIMIT)).
    pub(crate) pipeline_limit: usize,
    /// A frame written (or about to be) with the lock released; nothing else is written to
    /// this worker meanwhile.
    pub(crate) big_write: BigWrite,
    pub(crate) child: Option<Child>,
    pub(crate) pid: Option<u32>,
    /// Tasks written to the worker and not answered, in order: the first one runs.
    pub(crate) inflight: VecDeque<InFlight>,
    /// Tasks sent to the current process.
    pub(crate) sent: u64,
    /// Who reads the worker's answers.
    pub(crate) reader: ReaderRole,
    /// The answer pipe and its undecoded bytes; taken out by the reader while it reads.
    pub(crate) inbox: Option<Box<super::reader::Inbox>>,
    /// Write end of the slot thread's wake-up socket (nonblocking).
    pub(crate) wake: Option<UnixStream>,
}

/// A worker that passed its handshake, as [`SlotState::transition_to_serving`] takes it.
pub(crate) struct NewWorker {
    pub(crate) conn: Arc<File>,
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) pipeline_limit: usize,
    pub(crate) inbox: Box<super::reader::Inbox>,
    pub(crate) wake: UnixStream,
}

impl SlotState {
    /// Starting → Serving, or → Retiring when the pool stops meanwhile (returns
    /// [`AfterAnswer::SendExit`]: tell it to exit).
    pub(crate) fn transition_to_serving(&mut self, w: NewWorker, stopping: bool) -> AfterAnswer {
        debug_assert_eq!(self.phase, Phase::Starting);
        self.conn = Some(w.conn);
        self.pipeline_limit = w.pipeline_limit;
        self.big_write = BigWrite::None;
        self.child = Some(w.child);
        self.pid = Some(w.pid);
        self.sent = 0;
        self.reader = ReaderRole::Nobody;
        self.inbox = Some(w.inbox);
        self.wake = Some(w.wake);
        if stopping {
            self.phase = Phase::Retiring;
            AfterAnswer::SendExit
        } else {
            self.phase = Phase::Serving;
            AfterAnswer::Nothing
        }
    }

    /// Serving → Retiring: returns whether the caller must send `Exit` (false when the worker
    /// was not serving).
    pub(crate) fn transition_to_retiring(&mut self) -> bool {
        if self.phase != Phase::Serving {
            return false;
        }
        self.phase = Phase::Retiring;
        true
    }

    /// Any live phase → Killed: sends `SIGKILL` once. Nothing is written to the worker after
    /// this; its slot thread sees it die and reaps it.
    pub(crate) fn transition_to_killed(&mut self) {
        if matches!(self.phase, Phase::Killed | Phase::Starting) {
            return;
        }
        self.phase = Phase::Killed;
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// Any phase → Starting, when the worker went away: hands over what it left (the slot
    /// thread reaps the child, fails the running task, puts the others back in the queue).
    pub(crate) fn transition_to_starting(&mut self) -> Gone {
        // A frame claimed for this worker and not written (it hung up first). The slot
        // thread writes claimed frames, and it is the caller: none is being written now.
        let unsent = match std::mem::take(&mut self.big_write) {
            BigWrite::Claimed(id) => Some(id),
            BigWrite::Writing(_) | BigWrite::None => None,
        };
        let phase = std::mem::take(&mut self.phase);
        self.conn = None;
        self.pid = None;
        self.reader = ReaderRole::Nobody;
        self.inbox = None;
        self.wake = None;
        Gone {
            child: self.child.take(),
            inflight: std::mem::take(&mut self.inflight),
            retiring: phase == Phase::Retiring,
            killed: phase == Phase::Killed,
            unsent,
        }
    }

    /// Whether dispatch may hand `req` to this worker now, and how.
    ///
    /// Only a serving worker takes tasks, one writer at a time (nothing is written behind a
    /// frame being written), within its task quota. An idle worker takes any task. A busy
    /// one takes a task behind its running ones (pipelining, at most `depth` in all) only when
    /// every one of them is known to be short (`short`), the frame fits the request pipe's
    /// share, and neither it nor any task ahead has a deadline (a deadline's kill may land
    /// just after its task finished, and must not hit another). So a task never waits behind
    /// a long one: it stays queued for the first worker that frees.
    pub(crate) fn takes(
        &self,
        req: &Req,
        depth: usize,
        max_tasks: Option<u64>,
        short: impl Fn(&InFlight) -> bool,
    ) -> Option<Take> {
        if self.phase != Phase::Serving
            || self.big_write != BigWrite::None
            || max_tasks.is_some_and(|m| self.sent >= m)
        {
            return None;
        }
        if self.inflight.is_empty() {
            return Some(if req.frame.len() > self.unlocked_write_over(depth) {
                Take::Claim
            } else {
                Take::Write
            });
        }
        let pipelined = self.inflight.len() < depth
            && req.frame.len() <= self.pipeline_limit
            && req.timeout.is_none()
            && self
                .inflight
                .iter()
                .all(|t| t.timeout.is_none() && short(t));
        pipelined.then_some(Take::Write)
    }

    /// The worker answered task `id`: takes it off (the caller completes it). The next task,
    /// if any, starts now; if it was withdrawn by a cancel the worker is killed (Killed),
    /// else when the worker served its quota it retires (the caller sends `Exit`).
    pub(crate) fn answered(
        &mut self,
        id: u64,
        max_tasks: Option<u64>,
    ) -> Result<(InFlight, AfterAnswer), u64> {
        if self.inflight.front().is_none_or(|t| t.id != id) {
            return Err(id);
        }
        let task = self
            .inflight
            .pop_front()
            .expect("checked: the front is task `id`");
        let mut next = AfterAnswer::Nothing;
        if let Some(front) = self.inflight.front_mut() {
            front.started = Some(Instant::now());
            if front.killed == Some(KillReason::Cancel) {
                self.transition_to_killed();
            }
        } else if max_tasks.is_some_and(|m| self.sent >= m) && self.transition_to_retiring() {
            next = AfterAnswer::SendExit;
        }
        Ok((task, next))
    }

    /// A cancel of task `id`; see [`Cancelled`].
    pub(crate) fn cancel(&mut self, id: u64) -> Cancelled {
        let Some(pos) = self.inflight.iter().position(|t| t.id == id) else {
            return Cancelled::NotHere;
        };
        if self.big_write == BigWrite::Claimed(id) {
            self.big_write = BigWrite::None;
            return match self.inflight.remove(pos) {
                Some(t) => Cancelled::TakenBack(t),
                None => Cancelled::NotHere,
            };
        }
        let t = &mut self.inflight[pos];
        if t.killed.is_some() {
            return Cancelled::NotHere;
        }
        t.killed = Some(KillReason::Cancel);
        if pos == 0 {
            self.transition_to_killed();
            return Cancelled::Killing;
        }
        let task = t.task.take();
        // The answer ahead must be read without a waiting handle: that is when the worker
        // reaches the withdrawn task and is killed.
        self.want_reader();
        match task {
            Some(task) => Cancelled::Withdrawn(task),
            None => Cancelled::NotHere,
        }
    }

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
    /// [`Shared::want_readers`](super::pool::Shared::want_readers).
    pub(crate) fn want_reader(&mut self) {
        if self.reader == ReaderRole::Nobody && !self.inflight.is_empty() {
            self.reader = ReaderRole::Thread;
            self.wake_thread();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// A task's completer that records nothing.
    struct Nop;

    impl Pending for Nop {
        fn start(&self) -> bool {
            true
        }
        fn submitted(&self) -> Instant {
            Instant::now()
        }
        fn is_waited(&self) -> bool {
            false
        }
        fn succeed(self: Box<Self>, _: &[u8], _: RunInfo) {}
        fn fail(self: Box<Self>, _: Error, _: RunInfo) {}
        fn discard(self: Box<Self>) {}
    }

    fn req(id: u64, len: usize, timeout: Option<Duration>) -> Req {
        Req {
            id,
            key: ("f", false),
            frame: vec![0; len],
            task: Box::new(Nop),
            timeout,
            started: false,
            failed_writes: 0,
        }
    }

    fn serving() -> SlotState {
        SlotState {
            phase: Phase::Serving,
            pipeline_limit: 1024,
            ..SlotState::default()
        }
    }

    fn push(sl: &mut SlotState, r: Req) {
        let started = sl.inflight.is_empty().then(Instant::now);
        sl.inflight
            .push_back(InFlight::sent(r, started, Instant::now()));
        sl.sent += 1;
    }

    #[test]
    fn an_idle_worker_takes_any_task_and_claims_big_ones() {
        let sl = serving();
        assert_eq!(
            sl.takes(&req(1, 10, None), 2, None, |_| false),
            Some(Take::Write)
        );
        assert_eq!(
            sl.takes(&req(1, 4096, None), 2, None, |_| false),
            Some(Take::Claim)
        );
        let starting = SlotState::default();
        assert_eq!(starting.takes(&req(1, 10, None), 2, None, |_| true), None);
    }

    #[test]
    fn a_busy_worker_takes_a_task_only_behind_short_ones() {
        let mut sl = serving();
        push(&mut sl, req(1, 10, None));
        assert_eq!(sl.takes(&req(2, 10, None), 2, None, |_| false), None);
        assert_eq!(
            sl.takes(&req(2, 10, None), 2, None, |_| true),
            Some(Take::Write)
        );
        // Not past the depth, not a big frame, not one with a deadline.
        assert_eq!(sl.takes(&req(2, 10, None), 1, None, |_| true), None);
        assert_eq!(sl.takes(&req(2, 2048, None), 2, None, |_| true), None);
        let limit = Some(Duration::from_secs(1));
        assert_eq!(sl.takes(&req(2, 10, limit), 2, None, |_| true), None);
        // Nor behind a task with a deadline, nor past the task quota.
        let mut sl = serving();
        push(&mut sl, req(1, 10, limit));
        assert_eq!(sl.takes(&req(2, 10, None), 2, None, |_| true), None);
        let mut sl = serving();
        push(&mut sl, req(1, 10, None));
        assert_eq!(sl.takes(&req(2, 10, None), 2, Some(1), |_| true), None);
    }

    #[test]
    fn a_withdrawn_task_reaching_the_front_kills_the_worker() {
        let mut sl = serving();
        push(&mut sl, req(1, 10, None));
        push(&mut sl, req(2, 10, None));
        assert!(matches!(sl.cancel(2), Cancelled::Withdrawn(_)));
        // It still serves the task ahead.
        assert_eq!(sl.phase, Phase::Serving);
        let (t, next) = sl.answered(1, None).expect("task 1 runs");
        assert_eq!((t.id, next), (1, AfterAnswer::Nothing));
        assert_eq!(sl.phase, Phase::Killed);
        assert_eq!(sl.takes(&req(3, 10, None), 2, None, |_| true), None);
    }

    #[test]
    fn cancel_of_the_running_task_kills_and_of_a_claimed_one_takes_it_back() {
        let mut sl = serving();
        push(&mut sl, req(1, 10, None));
        assert!(matches!(sl.cancel(1), Cancelled::Killing));
        assert_eq!(sl.phase, Phase::Killed);
        assert!(matches!(sl.cancel(1), Cancelled::NotHere));
        let mut sl = serving();
        push(&mut sl, req(1, 4096, None));
        sl.big_write = BigWrite::Claimed(1);
        assert!(matches!(sl.cancel(1), Cancelled::TakenBack(_)));
        assert_eq!((sl.phase, sl.big_write), (Phase::Serving, BigWrite::None));
    }

    #[test]
    fn the_quota_retires_and_a_wrong_answer_is_refused() {
        let mut sl = serving();
        push(&mut sl, req(1, 10, None));
        assert_eq!(sl.answered(2, Some(1)).err(), Some(2));
        let (_, next) = sl.answered(1, Some(1)).expect("task 1 runs");
        assert_eq!((next, sl.phase), (AfterAnswer::SendExit, Phase::Retiring));
        let gone = sl.transition_to_starting();
        assert!(gone.retiring && !gone.killed && gone.inflight.is_empty());
        assert_eq!(sl.phase, Phase::Starting);
    }
}
