//! Which worker ranks are alive: rank 0's pings, the workers' answers, and what each side does
//! when the other goes quiet. Also the kill order of [`ShutdownMode::Kill`].
//!
//! MPI 4.1 gives rank 0 no error when a rank dies or its host drops off the network: a receive
//! from it simply waits. So the cluster watches for itself, the same way on every host:
//!
//! - **Rank 0 pings** every worker rank (busy or idle, retired ones too) every
//!   [`PING_INTERVAL`], from its MPI thread, with an empty [`TAG_ALIVE`] message.
//! - **A worker answers** each ping with an empty [`TAG_ALIVE`] message: its serving loop when
//!   idle (the ping arrives in the loop's receive), its *watcher* thread while a task runs (the
//!   task runs on the main thread, without the worker's MPI lock; the watcher takes the lock,
//!   drains the pings and answers once). So a busy rank stays visibly alive however long its
//!   task; a task that runs too long is what [`task_timeout`](super::ClusterBuilder::task_timeout)
//!   is for.
//! - **Rank 0 declares a rank lost** when a ping it sent has had no answer (nor any later
//!   answer) for [`SILENCE_LIMIT`]: the rank died, hangs outside a task (stopped, deadlocked
//!   serving loop), or is unreachable (its host's link is down). Its task, if any, fails with
//!   [`Error::is_worker_died`](crate::Error::is_worker_died), the message saying so; the rank
//!   is never used again and the cluster serves on with the others. A task therefore fails at
//!   most [`SILENCE_LIMIT`] + [`PING_INTERVAL`] (1.2 s) after its rank went quiet. Rank 0
//!   judges only right after it has received what arrived, so a rank 0 that was itself held
//!   up (a long raw ping-pong, an overloaded host) never blames a rank for its own delay.
//! - **On rank 0's own host** the processes are also checked in `/proc` every
//!   [`LIVENESS_INTERVAL`](super::LIVENESS_INTERVAL) while tasks run: a local death is seen
//!   within 200 ms.
//! - **A worker leaves when rank 0 goes quiet**: no message from rank 0 for [`RANK0_SILENCE`]
//!   and the watcher ends the process (status 1). That is what ends the ranks of a host cut
//!   off from rank 0, or of a job whose rank 0 vanished, so that no rank lingers.
//! - **Kill**: [`ShutdownMode::Kill`] fails every running task with "shut down" on rank 0 and
//!   sends each busy rank an empty [`TAG_KILL`] message; its watcher takes it, finalizes MPI and
//!   ends the process (a rank that finished its task meanwhile takes it in its serving loop and
//!   finalizes too). Killed ranks get no exit message.
//!
//! A worker's serving loop holds the MPI lock while it receives a request or sends a reply, so
//! a single transfer that takes longer than [`SILENCE_LIMIT`] (a frame near
//! [`DEFAULT_MAX_FRAME`](crate::remote::wire::DEFAULT_MAX_FRAME), 64 MiB, over a link slower than
//! about 500 Mbit/s) leaves pings unanswered and its rank is taken for lost. A reply received
//! counts as an answer.
//!
//! The pings cost each idle rank five tiny messages a second, and rank 0's MPI thread wakes
//! five times a second when idle (it used to park without a deadline).
//!
//! [`ShutdownMode::Kill`]: crate::ShutdownMode::Kill

use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::service::run_info;
use super::table::Table;
use crate::error::{Error, ErrorKind, ExitInfo};

/// Rank 0's liveness ping and a worker's answer (both empty).
pub(super) const TAG_ALIVE: i32 = 17;
/// Rank 0's kill order to a busy worker rank ([`ShutdownMode::Kill`](crate::ShutdownMode::Kill)).
pub(super) const TAG_KILL: i32 = 18;

/// How often rank 0 pings every worker rank. Five a second: a lost rank is found well within
/// a second and a half, for a few tiny messages per rank per second.
pub const PING_INTERVAL: Duration = Duration::from_millis(200);

/// How long a ping may go unanswered before rank 0 declares its rank lost ("worker died":
/// dead, hung outside a task, or unreachable). Five ping intervals: long against a scheduling
/// hiccup of a loaded host (tens of milliseconds), short against what a user waits for.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(1);

/// How long a worker rank waits without any message from rank 0 (which pings every
/// [`PING_INTERVAL`]) before it ends its process: rank 0 is gone or this host is cut off.
/// Three times [`SILENCE_LIMIT`]: rank 0 gives up on the worker first.
pub const RANK0_SILENCE: Duration = Duration::from_secs(3);

impl Table {
    /// Every [`PING_INTERVAL`]: takes the answers that arrived, declares lost every rank whose
    /// ping has gone unanswered for [`SILENCE_LIMIT`], and pings the watched ranks again.
    pub(super) fn keep_alive(&mut self, world: &SimpleCommunicator, now: Instant) {
        if now < self.next_ping {
            return;
        }
        self.take_answers(world);
        for rank in 1..self.ranks.len() {
            let quiet = self.ranks[rank]
                .unanswered_since
                .map(|s| now.saturating_duration_since(s));
            if self.ranks[rank].watched() && quiet.is_some_and(|q| q >= SILENCE_LIMIT) {
                let info = &self.ranks[rank];
                let why = format!(
                    "stopped answering rank 0 for {SILENCE_LIMIT:?}: it died, hangs, or is \
                     unreachable (host {}, pid {})",
                    info.host,
                    info.pid.map_or_else(|| "?".into(), |p| p.to_string())
                );
                self.lose(rank, &why);
            }
        }
        self.send_pings(world, now, None);
    }

