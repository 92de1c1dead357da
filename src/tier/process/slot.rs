//! One worker slot: a thread that starts a worker process, reads its answers when no caller
//! does, notices its death, fails or re-queues its tasks, and starts the next one.
//!
//! A worker's answers are read by whoever holds the slot's [`ReaderRole`]: the caller waiting
//! for its own answer ([`read_own_answer`], bounded), or this thread, blocked in `read`. While
//! nobody holds it the thread waits in `poll` for the worker's end of file or a wake-up only,
//! so an answer the caller reads itself wakes no thread of the pool: the round trip is the
//! caller's write, the worker's wake-up, the worker's write, the caller's wake-up, as in a
//! plain pipe ping-pong. Deadlines are kept by the pool's watchdog thread ([`watchdog`]). See
//! `README.md` in this folder.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use super::SharedPayload;
use super::child::WORKER_ENV;
use super::pool::PIPELINE_FRAME_LIMIT;
use super::pool::{BigWrite, InFlight, KillReason, ReaderRole, Req, Shared, not_run};
use super::sys::{self, Deadline, pollfd, wait_fds};
use crate::error::{Error, ErrorKind, ExitInfo};
use crate::remote::Registry;
use crate::remote::wire::{self, Request, Response, SharedData};
use crate::tier::{RunInfo, TierKind};

/// A started worker, between handshake and death.
struct Started {
    /// Read end of the worker's answer pipe.
    answers: Arc<File>,
    pid: u32,
    stderr: Option<JoinHandle<()>>,
    /// Bytes read after the `Ready` frame (none, unless the worker misbehaves).
    buf: BytesMut,
    /// Read end of the wake-up socket pair (nonblocking); the write end is in the slot's state.
    wake: UnixStream,
}

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
}

