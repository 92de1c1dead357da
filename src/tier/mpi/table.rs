//! [`Table`]: which worker rank runs what, behind the MPI lock. Dispatching a task, receiving
//! replies, time limits and the raw ping-pong baseline; liveness is in `liveness.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::lifecycle::{
    RankInfo, SMALL_REQUEST, ServiceState, TAG_BIG, TAG_BIG_BODY, TAG_PING, TAG_TO_MASTER,
    TAG_TO_WORKER, Task,
};
use super::outbox::Outbox;
use super::service::{KEEP_BUFFER, run_info};
use crate::error::{Error, ErrorKind};
use crate::remote::wire::{
    DEFAULT_MAX_FRAME, Request, Response, WIRE_VERSION, decode_payload, frame_too_large,
};
use crate::tier::process::Pending;

pub(super) struct InFlight {
    id: u64,
    pub(super) deliver: Box<dyn Pending>,
    pub(super) func: &'static str,
    pub(super) dispatched: Instant,
    pub(super) queued: Duration,
    /// The task's time limit and when it runs out (from the send), if it has one.
    deadline: Option<(Duration, Instant)>,
    /// Some: a caller watches the reply until then (the direct path); None: the MPI thread's.
    lease: Option<Instant>,
}

/// Which worker rank runs what: rank 0's state of the cluster, behind the MPI lock
/// ([`ServiceState::table`]). Holding the lock is what allows a thread to call MPI.
pub(super) struct Table {
    /// Callers may call MPI (the direct path): the cluster is set up, MPI granted at least
    /// `MPI_THREAD_SERIALIZED`, and MPI is not being finalized.
    pub(super) direct: bool,
    /// The MPI thread holds a command that waits for a free rank: a caller that frees one
    /// must wake it.
    pub(super) stashed: bool,
    /// The MPI thread is parked without a deadline: a caller that leases a task must wake it
    /// so that it parks until the lease ends instead.
    pub(super) parked_idle: bool,
    pub(super) ranks: Vec<RankInfo>,
    pub(super) inflight: Vec<Option<InFlight>>,
    pub(super) free: VecDeque<usize>,
    next_id: u64,
    pub(super) my_host: String,
    /// When rank 0 pings the worker ranks next (see `liveness.rs`).
    pub(super) next_ping: Instant,
    send_buf: Vec<u8>,
    /// Sends to worker ranks still in progress.
    pub(super) outbox: Outbox,
    recv_buf: Vec<u8>,
    /// No task's deadline runs out before this (the earliest deadline set since the last
    /// look; the task may have ended since): [`Table::expire`] looks only from then on.
    next_deadline: Option<Instant>,
}

impl Table {
    pub(super) fn new() -> Self {
        Table {
            direct: false,
            stashed: false,
            parked_idle: false,
            ranks: Vec::new(),
            inflight: Vec::new(),
            free: VecDeque::new(),
            next_id: 0,
            my_host: String::new(),
            next_ping: Instant::now(),
            send_buf: Vec::new(),
            outbox: Outbox::default(),
            recv_buf: Vec::new(),
            next_deadline: None,
        }
    }

    /// The table of a cluster just set up: every worker rank in `ranks` free.
    pub(super) fn set_up(direct: bool, ranks: Vec<RankInfo>, my_host: String) -> Self {
        let size = ranks.len();
        Table {
            direct,
            inflight: (0..size).map(|_| None).collect(),
            free: (1..size).collect(),
            ranks,
            my_host,
            ..Table::new()
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|x| x.is_some()).count()
    }

    pub(super) fn live_workers(&self) -> usize {
        self.ranks.iter().skip(1).filter(|r| r.usable()).count()
    }

    /// Takes a free rank, if any.
    pub(super) fn take_free(&mut self) -> Option<usize> {
        self.free.pop_front()
    }

    /// Whether task `id` still waits for its reply on `rank`.
    pub(super) fn is_in_flight(&self, rank: usize, id: u64) -> bool {
        matches!(self.inflight.get(rank), Some(Some(f)) if f.id == id)
    }

    /// Sets the lease of task `id` on `rank` (None hands it to the MPI thread).
    pub(super) fn set_lease(&mut self, rank: usize, id: u64, lease: Option<Instant>) {
        if let Some(Some(f)) = self.inflight.get_mut(rank) {
            if f.id == id {
                f.lease = lease;
            }
        }
    }