    /// Pings every watched rank but `except`, noting when for the ones that owe no answer yet.
    pub(super) fn send_pings(
        &mut self,
        world: &SimpleCommunicator,
        now: Instant,
        except: Option<usize>,
    ) {
        for rank in 1..self.ranks.len() {
            if !self.ranks[rank].watched() || Some(rank) == except {
                continue;
            }
            self.outbox.post(world, rank, TAG_ALIVE, Vec::new());
            self.ranks[rank].unanswered_since.get_or_insert(now);
        }
        self.next_ping = now + PING_INTERVAL;
    }

    /// Receives every answer that has arrived: their ranks owe nothing now.
    fn take_answers(&mut self, world: &SimpleCommunicator) {
        while let Some((msg, status)) = world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_ALIVE)
        {
            let _ = msg.matched_receive_into(&mut [0u8; 0][..]);
            if let Some(r) = usize::try_from(status.source_rank())
                .ok()
                .and_then(|r| self.ranks.get_mut(r))
            {
                r.unanswered_since = None;
            }
        }
    }

    /// A worker on this host whose process is gone (only seen when OpenMPI runs with
    /// `--enable-recovery`; by default it kills the whole job first) fails its task.
    pub(super) fn check_local_processes(&mut self) {
        for rank in 1..self.inflight.len() {
            if self.inflight[rank].is_none() {
                continue;
            }
            let info = &self.ranks[rank];
            let Some(pid) = info.pid else { continue };
            if info.host != self.my_host || process_alive(pid) {
                continue;
            }
            let why = format!("(pid {pid} on {}) died", info.host);
            self.lose(rank, &why);
        }
    }

    /// Rank `rank` is lost (`why`): it is never used again, and its task fails "worker died".
    fn lose(&mut self, rank: usize, why: &str) {
        self.ranks[rank].dead = true;
        self.free.retain(|&r| r != rank);
        self.outbox.abandon(rank);
        let pid = self.ranks[rank].pid;
        match self.inflight[rank].take() {
            Some(f) => {
                tracing::error!(rank, func = f.func, running_for = ?f.dispatched.elapsed(), why,
                    "a cluster worker rank was lost; its task fails and the rank is not used again");
                let e = Error::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "MPI rank {rank} {why} while running it; OpenMPI aborts the job next \
                         unless mpiexec ran with --enable-recovery"
                    ),
                )
                .with_worker(rank)
                .with_exit(ExitInfo {
                    pid,
                    code: None,
                    signal: None,
                });
                f.deliver.fail(e, run_info(rank, 0, f.queued));
            }
            None => tracing::error!(
                rank,
                why,
                "an idle cluster worker rank was lost; it is not used again"
            ),
        }
    }

    /// [`ShutdownMode::Kill`](crate::ShutdownMode::Kill): every running task fails with "shut
    /// down" and its rank is told to end (see the module docs).
    pub(super) fn kill_running(&mut self, world: &SimpleCommunicator) {
        for rank in 1..self.inflight.len() {
            let Some(f) = self.inflight[rank].take() else {
                continue;
            };
            self.outbox.post(world, rank, TAG_KILL, Vec::new());
            self.ranks[rank].killed = true;
            self.free.retain(|&r| r != rank);
            tracing::debug!(rank, func = f.func, "killed mid-task by a Kill shutdown");
            let e = Error::new(
                ErrorKind::ShutDown,
                format!(
                    "the cluster was shut down (Kill) while it ran; MPI rank {rank} was stopped"
                ),
            )
            .with_worker(rank);
            f.deliver.fail(e, run_info(rank, 0, f.queued));
        }
    }
}

/// After a rank was lost: ends the whole job when this process (rank 0) exits, with
/// `MPI_Abort` and status 0, so that `mpiexec` kills every rank left on every host (a stopped
/// or cut-off one cannot end by itself) and exits. Rank 0 does not finalize MPI then: the
/// closing fence would wait for the lost rank for ever.
pub(super) fn end_job_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: registers a plain `extern "C" fn` with no captured state.
        let rc = unsafe { libc::atexit(abort_job) };
        if rc != 0 {
            tracing::warn!("could not register the end of the MPI job at exit");
        }
    });
}

#[allow(unsafe_code)]
extern "C" fn abort_job() {
    // SAFETY: MPI was initialised on this process's MPI thread and is not finalized (rank 0
    // skips MPI_Finalize after a loss); the process is exiting, so no other thread of the
    // library makes MPI calls any more that this could race with in a way that matters.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 0);
    }
}

/// Whether process `pid` exists on this host and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        // No /proc (not Linux): assume alive rather than fail healthy work.
        Err(_) => !std::path::Path::new("/proc/self").exists(),
    }
}
