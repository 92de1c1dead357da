//! One worker slot: a thread that starts a worker process, reads its answers, notices its
//! death, fails or re-queues its tasks, and starts the next one.
//!
//! The thread blocks in `read` on the worker's socket, so a result costs one wake-up of this
//! thread. Deadlines are kept by the pool's watchdog thread ([`watchdog`]). See `README.md`
//! in this folder.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::child::WORKER_ENV;
use super::pool::{InFlight, KillReason, Req, Shared};
use crate::error::{Error, ErrorKind, ExitInfo};
use crate::remote::Registry;
use crate::remote::wire::{self, Request, Response};
use crate::tier::{RunInfo, TierKind};

/// A started worker, between handshake and death.
struct Started {
    conn: Arc<UnixStream>,
    pid: u32,
    stderr: Option<JoinHandle<()>>,
    buf: BytesMut,
}

/// Why serving a worker ended.
enum End {
    /// End of file: the worker exited (or closed its socket).
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
                tracing::warn!(slot, failures, error = %e, "a worker failed to start");
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

/// Waits for `child` to exit; kills it if it lingers after closing its socket.
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

/// Makes the child end of the socket survive `exec` and applies the memory cap. Runs in the
/// forked child before `exec`: only async-signal-safe calls.
fn child_setup(fd: i32, memory_limit: Option<u64>) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: fcntl on a descriptor we own in this (forked) process; F_SETFD with 0 only clears
    // close-on-exec. It is async-signal-safe.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
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
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| start_error(slot, format!("could not create a socket pair: {e}"), None))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&cfg.program);
    if let Some(arg0) = &cfg.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&cfg.args)
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .env(WORKER_ENV, format!("{fd},{slot},{}", cfg.max_frame))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let memory_limit = cfg.memory_limit;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only calls `child_setup`,
    // which makes two async-signal-safe calls (fcntl, setrlimit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || child_setup(fd, memory_limit));
    }
    let mut child = cmd.spawn().map_err(|e| {
        start_error(
            slot,
            format!("could not start {}: {e}", cfg.program.to_string_lossy()),
            None,
        )
    })?;
    drop(theirs);
    let pid = child.id();
    let stderr = child
        .stderr
        .take()
        .and_then(|e| forward_stderr(e, slot, pid));
    let conn = Arc::new(ours);
    let fail = |mut child: Child, detail: String, stderr: Option<JoinHandle<()>>| {
        let _ = child.kill();
        let exit = reap(child);
        if let Some(t) = stderr {
            let _ = t.join();
        }
        Err(start_error(slot, detail, Some(exit)))
    };

    // Setup frame.
    let header = Request::Setup {
        build_id: registry.build_id(),
        worker: u32::try_from(slot).unwrap_or(u32::MAX),
        init: cfg.init.as_ref().map(|(name, _)| *name),
        init_args_len: cfg.init.as_ref().map_or(0, |(_, a)| a.len() as u64),
    };
    let mut body =
        Vec::with_capacity(cfg.init.as_ref().map_or(0, |(_, a)| a.len()) + cfg.shared.len());
    if let Some((_, args)) = &cfg.init {
        body.extend_from_slice(args);
    }
    body.extend_from_slice(&cfg.shared);
    let mut out = BytesMut::new();
    if let Err(e) = wire::encode_frame(&header, &body, cfg.max_frame, &mut out) {
        return fail(
            child,
            format!("could not encode the setup frame: {e}"),
            stderr,
        );
    }
    if let Err(e) = (&*conn).write_all(&out) {
        // The worker died before reading: usually it exited at once.
        let _ = e;
        let exit = reap(child);
        if let Some(t) = stderr {
            let _ = t.join();
        }
        return Err(start_error(slot, exited_early(exit), Some(exit)));
    }

    // Ready, Refused, end of file, or silence.
    let _ = conn.set_read_timeout(Some(cfg.handshake_timeout));
    let mut codec = wire::codec(cfg.max_frame);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut scratch = [0u8; 4096];
    let deadline = Instant::now() + cfg.handshake_timeout;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                return match wire::decode_payload::<Response<'_>>(&frame) {
                    Ok((Response::Ready { build_id, .. }, _))
                        if build_id == registry.build_id() =>
                    {
                        let _ = conn.set_read_timeout(None);
                        let started = Started {
                            conn,
                            pid,
                            stderr,
                            buf,
                        };
                        register(shared, slot, child, &started);
                        Ok(started)
                    }
                    Ok((Response::Refused { reason }, _)) => {
                        let detail = format!("the worker refused the handshake: {reason}");
                        fail(child, detail, stderr)
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
        match (&*conn).read(&mut scratch) {
            // A worker that exits without reading its setup frame resets the connection.
            Ok(0) => return eof_during_handshake(child, stderr, slot),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return eof_during_handshake(child, stderr, slot);
            }
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && Instant::now() < deadline => {}
            Err(_) => {
                let detail = format!(
                    "the worker (pid {pid}) did not answer the handshake within {:?}: \
                     {}",
                    cfg.handshake_timeout,
                    super::FORGOT_INIT
                );
                return fail(child, detail, stderr);
            }
        }
    }
}