    /// The tasks in flight that the MPI thread must poll for (no lease, or a lapsed one), and
    /// the earliest end of a running lease.
    pub(super) fn ownership(&self, now: Instant) -> (usize, Option<Instant>) {
        let mut owned = 0;
        let mut earliest: Option<Instant> = None;
        for f in self.inflight.iter().flatten() {
            match f.lease {
                Some(end) if end > now => earliest = Some(earliest.map_or(end, |e| e.min(end))),
                _ => owned += 1,
            }
        }
        (owned, earliest)
    }

    /// Sends `task` to the free `rank` (taken from `free` by the caller) and records it in
    /// flight, leased for `lease` from now when given. Returns the task's id, or None when it did not go out (cancelled
    /// while queued, or its request could not be encoded: it failed then); the rank is free
    /// again in that case.
    pub(super) fn dispatch(
        &mut self,
        world: &SimpleCommunicator,
        rank: usize,
        task: Task,
        lease: Option<Duration>,
    ) -> Option<u64> {
        if !task.deliver.start() {
            // Cancelled while queued: the slot holds its outcome already.
            self.free.push_front(rank);
            task.deliver.discard();
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        let header = if task.batch {
            Request::Batch {
                id,
                func: task.func,
            }
        } else {
            Request::Call {
                id,
                func: task.func,
            }
        };
        // One clock read per task here: each costs ~30 ns on the development VM.
        let now = Instant::now();
        let queued = now.saturating_duration_since(task.deliver.submitted());
        // encode_payload's layout, into the buffer kept from the last send.
        let mut buf = std::mem::take(&mut self.send_buf);
        buf.clear();
        buf.push(WIRE_VERSION);
        let mut buf = match postcard::to_extend(&header, buf) {
            Ok(b) => b,
            Err(e) => {
                self.free.push_front(rank);
                let e = Error::new(
                    ErrorKind::Encoding,
                    format!("could not encode a header: {e}"),
                );
                task.deliver.fail(e, run_info(rank, 0, queued));
                return None;
            }
        };
        buf.extend_from_slice(&task.args);
        if buf.len() > DEFAULT_MAX_FRAME {
            // The documented limit, as on the process tier (a worker would take any size).
            self.free.push_front(rank);
            let e = frame_too_large(buf.len(), DEFAULT_MAX_FRAME);
            task.deliver.fail(e, run_info(rank, 0, queued));
            return None;
        }
        if let Some(buf) = send_request(&mut self.outbox, world, rank, buf) {
            if buf.capacity() <= KEEP_BUFFER {
                self.send_buf = buf;
            }
        }
        let deadline = task.timeout.map(|d| (d, now + d));
        if let Some((_, end)) = deadline {
            self.next_deadline = Some(self.next_deadline.map_or(end, |n| n.min(end)));
        }
        self.inflight[rank] = Some(InFlight {
            id,
            deliver: task.deliver,
            func: task.func,
            dispatched: now,
            queued,
            lease: lease.map(|d| now + d),
            deadline,
        });
        Some(id)
    }

    /// Receives every reply that has arrived and completes its task. Returns how many.
    pub(super) fn poll_results(
        &mut self,
        world: &SimpleCommunicator,
        state: &ServiceState,
    ) -> usize {
        let mut n = 0;
        while let Some((msg, status)) = world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_TO_MASTER)
        {
            n += 1;
            let len = status
                .count(u8::equivalent_datatype())
                .try_into()
                .unwrap_or(0usize);
            let mut buf = std::mem::take(&mut self.recv_buf);
            buf.clear();
            buf.resize(len, 0);
            msg.matched_receive_into(&mut buf[..]);
            let rank = usize::try_from(status.source_rank()).unwrap_or(0);
            // A reply is as good as an answer to a ping (a worker sending a big reply cannot
            // answer pings meanwhile).
            if let Some(r) = self.ranks.get_mut(rank) {
                r.unanswered_since = None;
            }
            match self.inflight.get_mut(rank).and_then(Option::take) {
                Some(f) => {
                    self.free.push_back(rank);
                    deliver(f, rank, &buf, state);
                }
                None if self.ranks.get(rank).is_some_and(|r| r.retired) => {
                    tracing::debug!(
                        rank,
                        "a late reply from a rank retired after a timeout; ignored"
                    );
                }
                None if self.ranks.get(rank).is_some_and(|r| r.killed || r.dead) => {
                    tracing::debug!(rank, "a late reply from a killed or lost rank; ignored");
                }
                None => tracing::warn!(rank, "a reply from a rank with no task; ignored"),
            }
            if buf.capacity() <= KEEP_BUFFER {
                self.recv_buf = buf;
            }
        }
        n
    }

