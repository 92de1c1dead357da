//! Starting a worker process: pipes, `exec`, the handshake, and reaping.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::SharedPayload;
use super::child::WORKER_ENV;
use super::pool::{PIPELINE_FRAME_LIMIT, Shared};
use super::reader::Inbox;
use super::sys::{self, ExitWatch, pollfd, wait_fds};
use super::worker::{AfterAnswer, NewWorker};
use crate::error::{Error, ErrorKind, ExitInfo};
use crate::remote::Registry;
use crate::remote::wire::{self, Request, Response, SharedData};
use crate::tier::TierKind;

/// A started worker, between handshake and death.
pub(crate) struct Started {
    /// Read end of the worker's answer pipe.
    pub(crate) answers: Arc<File>,
    pub(crate) pid: u32,
    pub(crate) stderr: Option<JoinHandle<()>>,
    /// Bytes read after the `Ready` frame (none, unless the worker misbehaves).
    pub(crate) buf: BytesMut,
    /// Tells the worker's exit (see [`ExitWatch`]).
    pub(crate) exit: Arc<ExitWatch>,
    /// Read end of the wake-up socket pair (nonblocking); the write end is in the slot's state.
    pub(crate) wake: UnixStream,
}

fn exit_info(pid: u32, status: Option<ExitStatus>) -> ExitInfo {
    ExitInfo {
        pid: Some(pid),
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    }
}

/// Waits for `child` to exit; kills it if it lingers after closing its answer pipe.
pub(crate) fn reap(mut child: Child) -> ExitInfo {
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
fn child_setup(fds: [i32; 3], memory_limit: Option<u64>, parent: i32) -> std::io::Result<()> {
    // Killed when the thread that forked it ends: the slot thread, which lives until it has
    // reaped this worker, so only when the pool's process dies (or the pool is dropped
    // without the thread reaping it, which never happens). Then the check against the race:
    // a parent that died before the prctl made this process an orphan already.
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: prctl and getppid take integers only; both are async-signal-safe.
        let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if r == -1 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            return Err(std::io::Error::other("the pool's process died"));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
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
pub(crate) fn start(shared: &Arc<Shared>, slot: usize) -> Result<Started, StartError> {
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
    let parent = std::process::id() as i32;
    // The shared-data file, inherited by this worker only (it is close-on-exec here).
    let shared_fd = match &cfg.shared {
        SharedPayload::Mapped(f) => f.raw_fd(),
        _ => -1,
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls `child_setup`,
    // which makes async-signal-safe calls (fcntl, setrlimit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || child_setup([out_fd, in_fd, shared_fd], memory_limit, parent));
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
        // The pool killed it: its signal is no observed cause (the error's text keeps the
        // exit; the crash-loop guard must not take it for a kill from outside).
        let (e, _) = start_error(slot, detail, Some(exit));
        Err((e, None))
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
                            exit: Arc::new(ExitWatch::new(pid)),
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
        if shared.lock().killing {
            return fail(child, "the pool was shut down".into(), stderr);
        }
        let mut fds = [pollfd(answers.as_raw_fd(), libc::POLLIN)];
        match wait_fds(&mut fds, Some(left.min(HANDSHAKE_SLICE))) {
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

/// How often a worker's handshake wait looks whether the pool is being killed (a worker
/// still starting is killed too, so that a shutdown with a time limit keeps it).
const HANDSHAKE_SLICE: Duration = Duration::from_millis(20);

/// How long a dead worker's stderr forwarder may take to pass on its last lines (a panic's
/// backtrace) before the pool goes on without it. The pipe's end of file comes when the last
/// process holding it exits, which may be a program a task started and left running: waiting
/// for that would hold the worker's outcome hostage.
const STDERR_DRAIN: Duration = Duration::from_millis(200);

/// Waits up to [`STDERR_DRAIN`] for a stderr forwarder to finish, then lets it run on alone
/// (it ends by itself at the pipe's end of file).
pub(crate) fn join_stderr(t: JoinHandle<()>) {
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
    match exit.signal {
        // Killed by a signal: a crash or a kill from outside, not evidence of a missing init.
        Some(_) => format!("the worker was killed before the handshake ({exit})"),
        None => format!(
            "the worker exited before the handshake ({exit}): {}",
            super::FORGOT_INIT
        ),
    }
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
    st.start_kills = 0;
    let stopping = st.stopping;
    let sl = &mut st.slots[slot];
    let worker = NewWorker {
        conn: conn.clone(),
        child,
        pid: s.pid,
        pipeline_limit,
        inbox: Box::new(Inbox::new(
            s.answers.clone(),
            shared.cfg.max_frame,
            s.buf.clone(),
            s.exit.clone(),
        )),
        wake,
    };
    match sl.transition_to_serving(worker, stopping) {
        AfterAnswer::SendExit => shared.send_exit(&conn),
        AfterAnswer::Nothing => shared.pump(&mut st),
    }
    tracing::debug!(slot, pid = s.pid, "worker ready");
}
