//! One error family for every tier.
//!
//! [`Error`] is opaque: ask it what happened with the `is_*` predicates and the accessors, and
//! print it to get a sentence that names the task, the tier, the worker and the cause
//! (DESIGN.md §3.7). [`TrySubmitError`] hands a job back when a queue is full, the executor is
//! shut down, or the job cannot be taken (with the [`Error`] that says why), and
//! [`BuildError`] says why a builder refused its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::tier::TierKind;

/// What happened to a task that did not produce its value.
///
/// The categories match the outcomes of DESIGN.md §3.1: every submitted task ends in its value
/// or in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task's code panicked; [`Error::panic_message`] has the message.
    Panicked,
    /// The worker process running the task died (killed by a signal, exited, ran out of memory).
    WorkerDied,
    /// The task ran past its deadline and was stopped.
    TimedOut,
    /// The task was cancelled before it produced a value.
    Cancelled,
    /// The executor was shut down before the task could run, or refuses new work.
    ShutDown,
    /// The remote side refused the task: unknown function, another binary, a protocol error.
    Remote,
    /// Arguments or a result could not be encoded or decoded, or a frame was too large.
    Encoding,
    /// The pool cannot run work at all (for example workers that die at start-up).
    Pool,
    /// The operation is not possible on this tier (a closure sent to another process).
    Unsupported,
    /// The caller used the API in a way it cannot serve (for example, reading an outcome that
    /// was already taken, or building something with settings it refuses).
    Usage,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Panicked => "panicked",
            ErrorKind::WorkerDied => "lost its worker",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Cancelled => "was cancelled",
            ErrorKind::ShutDown => "was refused: the executor is shut down",
            ErrorKind::Remote => "failed on the remote side",
            ErrorKind::Encoding => "could not be encoded or decoded",
            ErrorKind::Pool => "could not run: the pool is broken",
            ErrorKind::Unsupported => "is not supported on this tier",
            ErrorKind::Usage => "was misused",
        }
    }
}