/// When the worker hung up while a caller holds the reader role: how often the slot thread
/// looks whether the caller gave it back. A caller holds it for its bounded wait
/// ([`DEFAULT_RESULT_WAIT`](super::DEFAULT_RESULT_WAIT), 100 µs), and gives it back without a
/// wake-up when its answer came before the hang-up; looking every millisecond notices that
/// soon after, and costs nothing but on a worker's death.
const CALLER_RECHECK: Duration = Duration::from_millis(1);

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
    fn new(answers: Arc<File>, max_frame: usize, buf: BytesMut) -> Self {
        Inbox {
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
        loop {
            match self.read_now(shared, slot)? {
                Got::Frames => return Ok(true),
                Got::End => return Ok(false),
                Got::Nothing => {
                    let mut fds = [pollfd(self.answers.as_raw_fd(), libc::POLLIN)];
                    if wait_fds(&mut fds, None).is_err() {
                        // Cannot wait (not seen in practice): treat the worker as gone rather
                        // than spin; serving ends and the worker is reaped (or killed).
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Empties the wake-up socket (nonblocking).
fn drain_wakeups(wake: &UnixStream) {
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

/// Why serving a worker ended.
enum End {
    /// End of file: the worker exited (or closed its answer pipe).
    Eof,
    /// The worker sent something we cannot read; it was killed.
    Protocol(Error),
}

/// The slot thread's body.
pub(crate) fn run(shared: Arc<Shared>, slot: usize) {
    loop {
        {
            let st = shared.lock();
            if st.stopping || st.broken.is_some() {
                break;
            }
        }
        match start(&shared, slot) {
            Ok(started) => {
                let end = serve(&shared, slot, &started);
                finish(&shared, slot, started, end);
            }
            Err((e, exit)) => {
                let failures = {
                    let mut st = shared.lock();
                    st.start_failures += 1;
                    st.start_failures
                };
                // Not `%e`: its text says "the pool is broken", which is only true at the
                // last failure.
                tracing::warn!(
                    slot,
                    failures,
                    max = shared.cfg.max_start_failures,
                    exit = ?exit,
                    cause = e.detail().unwrap_or("unknown"),
                    "a worker failed to start"
                );
                if failures >= shared.cfg.max_start_failures {
                    let broken = Error::new(
                        ErrorKind::Pool,
                        format!(
                            "{failures} workers in a row failed to start; the last: {}",
                            e.detail().unwrap_or("unknown cause")
                        ),
                    )
                    .with_tier(TierKind::Processes);
                    let broken = match exit {
                        Some(x) => broken.with_exit(x),
                        None => broken,
                    };
                    tracing::error!(error = %broken, "process pool broken: crash-loop guard");
                    let mut st = shared.lock();
                    st.broken = Some(broken.clone());
                    shared.tx.close();
                    shared.fail_queued(&mut st, || broken.clone());
                    shared.changed.notify_all();
                    break;
                }
                let pause = Duration::from_millis(10u64 << failures.min(6));
                std::thread::sleep(pause);
            }
        }
    }
    tracing::trace!(slot, "slot thread exits");
}

fn exit_info(pid: u32, status: Option<ExitStatus>) -> ExitInfo {
    ExitInfo {
        pid: Some(pid),
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    }
}

/// Waits for `child` to exit; kills it if it lingers after closing its answer pipe.
fn reap(mut child: Child) -> ExitInfo {
    let pid = child.id();
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_info(pid, Some(status)),
            Ok(None) if t0.elapsed() < super::REAP_GRACE => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(None) => {
                let _ = child.kill();
                return exit_info(pid, child.wait().ok());
            }
            Err(_) => return exit_info(pid, None),
        }
    }
}

/// Makes the descriptors the worker inherits (its ends of the pipes, the shared-data file;
/// -1: none) survive `exec` and applies the memory cap. Runs in the forked child before
/// `exec`: only async-signal-safe calls.
fn child_setup(fds: [i32; 3], memory_limit: Option<u64>) -> std::io::Result<()> {
    for fd in fds.into_iter().filter(|&fd| fd >= 0) {
        #[allow(unsafe_code)]
        // SAFETY: fcntl on a descriptor we own in this (forked) process; F_SETFD with 0 only
        // clears close-on-exec. It is async-signal-safe.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        if r == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some(bytes) = memory_limit {
        let lim = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        #[allow(unsafe_code)]
        // SAFETY: setrlimit reads the struct we pass by reference; async-signal-safe.
        let r = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
        if r == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn forward_stderr(stderr: ChildStderr, slot: usize, pid: u32) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("offload-proc-err-{slot}"))
        .spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::with_capacity(256);
            let prefix = format!("[offload worker {slot} pid {pid}] ");
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let mut err = std::io::stderr().lock();
                        let _ = err.write_all(prefix.as_bytes());
                        let _ = err.write_all(&line);
                        if !line.ends_with(b"\n") {
                            let _ = err.write_all(b"\n");
                        }
                    }
                }
            }
        })
        .ok()
}

type StartError = (Error, Option<ExitInfo>);

fn start_error(slot: usize, detail: String, exit: Option<ExitInfo>) -> StartError {
    let e = Error::new(ErrorKind::Pool, detail)
        .with_tier(TierKind::Processes)
        .with_worker(slot);
    let e = match exit {
        Some(x) => e.with_exit(x),
        None => e,
    };
    (e, exit)
}

