//! Lowering one thread's scheduling priority, for the pool's overflow workers.
//!
//! On Linux a thread has its own nice value: `setpriority(PRIO_PROCESS, tid, n)` changes only
//! that thread, and raising the value needs no privilege. Elsewhere `setpriority` acts on the
//! whole process, so the pool does not lower anything there and starts no overflow worker
//! (see the module docs of the thread tier).

/// Whether this platform can lower the priority of a single thread.
pub(crate) const SUPPORTED: bool = cfg!(target_os = "linux");

/// Sets the calling thread's nice value to `nice` (higher: lower priority). Returns whether it
/// took effect.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn lower_this_thread(nice: i32) -> bool {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let Ok(who) = libc::id_t::try_from(tid) else {
        return false;
    };
    // SAFETY: setpriority only reads its arguments; `who` names this thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            nice,
            "could not lower an overflow worker's priority"
        );
    }
    rc == 0
}

/// Not supported here: does nothing and returns false.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_this_thread(nice: i32) -> bool {
    let _ = nice;
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let before = std::fs::read_to_string("/proc/thread-self/stat").ok();
        let lowered = std::thread::spawn(|| {
            let ok = super::lower_this_thread(7);
            // SAFETY: getpriority only reads its arguments; 0 with PRIO_PROCESS on Linux is
            // the calling thread.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            (ok, nice)
        })
        .join()
        .expect("the thread ran");
        assert_eq!(lowered, (true, 7));
        let after = std::fs::read_to_string("/proc/thread-self/stat").ok();
        // Field 19 (nice) of this thread is unchanged.
        let nice = |s: &Option<String>| {
            s.as_ref()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.to_string()))
                .and_then(|r| r.split_whitespace().nth(16).map(str::to_string))
        };
        assert_eq!(nice(&before), nice(&after));
    }
}