/// How a worker process ended, as far as the operating system told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The worker's process id.
    pub pid: Option<u32>,
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => f.write_str("pid unknown")?,
        }
        if let Some(sig) = self.signal {
            write!(f, ", killed by signal {sig}")?;
        }
        if let Some(code) = self.code {
            write!(f, ", exit code {code}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Inner {
    kind: ErrorKind,
    task: Option<Arc<str>>,
    tier: Option<TierKind>,
    worker: Option<usize>,
    detail: Option<String>,
    backtrace: Option<String>,
    exit: Option<ExitInfo>,
    timeout: Option<Duration>,
}

/// The error of a task, a submission or a pool.
///
/// Opaque on purpose (as tokio's `JoinError`): use [`kind`](Error::kind) or the `is_*`
/// predicates, and the accessors for the details. `Display` prints one sentence, e.g.
/// `task "parse" on threads worker 0 panicked: index out of bounds`.
pub struct Error {
    inner: Box<Inner>,
}

impl Error {
    /// A new error of `kind` with a free-form detail text.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                task: None,
                tier: None,
                worker: None,
                detail: Some(detail.into()),
                backtrace: None,
                exit: None,
                timeout: None,
            }),
        }
    }

    pub(crate) fn bare(kind: ErrorKind) -> Self {
        let mut e = Error::new(kind, "");
        e.inner.detail = None;
        e
    }

    /// A panic with its message (and backtrace, where one was captured).
    pub fn panicked(message: impl Into<String>, backtrace: Option<String>) -> Self {
        let mut e = Error::new(ErrorKind::Panicked, message);
        e.inner.backtrace = backtrace;
        e
    }

    /// The task was cancelled.
    pub fn cancelled() -> Self {
        Error::bare(ErrorKind::Cancelled)
    }

    /// The executor is shut down.
    pub fn shut_down() -> Self {
        Error::bare(ErrorKind::ShutDown)
    }

    /// The task ran past `limit`.
    pub fn timed_out(limit: Duration) -> Self {
        let mut e = Error::bare(ErrorKind::TimedOut);
        e.inner.timeout = Some(limit);
        e
    }

    /// The worker process died while it held the task.
    pub fn worker_died(exit: ExitInfo) -> Self {
        let mut e = Error::bare(ErrorKind::WorkerDied);
        e.inner.exit = Some(exit);
        e
    }

    /// Names the task (function name or call-site key) this error belongs to.
    #[must_use]
    pub fn with_task(mut self, task: impl Into<Arc<str>>) -> Self {
        self.inner.task = Some(task.into());
        self
    }

    /// Names the tier the task was on.
    #[must_use]
    pub fn with_tier(mut self, tier: TierKind) -> Self {
        self.inner.tier = Some(tier);
        self
    }

    /// Names the worker (thread index, process slot or MPI rank).
    #[must_use]
    pub fn with_worker(mut self, worker: usize) -> Self {
        self.inner.worker = Some(worker);
        self
    }

    /// Attaches exit information of a worker process.
    #[must_use]
    pub fn with_exit(mut self, exit: ExitInfo) -> Self {
        self.inner.exit = Some(exit);
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The task's code panicked.
    pub fn is_panic(&self) -> bool {
        self.inner.kind == ErrorKind::Panicked
    }

    /// The task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.kind == ErrorKind::Cancelled
    }

    /// The executor was shut down before the task ran.
    pub fn is_shut_down(&self) -> bool {
        self.inner.kind == ErrorKind::ShutDown
    }

    /// The task ran past its deadline.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::TimedOut
    }

    /// The worker process died while it held the task.
    pub fn is_worker_died(&self) -> bool {
        self.inner.kind == ErrorKind::WorkerDied
    }

    /// A remote-side refusal (unknown function, another binary, protocol error).
    pub fn is_remote(&self) -> bool {
        self.inner.kind == ErrorKind::Remote
    }

    /// An encoding or frame-size failure.
    pub fn is_encoding(&self) -> bool {
        self.inner.kind == ErrorKind::Encoding
    }

    /// The panic message, for a panic.
    pub fn panic_message(&self) -> Option<&str> {
        if self.is_panic() {
            self.inner.detail.as_deref()
        } else {
            None
        }
    }

    /// The backtrace captured where the task panicked, when there is one.
    pub fn backtrace(&self) -> Option<&str> {
        self.inner.backtrace.as_deref()
    }

    /// Free-form detail (the panic message, the remote error text, ...).
    pub fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    /// The task's name or key, when known.
    pub fn task(&self) -> Option<&str> {
        self.inner.task.as_deref()
    }

    /// The tier the task was on, when known.
    pub fn tier(&self) -> Option<TierKind> {
        self.inner.tier
    }

    /// The worker index, when known.
    pub fn worker(&self) -> Option<usize> {
        self.inner.worker
    }

    /// How the worker process ended, for [`ErrorKind::WorkerDied`] and pool errors.
    pub fn exit(&self) -> Option<ExitInfo> {
        self.inner.exit
    }

    /// The process id of the worker involved, when known.
    pub fn pid(&self) -> Option<u32> {
        self.inner.exit.and_then(|e| e.pid)
    }

    /// The signal that killed the worker, when one did.
    pub fn signal(&self) -> Option<i32> {
        self.inner.exit.and_then(|e| e.signal)
    }

    /// The exit code of the worker, when it exited.
    pub fn exit_code(&self) -> Option<i32> {
        self.inner.exit.and_then(|e| e.code)
    }

    /// Fills in the task name, tier and worker where they are not yet known.
    pub(crate) fn fill(
        mut self,
        task: Option<&Arc<str>>,
        tier: TierKind,
        worker: Option<usize>,
    ) -> Self {
        if self.inner.task.is_none() {
            self.inner.task = task.cloned();
        }
        if self.inner.tier.is_none() {
            self.inner.tier = Some(tier);
        }
        if self.inner.worker.is_none() {
            self.inner.worker = worker;
        }
        self
    }
}

