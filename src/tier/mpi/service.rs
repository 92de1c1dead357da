//! Rank 0's MPI thread and the table of worker ranks it shares with the callers.
//!
//! The MPI thread initialises MPI, broadcasts the setup, then moves tasks from a bounded async
//! channel to whichever worker rank is free and results back to their handles. It owns
//! everything that is not a caller's own short task: queued tasks, `map` chunks, liveness
//! checks, the ping-pong baseline, shutdown and `MPI_Finalize`.
//!
//! # The MPI lock
//!
//! Every MPI call on rank 0 after the setup is made while holding [`ServiceState::table`], the
//! one lock that also guards which rank runs what. With MPI granting
//! `MPI_THREAD_SERIALIZED` (asked for at start-up; OpenMPI 4.1 grants it) a caller that finds
//! that lock free, the queue empty and a rank free sends its task itself and later polls for
//! its reply itself, for a bounded time (see `direct.rs`, the direct path): no thread
//! hand-off on the round trip. Such a task carries a *lease* (a deadline) saying that a caller
//! is watching it; the MPI thread leaves it alone until the caller hands it over or the lease
//! ends, so that it does not wake up and contend for the core the caller spins on. When MPI
//! grants less than `SERIALIZED` the direct path stays off ([`Table::direct`]) and only this
//! thread calls MPI (`FUNNELED` semantics, the behaviour before the direct path).
//!
//! # Waiting
//!
//! With nothing in flight the thread parks without a deadline (after a short spin), so an idle
//! cluster costs rank 0 no CPU; whoever queues a command, closes the queue or leases a task
//! unparks it. With only leased tasks in flight it parks until the earliest lease ends. With
//! tasks of its own in flight it polls `MPI_Improbe`, spinning for [`SPIN`] after the last
//! event and then parking in growing steps up to [`MAX_POLL_INTERVAL`]: a short task's result
//! is picked up within a microsecond, a long one's within half a millisecond, and rank 0 does
//! not burn a core while ranks compute.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use async_channel::{Receiver, TryRecvError};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::lifecycle::{
    Command, RankInfo, SMALL_REQUEST, STOP_CANCEL, STOP_KILL, ServiceState, TAG_BIG,
    TAG_BIG_BODY, TAG_HOST, TAG_PING, TAG_TO_MASTER, TAG_TO_WORKER, Task, WorldInfo,
    write_setup_broadcast,
};
use super::liveness::SILENCE_LIMIT;
use super::outbox::Outbox;
use crate::error::{Error, ErrorKind};
use crate::remote::wire::{
    DEFAULT_MAX_FRAME, Request, Response, WIRE_VERSION, decode_payload, encode_payload,
    frame_too_large,
};
use crate::tier::process::Pending;
use crate::tier::{RunInfo, TierKind};

/// How long the MPI thread keeps polling after the last event before it starts to sleep: two
/// thread wake-ups on these machines (~25 µs each), so back-to-back short tasks that come
/// through the queue never wait for a wake-up.
pub const SPIN: Duration = Duration::from_micros(50);

/// The longest sleep between two polls while tasks are in flight: the most latency a long
/// task's result can gain, for about 2000 cheap polls per second on rank 0.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_micros(500);

/// How often, while tasks are in flight, rank 0 checks that the worker processes on its own
/// host still exist (see the module docs on dead ranks), whether or not other results come
/// meanwhile. A dead rank's task fails at most this late; each check reads one `/proc` file
/// per busy local rank, so five a second cost rank 0 nothing measurable.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

/// The first sleep between two polls once the spin is over; it doubles up to
/// [`MAX_POLL_INTERVAL`]. About one thread wake-up: shorter would wake the thread to no avail.
const FIRST_POLL_SLEEP: Duration = Duration::from_micros(10);

