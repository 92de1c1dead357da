//! Reading a worker's answers: by the caller waiting for its own, or by the slot thread.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use super::pool::Shared;
use super::slot::End;
use super::sys::{Deadline, ExitWatch, pollfd, wait_fds};
use super::worker::{AfterAnswer, BigWrite, FnKey, KillReason, Phase, ReaderRole};
use crate::error::{Error, ErrorKind};
use crate::remote::wire::{self, Response};
use crate::tier::{RunInfo, TierKind};

/// The read side of a worker's answer pipe: the bytes read and not decoded yet, the read
/// buffer, the timer of a caller's wait. Only the holder of the slot's [`ReaderRole`] has it.
pub(crate) struct Inbox {
    /// Read end of the worker's answer pipe.
    answers: Arc<File>,
    codec: LengthDelimitedCodec,
    buf: BytesMut,
    scratch: Vec<u8>,
    /// A bad frame a caller read: it killed the worker; the slot thread reports the error.
    broken: Option<Error>,
    /// Bounds a caller's wait (`None` without timer files: `ppoll`'s own timeout then).
    deadline: Option<Deadline>,
    /// Tells the worker's exit, which a process it forked may hide from the pipe's end of file.
    exit: Arc<ExitWatch>,
}

/// When the worker hung up while a caller holds the reader role: how often the slot thread
/// looks whether the caller gave it back. A caller holds it for its bounded wait
/// ([`DEFAULT_RESULT_WAIT`](super::DEFAULT_RESULT_WAIT), 100 µs), and gives it back without a
/// wake-up when its answer came before the hang-up; looking every millisecond notices that
/// soon after, and costs nothing but on a worker's death.
pub(crate) const CALLER_RECHECK: Duration = Duration::from_millis(1);

/// How many bytes one `read` of a worker's answer pipe takes at most (a pipe's default buffer,
/// so one read usually empties it).
const READ_CHUNK: usize = 64 * 1024;

/// What one read of a worker's answer pipe found.
enum Got {
    /// Bytes (whole frames were handled).
    Frames,
    /// Nothing yet.
    Nothing,
    /// End of file (or a broken pipe): the worker went away.
    End,
}

impl Inbox {
    pub(crate) fn new(
        answers: Arc<File>,
        max_frame: usize,
        buf: BytesMut,
        exit: Arc<ExitWatch>,
    ) -> Self {
        Inbox {
            exit,
            answers,
            codec: wire::codec(max_frame),
            buf,
            scratch: vec![0; READ_CHUNK],
            broken: None,
            deadline: Deadline::new(),
        }
    }