impl Clone for Error {
    /// A copy of the error, for a failure shared by several outcomes (every item of a `map`
    /// chunk whose worker died).
    fn clone(&self) -> Self {
        Error {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(t) = &self.inner.task {
            d.field("task", t);
        }
        if let Some(t) = &self.inner.tier {
            d.field("tier", t);
        }
        if let Some(w) = &self.inner.worker {
            d.field("worker", w);
        }
        if let Some(x) = &self.inner.detail {
            d.field("detail", x);
        }
        if let Some(x) = &self.inner.exit {
            d.field("exit", x);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.task {
            Some(t) => write!(f, "task \"{t}\"")?,
            None => f.write_str("task")?,
        }
        if let Some(tier) = self.inner.tier {
            write!(f, " on {tier}")?;
            if let Some(w) = self.inner.worker {
                write!(f, " worker {w}")?;
            }
        }
        write!(f, " {}", self.inner.kind.describe())?;
        if let Some(limit) = self.inner.timeout {
            write!(f, " after {limit:?}")?;
        }
        if let Some(exit) = &self.inner.exit {
            write!(f, " ({exit})")?;
        }
        if let Some(detail) = &self.inner.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Why a `try_submit` did not take a job; the job comes back (as crossbeam's
/// `TrySendError`).
///
/// [`Full`](Self::Full) is worth trying again later; [`ShutDown`](Self::ShutDown) and
/// [`Rejected`](Self::Rejected) are not. Returned by
/// [`Executor::try_submit`](crate::Executor::try_submit),
/// [`ProcessPool::try_submit`](crate::ProcessPool::try_submit) and the cluster tier's
/// `try_submit`. More variants may come: match with a wildcard arm.
#[non_exhaustive]
pub enum TrySubmitError<J> {
    /// The queue is at capacity; try again later or use the waiting `submit`.
    Full(J),
    /// The executor is shut down and takes no more work.
    ShutDown(J),
    /// This job cannot be taken, and the error says why: arguments that cannot be encoded or
    /// exceed the frame limit ([`Error::is_encoding`]), a function that is not registered
    /// ([`Error::is_remote`]), a broken pool ([`ErrorKind::Pool`]). Trying again would fail
    /// the same way.
    Rejected(J, Error),
}

impl<J> TrySubmitError<J> {
    /// The job that was not taken.
    pub fn into_inner(self) -> J {
        match self {
            TrySubmitError::Full(j)
            | TrySubmitError::ShutDown(j)
            | TrySubmitError::Rejected(j, _) => j,
        }
    }

    /// The queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySubmitError::Full(_))
    }

    /// The executor was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, TrySubmitError::ShutDown(_))
    }

    /// Why the job was rejected, for [`Rejected`](Self::Rejected).
    pub fn error(&self) -> Option<&Error> {
        match self {
            TrySubmitError::Rejected(_, e) => Some(e),
            _ => None,
        }
    }
}

impl<J> fmt::Debug for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("Full(..)"),
            TrySubmitError::ShutDown(_) => f.write_str("ShutDown(..)"),
            TrySubmitError::Rejected(_, e) => {
                f.debug_tuple("Rejected").field(&"..").field(e).finish()
            }
        }
    }
}

impl<J> fmt::Display for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("the queue is full; the job was handed back"),
            TrySubmitError::ShutDown(_) => {
                f.write_str("the executor is shut down; the job was handed back")
            }
            TrySubmitError::Rejected(_, e) => {
                write!(f, "the job was rejected and handed back: {e}")
            }
        }
    }
}

impl<J> std::error::Error for TrySubmitError<J> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error().map(|e| e as _)
    }
}

/// A builder refused its settings, or could not start what it builds.
#[derive(Debug)]
pub struct BuildError {
    message: String,
    source: Option<std::io::Error>,
}

impl BuildError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        BuildError {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        BuildError {
            message: message.into(),
            source: Some(source),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

/// A builder's refusal seen where a task error is expected (`?` in a function returning
/// [`Error`]): its kind is [`ErrorKind::Usage`], its text the builder's.
impl From<BuildError> for Error {
    fn from(e: BuildError) -> Self {
        Error::new(ErrorKind::Usage, e.to_string())
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Turns a panic payload into its message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_task_tier_worker_and_cause() {
        let e = Error::panicked("boom", None)
            .with_task("parse")
            .with_tier(TierKind::Threads)
            .with_worker(3);
        assert_eq!(
            e.to_string(),
            "task \"parse\" on threads worker 3 panicked: boom"
        );
        assert!(e.is_panic());
        assert_eq!(e.panic_message(), Some("boom"));
    }

    #[test]
    fn worker_died_shows_signal_and_pid() {
        let e = Error::worker_died(ExitInfo {
            pid: Some(42),
            code: None,
            signal: Some(9),
        })
        .with_task("f")
        .with_tier(TierKind::Processes);
        let s = e.to_string();
        assert!(s.contains("pid 42") && s.contains("signal 9"), "{s}");
        assert_eq!(e.signal(), Some(9));
    }

    #[test]
    fn try_submit_error_hands_the_job_back() {
        let e: TrySubmitError<u32> = TrySubmitError::Full(7);
        assert!(e.is_full());
        assert!(e.error().is_none());
        assert_eq!(e.into_inner(), 7);
    }

    #[test]
    fn rejected_says_why_and_hands_the_job_back() {
        let why = Error::new(
            ErrorKind::Encoding,
            "a frame of 100005 bytes exceeds the maximum frame size of 65536 bytes",
        )
        .with_task("len")
        .with_tier(TierKind::Processes);
        let e: TrySubmitError<Vec<u8>> = TrySubmitError::Rejected(vec![1, 2, 3], why);
        assert!(!e.is_full() && !e.is_shut_down());
        assert!(e.error().is_some_and(Error::is_encoding));
        let shown = e.to_string();
        assert!(
            shown.contains("rejected") && shown.contains("100005 bytes"),
            "{shown}"
        );
        let debug = format!("{e:?}");
        assert!(
            debug.starts_with("Rejected(") && debug.contains("Encoding"),
            "{debug}"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.into_inner(), vec![1, 2, 3]);
        let e: TrySubmitError<u8> = TrySubmitError::ShutDown(1);
        assert!(e.is_shut_down() && e.error().is_none());
    }
}
