//! Rank 0's MPI thread: the only thread of the application process that calls MPI
//! (`MPI_THREAD_FUNNELED`). It initialises MPI, broadcasts the setup, then moves tasks from a
//! bounded async channel to whichever worker rank is free and results back to their handles.
//!
//! Waiting: with nothing in flight it blocks on the channel (after a short spin), so an idle
//! cluster costs rank 0 no CPU. With tasks in flight it polls `MPI_Improbe` and the channel,
//! spinning for [`SPIN`] after the last event and then sleeping in growing steps up to
//! [`MAX_POLL_INTERVAL`]: a short task's result is picked up within a microsecond, a long one's
//! within half a millisecond, and rank 0 does not burn a core while ranks compute.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_channel::{Receiver, TryRecvError};
use mpi::environment::Universe;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::cluster::{
    Command, RankInfo, STOP_CANCEL, ServiceState, TAG_HOST, TAG_PING, TAG_TO_MASTER, TAG_TO_WORKER,
    Task, WorldInfo, write_setup_broadcast,
};
use crate::error::{Error, ErrorKind, ExitInfo};
use crate::remote::wire::{Request, Response, decode_payload, encode_payload};
use crate::tier::process::Pending;
use crate::tier::{RunInfo, TierKind};

/// How long the MPI thread keeps polling after the last event before it starts to sleep: two
/// thread wake-ups on these machines (~25 µs each), so back-to-back short tasks never wait
/// for a wake-up.
pub const SPIN: Duration = Duration::from_micros(50);

/// The longest sleep between two polls while tasks are in flight: the most latency a long
/// task's result can gain, for about 2000 cheap polls per second on rank 0.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_micros(500);

/// How often, while tasks are in flight and no result comes, rank 0 checks that the worker
/// processes on its own host still exist (see the module docs on dead ranks).
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

struct InFlight {
    deliver: Box<dyn Pending>,
    func: &'static str,
    dispatched: Instant,
    queued: Duration,
}

struct Loop<'a> {
    world: &'a SimpleCommunicator,
    state: &'a ServiceState,
    ranks: Vec<RankInfo>,
    inflight: Vec<Option<InFlight>>,
    free: VecDeque<usize>,
    dead: Vec<bool>,
    next_id: u64,
    my_host: String,
}

pub(super) fn run(rx: Receiver<Command>, state: Arc<ServiceState>) {
    let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
    else {
        state.set_world(Err("MPI was already initialised in this process".into()));
        return;
    };
    let world = universe.world();
    let size = usize::try_from(world.size()).unwrap_or(1);
    let my_host = mpi::environment::processor_name().unwrap_or_default();
    tracing::debug!(size, ?threading, host = %my_host, "MPI initialised on rank 0");
    state.set_world(Ok(WorldInfo { size }));
    if size > 1 {
        serve(&world, &rx, &state, my_host);
    }
    drop(world);
    finalize(universe);
}

fn finalize(universe: Universe) {
    tracing::debug!("rank 0 finalizes MPI");
    drop(universe);
}

fn serve(
    world: &SimpleCommunicator,
    rx: &Receiver<Command>,
    state: &ServiceState,
    my_host: String,
) {
    let size = usize::try_from(world.size()).unwrap_or(1);
    // The first command is the setup, or the channel closes (no cluster was built).
    let (payload, reply) = match rx.recv_blocking() {
        Ok(Command::Setup { payload, reply }) => (payload, Some(reply)),
        Ok(_) | Err(_) => match encode_payload(&Request::Exit, &[]) {
            Ok(p) => (p, None),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the exit message");
                return;
            }
        },
    };
    write_setup_broadcast(world, &payload);
    let Some(reply) = reply else {
        tracing::debug!("no cluster was built; the worker ranks were told to exit");
        return;
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
        stop_ranks(world, &ranks);
        return;
    }
    let _ = reply.send(Ok(ranks.clone()));
    let mut l = Loop {
        world,
        state,
        inflight: (0..size).map(|_| None).collect(),
        free: (1..size).collect(),
        dead: vec![false; size],
        ranks,
        next_id: 0,
        my_host,
    };
    l.serve_loop(rx);
    stop_ranks(world, &l.ranks);
}

fn stop_ranks(world: &SimpleCommunicator, ranks: &[RankInfo]) {
    let Ok(exit) = encode_payload(&Request::Exit, &[]) else {
        return;
    };
    for (r, info) in ranks.iter().enumerate().skip(1) {
        if info.ready && !info.dead {
            world
                .process_at_rank(r as i32)
                .send_with_tag(&exit[..], TAG_TO_WORKER);
        }
    }
}

