//! The worker's side: what [`init`](crate::init) runs in a process the pool started.
//!
//! Blocking I/O on two pipes inherited as dedicated file descriptors (never stdin or stdout):
//! requests in, answers out, one frame at a time: setup, then calls until `Exit` or end of
//! file. See `README.md` in this folder for the protocol.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::remote::wire::SharedData;
use crate::remote::wire::{self, Request, Response};
use crate::remote::{Registry, install_panic_hook, map_inherited, set_shared_bytes};

/// The environment variable that marks a process as a pool's worker:
/// `OUT_FD,IN_FD,SLOT,MAX_FRAME` (the answer pipe's write end, the request pipe's read end).
pub(crate) const WORKER_ENV: &str = "OFFLOAD_WORKER";

/// Exit code of a worker that refused the handshake (another build, a failed initializer).
pub(crate) const EXIT_REFUSED: i32 = 3;

/// Exit code of a worker whose connection broke (a bad frame, a write error).
pub(crate) const EXIT_PROTOCOL: i32 = 4;

/// What the pool told a worker through [`WORKER_ENV`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerSpec {
    out_fd: i32,
    in_fd: i32,
    slot: u32,
    max_frame: usize,
}

/// The worker spec of this process, when a pool started it.
pub(crate) fn worker_spec() -> Option<WorkerSpec> {
    let v = std::env::var(WORKER_ENV).ok()?;
    let mut parts = v.split(',').map(str::parse::<u64>);
    let (Some(Ok(out_fd)), Some(Ok(in_fd)), Some(Ok(slot)), Some(Ok(max))) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        tracing::warn!(value = %v, "offload: ignoring a malformed {WORKER_ENV}");
        return None;
    };
    let spec = WorkerSpec {
        out_fd: i32::try_from(out_fd).ok()?,
        in_fd: i32::try_from(in_fd).ok()?,
        slot: u32::try_from(slot).ok()?,
        max_frame: usize::try_from(max).ok()?,
    };
    // A program that a task of a worker started inherits the environment but not the pipes
    // (the worker made them close-on-exec): it is not a worker, and must run as itself.
    for fd in [spec.out_fd, spec.in_fd] {
        if super::sys::is_open_pipe(fd) == Some(false) {
            tracing::debug!(
                fd,
                "{WORKER_ENV} is set but descriptor {fd} is no open pipe: not a pool's worker \
                 (a program a worker's task started), running normally"
            );
            return None;
        }
    }
    Some(spec)
}

