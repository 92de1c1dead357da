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
pub fn as_completed<T: Send + 'static>(
    handles: impl IntoIterator<Item = TaskHandle<T>>,
) -> impl Stream<Item = (usize, Result<T, Error>)> + Send {
    handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| async move { (i, h.await) })
        .collect::<FuturesUnordered<_>>()
}
