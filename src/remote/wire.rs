//! The wire format shared by the remote tiers (worker processes, MPI ranks).
//!
//! A frame is a 4-byte big-endian length (tokio-util's [`LengthDelimitedCodec`], capped at a
//! maximum frame size) followed by the payload:
//!
//! ```text
//! payload = [WIRE_VERSION: u8] [postcard(header)] [body: the rest of the payload]
//! ```
//!
//! The header is a [`Request`] (to a worker) or a [`Response`] (from a worker); the body holds
//! the bulk bytes the header describes (encoded arguments, an encoded result), so they are
//! never copied into a nested byte string. See `src/tier/process/README.md` for the exchanges.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Encoder, LengthDelimitedCodec};

use crate::error::{Error, ErrorKind};
use crate::remote::registry::{CallFailure, Registry};

/// The protocol version, the first byte of every payload. Bumped on any change to the
/// headers below; a peer with another version is refused with a clear error.
pub(crate) const WIRE_VERSION: u8 = 2;

/// Default maximum frame size: 64 MiB. Large enough for any reasonable argument batch, small
/// enough that a corrupt length prefix cannot make the reader allocate gigabytes.
pub(crate) const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Why a call failed on the remote side without panicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailKind {
    /// No function of that name is registered in the worker.
    UnknownFunction,
    /// The arguments could not be decoded as the function's argument type.
    Decode,
    /// The result could not be encoded.
    Encode,
    /// The encoded result is larger than the maximum frame size.
    FrameTooLarge,
}

impl FailKind {
    /// The [`ErrorKind`] the caller sees.
    pub fn error_kind(self) -> ErrorKind {
        match self {
            FailKind::UnknownFunction => ErrorKind::Remote,
            FailKind::Decode | FailKind::Encode | FailKind::FrameTooLarge => ErrorKind::Encoding,
        }
    }
}

/// A header sent to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request<'a> {
    /// First frame: who the worker is, and what to do before its first task. Body:
    /// `init_args_len` bytes of initializer arguments, then the shared read-only data when
    /// it travels [`SharedData::Inline`].
    Setup {
        /// The parent's build id; the worker refuses a different one.
        build_id: u64,
        /// The worker's slot number (for logs and errors).
        worker: u32,
        /// The registered initializer to run before the first task.
        init: Option<&'a str>,
        /// How many body bytes are the initializer's arguments.
        init_args_len: u64,
        /// Where the shared read-only data is.
        shared: SharedData,
    },
    /// Run `func` once. Body: the encoded argument.
    Call {
        /// The task id, echoed in the response.
        id: u64,
        /// The registered function name.
        func: &'a str,
    },
    /// Run `func` on each item. Body: an encoded `Vec` of arguments.
    Batch {
        /// The task id, echoed in the response.
        id: u64,
        /// The registered function name.
        func: &'a str,
    },
    /// Exit cleanly (shutdown, or the worker served its maximum number of tasks).
    Exit,
}

/// Where a worker finds the read-only data its pool shares with every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SharedData {
    /// In the setup frame's body, after the initializer's arguments (possibly empty).
    Inline,
    /// In a sealed memory file the worker inherited as descriptor `fd`, `len` bytes long,
    /// which it maps read-only (see [`shared_bytes`](crate::shared_bytes)).
    Mapped {
        /// The inherited descriptor's number in the worker.
        fd: i32,
        /// The data's length in bytes.
        len: u64,
    },
}

/// A header sent by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response<'a> {
    /// The handshake succeeded and the initializer ran.
    Ready {
        /// The worker's own build id (equal to the parent's).
        build_id: u64,
        /// The worker's process id.
        pid: u32,
    },
    /// The worker refuses to serve (another build, a failed initializer); it exits next.
    Refused {
        /// A sentence saying why.
        reason: &'a str,
    },
    /// A task finished. Body: the encoded result when `outcome` is [`Outcome::Ok`] (for a
    /// batch, an encoded `Vec<ItemOutcome<R>>`).
    Done {
        /// The task id of the request.
        id: u64,
        /// The task's own run time in nanoseconds, measured in the worker.
        run_ns: u64,
        /// What happened.
        outcome: Outcome<'a>,
    },
}