    /// Reads what the answer pipe holds now (it is nonblocking) and handles every whole
    /// frame; an error for a bad frame.
    fn read_now(&mut self, shared: &Arc<Shared>, slot: usize) -> Result<Got, Error> {
        let n = loop {
            match (&*self.answers).read(&mut self.scratch) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Got::Nothing),
                Err(_) => return Ok(Got::End),
            }
        };
        if n == 0 {
            return Ok(Got::End);
        }
        self.buf.extend_from_slice(&self.scratch[..n]);
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => on_frame(shared, slot, &frame)?,
                Ok(None) => return Ok(Got::Frames),
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Encoding,
                        format!("the worker sent a bad frame: {e}"),
                    ));
                }
            }
        }
    }

    /// Reads the next bytes, waiting in `ppoll` while there are none. Returns false at end of
    /// file, an error for a bad frame.
    fn read_blocking(&mut self, shared: &Arc<Shared>, slot: usize) -> Result<bool, Error> {
        let mut exited = false;
        loop {
            match self.read_now(shared, slot)? {
                Got::Frames => return Ok(true),
                Got::End => return Ok(false),
                // Exited, and nothing left in the pipe: a process it forked holds the pipe
                // open, but the worker will say nothing more.
                Got::Nothing if exited => return Ok(false),
                Got::Nothing => {
                    let mut fds = [
                        pollfd(self.answers.as_raw_fd(), libc::POLLIN),
                        pollfd(self.exit.fd(), libc::POLLIN),
                    ];
                    let every = self.exit.poll_every();
                    match wait_fds(&mut fds, every) {
                        // Cannot wait (not seen in practice): treat the worker as gone rather
                        // than spin; serving ends and the worker is reaped (or killed).
                        Err(_) => return Ok(false),
                        // Read once more, then stop.
                        Ok(_) if fds[1].revents != 0 => exited = true,
                        Ok(0) if every.is_some() => exited = self.exit.exited(),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

/// Empties the wake-up socket (nonblocking).
pub(crate) fn drain_wakeups(wake: &UnixStream) {
    let mut b = [0u8; 64];
    while matches!((&*wake).read(&mut b), Ok(n) if n > 0) {}
}

/// The first poll of a handle: when nobody reads the worker running task `id`, reads its
/// answers on this thread (blocking in `ppoll`, not spinning) until `done()` or the pool's
/// [`result_wait`](Shared::result_wait) budget is spent, then gives the role back (to the slot
/// thread when tasks are still unanswered, or the worker went away).
pub(crate) fn read_own_answer(shared: &Arc<Shared>, id: u64, done: &dyn Fn() -> bool) {
    let budget = shared.result_wait();
    if budget.is_zero() {
        return;
    }
    let t0 = Instant::now();
    let Some(mut held) = take_reader_for(shared, id) else {
        return;
    };
    let Some(fd) = held.inbox.as_ref().map(|i| i.answers.as_raw_fd()) else {
        return;
    };
    // Armed at the first wait only: when the worker shares this CPU it usually ran and
    // answered while this thread was still returning from its write, and a plain read finds
    // the answer (the pipe ping-pong's two system calls, nothing more).
    let mut timer: Option<Option<RawFd>> = None;
    while !done() {
        match held.step(shared) {
            Step::Frames => continue,
            Step::Nothing => {}
            Step::Stop => break,
        }
        let Some(inbox) = held.inbox.as_mut() else {
            break;
        };
        // Nothing yet: wait for the answer, bounded by the slot's timer (cheap: see `sys.rs`),
        // or by ppoll's timeout when the timer cannot be armed.
        let timer = *timer.get_or_insert_with(|| {
            inbox
                .deadline
                .as_mut()
                .and_then(|d| d.arm_within(budget).then(|| d.fd()))
        });
        let waited = match timer {
            Some(t) => {
                let mut fds = [pollfd(fd, libc::POLLIN), pollfd(t, libc::POLLIN)];
                let r = wait_fds(&mut fds, None);
                if fds[0].revents == 0 && fds[1].revents != 0 {
                    break; // The budget is spent.
                }
                r
            }
            None => {
                let left = budget.saturating_sub(t0.elapsed());
                if left.is_zero() {
                    break;
                }
                wait_fds(&mut [pollfd(fd, libc::POLLIN)], Some(left))
            }
        };
        if waited.is_err() {
            held.hand_over = true;
            break;
        }
    }
}

/// Takes the reader role of the worker running task `id`, when nobody holds it.
fn take_reader_for(shared: &Arc<Shared>, id: u64) -> Option<CallerRead<'_>> {
    let mut st = shared.lock();
    let w = st
        .slots
        .iter()
        .position(|s| s.inflight.iter().any(|t| t.id == id))?;
    let sl = &mut st.slots[w];
    if sl.reader != ReaderRole::Nobody {
        return None;
    }
    let inbox = sl.inbox.take()?;
    sl.reader = ReaderRole::Caller;
    Some(CallerRead {
        shared,
        slot: w,
        inbox: Some(inbox),
        hand_over: false,
    })
}

/// Handles the answers already waiting in the answer pipe of the worker running task `id`,
/// when nobody reads it (without waiting). A cancel calls this before it kills the worker of a
/// running task: an answer may sit unread while no handle waits, and killing the worker of a
/// task that in fact finished would kill whatever that worker runs now.
pub(crate) fn read_waiting_answers(shared: &Arc<Shared>, id: u64) {
    let Some(mut held) = take_reader_for(shared, id) else {
        return;
    };
    while let Step::Frames = held.step(shared) {}
}

/// The reader role held by a caller; dropping it (also when a panic unwinds through a
/// result's decoding) gives the role back.
struct CallerRead<'a> {
    shared: &'a Shared,
    slot: usize,
    inbox: Option<Box<Inbox>>,
    hand_over: bool,
}

/// What one non-blocking read by a caller holding the reader role found.
enum Step {
    /// Answers, handled.
    Frames,
    /// Nothing yet.
    Nothing,
    /// The worker went away, or sent a bad frame (it is killed): the slot thread takes the
    /// role back and reports it.
    Stop,
}

impl CallerRead<'_> {
    /// Reads what the worker's answer pipe holds now, without waiting.
    fn step(&mut self, shared: &Arc<Shared>) -> Step {
        let Some(inbox) = self.inbox.as_mut() else {
            return Step::Stop;
        };
        match inbox.read_now(shared, self.slot) {
            Ok(Got::Frames) => Step::Frames,
            Ok(Got::Nothing) => Step::Nothing,
            Ok(Got::End) => {
                self.hand_over = true;
                Step::Stop
            }
            Err(e) => {
                kill(shared, self.slot);
                inbox.broken = Some(e);
                self.hand_over = true;
                Step::Stop
            }
        }
    }
}

impl Drop for CallerRead<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let sl = &mut st.slots[self.slot];
        sl.inbox = self.inbox.take();
        if self.hand_over || std::thread::panicking() {
            sl.reader = ReaderRole::Thread;
            sl.wake_thread();
        } else {
            // Tasks still unanswered: their handles may wait already, so the thread reads.
            sl.reader = ReaderRole::Nobody;
            sl.want_reader();
        }
    }
}

