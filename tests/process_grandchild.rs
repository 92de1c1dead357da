//! A task that starts a program of its own: that program must not inherit the worker's pipes,
//! or it would hold the answer pipe open after the worker died and hide the death (no end of
//! file) until it exits. Here the worker is killed at a deadline while its `sleep 30` lives on.
//! harness = false: `main` must call `offload::init` first.

mod process_support;

use std::time::Duration;

use offload::{ProcessPool, RemoteFn, ShutdownMode};
use process_support::{ECHO, build, check, rt};

/// Starts `sleep 30` (its pid goes to the file named by the argument), then sleeps itself.
static SPAWN_AND_SLEEP: RemoteFn<String, u32> = RemoteFn::new("spawn_and_sleep", |path| {
    // Never waited for on purpose: the worker is killed before, and the test kills `sleep`.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep starts");
    std::fs::write(&path, child.id().to_string()).expect("the pid file is written");
    std::thread::sleep(Duration::from_secs(30));
    child.id()
});

fn kill_pid_in(path: &std::path::Path) {
    if let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

fn a_killed_worker_is_seen_dead_while_its_task_child_lives() -> Result<(), String> {
    let pid_file = std::env::temp_dir().join(format!("offload-grandchild-{}", std::process::id()));
    let r = rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1))?;
        let h = pool
            .submit_timeout(
                &SPAWN_AND_SLEEP,
                pid_file.display().to_string(),
                Duration::from_millis(500),
            )
            .await
            .map_err(|e| e.to_string())?;
        // The outcome comes soon after the deadline, not when `sleep 30` exits.
        let out = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .map_err(|_| {
                "no outcome 10 s after a 500 ms deadline: the worker's death was hidden".to_string()
            })?;
        let e = out.expect_err("the task was killed at its deadline");
        check(e.is_timeout(), || format!("timed out expected: {e}"))?;
        // The pool serves on with a new worker.
        let v = tokio::time::timeout(Duration::from_secs(10), async {
            pool.submit(&ECHO, 5).await?.await
        })
        .await
        .map_err(|_| "the pool did not serve on".to_string())?
        .map_err(|e| e.to_string())?;
        check(v == 5, || format!("echo gave {v}"))?;
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    });
    kill_pid_in(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    r
}

fn main() {
    offload::init(&[&ECHO, &SPAWN_AND_SLEEP]);
    process_support::run(&[(
        "a_killed_worker_is_seen_dead_while_its_task_child_lives",
        a_killed_worker_is_seen_dead_while_its_task_child_lives,
    )]);
}
