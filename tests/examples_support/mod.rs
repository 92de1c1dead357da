//! Shared by the `examples_*` test binaries that run an example server as its own process, as
//! people deploy it: the test binary re-runs itself with one test selected and the server's
//! arguments in an environment variable; that test runs the server's `run` and exits with its
//! status. The parent reads the address the server prints, talks to it on loopback, sends it
//! signals and checks its exit status. The child's stdout is read (and kept) here; its stderr
//! is dropped, so a passing run is quiet.
#![allow(dead_code)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on any single wait for the child.
pub const LIMIT: Duration = Duration::from_secs(20);

/// The child's side: the server's arguments (program name first) when this process was started
/// by [`ChildServer::start`] with `env`, else `None` (the test is then a no-op).
pub fn child_args(env: &str, program: &str) -> Option<Vec<String>> {
    let args = std::env::var(env).ok()?;
    Some(
        std::iter::once(program.to_string())
            .chain(args.split_whitespace().map(str::to_string))
            .collect(),
    )
}

/// Ends the child with the outcome of the server's `run`.
pub fn exit_with<E: std::fmt::Display>(outcome: Result<(), E>) -> ! {
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("server failed: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Declares, in a test binary that includes an example server as module `$server`, the
/// child's side (the test `$child`, which runs the server when this
/// binary was started by [`ChildServer::start`]) and `start_server(args, nofile)`, which starts
/// it as its own process and waits for the line holding `$marker` and the address.
#[macro_export]
macro_rules! child_server {
    ($server:ident, $child:ident, $env:literal, $marker:literal) => {
        /// The child's side: runs the server when this binary is started as a child, else
        /// nothing.
        #[test]
        fn $child() {
            let Some(args) = examples_support::child_args($env, stringify!($server)) else {
                return;
            };
            use clap::Parser;
            $server::common::init_tracing("warn");
            examples_support::exit_with($server::run($server::Args::parse_from(args)));
        }

        /// Starts the server as its own process.
        fn start_server(args: &str, nofile: Option<u64>) -> examples_support::ChildServer {
            examples_support::ChildServer::start(stringify!($child), $env, args, $marker, nofile)
        }
    };
}

/// A server process and what it printed.
pub struct ChildServer {
    proc: std::process::Child,
    /// The address the server listens on.
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl ChildServer {
    /// Re-runs this test binary's test `test` with `args` in `env`, under a soft and hard fd
    /// limit of `nofile` when given, and waits for the line that holds `marker` followed by
    /// the address.
    pub fn start(
        test: &str,
        env: &str,
        args: &str,
        marker: &str,
        nofile: Option<u64>,
    ) -> ChildServer {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(env, args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(n) = nofile {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: between fork and exec the closure only calls setrlimit, which is
            // async-signal-safe, on a value it owns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut proc = cmd.spawn().expect("the server starts");
        let out = proc.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = ChildServer {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let first = server.wait_for(marker);
        server.addr = first
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split([' ', ',']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address after {marker:?} in {first:?}"));
        server
    }

    /// The first printed line (from now) that contains `what`.
    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("the server never printed {what:?}"),
            }
        }
    }

    /// Sends SIGTERM; waits for the exit status and the lines printed since.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = libc::pid_t::try_from(self.proc.id()).expect("a pid fits");
        // SAFETY: kill with a valid signal on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.proc.try_wait().expect("wait") {
                // The reader thread sends what is left until the pipe closes.
                let rest = self.lines.iter().collect();
                return (status, rest);
            }
            if Instant::now() > deadline {
                let _ = self.proc.kill();
                let _ = self.proc.wait();
                panic!("the server did not exit within {LIMIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
