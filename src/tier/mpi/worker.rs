//! A worker rank (rank > 0): set up from rank 0's broadcast, then serve calls until told to
//! stop, then finalize MPI and exit with status 0.
//!
//! The serving loop runs on the process's main thread, inside [`crate::init`], which never
//! returns on a worker rank; it runs each task itself (no thread hand-off on the round trip).
//! Beside it a *watcher* thread keeps the rank visible while a task runs: it answers rank 0's
//! liveness pings, takes a kill order ([`ShutdownMode::Kill`](crate::ShutdownMode::Kill)), and
//! ends the process when rank 0 has been silent for [`RANK0_SILENCE`] (rank 0 gone, or this
//! host cut off). The two share MPI under one lock ([`Rank::mpi`]): MPI is initialised with
//! `MPI_THREAD_SERIALIZED`. See `liveness.rs` for the protocol.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::lifecycle::{
    FINALIZE_GRACE, SMALL_REQUEST, TAG_BIG, TAG_BIG_BODY, TAG_HOST, TAG_PING, TAG_TO_MASTER,
    TAG_TO_WORKER, read_setup_broadcast,
};
use super::liveness::{PING_INTERVAL, RANK0_SILENCE, TAG_ALIVE, TAG_KILL};
use super::service::KEEP_BUFFER;
use crate::remote::Registry;
use crate::remote::wire::{
    self, DEFAULT_MAX_FRAME, Request, Response, decode_payload, encode_payload, outcome_of,
    run_call,
};

/// What the serving loop and the watcher share.
struct Rank {
    /// The MPI lock: held for every MPI call on this rank. The serving loop holds it except
    /// while it runs a task.
    mpi: Mutex<()>,
    /// The serving loop runs a task (and does not hold the MPI lock): the watcher answers.
    running: AtomicBool,
    /// Milliseconds from `start` when rank 0 was last heard from.
    heard_ms: AtomicU64,
    /// Milliseconds from `start` when the rank began to finalize (0: serving).
    finishing_ms: AtomicU64,
    start: Instant,
}