/// Reads answers until the end of file, or (with `release`) only while the worker has
/// unanswered tasks and then gives the role back. Returns how serving ended, or `None` when
/// the role was given back.
pub(crate) fn read_answers(
    shared: &Arc<Shared>,
    slot: usize,
    mut inbox: Box<Inbox>,
    release: bool,
) -> Option<End> {
    if let Some(e) = inbox.broken.take() {
        // A caller read a bad frame and killed the worker.
        return Some(End::Protocol(e));
    }
    loop {
        {
            let mut st = shared.lock();
            let sl = &mut st.slots[slot];
            if release && sl.inflight.is_empty() && sl.phase != Phase::Killed {
                sl.reader = ReaderRole::Nobody;
                sl.inbox = Some(inbox);
                return None;
            }
            if release && matches!(sl.big_write, BigWrite::Claimed(_)) {
                // A frame claimed for this worker: no answer comes before it is written, and
                // this thread writes it (`serve`). The role stays with the thread.
                sl.inbox = Some(inbox);
                return None;
            }
        }
        match inbox.read_blocking(shared, slot) {
            Ok(true) => {}
            Ok(false) => return Some(End::Eof),
            Err(e) => {
                kill(shared, slot);
                return Some(End::Protocol(e));
            }
        }
    }
}

fn kill(shared: &Shared, slot: usize) {
    shared.lock().slots[slot].transition_to_killed();
}

/// Handles one frame from a running worker (on the thread that holds the reader role).
fn on_frame(shared: &Arc<Shared>, slot: usize, frame: &[u8]) -> Result<(), Error> {
    let (resp, body) = wire::decode_payload::<Response<'_>>(frame)?;
    let Response::Done {
        id,
        run_ns,
        outcome,
    } = resp
    else {
        return Err(Error::new(
            ErrorKind::Remote,
            format!("the worker sent {resp:?} while serving"),
        ));
    };
    let (task, pid) = {
        let mut st = shared.lock();
        let max_tasks = shared.cfg.max_tasks;
        let sl = &mut st.slots[slot];
        let (task, next) = sl.answered(id, max_tasks).map_err(|id| {
            Error::new(
                ErrorKind::Remote,
                format!("the worker answered task {id}, which it was not running"),
            )
        })?;
        if sl.inflight.front().is_some_and(|t| t.timeout.is_some()) {
            shared.deadlines.notify_one();
        }
        if next == AfterAnswer::SendExit {
            // Served its quota: let it go; the slot thread starts a fresh one.
            if let Some(conn) = &sl.conn {
                shared.send_exit(conn);
            }
        }
        let pid = sl.pid;
        learn(&mut st.run_times, task.key, run_ns);
        shared.pump(&mut st);
        (task, pid)
    };
    let Some(pending) = task.task else {
        // Withdrawn by a cancel: its handle has its outcome.
        return Ok(());
    };
    let info = RunInfo {
        tier: TierKind::Processes,
        worker: Some(slot),
        run_time: Duration::from_nanos(run_ns),
        queued: task.sent.saturating_duration_since(pending.submitted()),
        pid,
    };
    let c = &shared.counters;
    c.completed.fetch_add(1, Ordering::Relaxed);
    let old = c.ewma_run_ns.load(Ordering::Relaxed);
    let new = if old == 0 {
        run_ns
    } else {
        old - old / 8 + run_ns / 8
    };
    c.ewma_run_ns.store(new, Ordering::Relaxed);
    if task.killed == Some(KillReason::Cancel) {
        pending.fail(Error::cancelled(), info);
        return Ok(());
    }
    match outcome.into_error() {
        None => pending.succeed(body, info),
        Some(e) => {
            if e.is_panic() {
                c.panicked.fetch_add(1, Ordering::Relaxed);
            } else {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            pending.fail(e, info);
        }
    }
    Ok(())
}

/// Learns a function's run time (an average that follows changes within a few calls): what
/// dispatch asks before it writes a task behind a running one.
fn learn(run_times: &mut std::collections::HashMap<FnKey, u64>, key: FnKey, run_ns: u64) {
    run_times
        .entry(key)
        .and_modify(|old| *old = *old - *old / 4 + run_ns / 4)
        .or_insert(run_ns);
}
