//! The inline tier: Listing 1's sequential fallback, done right.
//!
//! A task runs on the thread that first waits for its handle (`.await`, `blocking_wait`, or a
//! `wait`/`map` that drives it), exactly once. A handle that is cancelled or dropped before then
//! never runs its task, as in the source's lazy "dummy executor". The semantics match the other
//! tiers: one outcome, panics caught into an error, a "shut down" error after shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{PushError, PushFuture, ShutdownMode, Tier, TierKind, TierStats};
use crate::task::Job;

/// Runs tasks on the waiting caller's thread.
#[derive(Debug, Default)]
pub struct Inline {
    closed: AtomicBool,
    taken: AtomicU64,
}

impl Inline {
    /// A new inline tier.
    pub fn new() -> Self {
        Inline::default()
    }
}

impl Tier for Inline {
    fn kind(&self) -> TierKind {
        TierKind::Inline
    }

    fn is_lazy(&self) -> bool {
        true
    }

    fn try_push(&self, job: Job) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(job));
        }
        // The executor keeps lazy jobs in their handles; a job pushed here runs at once.
        self.taken.fetch_add(1, Ordering::Relaxed);
        job.run(crate::task::WorkerCtx {
            tier: TierKind::Inline,
            worker: None,
        });
        Ok(())
    }

    fn push(&self, job: Job) -> PushFuture<'_> {
        let r = self.try_push(job).map_err(|e| match e {
            PushError::Full(j) | PushError::Closed(j) => j,
        });
        Box::pin(std::future::ready(r))
    }

    fn push_blocking(&self, job: Job) -> Result<(), Job> {
        self.try_push(job).map_err(|e| match e {
            PushError::Full(j) | PushError::Closed(j) => j,
        })
    }

    fn shutdown(&self, _mode: ShutdownMode) {
        self.closed.store(true, Ordering::Release);
    }

    fn stats(&self) -> TierStats {
        TierStats {
            completed: self.taken.load(Ordering::Relaxed),
            ..TierStats::default()
        }
    }
}
