//! `wait` and `as_completed` over any handles, whatever tier they came from.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream};

use crate::error::Error;
use crate::task::TaskHandle;

/// When [`wait`] returns (Python's `return_when`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// As soon as any task finishes.
    FirstCompleted,
    /// As soon as any task ends in an error, or when all have finished.
    FirstError,
    /// When every task has finished.
    AllCompleted,
}

/// What [`wait`] returns: the handles split into finished and unfinished, each in input order.
/// Awaiting a handle from `done` returns at once.
#[derive(Debug)]
pub struct Waited<T> {
    /// Finished handles.
    pub done: Vec<TaskHandle<T>>,
    /// Handles still running or queued.
    pub pending: Vec<TaskHandle<T>>,
}

fn satisfied<T>(handles: &[TaskHandle<T>], mode: WaitMode) -> bool {
    let finished = handles.iter().filter(|h| h.is_finished()).count();
    match mode {
        WaitMode::FirstCompleted => finished > 0 || handles.is_empty(),
        WaitMode::AllCompleted => finished == handles.len(),
        WaitMode::FirstError => finished == handles.len() || handles.iter().any(|h| h.is_failure()),
    }
}

fn split<T>(handles: Vec<TaskHandle<T>>) -> Waited<T> {
    let (done, pending) = handles.into_iter().partition(|h| h.is_finished());
    Waited { done, pending }
}

/// Waits for `handles` per `mode` and returns them split into done and pending.
///
/// Inline-tier handles are run by this call (they run when first waited for).
///
/// ```
/// use offload::prelude::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let pool = Executor::threads(2)?;
/// let ok = pool.submit(|| 1).await?;
/// let bad = pool.submit(|| -> i32 { panic!("bad row") }).await?;
/// let w = wait([ok, bad], WaitMode::FirstError).await;
/// // The failure is in `done`; whatever had not finished yet is in `pending`.
/// assert!(w.done.iter().any(|h| h.is_err()));
/// assert_eq!(w.done.len() + w.pending.len(), 2);
/// pool.shutdown(ShutdownMode::Drain).await;
/// # Ok::<(), offload::Error>(())
/// # }).unwrap();
/// ```
///
/// # Cancel safety
///
/// Dropping the future drops the handles it holds, which withdraws their queued tasks.
pub async fn wait<T>(
    handles: impl IntoIterator<Item = TaskHandle<T>>,
    mode: WaitMode,
) -> Waited<T> {
    let mut handles: Vec<TaskHandle<T>> = handles.into_iter().collect();
    poll_fn(|cx| {
        for h in handles.iter_mut() {
            if h.is_finished() {
                continue;
            }
            let _ = h.poll_finished(cx);
            // Stop early, so that FirstCompleted does not run further lazy (inline) tasks.
            let enough = match mode {
                WaitMode::FirstCompleted => h.is_finished(),
                WaitMode::FirstError => h.is_failure(),
                WaitMode::AllCompleted => false,
            };
            if enough {
                break;
            }
        }
        if satisfied(&handles, mode) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    split(handles)
}

/// As [`wait`], returning after `timeout` at the latest with what has finished by then.
pub async fn wait_timeout<T>(
    handles: impl IntoIterator<Item = TaskHandle<T>>,
    mode: WaitMode,
    timeout: Duration,
) -> Waited<T> {
    let mut handles: Vec<TaskHandle<T>> = handles.into_iter().collect();
    let wait_for = poll_fn(|cx| {
        for h in handles.iter_mut() {
            if !h.is_finished() {
                let _ = h.poll_finished(cx);
            }
        }
        if satisfied(&handles, mode) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let _ = tokio::time::timeout(timeout, wait_for).await;
    split(handles)
}

/// Yields each handle's outcome as it finishes, with the handle's position in the input.
///
/// ```
/// use offload::prelude::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let pool = Executor::threads(2)?;
/// let mut handles = Vec::new();
/// for ms in [30u64, 1, 10] {
///     handles.push(pool.submit(move || { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }).await?);
/// }
/// let mut done = as_completed(handles);
/// let mut seen = Vec::new();
/// while let Some((index, outcome)) = done.next().await {
///     seen.push((index, outcome?));
/// }
/// seen.sort();
/// assert_eq!(seen, [(0, 30), (1, 1), (2, 10)]);
/// pool.shutdown(ShutdownMode::Drain).await;
/// # Ok::<(), offload::Error>(())
/// # }).unwrap();
/// ```
///
/// # Cancel safety
///
/// Dropping the stream drops the handles it still holds, which withdraws their queued tasks.
#[must_use = "the stream does nothing unless polled; dropping it withdraws the queued tasks"]
pub fn as_completed<T: Send + 'static>(
    handles: impl IntoIterator<Item = TaskHandle<T>>,
) -> impl Stream<Item = (usize, Result<T, Error>)> + Send {
    handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| async move { (i, h.await) })
        .collect::<FuturesUnordered<_>>()
}
