//! Stopping a pool: drain, cancel, kill, with or without a time limit.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pool::Shared;
use crate::error::Error;
use crate::tier::ShutdownMode;

/// Owns the pool's threads; the last clone of the pool stops it.
pub(crate) struct Owner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) stopped: Mutex<bool>,
}

impl Owner {
    /// Stops the pool per `mode`; past `limit` (if any) a drain or cancel that has not
    /// finished escalates to [`ShutdownMode::Kill`]. Returns true when it finished without
    /// escalating. Every worker is reaped and every thread of the pool joined on return.
    pub(crate) fn stop(&self, mode: ShutdownMode, limit: Option<Duration>) -> bool {
        let until = limit.map(|l| Instant::now() + l);
        let mut kill = mode == ShutdownMode::Kill;
        let mut clean = true;
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.shared;
        s.tx.close();
        {
            let mut st = s.lock();
            st.closing = true;
            // Running tasks are waited for (or killed) now: their answers must be read.
            s.want_readers(&mut st);
            if mode.fails_queued() {
                s.fail_queued(&mut st, Error::shut_down);
            }
            while !(kill || s.is_idle(&st) || st.broken.is_some()) {
                st = match until {
                    None => s.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(until) => {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            tracing::debug!(?mode, "shutdown past its limit: killing the workers");
                            kill = true;
                            clean = false;
                            break;
                        }
                        s.changed
                            .wait_timeout(st, left)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0)
                    }
                };
            }
            st.stopping = true;
            st.killing = kill;
            s.deadlines.notify_all();
            s.fail_queued(&mut st, Error::shut_down);
            for sl in st.slots.iter_mut() {
                if kill {
                    // Its tasks fail "shut down" when its slot thread reaps it.
                    sl.transition_to_killed();
                } else if sl.transition_to_retiring() {
                    if let Some(conn) = &sl.conn {
                        s.send_exit(conn);
                    }
                }
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        *stopped = true;
        tracing::debug!("process tier stopped; every worker reaped");
        clean
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let done = *self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if !done {
            // Dropped without shutdown: do not wait for running tasks; kill and reap.
            self.stop(ShutdownMode::Kill, None);
        }
    }
}
