//! The system calls std lacks here: pipes with a chosen buffer size, `ppoll`, a `timerfd`
//! for a caller's bounded wait, and `SIGPIPE` handling for hosts that did not ignore it.
//!
//! Why pipes rather than a Unix socket pair: measured here, an 8-byte ping-pong over a
//! socket pair took 14–15 µs at the median against 8 µs over two pipes. A socket allocates a
//! buffer per message, and a thread blocked in `read` on a socket sleeps on the socket's single
//! wait queue, which the kernel also wakes when the *peer* consumes data this socket sent
//! (`sock_wfree` → `unix_write_space`): a worker blocked in `read` was woken for nothing each
//! time the pool read its answer. A pipe keeps readers and writers on separate queues.
//!
//! Why a timer file rather than `ppoll`'s timeout: a timeout that expires before the next
//! scheduler tick makes the kernel reprogram the CPU's timer when the wait starts and again
//! when it ends early. On a virtual machine each reprogramming is a VM exit: measured here,
//! a pipe round trip with `ppoll(100 µs)` took 14.5 µs at the median against 8 µs with an
//! untimed `ppoll` (and 8 µs with a timeout past the 4 ms tick). [`Deadline`] keeps one armed
//! timer per worker slot and re-arms it only when it is about to run out, so a stream of round
//! trips pays one reprogramming every few trips.
//!
//! The timer file, `ppoll`, `pipe2` and pipe sizes are Linux's; elsewhere the pool falls back
//! to `poll`'s own timeout, `pipe` + `FD_CLOEXEC`, and the default pipe size.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> std::io::Result<(File, File)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: pipe2 writes two descriptors into the two-element array we pass, which lives
    // across the call.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    #[cfg(not(target_os = "linux"))]
    #[allow(unsafe_code)]
    // SAFETY: pipe writes two descriptors into the two-element array we pass; fcntl takes
    // integer arguments only. (Not atomic with a concurrent fork, unlike pipe2.)
    let r = unsafe {
        let r = libc::pipe(fds.as_mut_ptr());
        if r == 0 {
            libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC);
            libc::fcntl(fds[1], libc::F_SETFD, libc::FD_CLOEXEC);
        }
        r
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: both descriptors were just created by pipe and are owned by nothing else; each
    // File becomes the only owner of one.
    let ends = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    Ok(ends)
}

/// Sets close-on-exec on `fd`, so that programs a task starts do not inherit it.
pub(crate) fn set_cloexec(fd: &File) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: fcntl on a descriptor the File owns, with integer arguments only.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is open in this process and is a pipe (read from `/proc/self/fd`, no
/// descriptor is touched). `None` where `/proc` cannot say.
pub(crate) fn is_open_pipe(fd: i32) -> Option<bool> {
    use std::os::unix::fs::FileTypeExt;
    if !std::path::Path::new("/proc/self/fd").exists() {
        return None;
    }
    Some(std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| m.file_type().is_fifo()))
}

/// The buffer size assumed of a pipe where it cannot be asked: POSIX guarantees none, and
/// 16 KiB is the smallest default among the Unixes we know of (macOS).
#[cfg(not(target_os = "linux"))]
const DEFAULT_PIPE_CAPACITY: usize = 16 * 1024;

/// Asks for a pipe buffer of at least `bytes` (the kernel may refuse: `fs.pipe-max-size`, the
/// user's pipe quota) and returns the size the pipe has.
pub(crate) fn pipe_capacity(pipe: &File, bytes: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        let fd = pipe.as_raw_fd();
        let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        #[allow(unsafe_code)]
        // SAFETY: fcntl on a pipe descriptor we own, with integer arguments only.
        let got = unsafe {
            let _ = libc::fcntl(fd, libc::F_SETPIPE_SZ, want);
            libc::fcntl(fd, libc::F_GETPIPE_SZ)
        };
        usize::try_from(got).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pipe, bytes);
        DEFAULT_PIPE_CAPACITY
    }
}

