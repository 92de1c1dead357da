//! Stopping a pool: drain, cancel, kill, with or without a time limit.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
    pub(crate) fn stop(&self, mode: ShutdownMode, kill: bool) {
        let kill = kill || mode == ShutdownMode::Kill;
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
            if kill {
                st.stopping = true;
                s.deadlines.notify_all();
                for sl in st.slots.iter_mut() {
                    if let Some(c) = sl.child.as_mut() {
                        let _ = c.kill();
                    }
                }
            } else {
                while !(s.is_idle(&st) || st.broken.is_some()) {
                    st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.stopping = true;
                s.deadlines.notify_all();
                s.fail_queued(&mut st, Error::shut_down);
                for sl in st.slots.iter_mut() {
                    if let Some(conn) = sl.conn.clone() {
                        sl.retiring = true;
                        s.send_exit(&conn);
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
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let done = *self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if !done {
            // Dropped without shutdown: do not wait for running tasks; kill and reap.
            self.stop(ShutdownMode::Cancel, true);
        }
    }
}
