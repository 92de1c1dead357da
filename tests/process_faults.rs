//! Faults from outside the protocol: a task that forks without exec, a pool's process killed
//! while its workers run, external kills of starting workers. harness = false: `main` calls
//! `offload::init` first (and runs as the "owner" pool process when told so).

mod process_support;

use std::time::{Duration, Instant};

use offload::{ProcessPool, RemoteFn, ShutdownMode};
use process_support::{ECHO, PID, SLEEP_MS, build, check, children, rt, submit};

/// Forks a child that holds every inherited descriptor for 20 s (its pid goes to the file
/// named by the argument), then, unless `ret`, sleeps for ever itself.
fn fork_and_hold(path: &str, ret: bool) -> u32 {
    fork_and_hold_by(path, ret, false)
}

/// As [`fork_and_hold`]; with `raw`, by the `fork` system call itself, which runs no
/// `pthread_atfork` handler: the child keeps the worker's pipes open.
fn fork_and_hold_by(path: &str, ret: bool, raw: bool) -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: fork in the single-threaded worker; the child only sleeps and _exits.
    let pid = unsafe {
        if raw {
            // clone(SIGCHLD) is fork on every architecture (the other arguments are 0).
            libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) as libc::pid_t
        } else {
            libc::fork()
        }
    };
    if pid == 0 {
        // SAFETY: async-signal-safe calls only in the forked child.
        unsafe {
            libc::sleep(20);
            libc::_exit(0);
        }
    }
    std::fs::write(path, pid.to_string()).expect("the pid file is written");
    if !ret {
        loop {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pid as u32
}

static FORK_HOLD_LOOP: RemoteFn<String, u32> =
    RemoteFn::new("fork_hold_loop", |path| fork_and_hold(&path, false));
static RAW_FORK_HOLD_LOOP: RemoteFn<String, u32> = RemoteFn::new("raw_fork_hold_loop", |path| {
    fork_and_hold_by(&path, false, true)
});
static FORK_HOLD_RETURN: RemoteFn<String, u32> =
    RemoteFn::new("fork_hold_return", |path| fork_and_hold(&path, true));
/// `fork()` where both processes return from the task.
static FORK_BOTH_RETURN: RemoteFn<(), i32> = RemoteFn::new("fork_both_return", |()| {
    #[allow(unsafe_code)]
    // SAFETY: fork in the single-threaded worker; both sides return.
    unsafe {
        libc::fork()
    }
});
/// An initializer that takes a while: workers stay in start-up long enough to be killed there.
static SLOW_INIT: RemoteFn<u64, ()> = RemoteFn::new("slow_init", |ms| {
    std::thread::sleep(Duration::from_millis(ms));
});

fn pid_file(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("offload-faults-{tag}-{}", std::process::id()))
}

fn kill_pid_in(path: &std::path::Path) {
    if let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // SAFETY: kill with integer arguments.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(path);
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Runs `f` on a thread; an error when it does not return within `limit`.
fn bounded(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .map_err(|_| format!("{what} did not return within {limit:?}"))
}

/// Issue 13, item 5a: the worker's forked child holds the answer pipe; the deadline's kill
/// must still be seen at once.
fn a_deadline_kills_a_worker_whose_fork_holds_the_pipes() -> Result<(), String> {
    deadline_with_a_fork(&FORK_HOLD_LOOP, "a")
}

/// Issue 13, item 5a, with a fork that runs no `pthread_atfork` handler: the child holds the
/// answer pipe open, and the worker's death must be seen from the process itself.
fn a_deadline_kills_a_worker_whose_raw_fork_holds_the_pipes() -> Result<(), String> {
    deadline_with_a_fork(&RAW_FORK_HOLD_LOOP, "araw")
}

fn deadline_with_a_fork(f: &RemoteFn<String, u32>, tag: &str) -> Result<(), String> {
    let path = pid_file(tag);
    let r = rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let h = pool
            .submit_timeout(f, path.display().to_string(), Duration::from_millis(300))
            .await
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .map_err(|_| "no outcome 5 s after a 300 ms deadline".to_string())?;
        let e = out.expect_err("timed out");
        check(e.is_timeout(), || format!("timed out expected: {e}"))?;
        check(t0.elapsed() < Duration::from_secs(5), || "late".into())?;
        let v = tokio::time::timeout(Duration::from_secs(10), async {
            pool.submit(&ECHO, 3).await?.await
        })
        .await
        .map_err(|_| "the pool did not serve on".to_string())?
        .map_err(|e| e.to_string())?;
        check(v == 3, || format!("echo gave {v}"))?;
        let p = pool.clone();
        bounded(Duration::from_secs(5), "shutdown(Drain)", move || {
            p.shutdown_blocking(ShutdownMode::Drain)
        })
    });
    kill_pid_in(&path);
    r
}

/// Issue 13, item 5b: an idle pool whose last task left a forked child drains at once.
fn drain_is_not_held_by_a_forked_child() -> Result<(), String> {
    let path = pid_file("b");
    let r = rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let h = submit(&pool, &FORK_HOLD_RETURN, path.display().to_string()).await?;
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| "the forking task hung".to_string())?
            .map_err(|e| e.to_string())?;
        let p = pool.clone();
        bounded(Duration::from_secs(5), "shutdown(Drain)", move || {
            p.shutdown_blocking(ShutdownMode::Drain)
        })
    });
    kill_pid_in(&path);
    r
}