/// Whether a write to a pipe whose reader is gone would kill this process: `SIGPIPE` left at
/// its default action. Rust programs ignore it from the start (as std's own pipes to child
/// processes assume); a host that restored the default gets guarded writes ([`write_all`]).
pub(crate) fn sigpipe_kills() -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: a null new action only reads the current one into `old`, which is valid,
    // zeroed memory of the right type that outlives the call.
    let r = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), old.as_mut_ptr()) };
    #[allow(unsafe_code)]
    // SAFETY: zeroed is a valid sigaction, and sigaction filled it in when it returned 0.
    let old = unsafe { old.assume_init() };
    r == 0 && old.sa_sigaction == libc::SIG_DFL
}

/// Runs `write` with `SIGPIPE` blocked for this thread when `guard` (see [`sigpipe_kills`]);
/// a `SIGPIPE` it raised (a dead reader: `EPIPE`) is taken and discarded before unblocking,
/// so a worker that died costs an error, never the pool's process.
fn guarded<T>(guard: bool, write: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    if !guard {
        return write();
    }
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: `set` and `old` are valid sigset_t storage that outlive the calls; sigemptyset
    // and sigaddset initialise `set`; pthread_sigmask reads `set` and writes `old`.
    let blocked = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), old.as_mut_ptr()) == 0
    };
    let r = write();
    if blocked {
        if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EPIPE)) {
            let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
            let mut sig: libc::c_int = 0;
            #[allow(unsafe_code)]
            // SAFETY: `pending`, `set` and `sig` are valid storage that outlive the calls;
            // sigwait only runs when SIGPIPE is pending (and blocked), so it returns at once,
            // taking it.
            unsafe {
                if libc::sigpending(pending.as_mut_ptr()) == 0
                    && libc::sigismember(pending.as_ptr(), libc::SIGPIPE) == 1
                {
                    libc::sigwait(set.as_ptr(), &mut sig);
                }
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: `old` was filled in by the pthread_sigmask call that blocked SIGPIPE.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
        }
    }
    r
}

/// Writes all of `buf` to a pipe (blocking), `SIGPIPE`-safe with `guard` (see [`guarded`]).
pub(crate) fn write_all(mut pipe: &File, buf: &[u8], guard: bool) -> std::io::Result<()> {
    guarded(guard, || pipe.write_all(buf))
}

/// Writes all of `buf` to a pipe by `deadline`; `Ok(false)` when the time ran out first (a
/// reader that does not read). For the setup frame, which may exceed the pipe's buffer.
pub(crate) fn write_all_by(
    mut pipe: &File,
    mut buf: &[u8],
    deadline: Instant,
    guard: bool,
) -> std::io::Result<bool> {
    set_nonblocking(pipe, true)?;
    let r = (|| {
        while !buf.is_empty() {
            match guarded(guard, || pipe.write(buf)) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    wait_fds(&mut [pollfd(pipe.as_raw_fd(), libc::POLLOUT)], Some(left))?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    })();
    set_nonblocking(pipe, false)?;
    r
}

/// Sets or clears `O_NONBLOCK` on a descriptor we own.
pub(crate) fn set_nonblocking(f: &File, on: bool) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    #[allow(unsafe_code)]
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let r = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else if on {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A one-shot `timerfd` (monotonic clock) that bounds a caller's wait for its answer, re-armed
/// lazily: a wait may use the expiry already set when it falls between half the budget and the
/// budget from now, so the wait ends after `budget / 2` to `budget` when no answer comes.
#[derive(Debug)]
pub(crate) struct Deadline {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
    /// When the timer fires, as last armed (`None`: never armed).
    due: Option<Instant>,
}

impl Deadline {
    /// A new, unarmed timer; `None` when the system has no timer files.
    pub(crate) fn new() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            #[allow(unsafe_code)]
            // SAFETY: timerfd_create takes two integer arguments and returns a new descriptor
            // or -1; nothing is borrowed.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return None;
            }
            #[allow(unsafe_code)]
            // SAFETY: `fd` was just returned by timerfd_create, is open, and is owned by
            // nothing else: the OwnedFd becomes its only owner and closes it.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            Some(Deadline { fd, due: None })
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// The descriptor to poll (readable once the timer fired, until it is re-armed).
    pub(crate) fn fd(&self) -> RawFd {
        #[cfg(target_os = "linux")]
        {
            self.fd.as_raw_fd()
        }
        #[cfg(not(target_os = "linux"))]
        {
            -1
        }
    }

    /// Makes the timer fire between `budget / 2` and `budget` from now: keeps the armed expiry
    /// when it is in that window, re-arms to `budget` otherwise (which also clears a past
    /// expiry). Returns false when the timer could not be armed.
    pub(crate) fn arm_within(&mut self, budget: Duration) -> bool {
        let now = Instant::now();
        if let Some(due) = self.due {
            if due >= now + budget / 2 && due <= now + budget {
                return true;
            }
        }
        #[cfg(target_os = "linux")]
        {
            let spec = libc::itimerspec {
                it_interval: timespec(Duration::ZERO),
                it_value: timespec(budget.max(Duration::from_nanos(1))),
            };
            #[allow(unsafe_code)]
            // SAFETY: `self.fd` is an open timerfd we own; `spec` is a valid itimerspec that
            // outlives the call; a null old-value pointer asks for nothing back.
            let r = unsafe {
                libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())
            };
            if r != 0 {
                self.due = None;
                return false;
            }
            self.due = Some(now + budget);
            true
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

#[cfg(target_os = "linux")]
fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos().min(999_999_999) as i32),
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: no limit). Returns how many
/// are ready (0: the time passed, or a signal interrupted the wait).
pub(crate) fn wait_fds(
    fds: &mut [libc::pollfd],
    timeout: Option<Duration>,
) -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    let r = {
        let ts = timeout.map(timespec);
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        #[allow(unsafe_code)]
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs
        // for the whole call; `tsp` is null or points to `ts`, which outlives the call; a null
        // signal mask leaves the mask alone. ppoll only writes the `revents` fields.
        unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                tsp,
                std::ptr::null(),
            )
        }
    };
    #[cfg(not(target_os = "linux"))]
    let r = {
        // Milliseconds, rounded up so that a short wait does not become a busy loop.
        let ms = timeout.map_or(-1, |d| {
            libc::c_int::try_from(d.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
        });
        #[allow(unsafe_code)]
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs
        // for the whole call; poll only writes the `revents` fields.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms)
        }
    };
    match r {
        r if r >= 0 => Ok(r as usize),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
    }
}