    /// Fails every task whose deadline has passed with "timed out" and retires its rank: the
    /// task cannot be stopped (nor can MPI tell a busy rank from an unreachable one), so the
    /// rank is never given work again. Looks at the tasks only once the earliest deadline set
    /// has come, so that tasks without one cost a comparison.
    pub(super) fn expire(&mut self, now: Instant) {
        match self.next_deadline {
            Some(next) if next <= now => {}
            _ => return,
        }
        let mut next: Option<Instant> = None;
        for rank in 1..self.inflight.len() {
            let Some((limit, end)) = self.inflight[rank].as_ref().and_then(|f| f.deadline) else {
                continue;
            };
            if end > now {
                next = Some(next.map_or(end, |n| n.min(end)));
                continue;
            }
            let Some(f) = self.inflight[rank].take() else {
                continue;
            };
            self.ranks[rank].retired = true;
            self.free.retain(|&r| r != rank);
            tracing::error!(
                rank,
                func = f.func,
                ?limit,
                "a cluster task timed out; it fails and its rank is not used again"
            );
            let e = Error::timed_out(limit).with_worker(rank);
            let run = now.saturating_duration_since(f.dispatched);
            f.deliver.fail(
                e,
                run_info(
                    rank,
                    u64::try_from(run.as_nanos()).unwrap_or(u64::MAX),
                    f.queued,
                ),
            );
        }
        self.next_deadline = next;
    }

    pub(super) fn ping_pong(
        &mut self,
        world: &SimpleCommunicator,
        rank: usize,
        rounds: u32,
    ) -> Result<Vec<Duration>, Error> {
        if rank == 0 || rank >= self.inflight.len() || !self.ranks[rank].usable() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("no worker rank {rank} to ping"),
            ));
        }
        let peer = world.process_at_rank(rank as i32);
        peer.send_with_tag(&rounds.to_le_bytes()[..], TAG_PING);
        let mut out = Vec::with_capacity(rounds as usize);
        let mut x = 0u64;
        for i in 0..rounds {
            let t0 = Instant::now();
            peer.send_with_tag(&u64::from(i), TAG_PING);
            peer.receive_into_with_tag(&mut x, TAG_PING);
            out.push(t0.elapsed());
            // The other ranks must keep hearing from rank 0 however long this runs.
            if t0 >= self.next_ping {
                self.send_pings(world, t0, Some(rank));
            }
        }
        // Its pings wait behind the exchange; it just answered.
        self.ranks[rank].unanswered_since = None;
        Ok(out)
    }
}

/// Posts a request to worker `rank` (see `outbox.rs`): in one message up to
/// [`SMALL_REQUEST`] bytes, else announced by its length first (see [`TAG_BIG`]). Returns the
/// buffer when the send completed at once.
pub(super) fn send_request(
    outbox: &mut Outbox,
    world: &SimpleCommunicator,
    rank: usize,
    bytes: Vec<u8>,
) -> Option<Vec<u8>> {
    if bytes.len() <= SMALL_REQUEST {
        outbox.post(world, rank, TAG_TO_WORKER, bytes)
    } else {
        let len = (bytes.len() as u64).to_le_bytes().to_vec();
        outbox.post(world, rank, TAG_BIG, len);
        outbox.post(world, rank, TAG_BIG_BODY, bytes)
    }
}

/// Completes task `f` with the reply `bytes` from `rank`.
pub(super) fn deliver(f: InFlight, rank: usize, bytes: &[u8], state: &ServiceState) {
    match decode_payload::<Response<'_>>(bytes) {
        Ok((
            Response::Done {
                run_ns, outcome, ..
            },
            body,
        )) => {
            let info = run_info(rank, run_ns, f.queued);
            state.record(run_ns, !matches!(outcome, crate::remote::wire::Outcome::Ok));
            match outcome.into_error() {
                None => f.deliver.succeed(body, info),
                Some(e) => f.deliver.fail(e, info),
            }
        }
        Ok((Response::Refused { reason }, _)) => f.deliver.fail(
            Error::new(ErrorKind::Remote, reason),
            run_info(rank, 0, f.queued),
        ),
        Ok((other, _)) => f.deliver.fail(
            Error::new(ErrorKind::Remote, format!("unexpected reply {other:?}")),
            run_info(rank, 0, f.queued),
        ),
        Err(e) => f.deliver.fail(e, run_info(rank, 0, f.queued)),
    }
}