impl Rank {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn heard(&self) {
        self.heard_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.mpi.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves as a worker rank, then exits the process. Never returns.
pub(crate) fn serve(universe: Universe, serialized: bool) -> ! {
    let world = universe.world();
    let rank = world.rank();
    let shared = Arc::new(Rank {
        mpi: Mutex::new(()),
        running: AtomicBool::new(false),
        heard_ms: AtomicU64::new(0),
        finishing_ms: AtomicU64::new(0),
        start: Instant::now(),
    });
    let code = match serve_inner(&world, &shared, serialized) {
        Ok(()) => 0,
        Err(why) => {
            tracing::error!(rank, %why, "cluster worker stops");
            // Exit 0 anyway: rank 0 has the reason and reports it; a non-zero status would make
            // mpiexec abort rank 0 before it can say so.
            0
        }
    };
    tracing::debug!(rank, "cluster worker finalizes MPI");
    // MPI_Finalize waits for every process of the job; after a rank died it may wait for ever
    // (see FINALIZE_GRACE). This rank's work is done: past the grace, the watcher (or, without
    // one, this thread) exits the process anyway.
    shared
        .finishing_ms
        .store(shared.now_ms().max(1), Ordering::Relaxed);
    let guard = shared.lock();
    if !serialized {
        exit_after_grace(rank, code);
    }
    // Dropping the universe calls MPI_Finalize. The lock stays held: no MPI call after it.
    drop(world);
    drop(universe);
    drop(guard);
    std::process::exit(code)
}

/// Exits the process [`FINALIZE_GRACE`] from now, from a thread of its own.
fn exit_after_grace(rank: i32, code: i32) {
    let _ = std::thread::Builder::new()
        .name("offload-mpi-exit".into())
        .spawn(move || {
            std::thread::sleep(FINALIZE_GRACE);
            tracing::warn!(
                rank,
                grace = ?FINALIZE_GRACE,
                "MPI_Finalize has not ended (a rank of the job was lost?); exiting without it"
            );
            std::process::exit(code)
        });
}

/// `MPI_Finalize` from the watcher thread, whose caller ends the process right after. (The
/// serving loop owns the `Universe`, whose drop would finalize; it is busy in a task.)
#[allow(unsafe_code)]
fn finalize_here() {
    // SAFETY: MPI was initialised (the watcher exists only after the setup); the caller holds
    // the MPI lock and never releases it, so no other thread of this process calls MPI again,
    // and the process exits right after.
    unsafe {
        mpi::ffi::MPI_Finalize();
    }
}

/// The watcher thread (see the module docs). Returns never: it ends the process, or runs until
/// the serving loop does.
fn watch(shared: Arc<Rank>) {
    let world = SimpleCommunicator::world();
    let rank = world.rank();
    let root = world.process_at_rank(0);
    let tick = PING_INTERVAL / 2;
    let silence = u64::try_from(RANK0_SILENCE.as_millis()).unwrap_or(u64::MAX);
    let grace = u64::try_from(FINALIZE_GRACE.as_millis()).unwrap_or(u64::MAX);
    loop {
        std::thread::sleep(tick);
        let now = shared.now_ms();
        let finishing = shared.finishing_ms.load(Ordering::Relaxed);
        if finishing > 0 {
            if now.saturating_sub(finishing) > grace {
                tracing::warn!(rank, grace = ?FINALIZE_GRACE,
                    "MPI_Finalize has not ended (a rank of the job was lost?); exiting without it");
                std::process::exit(0);
            }
            continue;
        }
        let quiet = now.saturating_sub(shared.heard_ms.load(Ordering::Relaxed));
        if quiet > silence {
            tracing::error!(rank, silent_for = ?Duration::from_millis(quiet),
                "rank 0 has gone silent (it ended, or this host is cut off): this rank exits");
            std::process::exit(1);
        }
        if !shared.running.load(Ordering::Acquire) {
            continue;
        }
        let Ok(guard) = shared.mpi.try_lock() else {
            continue;
        };
        // The task may have ended between the two looks: the serving loop answers then.
        if !shared.running.load(Ordering::Acquire) {
            continue;
        }
        let mut pinged = false;
        while let Some((msg, _)) = root.immediate_matched_probe_with_tag(TAG_ALIVE) {
            let _ = msg.matched_receive_into(&mut [0u8; 0][..]);
            pinged = true;
        }
        if pinged {
            shared.heard();
            root.send_with_tag(&[0u8; 0][..], TAG_ALIVE);
        }
        if root.immediate_probe_with_tag(TAG_KILL).is_some() {
            tracing::debug!(rank, "killed by rank 0 (ShutdownMode::Kill) mid-task");
            shared
                .finishing_ms
                .store(shared.now_ms().max(1), Ordering::Relaxed);
            exit_after_grace(rank, 0);
            finalize_here();
            std::process::exit(0);
        }
        drop(guard);
    }
}

fn send(world: &SimpleCommunicator, bytes: &[u8], tag: i32) {
    world.process_at_rank(0).send_with_tag(bytes, tag);
}

/// Serves until rank 0 says exit.
fn serve_inner(
    world: &SimpleCommunicator,
    shared: &Arc<Rank>,
    serialized: bool,
) -> Result<(), String> {
    let rank = world.rank();
    crate::remote::install_panic_hook();
    let setup = read_setup_broadcast(world);
    let (req, body): (Request<'_>, &[u8]) =
        decode_payload(&setup).map_err(|e| format!("bad setup broadcast: {e}"))?;
    let registry = Registry::global().ok_or("offload::init did not install a registry")?;
    match req {
        Request::Exit => return Ok(()),
        Request::Setup {
            build_id,
            init,
            init_args_len,
            ..
        } => {
            let refusal = if build_id != registry.build_id() {
                Some(format!(
                    "rank {rank} runs another build (build id {:016x}, rank 0 has {build_id:016x}): \
                     every rank must run the same binary",
                    registry.build_id()
                ))
            } else {
                let split = usize::try_from(init_args_len)
                    .ok()
                    .filter(|&n| n <= body.len())
                    .unwrap_or(body.len());
                let (init_args, shared) = body.split_at(split);
                if !shared.is_empty() {
                    crate::remote::set_shared_bytes(shared.to_vec());
                }
                match init {
                    None => None,
                    Some(name) => {
                        let mut out = Vec::new();
                        let (r, _) =
                            run_call(registry, name, false, init_args, usize::MAX, &mut out);
                        match r {
                            Ok(()) => None,
                            Err(f) => Some(format!(
                                "the initializer {name:?} failed on rank {rank}: {:?}",
                                outcome_of(&Err(f))
                            )),
                        }
                    }
                }
            };
            let reply = match &refusal {
                Some(reason) => Response::Refused { reason },
                None => Response::Ready {
                    build_id,
                    pid: std::process::id(),
                },
            };
            let bytes = encode_payload(&reply, &[]).map_err(|e| e.to_string())?;
            send(world, &bytes, TAG_TO_MASTER);
            let host = mpi::environment::processor_name().unwrap_or_default();
            send(world, host.as_bytes(), TAG_HOST);
            if let Some(reason) = refusal {
                return Err(reason);
            }
        }
        other => return Err(format!("expected the setup broadcast, got {other:?}")),
    }
    tracing::debug!(rank, "cluster worker serves");
    shared.heard();
    if serialized {
        let w = shared.clone();
        std::thread::Builder::new()
            .name("offload-mpi-watch".into())
            .spawn(move || watch(w))
            .map_err(|e| format!("could not start the watcher thread: {e}"))?;
    }
    // Buffers kept between calls: small requests (every message from rank 0 but the body of
    // a big request fits), big requests, the result, the reply.
    let mut small = vec![0u8; SMALL_REQUEST];
    let mut big = Vec::new();
    let mut out = Vec::new();
    let mut reply_buf = Vec::new();
    let root = world.process_at_rank(0);
    loop {
        let guard = shared.lock();
        let status = root.receive_into(&mut small[..]);
        shared.heard();
        let len = usize::try_from(status.count(u8::equivalent_datatype()))
            .unwrap_or(0)
            .min(small.len());
        let bytes: &[u8] = match status.tag() {
            TAG_ALIVE => {
                send(world, &[], TAG_ALIVE);
                continue;
            }
            TAG_KILL => {
                // The order came as this rank's task ended: rank 0 failed the task already and
                // sends no exit message to a killed rank.
                tracing::debug!(rank, "killed by rank 0 (ShutdownMode::Kill)");
                return Ok(());
            }
            TAG_PING => {
                let rounds = small[..len].try_into().map_or(0, u32::from_le_bytes);
                ping_pong(world, rounds, shared);
                continue;
            }
            TAG_TO_WORKER => &small[..len],
            TAG_BIG => {
                let n = small[..len].try_into().map_or(0, u64::from_le_bytes);
                trim(&mut big);
                big.clear();
                big.resize(usize::try_from(n).unwrap_or(0), 0);
                root.receive_into_with_tag(&mut big[..], TAG_BIG_BODY);
                &big
            }
            tag => {
                tracing::warn!(rank, tag, "message with an unknown tag; ignored");
                continue;
            }
        };
        let (req, args): (Request<'_>, &[u8]) = match decode_payload(bytes) {
            Ok(x) => x,
            Err(e) => {
                // Cannot happen between ranks that passed the setup's build check, but rank 0
                // holds this rank busy until it answers: answer, so that the task fails.
                let id = request_id(bytes);
                tracing::error!(rank, error = %e, ?id, "undecodable request; its task fails");
                let msg = format!("rank {rank} could not decode the request: {e}");
                send_failure(world, id.unwrap_or(0), wire::FailKind::Decode, &msg)?;
                continue;
            }
        };
        let (id, func, batch) = match req {
            Request::Call { id, func } => (id, func, false),
            Request::Batch { id, func } => (id, func, true),
            Request::Exit => return Ok(()),
            Request::Setup { .. } => {
                // Rank 0 sends one setup, by broadcast; a second one is a protocol error. The
                // rank stays set up as it was and serves on; the message rank 0 sent in its
                // place fails (rank 0 counts this rank busy until it answers).
                tracing::error!(rank, "a second setup; refused");
                let reason = format!("rank {rank} got a second setup while serving: refused");
                let bytes = encode_payload(&Response::Refused { reason: &reason }, &[])
                    .map_err(|e| e.to_string())?;
                send(world, &bytes, TAG_TO_MASTER);
                continue;
            }
        };
        trim(&mut out);
        // The task runs without the MPI lock: the watcher answers for this rank meanwhile.
        shared.running.store(true, Ordering::Release);
        drop(guard);
        let (r, run_ns) = run_call(registry, func, batch, args, DEFAULT_MAX_FRAME, &mut out);
        let _guard = shared.lock();
        shared.running.store(false, Ordering::Release);
        let reply = Response::Done {
            id,
            run_ns,
            outcome: outcome_of(&r),
        };
        let body: &[u8] = if r.is_ok() { &out } else { &[] };
        trim(&mut reply_buf);
        match encode_into(&mut reply_buf, &reply, body) {
            Ok(()) => send(world, &reply_buf, TAG_TO_MASTER),
            Err(e) => send_failure(world, id, wire::FailKind::Encode, &e.to_string())?,
        }
    }
}

/// Answers task `id` with a failure of `kind` (the caller's task fails with it).
fn send_failure(
    world: &SimpleCommunicator,
    id: u64,
    kind: wire::FailKind,
    message: &str,
) -> Result<(), String> {
    let reply = Response::Done {
        id,
        run_ns: 0,
        outcome: wire::Outcome::Failed { kind, message },
    };
    let bytes = encode_payload(&reply, &[]).map_err(|e| e.to_string())?;
    send(world, &bytes, TAG_TO_MASTER);
    Ok(())
}

/// The leading fields of a [`Request`] as postcard lays them out: the variant index, then (for
/// a call or a batch) the id. Decoding only this prefix recovers a task's id from a request
/// whose later fields (the function name) are damaged. The variants must stay in
/// [`Request`]'s order; `tests::request_id_matches_the_wire` checks it.
#[derive(serde::Deserialize)]
enum RequestPrefix {
    Setup,
    Call { id: u64 },
    Batch { id: u64 },
    Exit,
}

/// The task id of a request that does not decode as a whole, when its prefix does.
fn request_id(bytes: &[u8]) -> Option<u64> {
    let (&v, rest) = bytes.split_first()?;
    if v != wire::WIRE_VERSION {
        return None;
    }
    match postcard::take_from_bytes::<RequestPrefix>(rest).ok()?.0 {
        RequestPrefix::Call { id } | RequestPrefix::Batch { id } => Some(id),
        RequestPrefix::Setup | RequestPrefix::Exit => None,
    }
}

/// Frees a buffer that a big message grew past [`KEEP_BUFFER`] instead of keeping it.
fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BUFFER {
        *buf = Vec::new();
    }
}

/// [`encode_payload`]'s layout, into `buf` (replacing its contents), to reuse its allocation.
fn encode_into<H: serde::Serialize>(
    buf: &mut Vec<u8>,
    header: &H,
    body: &[u8],
) -> Result<(), crate::Error> {
    let mut v = std::mem::take(buf);
    v.clear();
    v.push(wire::WIRE_VERSION);
    let mut v = postcard::to_extend(header, v).map_err(|e| {
        crate::Error::new(
            crate::ErrorKind::Encoding,
            format!("could not encode a header: {e}"),
        )
    })?;
    v.extend_from_slice(body);
    *buf = v;
    Ok(())
}

/// The raw MPI baseline: echo `rounds` 8-byte messages back to rank 0 (which is heard from
/// meanwhile: the watcher must not take a long exchange for silence).
fn ping_pong(world: &SimpleCommunicator, rounds: u32, shared: &Rank) {
    let root = world.process_at_rank(0);
    let mut x = 0u64;
    for i in 0..rounds {
        root.receive_into_with_tag(&mut x, TAG_PING);
        root.send_with_tag(&x, TAG_PING);
        if i % 16 == 0 {
            shared.heard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_matches_the_wire() {
        for (req, want) in [
            (Request::Call { id: 7, func: "f" }, Some(7)),
            (
                Request::Batch {
                    id: u64::MAX,
                    func: "g",
                },
                Some(u64::MAX),
            ),
            (Request::Exit, None),
            (
                Request::Setup {
                    build_id: 1,
                    worker: 2,
                    init: None,
                    init_args_len: 0,
                    shared: crate::remote::wire::SharedData::Inline,
                },
                None,
            ),
        ] {
            let bytes = encode_payload(&req, b"args").unwrap();
            assert_eq!(request_id(&bytes), want, "{req:?}");
        }
    }

    #[test]
    fn a_damaged_request_keeps_its_id() {
        let mut bytes = encode_payload(
            &Request::Call {
                id: 300,
                func: "abc",
            },
            &[],
        )
        .unwrap();
        // The name's bytes are no longer UTF-8: the whole does not decode, the id does.
        let n = bytes.len();
        bytes[n - 1] = 0xff;
        assert!(decode_payload::<Request<'_>>(&bytes).is_err());
        assert_eq!(request_id(&bytes), Some(300));
        assert_eq!(request_id(&[]), None);
        assert_eq!(
            request_id(&[wire::WIRE_VERSION.wrapping_add(1), 1, 5]),
            None
        );
    }
}
