//! What a timed inline call cost its thread, told apart from the time the OS took the thread
//! away: a spike on the wall clock is either a long call (the I/O thread was held) or a short
//! call that was preempted (it was not). See "Telling a long call from a preempted one" in
//! `README.md`.
//!
//! Linux keeps per-thread counters, read in two system calls (~0.2 µs each here): the CPU time
//! the thread ran, and how many times it gave the CPU up of its own accord (it blocked: a
//! lock, a sleep, I/O). A call that did not block and whose CPU time stayed under the spike
//! threshold was preempted; any other wall-clock spike is real. One limit: inside a VM whose
//! host does not report stolen time, time the host took the virtual CPU away counts as CPU
//! time, so such a spike still looks real. Elsewhere there is no per-thread counter, and every
//! spike is taken at its wall-clock value.

/// The thread's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// CPU time the thread has run, in ns.
    cpu_ns: u64,
    /// Voluntary context switches so far.
    blocked: u64,
}

/// What a call that took `wall_ns` on the wall clock cost, judged from the thread's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Judged {
    /// The duration to learn: the CPU time when the call never blocked (what it would have
    /// taken without preemption), else the wall time.
    pub(crate) ns: u64,
    /// The figure is the call's own, not the OS's: a spike in it is a long call.
    pub(crate) verified: bool,
}

impl Judged {
    /// A wall-clock figure that nothing confirmed (no counters here).
    pub(crate) fn wall(ns: u64) -> Judged {
        Judged {
            ns,
            verified: false,
        }
    }
}

impl Usage {
    /// The calling thread's counters now; `None` where the platform has none or a call failed.
    ///
    /// Two system calls: the CPU clock (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, exact to the
    /// nanosecond: the kernel brings a running thread's time up to date for it, while the
    /// times `getrusage` reports for a running thread can lag by a scheduler tick) and
    /// `getrusage(RUSAGE_THREAD)` for the voluntary switches.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(crate) fn now() -> Option<Usage> {
        let cpu_ns = crate::tier::threads::spin::thread_cpu_ns()?;
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one `rusage` through the pointer, which points to a
        // properly sized and aligned, writable value; RUSAGE_THREAD names the calling thread.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: the call succeeded, so it filled the value (it started zeroed anyway, and
        // every field of `rusage` is an integer, for which zero is valid).
        let ru = unsafe { ru.assume_init() };
        Some(Usage {
            cpu_ns,
            blocked: u64::try_from(ru.ru_nvcsw).unwrap_or(0),
        })
    }

    /// No per-thread counters on this platform.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn now() -> Option<Usage> {
        None
    }

    /// Judges a call that started at `self`, ended at `end` and took `wall_ns`.
    pub(crate) fn judge(&self, end: &Usage, wall_ns: u64) -> Judged {
        if end.blocked > self.blocked {
            return Judged {
                ns: wall_ns,
                verified: true,
            };
        }
        let cpu = end.cpu_ns.saturating_sub(self.cpu_ns);
        Judged {
            ns: cpu.min(wall_ns),
            verified: true,
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spin(d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_call_that_computes_is_judged_by_its_cpu_time() {
        let before = Usage::now().expect("Linux has per-thread counters");
        let t0 = Instant::now();
        spin(Duration::from_millis(20));
        let wall = t0.elapsed().as_nanos() as u64;
        let j = before.judge(&Usage::now().expect("counters"), wall);
        assert!(j.verified);
        assert!(j.ns <= wall);
        // On a busy machine the thread may be preempted, so only a loose floor holds: it ran
        // for some of those 20 ms.
        assert!(j.ns > 1_000_000, "judged {} ns of a 20 ms spin", j.ns);
    }

    #[test]
    fn a_call_that_blocks_is_judged_by_the_wall_clock() {
        let before = Usage::now().expect("Linux has per-thread counters");
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let wall = t0.elapsed().as_nanos() as u64;
        let j = before.judge(&Usage::now().expect("counters"), wall);
        assert_eq!(
            j,
            Judged {
                ns: wall,
                verified: true
            }
        );
    }

    #[test]
    fn a_preempted_call_counts_only_the_time_it_ran() {
        // What judge does with counters that show 30 µs of CPU, no block, over 3 ms of wall.
        let a = Usage {
            cpu_ns: 1_000_000,
            blocked: 7,
        };
        let b = Usage {
            cpu_ns: 1_030_000,
            blocked: 7,
        };
        assert_eq!(
            a.judge(&b, 3_000_000),
            Judged {
                ns: 30_000,
                verified: true
            }
        );
    }
}
