//! When spinning may take a core: the system's idle cores, and the spinners of this process.
//!
//! A thread that spins (a worker waiting for work, a caller waiting for a result) holds a core
//! that it does not use. That pays when the wait is shorter than a wake-up (~25 µs here) and
//! no other thread needs the core; it steals when another runnable thread, of this process or
//! of another, waits for one. So before a spin a thread asks [`try_spin`]: it gets a
//! [`SpinSlot`] only while this process's spinners are fewer than the idle cores measured from
//! the system.
//!
//! The measure is the kernel's count of runnable threads (`/proc/loadavg`, fourth field: all
//! CPUs, every process), read at most every [`SAMPLE_EVERY`] by whichever thread finds the
//! last reading stale (a few microseconds: one open and one read). Idle cores = online CPUs −
//! (runnable − this process's spinners − the reader). Elsewhere, and where the file cannot be
//! read, the bound is cores − 1 spinners (one core left to the rest of the system).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the runnable count is read again: rarely enough that the read (~5 µs) costs
/// under 0.3 % of one core, often enough that a spinner stops within a few milliseconds of
/// another process wanting its core.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(2);

struct Gate {
    epoch: Instant,
    cores: usize,
    /// Spinning threads of this process now.
    spinners: AtomicUsize,
    /// Idle cores at the last reading, plus one (0: never read).
    idle_plus_one: AtomicUsize,
    /// When the last reading was taken (ns since `epoch`; `u64::MAX`: reading now).
    sampled_at: AtomicU64,
    /// Whether `/proc/loadavg` can be read here (false after the first failure).
    readable: std::sync::atomic::AtomicBool,
}

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| Gate {
        epoch: Instant::now(),
        cores: online_cores(),
        spinners: AtomicUsize::new(0),
        idle_plus_one: AtomicUsize::new(0),
        sampled_at: AtomicU64::new(0),
        readable: std::sync::atomic::AtomicBool::new(cfg!(target_os = "linux")),
    })
}

/// Every online CPU of the machine (the runnable count covers them all), not only those this
/// process may use.
#[allow(unsafe_code)]
fn online_cores() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n > 0 {
            return usize::try_from(n).unwrap_or(1);
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The runnable-thread count from `/proc/loadavg` ("0.50 0.40 0.30 3/512 12345").
fn runnable_now() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let field = text.split_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

impl Gate {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Idle cores for a thread that is about to spin (itself not counted as a spinner).
    fn idle_cores(&self) -> usize {
        let fallback = self.cores.saturating_sub(1);
        if !self.readable.load(Ordering::Relaxed) {
            return fallback;
        }
        let now = self.now_ns();
        let at = self.sampled_at.load(Ordering::Acquire);
        let stale = at == 0 || (at != u64::MAX && now.saturating_sub(at) >= nanos(SAMPLE_EVERY));
        if stale
            && self
                .sampled_at
                .compare_exchange(at, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            match runnable_now() {
                Some(runnable) => {
                    let ours = self.spinners.load(Ordering::Relaxed) + 1;
                    let others = runnable.saturating_sub(ours);
                    let idle = self.cores.saturating_sub(others);
                    self.idle_plus_one.store(idle + 1, Ordering::Release);
                }
                None => {
                    self.readable.store(false, Ordering::Relaxed);
                    tracing::debug!("no /proc/loadavg: spinning bounded by cores - 1");
                }
            }
            self.sampled_at
                .store(self.now_ns().max(1), Ordering::Release);
        }
        match self.idle_plus_one.load(Ordering::Acquire) {
            0 => fallback,
            n => n - 1,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Leave to spin, held while spinning; dropping it ends the spin.
#[derive(Debug)]
pub(crate) struct SpinSlot(());

impl Drop for SpinSlot {
    fn drop(&mut self) {
        gate().spinners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Leave to spin now, or `None` when this process already has as many spinners as the system
/// has idle cores (see the module docs).
pub(crate) fn try_spin() -> Option<SpinSlot> {
    let g = gate();
    let idle = g.idle_cores();
    if g.spinners.fetch_add(1, Ordering::AcqRel) < idle {
        Some(SpinSlot(()))
    } else {
        g.spinners.fetch_sub(1, Ordering::Relaxed);
        None
    }
}

/// Whether the system had a core to spare at the last reading (for the low-priority worker:
/// take overflow work now, or leave the core to whoever needs it).
pub(crate) fn spare_core() -> bool {
    gate().idle_cores() > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runnable_count_is_read_where_there_is_one() {
        if std::path::Path::new("/proc/loadavg").exists() {
            let n = runnable_now().expect("a runnable count");
            assert!(n >= 1, "at least this thread runs");
        }
    }

    #[test]
    fn spinners_never_exceed_the_idle_cores() {
        let cores = gate().cores;
        let slots: Vec<_> = (0..cores + 4).filter_map(|_| try_spin()).collect();
        assert!(
            slots.len() <= cores,
            "{} slots on {cores} cores",
            slots.len()
        );
        drop(slots);
        assert_eq!(
            gate().spinners.load(Ordering::Relaxed),
            0,
            "slots give back"
        );
    }
}
