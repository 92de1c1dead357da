//! File descriptors, as a server that people deploy meets them: the soft limit (often 1,024)
//! is raised to the hard one at start, and the connection cap is sized to what is left, so
//! that a refused client can still be accepted and told why instead of waiting in the backlog.

/// Descriptors kept free beyond the connection cap: the listener, the runtime's own (epoll,
/// its wakers, the signal pipe), standard streams, log files, and the
/// [`REFUSAL_SLOTS`](super::listener::REFUSAL_SLOTS) connections being refused at any time.
pub const RESERVED_FDS: usize = 64;

/// What [`fit_max_conns`] found and chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit before the server raised it.
    pub soft_before: u64,
    /// The soft limit now (the hard one when raising worked).
    pub soft: u64,
    /// Descriptors open when the cap was sized.
    pub open: usize,
    /// The connection cap that was asked for.
    pub requested: usize,
    /// The connection cap that fits: `requested`, or less when the limit is lower.
    pub max_conns: usize,
}

impl std::fmt::Display for FdBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "max {} connections", self.max_conns)?;
        if self.max_conns < self.requested {
            write!(
                f,
                ", lowered from {} to fit the fd limit of {}: {} open, {} kept in reserve",
                self.requested, self.soft, self.open, RESERVED_FDS
            )?;
        }
        if self.soft != self.soft_before {
            write!(
                f,
                "; fd limit raised from {} to {}",
                self.soft_before, self.soft
            )?;
        }
        Ok(())
    }
}

/// The soft and hard limits on open descriptors (`RLIMIT_NOFILE`).
pub fn nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft limit on open descriptors to `soft` (at most the hard limit).
pub fn set_nofile_soft(soft: u64) -> std::io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; the call only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Descriptors open in this process now (from `/proc/self/fd`; 0 where it cannot be read).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// Raises the soft fd limit to the hard one, then sizes the connection cap to what is
/// available: at most the limit less the descriptors open now and [`RESERVED_FDS`].
pub fn fit_max_conns(requested: usize) -> FdBudget {
    let (soft_before, hard) = nofile_limit().unwrap_or((u64::MAX, u64::MAX));
    let soft = if soft_before < hard && set_nofile_soft(hard).is_ok() {
        hard
    } else {
        soft_before
    };
    let open = open_fds();
    let room = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(open + RESERVED_FDS)
        .max(1);
    FdBudget {
        soft_before,
        soft,
        open,
        requested,
        max_conns: requested.min(room),
    }
}