/// Starts a worker process and runs the handshake.
fn start(shared: &Arc<Shared>, slot: usize) -> Result<Started, StartError> {
    let cfg = &shared.cfg;
    let Some(registry) = Registry::global() else {
        return Err(start_error(slot, super::FORGOT_INIT.to_string(), None));
    };
    let pipes = sys::pipe().and_then(|(req_r, req_w)| Ok((req_r, req_w, sys::pipe()?)));
    let pipes = pipes.and_then(|(req_r, req_w, (ans_r, ans_w))| {
        // Nonblocking: a caller tries a read before it waits (see `read_own_answer`).
        sys::set_nonblocking(&ans_r, true)?;
        Ok((req_r, req_w, (ans_r, ans_w)))
    });
    let (req_r, req_w, (ans_r, ans_w)) =
        pipes.map_err(|e| start_error(slot, format!("could not create a pipe: {e}"), None))?;
    let wake_pair = UnixStream::pair().and_then(|(tx, rx)| {
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((tx, rx))
    });
    let (wake_tx, wake_rx) = wake_pair
        .map_err(|e| start_error(slot, format!("could not create a socket pair: {e}"), None))?;
    // Room in the request pipe for the frames that may wait behind a running task.
    let depth = cfg.pipeline.max(1);
    let capacity = sys::pipe_capacity(&req_w, PIPELINE_FRAME_LIMIT.saturating_mul(depth));
    let pipeline_limit = PIPELINE_FRAME_LIMIT.min(capacity / depth);
    let (out_fd, in_fd) = (ans_w.as_raw_fd(), req_r.as_raw_fd());
    let mut cmd = Command::new(&cfg.program);
    if let Some(arg0) = &cfg.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&cfg.args)
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .env(
            WORKER_ENV,
            format!("{out_fd},{in_fd},{slot},{}", cfg.max_frame),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let memory_limit = cfg.memory_limit;
    // The shared-data file, inherited by this worker only (it is close-on-exec here).
    let shared_fd = match &cfg.shared {
        SharedPayload::Mapped(f) => f.raw_fd(),
        _ => -1,
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls `child_setup`,
    // which makes async-signal-safe calls (fcntl, setrlimit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || child_setup([out_fd, in_fd, shared_fd], memory_limit));
    }
    let mut child = cmd.spawn().map_err(|e| {
        start_error(
            slot,
            format!("could not start {}: {e}", cfg.program.to_string_lossy()),
            None,
        )
    })?;
    // The worker's ends: closed here, so that its exit is the end of file of the answers.
    drop((req_r, ans_w));
    let pid = child.id();
    let stderr = child
        .stderr
        .take()
        .and_then(|e| forward_stderr(e, slot, pid));
    let conn = Arc::new(req_w);
    let answers = Arc::new(ans_r);
    let fail = |mut child: Child, detail: String, stderr: Option<JoinHandle<()>>| {
        let _ = child.kill();
        let exit = reap(child);
        if let Some(t) = stderr {
            join_stderr(t);
        }
        Err(start_error(slot, detail, Some(exit)))
    };
    let silent = |pid: u32| {
        format!(
            "the worker (pid {pid}) did not answer the handshake within {:?}: {}",
            cfg.handshake_timeout,
            super::FORGOT_INIT
        )
    };
    let deadline = Instant::now() + cfg.handshake_timeout;

    // Setup frame.
    let header = Request::Setup {
        build_id: registry.build_id(),
        worker: u32::try_from(slot).unwrap_or(u32::MAX),
        init: cfg.init.as_ref().map(|(name, _)| *name),
        init_args_len: cfg.init.as_ref().map_or(0, |(_, a)| a.len() as u64),
        shared: match &cfg.shared {
            SharedPayload::Mapped(f) => SharedData::Mapped {
                fd: f.raw_fd(),
                len: f.len(),
            },
            _ => SharedData::Inline,
        },
    };
    let inline: &[u8] = match &cfg.shared {
        SharedPayload::Inline(b) => b,
        _ => &[],
    };
    let mut body = Vec::with_capacity(cfg.init.as_ref().map_or(0, |(_, a)| a.len()) + inline.len());
    if let Some((_, args)) = &cfg.init {
        body.extend_from_slice(args);
    }
    body.extend_from_slice(inline);
    let mut out = BytesMut::new();
    if let Err(e) = wire::encode_frame(&header, &body, cfg.max_frame, &mut out) {
        return fail(
            child,
            format!("could not encode the setup frame: {e}"),
            stderr,
        );
    }
    match sys::write_all_by(&conn, &out, deadline, shared.guard_sigpipe) {
        Ok(true) => {}
        Ok(false) => return fail(child, silent(pid), stderr),
        Err(_) => {
            // The worker died before reading: usually it exited at once.
            let exit = reap(child);
            if let Some(t) = stderr {
                join_stderr(t);
            }
            return Err(start_error(slot, exited_early(exit), Some(exit)));
        }
    }

    // Ready, Refused, end of file, or silence.
    let mut codec = wire::codec(cfg.max_frame);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut scratch = [0u8; 4096];
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                return match wire::decode_payload::<Response<'_>>(&frame) {
                    Ok((Response::Ready { build_id, .. }, _))
                        if build_id == registry.build_id() =>
                    {
                        let started = Started {
                            answers,
                            pid,
                            stderr,
                            buf,
                            wake: wake_rx,
                        };
                        register(shared, slot, child, &started, conn, wake_tx, pipeline_limit);
                        Ok(started)
                    }
                    Ok((Response::Refused { reason }, _)) => {
                        let detail = format!("the worker refused the handshake: {reason}");
                        // It exits by itself right after refusing (code 3): reap, not kill,
                        // so that the error shows its own exit.
                        let exit = reap(child);
                        if let Some(t) = stderr {
                            join_stderr(t);
                        }
                        Err(start_error(slot, detail, Some(exit)))
                    }
                    Ok((other, _)) => {
                        let detail = format!("unexpected handshake answer {other:?}");
                        fail(child, detail, stderr)
                    }
                    Err(e) => fail(child, format!("a bad handshake frame: {e}"), stderr),
                };
            }
            Ok(None) => {}
            Err(e) => return fail(child, format!("a bad handshake frame: {e}"), stderr),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [pollfd(answers.as_raw_fd(), libc::POLLIN)];
        match wait_fds(&mut fds, Some(left)) {
            Ok(0) if left.is_zero() => return fail(child, silent(pid), stderr),
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => return fail(child, format!("waiting for the handshake: {e}"), stderr),
        }
        match (&*answers).read(&mut scratch) {
            // A worker that exits (without reading its setup frame, or refusing) is the end of
            // the answers.
            Ok(0) => return eof_during_handshake(child, stderr, slot),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => return eof_during_handshake(child, stderr, slot),
        }
    }
}