fn eof_during_handshake(
    child: Child,
    stderr: Option<JoinHandle<()>>,
    slot: usize,
) -> Result<Started, StartError> {
    let exit = reap(child);
    if let Some(t) = stderr {
        let _ = t.join();
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
fn register(shared: &Arc<Shared>, slot: usize, child: Child, s: &Started) {
    let mut st = shared.lock();
    st.start_failures = 0;
    let stopping = st.stopping;
    let sl = &mut st.slots[slot];
    sl.conn = Some(s.conn.clone());
    sl.child = Some(child);
    sl.pid = Some(s.pid);
    sl.sent = 0;
    sl.retiring = false;
    if stopping {
        sl.retiring = true;
        send_exit(shared, &s.conn);
    } else {
        shared.pump(&mut st);
    }
    tracing::debug!(slot, pid = s.pid, "worker ready");
}

fn send_exit(shared: &Shared, conn: &UnixStream) {
    let mut out = BytesMut::new();
    if wire::encode_frame(&Request::Exit, &[], shared.cfg.max_frame, &mut out).is_ok() {
        let mut w = conn;
        let _ = w.write_all(&out);
    }
}

/// Reads the worker's answers until it goes away.
fn serve(shared: &Arc<Shared>, slot: usize, s: &Started) -> End {
    let mut codec = wire::codec(shared.cfg.max_frame);
    let mut buf = s.buf.clone();
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        match (&*s.conn).read(&mut scratch) {
            Ok(0) => return End::Eof,
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(frame)) => {
                            if let Err(e) = on_frame(shared, slot, s, &frame) {
                                kill(shared, slot);
                                return End::Protocol(e);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            kill(shared, slot);
                            let e = Error::new(
                                ErrorKind::Encoding,
                                format!("the worker sent a bad frame: {e}"),
                            );
                            return End::Protocol(e);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return End::Eof,
        }
    }
}

fn kill(shared: &Shared, slot: usize) {
    let mut st = shared.lock();
    if let Some(c) = st.slots[slot].child.as_mut() {
        let _ = c.kill();
    }
}

/// Handles one frame from a running worker.
fn on_frame(shared: &Arc<Shared>, slot: usize, s: &Started, frame: &[u8]) -> Result<(), Error> {
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
            send_exit(shared, &s.conn);
        }
        shared.pump(&mut st);
        (task, shared.is_idle(&st))
    };
    if idle {
        shared.changed.notify_all();
    }
    let info = RunInfo {
        tier: TierKind::Processes,
        worker: Some(slot),
        run_time: Duration::from_nanos(run_ns),
        queued: task.sent.saturating_duration_since(task.task.submitted()),
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
    let (child, inflight, retiring, stopping) = {
        let mut st = shared.lock();
        let stopping = st.stopping;
        let sl = &mut st.slots[slot];
        sl.conn = None;
        sl.pid = None;
        let retiring = std::mem::replace(&mut sl.retiring, false);
        (
            sl.child.take(),
            std::mem::take(&mut sl.inflight),
            retiring,
            stopping,
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
        let _ = t.join();
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
        } = t;
        let info = RunInfo {
            tier: TierKind::Processes,
            worker: Some(slot),
            run_time: started.map_or(Duration::ZERO, |s| s.elapsed()),
            queued: sent.saturating_duration_since(task.submitted()),
        };
        let err = match killed {
            Some(KillReason::Cancel) => Some(Error::cancelled()),
            Some(KillReason::Timeout(limit)) => Some(Error::timed_out(limit).with_exit(exit)),
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