/// A `pollfd` asking for `events` on `fd`.
pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Tells when a worker process exits, from the process itself rather than from the end of
/// file of its pipes (which a process it forked may hold open): a `pidfd` (Linux 5.3+),
/// readable once the process exited, or else a poll of its state every
/// [`EXIT_POLL`].
pub(crate) struct ExitWatch {
    pid: u32,
    fd: Option<std::os::fd::OwnedFd>,
}

/// How often a worker's state is looked at where no `pidfd` tells its exit.
pub(crate) const EXIT_POLL: Duration = Duration::from_millis(100);

impl ExitWatch {
    /// Watches child `pid` (not reaped yet: the caller reaps it after the watch says so).
    pub(crate) fn new(pid: u32) -> Self {
        #[cfg(target_os = "linux")]
        let fd = {
            #[allow(unsafe_code)]
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
            let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            i32::try_from(r).ok().filter(|&fd| fd >= 0).map(|fd| {
                #[allow(unsafe_code)]
                // SAFETY: the descriptor was just created for us and nothing else owns it.
                unsafe {
                    <std::os::fd::OwnedFd as FromRawFd>::from_raw_fd(fd)
                }
            })
        };
        #[cfg(not(target_os = "linux"))]
        let fd = None;
        ExitWatch { pid, fd }
    }

    /// The descriptor to poll for `POLLIN` (-1, which `poll` ignores, without a pidfd).
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// How long a wait may last before [`exited`](Self::exited) must be asked: `None` with a
    /// pidfd (its readiness says it).
    pub(crate) fn poll_every(&self) -> Option<Duration> {
        if self.fd.is_some() {
            None
        } else {
            Some(EXIT_POLL)
        }
    }

    /// Whether the process exited (it stays a zombie until reaped: this does not reap it).
    pub(crate) fn exited(&self) -> bool {
        if let Some(fd) = &self.fd {
            let mut fds = [pollfd(fd.as_raw_fd(), libc::POLLIN)];
            return wait_fds(&mut fds, Some(Duration::ZERO)).is_ok_and(|n| n > 0);
        }
        #[allow(unsafe_code)]
        // SAFETY: waitid writes into the zeroed siginfo we pass; WNOWAIT leaves the child
        // waitable (it is not reaped here), WNOHANG returns at once.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() != 0
        }
    }
}