/// How a call ended on the remote side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome<'a> {
    /// It returned; the result is the body.
    Ok,
    /// It panicked.
    Panicked {
        /// The panic message, with its location.
        message: &'a str,
        /// The backtrace captured in the worker.
        backtrace: Option<&'a str>,
    },
    /// It could not run or its result could not be sent.
    Failed {
        /// Why.
        kind: FailKind,
        /// A sentence saying so.
        message: &'a str,
    },
}

impl Outcome<'_> {
    /// The caller's error for a non-`Ok` outcome.
    pub(crate) fn into_error(self) -> Option<Error> {
        match self {
            Outcome::Ok => None,
            Outcome::Panicked { message, backtrace } => {
                Some(Error::panicked(message, backtrace.map(str::to_owned)))
            }
            Outcome::Failed { kind, message } => Some(Error::new(kind.error_kind(), message)),
        }
    }
}

/// The result of one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ItemOutcome<R> {
    /// The item's result.
    Ok(R),
    /// The item panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// The backtrace captured in the worker.
        backtrace: Option<String>,
    },
}

impl<R> ItemOutcome<R> {
    /// As a `Result` with the crate's error.
    pub(crate) fn into_result(self) -> Result<R, Error> {
        match self {
            ItemOutcome::Ok(r) => Ok(r),
            ItemOutcome::Panicked { message, backtrace } => {
                Err(Error::panicked(message, backtrace))
            }
        }
    }
}

/// The length-delimited codec of this protocol, refusing frames over `max_frame` bytes.
pub(crate) fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// Builds a payload (version, header, body) without the length prefix: what an MPI message
/// carries as is.
pub(crate) fn encode_payload<H: Serialize>(header: &H, body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::with_capacity(32 + body.len());
    v.push(WIRE_VERSION);
    let mut v = postcard::to_extend(header, v).map_err(|e| {
        Error::new(
            ErrorKind::Encoding,
            format!("could not encode a header: {e}"),
        )
    })?;
    v.extend_from_slice(body);
    Ok(v)
}

/// Appends one frame (length prefix and payload) to `dst`; an [`ErrorKind::Encoding`] error
/// when the payload would exceed `max_frame`.
pub(crate) fn encode_frame<H: Serialize>(
    header: &H,
    body: &[u8],
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    let payload = encode_payload(header, body)?;
    if payload.len() > max_frame {
        return Err(frame_too_large(payload.len(), max_frame));
    }
    codec(max_frame)
        .encode(Bytes::from(payload), dst)
        .map_err(|e| {
            Error::new(
                ErrorKind::Encoding,
                format!("could not frame a message: {e}"),
            )
        })
}

/// Builds one whole frame (length prefix, version, header, then the body that `body` appends
/// to the buffer it is given) in a single buffer, with the layout [`codec`] reads. Saves a copy
/// of the body over [`encode_frame`]; an [`ErrorKind::Encoding`] error when the body cannot be
/// encoded or the payload exceeds `max_frame`.
pub(crate) fn build_frame<H: Serialize>(
    header: &H,
    max_frame: usize,
    body: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, postcard::Error>,
) -> Result<Vec<u8>, Error> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&[0, 0, 0, 0, WIRE_VERSION]);
    let v = postcard::to_extend(header, v).map_err(|e| {
        Error::new(
            ErrorKind::Encoding,
            format!("could not encode a header: {e}"),
        )
    })?;
    let mut v = body(v).map_err(|e| {
        Error::new(
            ErrorKind::Encoding,
            format!("could not encode the arguments: {e}"),
        )
    })?;
    let len = v.len() - 4;
    if len > max_frame {
        return Err(frame_too_large(len, max_frame));
    }
    let prefix = u32::try_from(len).map_err(|_| frame_too_large(len, max_frame))?;
    v[..4].copy_from_slice(&prefix.to_be_bytes());
    Ok(v)
}

/// The error for a frame over the limit.
pub(crate) fn frame_too_large(len: usize, max_frame: usize) -> Error {
    Error::new(
        ErrorKind::Encoding,
        format!("a frame of {len} bytes exceeds the maximum frame size of {max_frame} bytes"),
    )
}

/// Splits a payload into its header and body, checking the version byte.
pub(crate) fn decode_payload<'a, H: Deserialize<'a>>(
    payload: &'a [u8],
) -> Result<(H, &'a [u8]), Error> {
    match payload.split_first() {
        None => Err(Error::new(ErrorKind::Encoding, "an empty frame")),
        Some((&v, rest)) if v == WIRE_VERSION => postcard::take_from_bytes(rest).map_err(|e| {
            Error::new(
                ErrorKind::Encoding,
                format!("an undecodable frame ({} bytes): {e}", payload.len()),
            )
        }),
        Some((&v, _)) => Err(Error::new(
            ErrorKind::Remote,
            format!(
                "the peer speaks wire version {v}, this binary {WIRE_VERSION}: \
                 both ends must be the same build"
            ),
        )),
    }
}