/// How long a caller's lease on a directly sent task lasts (from the send, renewed when the
/// caller starts to wait): the MPI thread takes the task over when it ends. A caller hands
/// its task over as soon as it stops watching, so the lease only matters for a handle that is
/// kept but not waited on (polled through `is_finished`, say): its result is at most this
/// late. Long against a short task's round trip (microseconds), so back-to-back direct tasks
/// wake the parked MPI thread about once per lease, not once per task.
pub(super) const CALLER_LEASE: Duration = Duration::from_millis(1);

/// Receive and send buffers kept between messages up to this capacity; a larger one (a big
/// argument or result) is freed after use rather than held for the life of the cluster.
pub(super) const KEEP_BUFFER: usize = 64 << 10;

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

    fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|x| x.is_some()).count()
    }

    fn live_workers(&self) -> usize {
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
    fn ownership(&self, now: Instant) -> (usize, Option<Instant>) {
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
    fn expire(&mut self, now: Instant) {
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

    fn ping_pong(
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
fn send_request(
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
fn deliver(f: InFlight, rank: usize, bytes: &[u8], state: &ServiceState) {
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

pub(super) fn run(rx: Receiver<Command>, state: Arc<ServiceState>) {
    // SERIALIZED lets callers make MPI calls under the MPI lock (the direct path); FUNNELED
    // (only this thread calls MPI) is all the queue path needs.
    let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
    else {
        state.set_world(Err("MPI was already initialised in this process".into()));
        return;
    };
    let world = universe.world();
    let size = usize::try_from(world.size()).unwrap_or(1);
    let my_host = mpi::environment::processor_name().unwrap_or_default();
    let direct = threading >= mpi::Threading::Serialized;
    if !direct {
        tracing::info!(
            ?threading,
            "MPI grants less than MPI_THREAD_SERIALIZED: every task goes through rank 0's MPI \
             thread (no direct path)"
        );
    }
    tracing::debug!(size, ?threading, host = %my_host, "MPI initialised on rank 0");
    state.set_world(Ok(WorldInfo { size }));
    let lost = size > 1 && serve(&world, &rx, &state, my_host, direct);
    drop(world);
    if lost {
        // MPI_Finalize ends with a fence over every process of the job, which a lost rank
        // never joins: it would wait for ever. Leave MPI as it is and end the job when this
        // process exits (see `liveness::end_job_at_exit`).
        tracing::debug!("a rank was lost: rank 0 does not finalize MPI; the job ends at exit");
        super::liveness::end_job_at_exit();
        std::mem::forget(universe);
        return;
    }
    finalize(universe);
}

fn finalize(universe: Universe) {
    tracing::debug!("rank 0 finalizes MPI");
    drop(universe);
}

/// Serves the cluster until it stops; true when a rank died meanwhile (the closing fence of
/// `MPI_Finalize` may then never complete).
fn serve(
    world: &SimpleCommunicator,
    rx: &Receiver<Command>,
    state: &ServiceState,
    my_host: String,
    direct: bool,
) -> bool {
    let size = usize::try_from(world.size()).unwrap_or(1);
    // The first command is the setup, or the channel closes (no cluster was built).
    let (payload, reply) = match rx.recv_blocking() {
        Ok(Command::Setup { payload, reply }) => (payload, Some(reply)),
        Ok(_) | Err(_) => match encode_payload(&Request::Exit, &[]) {
            Ok(p) => (p, None),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the exit message");
                return false;
            }
        },
    };
    write_setup_broadcast(world, &payload);
    let Some(reply) = reply else {
        tracing::debug!("no cluster was built; the worker ranks were told to exit");
        return false;
    };
    // Every worker answers Ready or Refused, then its host name.
    let mut ranks = vec![RankInfo::default(); size];
    let mut refusals = Vec::new();
    for _ in 1..size {
        let (bytes, status) = world
            .any_process()
            .receive_vec_with_tag::<u8>(TAG_TO_MASTER);
        let r = usize::try_from(status.source_rank()).unwrap_or(0);
        let (host, _) = world
            .process_at_rank(status.source_rank())
            .receive_vec_with_tag::<u8>(TAG_HOST);
        ranks[r].host = String::from_utf8_lossy(&host).into_owned();
        match decode_payload::<Response<'_>>(&bytes) {
            Ok((Response::Ready { pid, .. }, _)) => {
                ranks[r].pid = Some(pid);
                ranks[r].ready = true;
            }
            Ok((Response::Refused { reason }, _)) => refusals.push(reason.to_owned()),
            Ok((other, _)) => refusals.push(format!("rank {r} answered {other:?} to the setup")),
            Err(e) => refusals.push(format!("rank {r}: {e}")),
        }
    }
    if !refusals.is_empty() {
        let _ = reply.send(Err(
            Error::new(ErrorKind::Pool, refusals.join("; ")).with_tier(TierKind::Cluster)
        ));
        let mut outbox = Outbox::default();
        let lost = stop_ranks(&mut outbox, world, &ranks);
        flush(&mut outbox);
        return lost;
    }
    {
        let mut t = state.lock_table();
        *t = Table {
            direct,
            inflight: (0..size).map(|_| None).collect(),
            free: (1..size).collect(),
            ranks: ranks.clone(),
            my_host,
            ..Table::new()
        };
    }
    let _ = reply.send(Ok(ranks));
    serve_loop(world, rx, state);
    // Nothing is in flight and the direct path is closed (serve_loop did both under the lock).
    let mut t = state.lock_table();
    let t = &mut *t;
    let lost = stop_ranks(&mut t.outbox, world, &t.ranks);
    flush(&mut t.outbox);
    lost
}

/// Waits for the sends still in progress, for at most [`SILENCE_LIMIT`] (a rank that cannot
/// take its exit message is lost), then abandons what is left.
fn flush(outbox: &mut Outbox) {
    let t0 = Instant::now();
    outbox.progress();
    while !outbox.is_empty() && t0.elapsed() < SILENCE_LIMIT {
        std::thread::sleep(Duration::from_micros(100));
        outbox.progress();
    }
    outbox.abandon_all();
}

/// Tells every live worker rank to exit; true when a rank was lost (rank 0 then does not
/// finalize).
fn stop_ranks(outbox: &mut Outbox, world: &SimpleCommunicator, ranks: &[RankInfo]) -> bool {
    let lost = ranks.iter().skip(1).any(|r| r.dead);
    let Ok(exit) = encode_payload(&Request::Exit, &[]) else {
        return lost;
    };
    for (r, info) in ranks.iter().enumerate().skip(1) {
        // A rank retired after a timeout gets it too: it leaves once its task ends (MPI
        // cannot stop it sooner), and finalizes.
        if info.ready && !info.dead && !info.killed {
            send_request(outbox, world, r, exit.clone());
        }
    }
    lost
}

/// How the MPI thread waits after a round of polling and dispatching.
enum Wait {
    /// Something happened: go round again at once.
    Again,
    /// Keep spinning (recent event, short tasks likely).
    Spin,
    /// Tasks of its own in flight: park for the poll interval.
    Poll,
    /// Only leased tasks in flight, or nothing: park until this instant (a lease's end, the
    /// next liveness ping).
    Until(Instant),
}

fn serve_loop(world: &SimpleCommunicator, rx: &Receiver<Command>, state: &ServiceState) {
    let mut stash: Option<Command> = None;
    let mut last_event = Instant::now();
    let mut sleep = FIRST_POLL_SLEEP;
    let mut last_liveness = Instant::now();
    let mut prev_owned = 0;
    state.lock_table().send_pings(world, Instant::now(), None);
    loop {
        let wait = {
            let mut t = state.lock_table();
            t.parked_idle = false;
            t.outbox.progress();
            let mut progressed = false;
            if t.in_flight() > 0 {
                progressed |= t.poll_results(world, state) > 0;
            }
            let stop = state.stop.load(Ordering::Acquire);
            if stop >= STOP_CANCEL {
                // Queued work fails with "shut down" as its completers drop.
                stash = None;
                while rx.try_recv().is_ok() {}
            }
            if stop == STOP_KILL && t.in_flight() > 0 {
                t.kill_running(world);
                progressed = true;
            }
            // Hand out work while a rank is free.
            loop {
                let cmd = match stash.take() {
                    Some(c) => c,
                    None => match rx.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    },
                };
                progressed = true;
                match cmd {
                    Command::Task(task) => {
                        if t.live_workers() == 0 {
                            fail_unrunnable(task);
                            continue;
                        }
                        match t.take_free() {
                            Some(rank) => {
                                t.dispatch(world, rank, task, None);
                            }
                            None => {
                                stash = Some(Command::Task(task));
                                break;
                            }
                        }
                    }
                    Command::PingPong {
                        rank,
                        rounds,
                        reply,
                    } => {
                        if t.in_flight() > 0 {
                            stash = Some(Command::PingPong {
                                rank,
                                rounds,
                                reply,
                            });
                            break;
                        }
                        let _ = reply.send(t.ping_pong(world, rank, rounds));
                    }
                    Command::Setup { reply, .. } => {
                        let _ = reply.send(Err(Error::new(
                            ErrorKind::Pool,
                            "the cluster is already set up",
                        )));
                    }
                }
            }
            t.stashed = stash.is_some();
            let now = Instant::now();
            // On their own clocks, whatever else happens: steady results from other ranks must
            // not postpone them.
            t.expire(now);
            if now.duration_since(last_liveness) >= LIVENESS_INTERVAL {
                last_liveness = now;
                if t.in_flight() > 0 {
                    t.check_local_processes();
                }
            }
            t.keep_alive(world, now);
            let next_ping = t.next_ping;
            let (owned, lease_end) = t.ownership(now);
            // A task handed over by its caller (or whose lease ended) is new work here.
            progressed |= owned > prev_owned;
            prev_owned = owned;
            let idle = t.in_flight() == 0 && stash.is_none();
            if idle && rx.is_closed() && rx.is_empty() {
                // Decided under the lock: no caller can send a task directly after this.
                t.direct = false;
                return;
            }
            let recent = now.duration_since(last_event) < SPIN;
            if progressed {
                last_event = now;
                sleep = FIRST_POLL_SLEEP;
                Wait::Again
            } else if owned > 0 || stash.is_some() {
                if recent { Wait::Spin } else { Wait::Poll }
            } else if let Some(end) = lease_end {
                Wait::Until(end.min(next_ping))
            } else if recent {
                Wait::Spin
            } else {
                // Set under the lock: a caller that leases a task next sees it and wakes us.
                t.parked_idle = true;
                Wait::Until(next_ping)
            }
        };
        match wait {
            Wait::Again => {}
            Wait::Spin => std::hint::spin_loop(),
            Wait::Poll => {
                std::thread::park_timeout(sleep);
                sleep = (sleep * 2).min(MAX_POLL_INTERVAL);
            }
            Wait::Until(end) => {
                std::thread::park_timeout(end.saturating_duration_since(Instant::now()));
            }
        }
    }
}

impl ServiceState {
    /// Takes the MPI lock.
    pub(super) fn lock_table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means a completion panicked while it was held (a waker); the
        // table itself is updated before anything that can panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn run_info(rank: usize, run_ns: u64, queued: Duration) -> RunInfo {
    RunInfo {
        tier: TierKind::Cluster,
        worker: Some(rank),
        run_time: Duration::from_nanos(run_ns),
        queued,
        pid: None,
    }
}

fn fail_unrunnable(task: Task) {
    let queued = task.deliver.submitted().elapsed();
    let e = Error::new(
        ErrorKind::Pool,
        "no worker rank left: every one died or was retired after a task timed out",
    );
    task.deliver.fail(e, run_info(0, 0, queued));
}
