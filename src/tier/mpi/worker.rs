//! A worker rank (rank > 0): set up from rank 0's broadcast, then serve calls until told to
//! stop, then finalize MPI and exit with status 0.
//!
//! Everything here runs on the process's main thread, inside [`crate::init`], which never
//! returns on a worker rank.

use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::cluster::{
    EXIT_AFTER_LOSS, SMALL_REQUEST, TAG_BIG, TAG_BIG_BODY, TAG_HOST, TAG_PING, TAG_TO_MASTER,
    TAG_TO_WORKER, read_setup_broadcast,
};
use super::service::KEEP_BUFFER;
use crate::remote::Registry;
use crate::remote::wire::{
    self, DEFAULT_MAX_FRAME, Request, Response, decode_payload, encode_payload, outcome_of,
    run_call,
};

/// Serves as a worker rank, then exits the process. Never returns.
pub(crate) fn serve(universe: Universe) -> ! {
    let world = universe.world();
    let rank = world.rank();
    let (code, lost) = match serve_inner(&world) {
        Ok(lost) => (0, lost),
        Err(why) => {
            tracing::error!(rank, %why, "cluster worker stops");
            // Exit 0 anyway: rank 0 has the reason and reports it; a non-zero status would make
            // mpiexec abort rank 0 before it can say so.
            (0, false)
        }
    };
    tracing::debug!(rank, lost, "cluster worker finalizes MPI");
    // MPI_Finalize waits for every process of the job; after a rank died (rank 0 says so in
    // the exit message) it may wait for ever (see FINALIZE_GRACE). This rank's work is done:
    // past the grace, it exits anyway (mpiexec with --enable-recovery, which a job that
    // survives a dead rank runs under, takes that as a normal end).
    let _ = lost.then(|| {
        std::thread::Builder::new()
            .name("offload-mpi-exit".into())
            .spawn(move || {
                std::thread::sleep(super::cluster::FINALIZE_GRACE);
                tracing::warn!(
                    rank,
                    grace = ?super::cluster::FINALIZE_GRACE,
                    "MPI_Finalize has not ended (a rank of the job was lost?); exiting without it"
                );
                std::process::exit(code)
            })
    });
    // Dropping the universe calls MPI_Finalize.
    drop(world);
    drop(universe);
    std::process::exit(code)
}

fn send(world: &SimpleCommunicator, bytes: &[u8], tag: i32) {
    world.process_at_rank(0).send_with_tag(bytes, tag);
}

/// Serves until rank 0 says exit; true when its exit message says a rank of the job died.
fn serve_inner(world: &SimpleCommunicator) -> Result<bool, String> {
    let rank = world.rank();
    crate::remote::install_panic_hook();
    let setup = read_setup_broadcast(world);
    let (req, body): (Request<'_>, &[u8]) =
        decode_payload(&setup).map_err(|e| format!("bad setup broadcast: {e}"))?;
    let registry = Registry::global().ok_or("offload::init did not install a registry")?;
    match req {
        Request::Exit => return Ok(false),
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
    // Buffers kept between calls: small requests (every message from rank 0 but the body of
    // a big request fits), big requests, the result, the reply.
    let mut small = vec![0u8; SMALL_REQUEST];
    let mut big = Vec::new();
    let mut out = Vec::new();
    let mut reply_buf = Vec::new();
    let root = world.process_at_rank(0);
    loop {
        let status = root.receive_into(&mut small[..]);
        let len = usize::try_from(status.count(u8::equivalent_datatype()))
            .unwrap_or(0)
            .min(small.len());
        let bytes: &[u8] = match status.tag() {
            TAG_PING => {
                let rounds = small[..len].try_into().map_or(0, u32::from_le_bytes);
                ping_pong(world, rounds);
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
            Request::Exit => return Ok(args == [EXIT_AFTER_LOSS]),
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
        let (r, run_ns) = run_call(registry, func, batch, args, DEFAULT_MAX_FRAME, &mut out);
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

/// The raw MPI baseline: echo `rounds` 8-byte messages back to rank 0.
fn ping_pong(world: &SimpleCommunicator, rounds: u32) {
    let root = world.process_at_rank(0);
    let mut x = 0u64;
    for _ in 0..rounds {
        root.receive_into_with_tag(&mut x, TAG_PING);
        root.send_with_tag(&x, TAG_PING);
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
