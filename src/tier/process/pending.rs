//! A task's completer with its result type erased, as the pool keeps it.

use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};
use crate::remote::wire::ItemOutcome;
use crate::task::Completer;
use crate::tier::RunInfo;
use crate::tier::map::ChunkStats;

/// A task's completer with its result type erased: the reader hands it the body bytes.
pub(crate) trait Pending: Send {
    /// Claims the task for running; false when it was cancelled while queued.
    fn start(&self) -> bool;
    /// When the task was submitted.
    fn submitted(&self) -> Instant;
    /// Whether its handle waits for it (parked, blocked, probing): then the pool reads its
    /// answer without waiting for the handle to do it.
    fn is_waited(&self) -> bool;
    /// Decodes the result from `body` and completes the task.
    fn succeed(self: Box<Self>, body: &[u8], info: RunInfo);
    /// Completes the task with `e`.
    fn fail(self: Box<Self>, e: Error, info: RunInfo);
    /// Drops the task whose slot already holds its outcome (cancelled while queued).
    fn discard(self: Box<Self>);
}

/// A single call: the body is one encoded `R`.
pub(crate) struct One<R> {
    pub(crate) completer: Completer<R>,
}

impl<R: DeserializeOwned + Send + 'static> Pending for One<R> {
    fn start(&self) -> bool {
        self.completer.start()
    }
    fn submitted(&self) -> Instant {
        self.completer.submitted()
    }
    fn is_waited(&self) -> bool {
        self.completer.is_waited()
    }
    fn succeed(self: Box<Self>, body: &[u8], info: RunInfo) {
        let outcome = decode::<R>(body, "the result");
        self.completer.finish(outcome, info);
    }
    fn fail(self: Box<Self>, e: Error, info: RunInfo) {
        self.completer.finish(Err(e), info);
    }
    fn discard(self: Box<Self>) {
        self.completer.disarm();
    }
}

/// A batch of `map` items: the body is an encoded `Vec<ItemOutcome<R>>`.
pub(crate) struct Batch<R> {
    pub(crate) completer: Completer<Vec<Result<R, Error>>>,
    pub(crate) items: usize,
    pub(crate) stats: Arc<ChunkStats>,
}

impl<R: DeserializeOwned + Send + 'static> Pending for Batch<R> {
    fn start(&self) -> bool {
        self.completer.start()
    }
    fn submitted(&self) -> Instant {
        self.completer.submitted()
    }
    fn is_waited(&self) -> bool {
        self.completer.is_waited()
    }
    fn succeed(self: Box<Self>, body: &[u8], info: RunInfo) {
        let run_ns = u64::try_from(info.run_time.as_nanos()).unwrap_or(u64::MAX);
        self.stats.record(self.items, run_ns);
        let outcome = decode::<Vec<ItemOutcome<R>>>(body, "a batch of results")
            .map(|v| v.into_iter().map(ItemOutcome::into_result).collect());
        self.completer.finish(outcome, info);
    }
    fn fail(self: Box<Self>, e: Error, info: RunInfo) {
        self.completer.finish(Err(e), info);
    }
    fn discard(self: Box<Self>) {
        self.completer.disarm();
    }
}

/// Decodes a `T` from `body`. A `Deserialize` that panics (user code, run here on whichever
/// pool or caller thread reads the answer) fails this task with a panic error and leaves that
/// thread serving: one task, one error.
fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        postcard::from_bytes::<T>(body)
    }));
    match decoded {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::new(
            ErrorKind::Encoding,
            format!(
                "could not decode {what} as {}: {e}",
                std::any::type_name::<T>()
            ),
        )),
        Err(p) => Err(Error::panicked(
            format!(
                "decoding {what} as {} panicked: {}",
                std::any::type_name::<T>(),
                crate::error::panic_message(p.as_ref())
            ),
            None,
        )),
    }
}