/// How long a dead worker's stderr forwarder may take to pass on its last lines (a panic's
/// backtrace) before the pool goes on without it. The pipe's end of file comes when the last
/// process holding it exits, which may be a program a task started and left running: waiting
/// for that would hold the worker's outcome hostage.
const STDERR_DRAIN: Duration = Duration::from_millis(200);

/// Waits up to [`STDERR_DRAIN`] for a stderr forwarder to finish, then lets it run on alone
/// (it ends by itself at the pipe's end of file).
fn join_stderr(t: JoinHandle<()>) {
    let until = Instant::now() + STDERR_DRAIN;
    while !t.is_finished() {
        if Instant::now() >= until {
            tracing::debug!("a dead worker's stderr is still open (a program its task started?)");
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = t.join();
}

fn eof_during_handshake(
    child: Child,
    stderr: Option<JoinHandle<()>>,
    slot: usize,
) -> Result<Started, StartError> {
    let exit = reap(child);
    if let Some(t) = stderr {
        join_stderr(t);
    }
    Err(start_error(slot, exited_early(exit), Some(exit)))
}

fn exited_early(exit: ExitInfo) -> String {
    format!(
        "the worker exited before the handshake ({exit}): {}",
        super::FORGOT_INIT
    )
}

/// Publishes a started worker to the pool and gives it work.
fn register(
    shared: &Arc<Shared>,
    slot: usize,
    child: Child,
    s: &Started,
    conn: Arc<File>,
    wake: UnixStream,
    pipeline_limit: usize,
) {
    let mut st = shared.lock();
    st.start_failures = 0;
    let stopping = st.stopping;
    let sl = &mut st.slots[slot];
    sl.conn = Some(conn.clone());
    sl.pipeline_limit = pipeline_limit;
    sl.big_write = BigWrite::None;
    sl.child = Some(child);
    sl.pid = Some(s.pid);
    sl.sent = 0;
    sl.retiring = false;
    sl.reader = ReaderRole::Nobody;
    sl.inbox = Some(Box::new(Inbox::new(
        s.answers.clone(),
        shared.cfg.max_frame,
        s.buf.clone(),
    )));
    sl.wake = Some(wake);
    if stopping {
        sl.retiring = true;
        shared.send_exit(&conn);
    } else {
        shared.pump(&mut st);
    }
    tracing::debug!(slot, pid = s.pid, "worker ready");
}

/// Serves the worker until it goes away: reads its answers while this thread holds the
/// reader role, otherwise waits for a wake-up (the role changed) or the worker's end of file.
fn serve(shared: &Arc<Shared>, slot: usize, s: &Started) -> End {
    let answers = s.answers.as_raw_fd();
    let wake = s.wake.as_raw_fd();
    loop {
        // First a frame claimed for this worker: nothing else is written to it meanwhile.
        write_claimed(shared, slot);
        let (role, inbox) = {
            let mut st = shared.lock();
            let sl = &mut st.slots[slot];
            let inbox = match sl.reader {
                ReaderRole::Thread => sl.inbox.take(),
                _ => None,
            };
            (sl.reader, inbox)
        };
        match (role, inbox) {
            (ReaderRole::Thread, Some(inbox)) => {
                if let Some(end) = read_answers(shared, slot, inbox, true) {
                    return end;
                }
            }
            (ReaderRole::Thread, None) => {
                // Unreachable: the inbox is in the slot whenever nobody reads. Do not spin.
                tracing::error!(
                    slot,
                    "the reader role without the answer pipe; waiting for a wake-up"
                );
                let _ = wait_fds(&mut [pollfd(wake, libc::POLLIN)], None);
                drain_wakeups(&s.wake);
            }
            (_, _) => {
                // Nobody reads, or a caller does. No POLLIN: an answer arriving must not wake
                // this thread; POLLHUP (always reported) comes when the worker's end closes, a
                // wake-up when the role changed.
                let mut fds = [pollfd(answers, 0), pollfd(wake, libc::POLLIN)];
                let _ = wait_fds(&mut fds, None);
                drain_wakeups(&s.wake);
                if fds[0].revents == 0 {
                    continue;
                }
                // The worker went away (or the pipe failed): read what is left, then the
                // end of file, without giving the role back.
                let inbox = {
                    let mut st = shared.lock();
                    let sl = &mut st.slots[slot];
                    if sl.reader == ReaderRole::Nobody {
                        sl.reader = ReaderRole::Thread;
                        sl.inbox.take()
                    } else {
                        None
                    }
                };
                match inbox {
                    Some(inbox) => {
                        if let Some(end) = read_answers(shared, slot, inbox, false) {
                            return end;
                        }
                    }
                    None => {
                        // A caller holds the role (for its bounded wait); it may give it
                        // back without a wake-up. Look again shortly rather than spin on the
                        // hang-up, which stays reported.
                        let _ = wait_fds(&mut [pollfd(wake, libc::POLLIN)], Some(CALLER_RECHECK));
                        drain_wakeups(&s.wake);
                    }
                }
            }
        }
    }
}

/// Writes the frame of the task claimed for this slot's worker, if one is, with the pool's
/// lock released, then settles the outcome under the lock. See [`BigWrite`] for the rules.
fn write_claimed(shared: &Arc<Shared>, slot: usize) {
    let (id, conn, frame) = {
        let mut st = shared.lock();
        let stopping = st.stopping;
        let sl = &mut st.slots[slot];
        let BigWrite::Claimed(id) = sl.big_write else {
            return;
        };
        let pos = sl.inflight.iter().position(|t| t.id == id);
        match (pos, sl.conn.clone()) {
            (Some(pos), Some(conn)) if !stopping && sl.inflight[pos].killed.is_none() => {
                sl.big_write = BigWrite::Writing(id);
                let frame = std::mem::take(&mut sl.inflight[pos].frame);
                (id, conn, frame)
            }
            (pos, _) => {
                // Not to be written: the worker is going away (nothing is sent to it), or the
                // pool stops. The frame never left, so the task did not run.
                sl.big_write = BigWrite::None;
                let t = pos.and_then(|p| sl.inflight.remove(p));
                let Some(t) = t else {
                    return;
                };
                if stopping || t.killed.is_some() {
                    let e = match t.killed {
                        Some(KillReason::Cancel) => Error::cancelled(),
                        Some(KillReason::Timeout(limit)) => Error::timed_out(limit),
                        _ => Error::shut_down(),
                    };
                    drop(st);
                    let info = not_run(None, t.task.as_ref());
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    t.task.fail(e, info);
                } else {
                    st.retry.push_front(t.unsent());
                    shared.pump(&mut st);
                }
                shared.changed.notify_all();
                return;
            }
        }
    };
    tracing::trace!(
        slot,
        task = id,
        bytes = frame.len(),
        "writing a large frame without the lock"
    );
    let written = sys::write_all(&conn, &frame, shared.guard_sigpipe);
    let mut st = shared.lock();
    let stopping = st.stopping;
    let sl = &mut st.slots[slot];
    sl.big_write = BigWrite::None;
    match (written, sl.inflight.iter().position(|t| t.id == id)) {
        // Written, and already answered: the worker read it whole and a reader took its
        // answer before this thread took the lock again.
        (_, None) => {}
        (Ok(()), Some(pos)) => {
            let now = Instant::now();
            let t = &mut sl.inflight[pos];
            t.frame = frame;
            t.sent = now;
            if pos == 0 && t.started.is_none() {
                t.started = Some(now);
                if t.timeout.is_some() {
                    shared.deadlines.notify_one();
                }
            }
        }
        (Err(e), Some(pos)) => {
            sl.inflight[pos].frame = frame;
            if sl.inflight[pos].killed.is_none() && !stopping {
                // The worker went away while reading (or cannot read the rest): kill it,
                // the frame half written leaves it nothing to serve, and it holds no other
                // task; then the failed-write path: elsewhere, or failed after
                // `MAX_FAILED_WRITES`.
                if let Some(c) = sl.child.as_mut() {
                    let _ = c.kill();
                }
                if let Some(t) = sl.inflight.remove(pos) {
                    tracing::debug!(slot, task = id, error = %e, "a large frame's write failed");
                    shared.failed_write(&mut st, slot, t.unsent(), &e);
                }
            }
            // Otherwise a cancel killed the worker (it held only this task) or the pool stops:
            // the task stays in flight, and `finish` fails it as cancelled or shut down.
        }
    }
    shared.pump(&mut st);
    let idle = st.closing && shared.is_idle(&st);
    drop(st);
    if idle {
        shared.changed.notify_all();
    }
}

/// Reads answers until the end of file, or (with `release`) only while the worker has
/// unanswered tasks and then gives the role back. Returns how serving ended, or `None` when
/// the role was given back.
fn read_answers(
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
            if release && sl.inflight.is_empty() && sl.conn.is_some() {
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
    let mut st = shared.lock();
    let sl = &mut st.slots[slot];
    if let Some(c) = sl.child.as_mut() {
        let _ = c.kill();
    }
    sl.conn = None;
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
    let (task, idle) = {
        let mut st = shared.lock();
        let max_tasks = shared.cfg.max_tasks;
        let sl = &mut st.slots[slot];
        if sl.inflight.front().is_none_or(|t| t.id != id) {
            return Err(Error::new(
                ErrorKind::Remote,
                format!("the worker answered task {id}, which it was not running"),
            ));
        }
        let task = sl
            .inflight
            .pop_front()
            .expect("checked: the front is task `id`");
        if let Some(next) = sl.inflight.front_mut() {
            next.started = Some(Instant::now());
            if next.timeout.is_some() {
                shared.deadlines.notify_one();
            }
            if next.killed == Some(KillReason::Cancel) {
                if let Some(c) = sl.child.as_mut() {
                    let _ = c.kill();
                }
            }
        } else if max_tasks.is_some_and(|m| sl.sent >= m) && !sl.retiring {
            // Served its quota: let it go; the slot thread starts a fresh one.
            sl.retiring = true;
            if let Some(conn) = &sl.conn {
                shared.send_exit(conn);
            }
        }
        shared.pump(&mut st);
        // Only shutdown waits for the pool to become idle (and sets `closing` first).
        (task, st.closing && shared.is_idle(&st))
    };
    if idle {
        shared.changed.notify_all();
    }
    let info = RunInfo {
        tier: TierKind::Processes,
        worker: Some(slot),
        run_time: Duration::from_nanos(run_ns),
        queued: task.sent.saturating_duration_since(task.task.submitted()),
        pid: None,
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
        task.task.fail(Error::cancelled(), info);
        return Ok(());
    }
    match outcome.into_error() {
        None => task.task.succeed(body, info),
        Some(e) => {
            if e.is_panic() {
                c.panicked.fetch_add(1, Ordering::Relaxed);
            } else {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            task.task.fail(e, info);
        }
    }
    Ok(())
}

/// After the worker went away: reap it, fail its running task, re-queue the ones it had not
/// started.
fn finish(shared: &Arc<Shared>, slot: usize, s: Started, end: End) {
    let (child, inflight, retiring, stopping, unsent) = {
        let mut st = shared.lock();
        let stopping = st.stopping;
        let sl = &mut st.slots[slot];
        // A frame claimed for this worker and not written (the worker hung up first). This
        // thread writes claimed frames (`write_claimed`), so none is being written now.
        let unsent = match std::mem::take(&mut sl.big_write) {
            BigWrite::Claimed(id) => Some(id),
            BigWrite::Writing(_) | BigWrite::None => None,
        };
        sl.conn = None;
        sl.pid = None;
        sl.reader = ReaderRole::Nobody;
        sl.inbox = None;
        sl.wake = None;
        let retiring = std::mem::replace(&mut sl.retiring, false);
        (
            sl.child.take(),
            std::mem::take(&mut sl.inflight),
            retiring,
            stopping,
            unsent,
        )
    };
    let exit = match child {
        Some(c) => reap(c),
        None => ExitInfo {
            pid: Some(s.pid),
            code: None,
            signal: None,
        },
    };
    if let Some(t) = s.stderr {
        join_stderr(t);
    }
    let mut front_error = match end {
        End::Protocol(e) => Some(e.with_exit(exit)),
        End::Eof => None,
    };
    let expected = inflight.is_empty() && (retiring || stopping) && front_error.is_none();
    if expected {
        tracing::debug!(slot, %exit, "worker exited");
    } else {
        tracing::warn!(slot, %exit, tasks = inflight.len(), "worker died");
    }
    let mut requeue: Vec<Req> = Vec::new();
    for (i, t) in inflight.into_iter().enumerate() {
        let InFlight {
            id,
            task,
            frame,
            timeout,
            started,
            sent,
            killed,
            failed_writes,
        } = t;
        let info = RunInfo {
            tier: TierKind::Processes,
            worker: Some(slot),
            run_time: started.map_or(Duration::ZERO, |s| s.elapsed()),
            queued: sent.saturating_duration_since(task.submitted()),
            pid: None,
        };
        let never_sent = unsent == Some(id);
        let err = match killed {
            Some(KillReason::Cancel) => Some(Error::cancelled()),
            Some(KillReason::Timeout(limit)) => Some(Error::timed_out(limit).with_exit(exit)),
            // Its frame was never written: it did not run, and runs elsewhere.
            None if never_sent && stopping => Some(Error::shut_down()),
            None if never_sent => None,
            None if i == 0 && front_error.is_some() => front_error.take(),
            None if stopping => Some(Error::shut_down()),
            None if i == 0 => Some(Error::worker_died(exit)),
            None => None,
        };
        match err {
            Some(e) => {
                shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                task.fail(e, info);
            }
            None => requeue.push(Req {
                id,
                frame,
                task,
                timeout,
                started: true,
                // A frame written whole counts no failed write.
                failed_writes: if never_sent { failed_writes } else { 0 },
            }),
        }
    }
    if !stopping {
        shared.counters.respawned.fetch_add(1, Ordering::Relaxed);
    }
    let mut st = shared.lock();
    for r in requeue.into_iter().rev() {
        st.retry.push_front(r);
    }
    shared.pump(&mut st);
    drop(st);
    shared.changed.notify_all();
}

/// The pool's deadline keeper: sleeps until the earliest deadline of a running task, kills
/// the worker of a task past it (the slot thread then fails the task as "timed out"). Woken
/// when a task with a deadline starts, and at shutdown.
pub(crate) fn watchdog(shared: Arc<Shared>) {
    let mut st = shared.lock();
    while !st.stopping {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (i, sl) in st.slots.iter_mut().enumerate() {
            let Some(t) = sl.inflight.front_mut() else {
                continue;
            };
            let (Some(limit), Some(started), None) = (t.timeout, t.started, t.killed) else {
                continue;
            };
            let due = started + limit;
            if due <= now {
                t.killed = Some(KillReason::Timeout(limit));
                tracing::debug!(slot = i, pid = ?sl.pid, ?limit, "deadline: killing the worker");
                if let Some(c) = sl.child.as_mut() {
                    let _ = c.kill();
                }
                // Nothing more goes to a worker being killed: a task written now would die
                // with it (the kill may land after the timed-out task finished).
                sl.conn = None;
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        st = match next {
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                shared
                    .deadlines
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => shared.deadlines.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}