/// Serves the pool on the inherited pipes, then exits the process.
pub(crate) fn serve_as_worker(spec: WorkerSpec) -> ! {
    install_panic_hook();
    #[allow(unsafe_code)]
    // SAFETY: the pool passed these two descriptors to us through WORKER_ENV (it cleared
    // their close-on-exec flags in `pre_exec` for exactly this exec), and `worker_spec`
    // checked that both are open pipes; nothing else in this process knows or owns them, so
    // each File is the only owner of one.
    let (output, input) = unsafe {
        (
            File::from_raw_fd(spec.out_fd),
            File::from_raw_fd(spec.in_fd),
        )
    };
    // Programs that tasks start must not inherit the pipes: one holding the answer pipe open
    // would hide this worker's death (its end of file) from the pool.
    for f in [&output, &input] {
        if let Err(e) = super::sys::set_cloexec(f) {
            eprintln!("offload worker: could not make the pool's pipes close-on-exec: {e}");
        }
    }
    guard_against_fork(&input, &output);
    let code = match Worker::new(input, output, spec).run() {
        Ok(()) => 0,
        Err(code) => code,
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// The protocol's descriptors and this worker's pid, for the fork handler.
static PROTOCOL_FDS: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];
static WORKER_PID: AtomicU32 = AtomicU32::new(0);

/// Runs in the child of every `fork` a task makes (`pthread_atfork`): closes the protocol's
/// pipes there, so that the child can neither hold them open (and hide the worker's death
/// from the pool) nor read the worker's requests. Only `close`: async-signal-safe.
extern "C" fn drop_protocol_in_forked_child() {
    for fd in &PROTOCOL_FDS {
        let fd = fd.load(Ordering::Relaxed);
        if fd >= 0 {
            #[allow(unsafe_code)]
            // SAFETY: closes a descriptor number of this (new) process; the `File`s that own
            // it in the parent never run here (a forked child that returns from its task
            // leaves by `_exit` at its next protocol step, see `leave_if_forked`).
            unsafe {
                libc::close(fd);
            }
        }
    }
}

/// Installs the fork handler for this worker's pipes.
fn guard_against_fork(input: &File, output: &File) {
    use std::os::fd::AsRawFd;
    PROTOCOL_FDS[0].store(input.as_raw_fd(), Ordering::Relaxed);
    PROTOCOL_FDS[1].store(output.as_raw_fd(), Ordering::Relaxed);
    WORKER_PID.store(std::process::id(), Ordering::Relaxed);
    #[allow(unsafe_code)]
    // SAFETY: registers a handler with the C signature pthread_atfork expects; it only closes
    // descriptors.
    let r = unsafe { libc::pthread_atfork(None, None, Some(drop_protocol_in_forked_child)) };
    if r != 0 {
        eprintln!("offload worker: could not install the fork handler (error {r})");
    }
}

/// Leaves at once, without a word, when this is not the worker but a process a task forked
/// that returned from the task: the protocol is the worker's alone.
fn leave_if_forked() {
    if std::process::id() != WORKER_PID.load(Ordering::Relaxed) {
        #[allow(unsafe_code)]
        // SAFETY: _exit ends this process at once; nothing of it is shared with the worker.
        unsafe {
            libc::_exit(0)
        };
    }
}

struct Worker {
    /// The request pipe (read end).
    input: File,
    /// The answer pipe (write end).
    output: File,
    spec: WorkerSpec,
    codec: tokio_util::codec::LengthDelimitedCodec,
    inbuf: BytesMut,
    scratch: Vec<u8>,
    outbuf: Vec<u8>,
    result: Vec<u8>,
}

impl Worker {
    fn new(input: File, output: File, spec: WorkerSpec) -> Self {
        Worker {
            input,
            output,
            spec,
            codec: wire::codec(spec.max_frame),
            inbuf: BytesMut::with_capacity(64 * 1024),
            scratch: vec![0; 64 * 1024],
            outbuf: Vec::with_capacity(64 * 1024),
            result: Vec::with_capacity(4096),
        }
    }

    /// The next frame's payload; `None` at end of file (the pool is gone).
    fn next_frame(&mut self) -> Result<Option<BytesMut>, i32> {
        leave_if_forked();
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
            match self.input.read(&mut self.scratch) {
                Ok(0) => return Ok(None),
                Ok(n) => self.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Sends one frame (the layout of [`wire::codec`]) built in one reused buffer, with one
    /// `write`.
    fn send(&mut self, header: &Response<'_>, body: &[u8]) -> Result<(), i32> {
        leave_if_forked();
        let mut out = std::mem::take(&mut self.outbuf);
        out.clear();
        out.extend_from_slice(&[0, 0, 0, 0, wire::WIRE_VERSION]);
        let mut out = match postcard::to_extend(header, out) {
            Ok(out) => out,
            Err(e) => {
                eprintln!(
                    "offload worker {}: could not encode a header: {e}",
                    self.spec.slot
                );
                return Err(EXIT_PROTOCOL);
            }
        };
        out.extend_from_slice(body);
        let len = out.len() - 4;
        let Some(prefix) = u32::try_from(len)
            .ok()
            .filter(|_| len <= self.spec.max_frame)
        else {
            let e = wire::frame_too_large(len, self.spec.max_frame);
            eprintln!("offload worker {}: {e}", self.spec.slot);
            return Err(EXIT_PROTOCOL);
        };
        out[..4].copy_from_slice(&prefix.to_be_bytes());
        let sent = self.output.write_all(&out);
        self.outbuf = out;
        sent.map_err(|_| EXIT_PROTOCOL)
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
                    shared,
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
                let (init_args, inline) = body.split_at(split);
                match shared {
                    // No data leaves the slot empty (a pool this worker builds may fill it).
                    SharedData::Inline if inline.is_empty() => {}
                    SharedData::Inline => set_shared_bytes(inline.to_vec()),
                    SharedData::Mapped { fd, len } => {
                        if let Err(reason) = map_inherited(fd, len) {
                            return self.refuse(&reason);
                        }
                    }
                }
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