/// Runs one `Call` (or, with `batch`, one `Batch`) on the worker's side: looks `func` up in
/// `registry`, runs it on `args`, and leaves the encoded result in `out` when the outcome is
/// [`Outcome::Ok`]. Returns the outcome's owned parts and the run time in nanoseconds.
///
/// This is the whole of a remote tier's worker loop body besides its transport.
pub(crate) fn run_call(
    registry: &Registry,
    func: &str,
    batch: bool,
    args: &[u8],
    max_result: usize,
    out: &mut Vec<u8>,
) -> (Result<(), CallFailure>, u64) {
    out.clear();
    let Some(f) = registry.get(func) else {
        let message = format!(
            "no remote function {func:?} is registered in this worker: list it in \
             offload::init(&[...]) at the top of main"
        );
        return (
            Err(CallFailure::Failed {
                kind: FailKind::UnknownFunction,
                message,
            }),
            0,
        );
    };
    let t0 = Instant::now();
    let r = if batch {
        f.call_batch(args, out)
    } else {
        f.call(args, out)
    };
    let run_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let r = r.and_then(|()| {
        if out.len() > max_result {
            let message = frame_too_large(out.len(), max_result)
                .detail()
                .unwrap_or_default()
                .to_owned();
            out.clear();
            Err(CallFailure::Failed {
                kind: FailKind::FrameTooLarge,
                message: format!("the result of {func:?} is too large: {message}"),
            })
        } else {
            Ok(())
        }
    });
    (r, run_ns)
}

/// The [`Outcome`] header for a [`run_call`] result.
pub(crate) fn outcome_of(r: &Result<(), CallFailure>) -> Outcome<'_> {
    match r {
        Ok(()) => Outcome::Ok,
        Err(CallFailure::Panicked { message, backtrace }) => Outcome::Panicked {
            message,
            backtrace: backtrace.as_deref(),
        },
        Err(CallFailure::Failed { kind, message }) => Outcome::Failed {
            kind: *kind,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn a_frame_round_trips() {
        let mut buf = BytesMut::new();
        let h = Request::Call { id: 7, func: "f" };
        encode_frame(&h, b"args", DEFAULT_MAX_FRAME, &mut buf).expect("encodes");
        let payload = codec(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .expect("a valid frame")
            .expect("a whole frame");
        let (back, body): (Request<'_>, &[u8]) = decode_payload(&payload).expect("decodes");
        assert_eq!(back, h);
        assert_eq!(body, b"args");
    }

    #[test]
    fn build_frame_matches_the_codec() {
        let v = build_frame(
            &Request::Call { id: 1, func: "g" },
            DEFAULT_MAX_FRAME,
            |v| postcard::to_extend(&(3u8, "x"), v),
        )
        .expect("builds");
        let mut buf = BytesMut::from(&v[..]);
        let payload = codec(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .expect("valid")
            .expect("whole");
        let (h, body): (Request<'_>, &[u8]) = decode_payload(&payload).expect("decodes");
        assert_eq!(h, Request::Call { id: 1, func: "g" });
        assert_eq!(
            postcard::from_bytes::<(u8, &str)>(body).expect("body"),
            (3, "x")
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused_on_both_sides() {
        let mut buf = BytesMut::new();
        let e = encode_frame(&Request::Exit, &[0u8; 100], 64, &mut buf).unwrap_err();
        assert!(e.is_encoding(), "{e}");
        // A length prefix over the limit is an error for the reader, not an allocation.
        let mut bad = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 1, 2][..]);
        assert!(codec(1024).decode(&mut bad).is_err());
    }

    #[test]
    fn garbage_and_other_versions_are_errors() {
        let e = decode_payload::<Response<'_>>(&[WIRE_VERSION, 0xff, 0xff]).unwrap_err();
        assert!(e.is_encoding(), "{e}");
        let e = decode_payload::<Response<'_>>(&[WIRE_VERSION + 1, 0]).unwrap_err();
        assert!(e.is_remote(), "{e}");
        assert!(decode_payload::<Response<'_>>(&[]).is_err());
    }
}