impl Loop<'_> {
    fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|x| x.is_some()).count()
    }

    fn live_workers(&self) -> usize {
        self.dead.iter().skip(1).filter(|d| !**d).count()
    }

    fn serve_loop(&mut self, rx: &Receiver<Command>) {
        let mut stash: Option<Command> = None;
        let mut last_event = Instant::now();
        let mut sleep = Duration::from_micros(10);
        let mut last_liveness = Instant::now();
        loop {
            let mut progressed = false;
            if self.in_flight() > 0 {
                progressed |= self.poll_results();
            }
            let cancelling = self.state.stop.load(Ordering::Acquire) == STOP_CANCEL;
            if cancelling {
                // Queued work fails with "shut down" as its completers drop.
                stash = None;
                while rx.try_recv().is_ok() {}
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
                        if self.live_workers() == 0 {
                            fail_unrunnable(task);
                            continue;
                        }
                        match self.free.pop_front() {
                            Some(rank) => self.dispatch(rank, task),
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
                        if self.in_flight() > 0 {
                            stash = Some(Command::PingPong {
                                rank,
                                rounds,
                                reply,
                            });
                            break;
                        }
                        let _ = reply.send(self.ping_pong(rank, rounds));
                    }
                    Command::Setup { reply, .. } => {
                        let _ = reply.send(Err(Error::new(
                            ErrorKind::Pool,
                            "the cluster is already set up",
                        )));
                    }
                }
            }
            let idle = self.in_flight() == 0 && stash.is_none();
            if idle && rx.is_closed() && rx.is_empty() {
                return;
            }
            if progressed {
                last_event = Instant::now();
                sleep = Duration::from_micros(10);
                continue;
            }
            if last_event.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            if idle {
                // Nothing can arrive from MPI: block on the channel.
                match rx.recv_blocking() {
                    Ok(c) => stash = Some(c),
                    Err(_) => return,
                }
                last_event = Instant::now();
                continue;
            }
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(MAX_POLL_INTERVAL);
            if last_liveness.elapsed() >= LIVENESS_INTERVAL {
                last_liveness = Instant::now();
                self.check_liveness();
            }
        }
    }

    fn dispatch(&mut self, rank: usize, task: Task) {
        if !task.deliver.start() {
            // Cancelled while queued: the slot holds its outcome already.
            self.free.push_front(rank);
            task.deliver.discard();
            return;
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
        let queued = task.deliver.submitted().elapsed();
        let bytes = match encode_payload(&header, &task.args) {
            Ok(b) => b,
            Err(e) => {
                self.free.push_front(rank);
                task.deliver.fail(e, run_info(rank, 0, queued));
                return;
            }
        };
        self.world
            .process_at_rank(rank as i32)
            .send_with_tag(&bytes[..], TAG_TO_WORKER);
        self.inflight[rank] = Some(InFlight {
            deliver: task.deliver,
            func: task.func,
            dispatched: Instant::now(),
            queued,
        });
    }

    fn poll_results(&mut self) -> bool {
        let mut any = false;
        while let Some((msg, status)) = self
            .world
            .any_process()
            .immediate_matched_probe_with_tag(TAG_TO_MASTER)
        {
            any = true;
            let (bytes, status) = (msg, status).matched_receive_vec::<u8>();
            let rank = usize::try_from(status.source_rank()).unwrap_or(0);
            let Some(f) = self.inflight.get_mut(rank).and_then(Option::take) else {
                tracing::warn!(rank, "a reply from a rank with no task; ignored");
                continue;
            };
            self.free.push_back(rank);
            match decode_payload::<Response<'_>>(&bytes) {
                Ok((
                    Response::Done {
                        run_ns, outcome, ..
                    },
                    body,
                )) => {
                    let info = run_info(rank, run_ns, f.queued);
                    self.state
                        .record(run_ns, !matches!(outcome, crate::remote::wire::Outcome::Ok));
                    match outcome.into_error() {
                        None => f.deliver.succeed(body, info),
                        Some(e) => f.deliver.fail(e, info),
                    }
                }
                Ok((other, _)) => f.deliver.fail(
                    Error::new(ErrorKind::Remote, format!("unexpected reply {other:?}")),
                    run_info(rank, 0, f.queued),
                ),
                Err(e) => f.deliver.fail(e, run_info(rank, 0, f.queued)),
            }
        }
        any
    }

    /// A worker on this host whose process is gone (only seen when OpenMPI runs with
    /// `--enable-recovery`; by default it kills the whole job first) fails its task.
    fn check_liveness(&mut self) {
        for rank in 1..self.inflight.len() {
            let Some(f) = &self.inflight[rank] else {
                continue;
            };
            let info = &self.ranks[rank];
            let Some(pid) = info.pid else { continue };
            if info.host != self.my_host || process_alive(pid) {
                continue;
            }
            let host = info.host.clone();
            tracing::error!(rank, pid, func = f.func, running_for = ?f.dispatched.elapsed(),
                "a cluster worker rank died; its task fails and the rank is not used again");
            let f = self.inflight[rank].take();
            self.dead[rank] = true;
            self.ranks[rank].dead = true;
            self.free.retain(|&r| r != rank);
            if let Some(f) = f {
                let e = Error::new(
                    ErrorKind::WorkerDied,
                    format!(
                        "MPI rank {rank} (pid {pid} on {}) died while running it; OpenMPI \
                         aborts the job next unless mpiexec ran with --enable-recovery",
                        host
                    ),
                )
                .with_exit(ExitInfo {
                    pid: Some(pid),
                    code: None,
                    signal: None,
                });
                f.deliver.fail(e, run_info(rank, 0, f.queued));
            }
        }
    }

    fn ping_pong(&mut self, rank: usize, rounds: u32) -> Result<Vec<Duration>, Error> {
        if rank == 0 || rank >= self.inflight.len() || self.dead[rank] {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("no worker rank {rank} to ping"),
            ));
        }
        let peer = self.world.process_at_rank(rank as i32);
        peer.send_with_tag(&[rounds][..], TAG_PING);
        let mut out = Vec::with_capacity(rounds as usize);
        let mut x = 0u64;
        for i in 0..rounds {
            let t0 = Instant::now();
            peer.send_with_tag(&u64::from(i), TAG_PING);
            peer.receive_into_with_tag(&mut x, TAG_PING);
            out.push(t0.elapsed());
        }
        Ok(out)
    }
}

fn run_info(rank: usize, run_ns: u64, queued: Duration) -> RunInfo {
    RunInfo {
        tier: TierKind::Cluster,
        worker: Some(rank),
        run_time: Duration::from_nanos(run_ns),
        queued,
    }
}

fn fail_unrunnable(task: Task) {
    let queued = task.deliver.submitted().elapsed();
    let e = Error::new(ErrorKind::Pool, "every worker rank of the cluster died");
    task.deliver.fail(e, run_info(0, 0, queued));
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
