//! The worker's side: what [`init`](crate::init) runs in a process the pool started.
//!
//! Blocking I/O on one Unix socket inherited as a dedicated file descriptor (never stdin or
//! stdout), one frame at a time: setup, then calls until `Exit` or end of file. See
//! `README.md` in this folder for the protocol.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::remote::wire::{self, Request, Response};
use crate::remote::{Registry, install_panic_hook, set_shared_bytes};

/// The environment variable that marks a process as a pool's worker: `FD,SLOT,MAX_FRAME`.
pub(crate) const WORKER_ENV: &str = "OFFLOAD_WORKER";

/// Exit code of a worker that refused the handshake (another build, a failed initializer).
pub(crate) const EXIT_REFUSED: i32 = 3;

/// Exit code of a worker whose connection broke (a bad frame, a write error).
pub(crate) const EXIT_PROTOCOL: i32 = 4;

/// What the pool told a worker through [`WORKER_ENV`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerSpec {
    fd: i32,
    slot: u32,
    max_frame: usize,
}

/// The worker spec of this process, when a pool started it.
pub(crate) fn worker_spec() -> Option<WorkerSpec> {
    let v = std::env::var(WORKER_ENV).ok()?;
    let mut parts = v.split(',').map(str::parse::<u64>);
    let (Some(Ok(fd)), Some(Ok(slot)), Some(Ok(max))) = (parts.next(), parts.next(), parts.next())
    else {
        eprintln!("offload: ignoring a malformed {WORKER_ENV}={v:?}");
        return None;
    };
    Some(WorkerSpec {
        fd: i32::try_from(fd).ok()?,
        slot: u32::try_from(slot).ok()?,
        max_frame: usize::try_from(max).ok()?,
    })
}

/// Serves the pool on the inherited socket, then exits the process.
pub(crate) fn serve_as_worker(spec: WorkerSpec) -> ! {
    install_panic_hook();
    #[allow(unsafe_code)]
    // SAFETY: the pool passed this descriptor to us, open, through WORKER_ENV (it cleared its
    // close-on-exec flag in `pre_exec` for exactly this exec); nothing else in this process
    // knows or owns it, so the stream is its only owner.
    let stream = unsafe { UnixStream::from_raw_fd(spec.fd) };
    let code = match Worker::new(stream, spec).run() {
        Ok(()) => 0,
        Err(code) => code,
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

struct Worker {
    stream: UnixStream,
    spec: WorkerSpec,
    codec: tokio_util::codec::LengthDelimitedCodec,
    inbuf: BytesMut,
    scratch: Vec<u8>,
    outbuf: BytesMut,
    result: Vec<u8>,
}

impl Worker {
    fn new(stream: UnixStream, spec: WorkerSpec) -> Self {
        Worker {
            stream,
            spec,
            codec: wire::codec(spec.max_frame),
            inbuf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024],
            outbuf: BytesMut::with_capacity(64 * 1024),
            result: Vec::with_capacity(4096),
        }
    }

    /// The next frame's payload; `None` at end of file (the pool is gone).
    fn next_frame(&mut self) -> Result<Option<BytesMut>, i32> {
        loop {
            match self.codec.decode(&mut self.inbuf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => {
                    eprintln!(
                        "offload worker {}: a bad frame from the pool: {e}",
                        self.spec.slot
                    );
                    return Err(EXIT_PROTOCOL);
                }
            }
            // Wait in ppoll, not in read: a blocked reader is also woken each time the pool
            // reads an answer (see `sys.rs`), a context switch for nothing per task.
            super::sys::wait_readable(self.stream.as_raw_fd());
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Ok(None),
                Ok(n) => self.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    fn send(&mut self, header: &Response<'_>, body: &[u8]) -> Result<(), i32> {
        self.outbuf.clear();
        if let Err(e) = wire::encode_frame(header, body, self.spec.max_frame, &mut self.outbuf) {
            eprintln!("offload worker {}: {e}", self.spec.slot);
            return Err(EXIT_PROTOCOL);
        }
        self.stream
            .write_all(&self.outbuf)
            .map_err(|_| EXIT_PROTOCOL)
    }

    fn refuse(&mut self, reason: &str) -> Result<(), i32> {
        let _ = self.send(&Response::Refused { reason }, &[]);
        Err(EXIT_REFUSED)
    }

    fn run(mut self) -> Result<(), i32> {
        let Some(registry) = Registry::global() else {
            return self.refuse("the worker has no registry (offload::init did not run)");
        };
        // Setup.
        let Some(frame) = self.next_frame()? else {
            return Ok(());
        };
        match wire::decode_payload::<Request<'_>>(&frame) {
            Ok((
                Request::Setup {
                    build_id,
                    init,
                    init_args_len,
                    ..
                },
                body,
            )) => {
                if build_id != registry.build_id() {
                    let reason = format!(
                        "the worker is another build (build id {:016x}, the pool's {build_id:016x}): \
                         the executable changed, or it registers other functions",
                        registry.build_id()
                    );
                    return self.refuse(&reason);
                }
                let split = usize::try_from(init_args_len)
                    .unwrap_or(usize::MAX)
                    .min(body.len());
                let (init_args, shared) = body.split_at(split);
                set_shared_bytes(shared.to_vec());
                if let Some(init) = init {
                    let (r, _) = wire::run_call(
                        registry,
                        init,
                        false,
                        init_args,
                        usize::MAX,
                        &mut self.result,
                    );
                    if let Err(e) = r {
                        let why = match e {
                            crate::remote::CallFailure::Panicked { message, .. } => {
                                format!("panicked: {message}")
                            }
                            crate::remote::CallFailure::Failed { message, .. } => message,
                        };
                        let reason = format!("the initializer {init:?} failed: {why}");
                        return self.refuse(&reason);
                    }
                }
            }
            Ok((other, _)) => {
                let reason = format!("expected a Setup frame first, got {other:?}");
                return self.refuse(&reason);
            }
            Err(e) => {
                let reason = e.to_string();
                return self.refuse(&reason);
            }
        }
        let ready = Response::Ready {
            build_id: registry.build_id(),
            pid: std::process::id(),
        };
        self.send(&ready, &[])?;
        // Calls.
        let max_result = self.spec.max_frame.saturating_sub(1024);
        while let Some(frame) = self.next_frame()? {
            let (req, body) = match wire::decode_payload::<Request<'_>>(&frame) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("offload worker {}: {e}", self.spec.slot);
                    return Err(EXIT_PROTOCOL);
                }
            };
            let (id, func, batch) = match req {
                Request::Call { id, func } => (id, func, false),
                Request::Batch { id, func } => (id, func, true),
                Request::Exit => return Ok(()),
                Request::Setup { .. } => {
                    eprintln!("offload worker {}: a second Setup frame", self.spec.slot);
                    return Err(EXIT_PROTOCOL);
                }
            };
            let mut result = std::mem::take(&mut self.result);
            let (r, run_ns) = wire::run_call(registry, func, batch, body, max_result, &mut result);
            let header = Response::Done {
                id,
                run_ns,
                outcome: wire::outcome_of(&r),
            };
            let sent = self.send(&header, &result);
            self.result = result;
            sent?;
        }
        Ok(())
    }
}
