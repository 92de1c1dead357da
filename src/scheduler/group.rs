//! Named I/O tasks in groups: spawn, join all, cancel the rest, shut down with a deadline.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::Scheduler;

/// How a task of a [`TaskGroup`] ended.
#[derive(Debug)]
pub enum TaskExit<T> {
    /// It returned this value.
    Finished(T),
    /// It was cancelled (by [`TaskGroup::cancel`], a shutdown deadline, or the scheduler).
    Cancelled,
    /// It panicked with this message.
    Panicked(String),
}

impl<T> TaskExit<T> {
    /// The value, if it finished.
    pub fn value(self) -> Option<T> {
        match self {
            TaskExit::Finished(v) => Some(v),
            _ => None,
        }
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskExit::Cancelled)
    }
}

/// A named group of cooperative tasks on the scheduler's runtime, each watched for slow polls.
///
/// # Cancel safety
///
/// Dropping the group aborts the tasks still in it (tokio's `JoinSet` semantics): a task is
/// stopped at its next `.await`.
pub struct TaskGroup<T = ()> {
    name: Arc<str>,
    scheduler: Scheduler,
    set: Mutex<JoinSet<(Arc<str>, T)>>,
    names: Mutex<HashMap<tokio::task::Id, Arc<str>>>,
}

impl<T: Send + 'static> fmt::Debug for TaskGroup<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskGroup")
            .field("name", &self.name)
            .field("live", &self.len())
            .finish()
    }
}

impl<T: Send + 'static> TaskGroup<T> {
    pub(crate) fn new(name: Arc<str>, scheduler: Scheduler) -> Self {
        TaskGroup {
            name,
            scheduler,
            set: Mutex::new(JoinSet::new()),
            names: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JoinSet<(Arc<str>, T)>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tasks spawned and not yet joined.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no task is left to join.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spawns `fut` as the task `name` of this group (shown as `group/name` in watchdog reports).
    pub fn spawn<F>(&self, name: &str, fut: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let full: Arc<str> = format!("{}/{}", self.name, name).into();
        let watched = self.scheduler.watch(full.clone(), fut);
        let handle = self.scheduler.handle().clone();
        let name = full.clone();
        let abort = self
            .lock()
            .spawn_on(async move { (full, watched.await) }, &handle);
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(abort.id(), name);
    }

    /// Waits for every task spawned so far; returns each task's name and exit, in the order they
    /// ended.
    pub async fn join_all(&self) -> Vec<(String, TaskExit<T>)> {
        let mut set = std::mem::take(&mut *self.lock());
        let mut out = Vec::with_capacity(set.len());
        while let Some(r) = set.join_next_with_id().await {
            out.push(self.exit_of(r));
        }
        out
    }

    /// Aborts every task of the group (each stops at its next `.await`).
    pub fn cancel(&self) {
        self.lock().abort_all();
    }

    /// Waits up to `deadline` for the tasks to end, then cancels the rest; returns every task's
    /// exit as [`join_all`](Self::join_all) does.
    pub async fn shutdown(&self, deadline: Duration) -> Vec<(String, TaskExit<T>)> {
        let mut set = std::mem::take(&mut *self.lock());
        let mut out = Vec::with_capacity(set.len());
        let end = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, set.join_next_with_id()).await {
                Ok(Some(r)) => out.push(self.exit_of(r)),
                Ok(None) => return out,
                Err(_) => break,
            }
        }
        let left = set.len();
        tracing::info!(group = %self.name, left, "deadline passed: cancelling the rest");
        set.abort_all();
        while let Some(r) = set.join_next_with_id().await {
            out.push(self.exit_of(r));
        }
        out
    }
    fn exit_of(
        &self,
        r: Result<(tokio::task::Id, (Arc<str>, T)), tokio::task::JoinError>,
    ) -> (String, TaskExit<T>) {
        let id = match &r {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let known = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match r {
            Ok((_, (name, v))) => (name.to_string(), TaskExit::Finished(v)),
            Err(e) => {
                let name = known.map_or_else(|| format!("task {id}"), |n| n.to_string());
                if e.is_cancelled() {
                    (name, TaskExit::Cancelled)
                } else {
                    let msg = e
                        .try_into_panic()
                        .map(|p| crate::error::panic_message(&*p))
                        .unwrap_or_else(|_| "unknown".into());
                    (name, TaskExit::Panicked(msg))
                }
            }
        }
    }
}
