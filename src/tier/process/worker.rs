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
    pub(crate) fn sent(req: Req, started: Option<Instant>, sent: Instant) -> InFlight {
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
    pub(crate) inbox: Option<Box<super::reader::Inbox>>,
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
