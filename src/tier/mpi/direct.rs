//! The direct path's watch: a caller that sent its task itself (see [`Cluster::try_direct`])
//! polls for the reply under the MPI lock, or hands the task to the MPI thread.
//!
//! [`Cluster::try_direct`]: super::Cluster

use std::sync::TryLockError;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;

use crate::task::{Job, closure_task};
use crate::tier::TierKind;

use super::lifecycle::Service;
use super::service::CALLER_LEASE;

/// How many polling rounds a [`Watch`] makes between two looks at the clock: a round (lock,
/// `MPI_Improbe`) takes ~150 ns on the development VM, a clock read ~30 ns; every 4th round
/// keeps the clock's share small and overshoots the spin by well under a microsecond.
const WATCH_CLOCK_EVERY: u32 = 4;

/// A caller's watch over a task it sent itself (the direct path): the lazy job of the task's
/// handle, run when the handle is first awaited or waited on. It polls for replies under the
/// MPI lock for up to `spin`, completing whichever tasks they belong to, then hands its task
/// over to the MPI thread if the reply has not come. A handle dropped unwaited hands over from
/// `Drop`. Either way every directly sent task ends up watched by someone.
pub(super) struct Watch {
    pub(super) service: &'static Service,
    pub(super) rank: usize,
    pub(super) id: u64,
    pub(super) spin: Duration,
    /// Still to hand over when dropped.
    pub(super) armed: bool,
}

impl Watch {
    /// The handle's lazy job running this watch. The job comes with a handle of its own
    /// (a closure task's), detached so that it does not cancel the job.
    pub(super) fn job(watch: Watch) -> Job {
        let (job, handle) =
            closure_task(move || watch.run(), None, TierKind::Cluster, Duration::ZERO);
        handle.detach();
        job
    }

    pub(super) fn run(mut self) {
        let service = self.service;
        let world = SimpleCommunicator::world();
        let t0 = Instant::now();
        let mut renewed = false;
        let mut round = 0u32;
        loop {
            let table = match service.state.table.try_lock() {
                Ok(t) => Some(t),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut t) = table {
                if !t.is_in_flight(self.rank, self.id) {
                    // Someone else received the reply.
                    self.armed = false;
                    return;
                }
                if !t.direct {
                    break;
                }
                if !renewed {
                    // The caller may wait long after the send: the lease runs from now.
                    t.set_lease(self.rank, self.id, Some(t0 + CALLER_LEASE));
                    renewed = true;
                }
                let got = t.poll_results(&world, &service.state);
                // A rank freed here may be what a queued command waits for.
                let wake = got > 0 && (t.stashed || !service.rx.is_empty());
                let done = !t.is_in_flight(self.rank, self.id);
                drop(t);
                if wake {
                    service.ring();
                }
                if done {
                    self.armed = false;
                    return;
                }
            }
            // A clock read costs about a fifth of a round here: look every few rounds.
            round = round.wrapping_add(1);
            if round % WATCH_CLOCK_EVERY == 0 && t0.elapsed() >= self.spin {
                break;
            }
            std::hint::spin_loop();
        }
        // Drop hands the task over.
    }

    pub(super) fn hand_over(&self) {
        let service = self.service;
        service
            .state
            .lock_table()
            .set_lease(self.rank, self.id, None);
        service.ring();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.armed {
            self.hand_over();
        }
    }
}