/// Issue 13, item 5c: a task whose fork returns in both processes; the child must not speak
/// the protocol, the next tasks run, and the pool drains with no zombie.
fn a_fork_that_returns_twice_does_not_speak_the_protocol() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        for round in 0..5u64 {
            let h = submit(&pool, &FORK_BOTH_RETURN, ()).await?;
            let child = tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .map_err(|_| "the forking task hung".to_string())?
                .map_err(|e| format!("round {round}: the forking task: {e}"))?;
            check(child > 0, || format!("the parent's side answers: {child}"))?;
            for i in 0..5u64 {
                let v = tokio::time::timeout(Duration::from_secs(10), async {
                    pool.submit(&ECHO, i).await?.await
                })
                .await
                .map_err(|_| format!("round {round}: a later task hung"))?
                .map_err(|e| format!("round {round}: a later task: {e}"))?;
                check(v == i, || format!("echo gave {v}"))?;
            }
        }
        let p = pool.clone();
        bounded(Duration::from_secs(5), "shutdown(Drain)", move || {
            p.shutdown_blocking(ShutdownMode::Drain)
        })?;
        let left = children();
        check(left.is_empty(), || format!("children left: {left:?}"))
    })
}

const OWNER_ROLE: &str = "OFFLOAD_TEST_FAULTS_OWNER";

/// The pool process of item 6: two workers run 30 s tasks; prints their pids, then waits.
fn owner() -> ! {
    rt().block_on(async {
        let pool = ProcessPool::builder().workers(2).build().expect("a pool");
        let mut hs = Vec::new();
        for _ in 0..2 {
            hs.push(pool.submit(&SLEEP_MS, 30_000).await.expect("submitted"));
        }
        let t0 = Instant::now();
        while pool.worker_pids().len() < 2 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
        println!("{}", pids.join(","));
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    std::process::exit(0);
}

/// Issue 13, item 6: workers exit within a second of their pool's process being killed,
/// in the middle of a task.
fn workers_exit_when_their_pool_process_dies() -> Result<(), String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut owner = std::process::Command::new(exe)
        .env(OWNER_ROLE, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = owner.stdout.take().ok_or("the owner's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = owner.kill();
    let _ = owner.wait();
    let line = line.map_err(|_| "the owner printed no worker pids".to_string())?;
    let pids: Vec<u32> = line
        .trim()
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    check(pids.len() == 2, || {
        format!("two worker pids expected: {line:?}")
    })?;
    let t0 = Instant::now();
    while pids.iter().any(|&p| alive(p)) && t0.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        // SAFETY: kill with integer arguments (cleaning up after a failure).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
    check(left.is_empty(), || {
        format!("workers alive 1 s after their pool's process died: {left:?}")
    })
}

/// Issue 13, item 7: three external kills of starting workers in a row do not break the pool.
fn external_kills_during_start_up_do_not_break_the_pool() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(
            ProcessPool::builder()
                .workers(1)
                .initializer(&SLOW_INIT, 300),
        )?;
        let mut killed = Vec::new();
        for _ in 0..4 {
            let t0 = Instant::now();
            let pid = loop {
                if let Some(&(p, _)) = children().iter().find(|(p, _)| !killed.contains(p)) {
                    break p;
                }
                check(t0.elapsed() < Duration::from_secs(10), || {
                    "no starting worker to kill".into()
                })?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            process_support::sigkill(pid);
            killed.push(pid);
        }
        let v = tokio::time::timeout(Duration::from_secs(20), async {
            pool.submit(&PID, ()).await?.await
        })
        .await
        .map_err(|_| "no task ran after the kills".to_string())?
        .map_err(|e| format!("a task after the kills: {e}"))?;
        check(!killed.contains(&v), || "ran on a killed worker?".into())?;
        check(pool.broken().is_none(), || "the pool broke".into())?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(&[
        &ECHO,
        &PID,
        &SLEEP_MS,
        &FORK_HOLD_LOOP,
        &RAW_FORK_HOLD_LOOP,
        &FORK_HOLD_RETURN,
        &FORK_BOTH_RETURN,
        &SLOW_INIT,
    ]);
    if std::env::var_os(OWNER_ROLE).is_some() {
        owner();
    }
    process_support::run(&[
        (
            "a_deadline_kills_a_worker_whose_fork_holds_the_pipes",
            a_deadline_kills_a_worker_whose_fork_holds_the_pipes,
        ),
        (
            "a_deadline_kills_a_worker_whose_raw_fork_holds_the_pipes",
            a_deadline_kills_a_worker_whose_raw_fork_holds_the_pipes,
        ),
        (
            "drain_is_not_held_by_a_forked_child",
            drain_is_not_held_by_a_forked_child,
        ),
        (
            "a_fork_that_returns_twice_does_not_speak_the_protocol",
            a_fork_that_returns_twice_does_not_speak_the_protocol,
        ),
        (
            "workers_exit_when_their_pool_process_dies",
            workers_exit_when_their_pool_process_dies,
        ),
        (
            "external_kills_during_start_up_do_not_break_the_pool",
            external_kills_during_start_up_do_not_break_the_pool,
        ),
    ]);
    std::process::exit(0);
}
