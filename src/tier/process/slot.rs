//! One worker slot: a thread that starts a worker process, reads its answers when no caller
//! does, notices its death, fails or re-queues its tasks, and starts the next one.
//!
//! A worker's answers are read by whoever holds the slot's [`ReaderRole`]: the caller waiting
//! for its own answer ([`read_own_answer`](super::reader::read_own_answer), bounded), or this thread, blocked in `read`. While
//! nobody holds it the thread waits in `poll` for the worker's end of file or a wake-up only,
//! so an answer the caller reads itself wakes no thread of the pool: the round trip is the
//! caller's write, the worker's wake-up, the worker's write, the caller's wake-up, as in a
//! plain pipe ping-pong. Deadlines are kept by the pool's watchdog thread ([`watchdog`]). See
//! `README.md` in this folder.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::pool::Shared;
use super::reader::{CALLER_RECHECK, drain_wakeups, read_answers};
use super::start::{Started, join_stderr, reap, start};
use super::sys::{self, pollfd, wait_fds};
use super::worker::{BigWrite, Gone, InFlight, KillReason, Phase, ReaderRole, Req, not_run};
use crate::error::{Error, ErrorKind, ExitInfo};
use crate::tier::{RunInfo, TierKind};

/// Why serving a worker ended.
pub(crate) enum End {
    /// End of file: the worker exited (or closed its answer pipe).
    Eof,
    /// The worker sent something we cannot read; it was killed.
    Protocol(Error),
}

/// Signals that end a starting worker from outside (an operator, a supervisor, the OOM
/// killer), not by a fault of the program: the crash-loop guard does not count them toward
/// [`max_start_failures`](super::ProcessPoolBuilder::max_start_failures), and backs off
/// (10 ms doubling to 1.28 s) before it starts the next worker.
const KILLED_FROM_OUTSIDE: [i32; 4] = [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

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
                let killed_from_outside = exit
                    .and_then(|x| x.signal)
                    .is_some_and(|sig| KILLED_FROM_OUTSIDE.contains(&sig));
                let (failures, kills) = {
                    let mut st = shared.lock();
                    if st.stopping {
                        break;
                    }
                    if killed_from_outside {
                        st.start_kills += 1;
                    } else {
                        st.start_failures += 1;
                    }
                    (st.start_failures, st.start_kills)
                };
                if killed_from_outside {
                    // Not the program's fault (an operator, the OOM killer, a test): no step
                    // toward breaking the pool, but a growing pause before the next try.
                    tracing::info!(
                        slot,
                        kills,
                        cause = e.detail().unwrap_or("unknown"),
                        "a starting worker was killed; starting another"
                    );
                    std::thread::sleep(Duration::from_millis(10u64 << kills.min(7)));
                    continue;
                }
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
                // The worker's exit is watched too: a process its task forked may hold the
                // answer pipe open after the worker died.
                let mut fds = [
                    pollfd(answers, 0),
                    pollfd(wake, libc::POLLIN),
                    pollfd(s.exit.fd(), libc::POLLIN),
                ];
                let _ = wait_fds(&mut fds, s.exit.poll_every());
                drain_wakeups(&s.wake);
                let gone = fds[0].revents != 0
                    || fds[2].revents != 0
                    || (s.exit.poll_every().is_some() && s.exit.exited());
                if !gone {
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
            (Some(pos), Some(conn))
                if !stopping && sl.phase == Phase::Serving && sl.inflight[pos].killed.is_none() =>
            {
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
                    shared.pump(&mut st);
                    drop(st);
                    if let Some(task) = t.task {
                        let info = not_run(None, task.as_ref());
                        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                        task.fail(e, info);
                    }
                } else {
                    if let Some(r) = t.unsent() {
                        st.retry.push_front(r);
                    }
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
            if pos == 0 {
                // The worker has its arguments (all but the pipe's last buffer-full) and
                // starts now: a deadline counts from here on (it counted from the claim
                // while the write lasted).
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
                sl.transition_to_killed();
                if let Some(r) = sl.inflight.remove(pos).and_then(InFlight::unsent) {
                    tracing::debug!(slot, task = id, error = %e, "a large frame's write failed");
                    shared.failed_write(&mut st, slot, r, &e);
                }
            }
            // Otherwise a cancel killed the worker (it held only this task) or the pool stops:
            // the task stays in flight, and `finish` fails it as cancelled or shut down.
        }
    }
    shared.pump(&mut st);
}

/// After the worker went away: reap it, fail its running task, re-queue the ones it had not
/// started.
fn finish(shared: &Arc<Shared>, slot: usize, s: Started, end: End) {
    let (gone, stopping) = {
        let mut st = shared.lock();
        let stopping = st.stopping;
        (st.slots[slot].transition_to_starting(), stopping)
    };
    let Gone {
        child,
        inflight,
        retiring,
        killed,
        unsent,
    } = gone;
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
    } else if killed && front_error.is_none() {
        tracing::debug!(slot, %exit, tasks = inflight.len(), "worker killed by the pool");
    } else {
        tracing::warn!(slot, %exit, tasks = inflight.len(), "worker died");
    }
    let mut requeue: Vec<Req> = Vec::new();
    for (i, t) in inflight.into_iter().enumerate() {
        let InFlight {
            id,
            key,
            task,
            frame,
            timeout,
            started,
            sent,
            killed,
            failed_writes,
        } = t;
        let Some(task) = task else {
            // Withdrawn by a cancel: its handle has its outcome.
            continue;
        };
        let info = RunInfo {
            tier: TierKind::Processes,
            worker: Some(slot),
            run_time: started.map_or(Duration::ZERO, |s| s.elapsed()),
            queued: sent.saturating_duration_since(task.submitted()),
            pid: started.map(|_| s.pid),
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
                key,
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
                // Nothing more goes to a worker being killed: a task written now would die
                // with it (the kill may land after the timed-out task finished).
                sl.transition_to_killed();
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
