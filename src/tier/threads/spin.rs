//! When spinning may take a core: the system's idle cores, and the spinners of this process.
//!
//! A thread that spins (a worker waiting for work, a caller waiting for a result) holds a core
//! that it does not use. That pays when the wait is shorter than a wake-up (~25 µs here) and
//! no other thread needs the core; it steals when another runnable thread, of this process or
//! of another, waits for one. So before a spin a thread asks [`try_spin`]: it gets a
//! [`SpinSlot`] only while the thread-tier work of this process (tasks running plus threads
//! spinning, this one included) fits in the cores that the rest of the system leaves idle, as
//! measured from the system: never more spinners than idle cores.
//!
//! The measure is the kernel's count of runnable threads (`/proc/loadavg`, fourth field: all
//! CPUs, every process), read at most every [`SAMPLE_EVERY`] by whichever thread finds the
//! last reading stale (a few microseconds: one open and one read). The rest of the system =
//! runnable − (this process's running thread-tier tasks + spinners + the reader). Elsewhere,
//! and where the file cannot be read, the rest of the system counts as one thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the runnable count is read again: rarely enough that the read (~5 µs) costs
/// under 0.3 % of one core, often enough that a spinner stops within a few milliseconds of
/// another process wanting its core.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(2);

struct Gate {
    epoch: Instant,
    cores: usize,
    /// Spinning threads of this process now.
    spinners: AtomicUsize,
    /// Thread-tier tasks of this process running now.
    busy: AtomicUsize,
    /// Runnable threads outside this process's thread-tier work at the last reading, plus one
    /// (0: never read).
    others_plus_one: AtomicUsize,
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
        busy: AtomicUsize::new(0),
        others_plus_one: AtomicUsize::new(0),
        sampled_at: AtomicU64::new(0),
        readable: std::sync::atomic::AtomicBool::new(cfg!(target_os = "linux")),
    })
}

/// Every online CPU of the machine (the runnable count covers them all), not only those this
/// process may use.
#[allow(unsafe_code)]
pub(crate) fn online_cores() -> usize {
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

    /// Runnable threads outside this process's thread-tier work (see the module docs).
    fn others(&self) -> usize {
        if !self.readable.load(Ordering::Relaxed) {
            return 1;
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
                    let ours = self.spinners.load(Ordering::Relaxed)
                        + self.busy.load(Ordering::Relaxed)
                        + 1;
                    let others = runnable.saturating_sub(ours);
                    self.others_plus_one.store(others + 1, Ordering::Release);
                }
                None => {
                    self.readable.store(false, Ordering::Relaxed);
                    tracing::debug!("no /proc/loadavg: spinning leaves one core to the rest");
                }
            }
            self.sampled_at
                .store(self.now_ns().max(1), Ordering::Release);
        }
        match self.others_plus_one.load(Ordering::Acquire) {
            0 => 1,
            n => n - 1,
        }
    }

    /// Whether `extra` more threads of thread-tier work (spinning or running) fit beside what
    /// runs now.
    fn fits(&self, spinners: usize, extra: usize) -> bool {
        let ours = spinners + self.busy.load(Ordering::Relaxed) + extra;
        ours + self.others() <= self.cores
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
    let before = g.spinners.fetch_add(1, Ordering::AcqRel);
    if g.fits(before, 1) {
        Some(SpinSlot(()))
    } else {
        g.spinners.fetch_sub(1, Ordering::Relaxed);
        None
    }
}

/// Whether one more running task fits on the cores the system leaves idle (for the overflow
/// worker: take work now, or leave the core to whoever needs it).
pub(crate) fn spare_core() -> bool {
    let g = gate();
    g.fits(g.spinners.load(Ordering::Relaxed), 1)
}

/// The calling thread's CPU time so far, in ns (`None` where it cannot be read).
#[allow(unsafe_code)]
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one `timespec` through a valid, writable pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            let s = u64::try_from(ts.tv_sec).ok()?;
            let ns = u64::try_from(ts.tv_nsec).ok()?;
            return Some(s.saturating_mul(1_000_000_000).saturating_add(ns));
        }
    }
    None
}

/// Counts a thread-tier task as running while the guard lives.
pub(crate) fn running() -> Running {
    gate().busy.fetch_add(1, Ordering::Relaxed);
    Running(())
}

/// See [`running`].
#[derive(Debug)]
pub(crate) struct Running(());

impl Drop for Running {
    fn drop(&mut self) {
        gate().busy.fetch_sub(1, Ordering::Relaxed);
    }
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
    fn spinners_never_exceed_the_cores() {
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
