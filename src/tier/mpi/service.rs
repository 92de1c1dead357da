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

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use async_channel::{Receiver, TryRecvError};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::lifecycle::{
    Command, RankInfo, STOP_CANCEL, STOP_KILL, ServiceState, TAG_HOST, TAG_TO_MASTER, Task,
    WorldInfo, write_setup_broadcast,
};
use super::liveness::SILENCE_LIMIT;
use super::outbox::Outbox;
use super::table::{Table, send_request};
use crate::error::{Error, ErrorKind};
use crate::remote::wire::{Request, Response, decode_payload, encode_payload};
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
        *t = Table::set_up(direct, ranks.clone(), my_host);
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
