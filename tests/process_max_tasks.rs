//! A worker is replaced after its maximum number of tasks.

mod process_support;

use std::collections::BTreeSet;

use offload::{ProcessPool, ShutdownMode};
use process_support::{PID, build, call, check, rt};

fn max_tasks_per_worker_recycles() -> Result<(), String> {
    rt().block_on(async {
        let pool = build(ProcessPool::builder().workers(1).max_tasks_per_worker(3))?;
        let mut pids = Vec::new();
        for _ in 0..9 {
            pids.push(call(&pool, &PID, ()).await?);
        }
        let distinct: BTreeSet<u32> = pids.iter().copied().collect();
        check(distinct.len() == 3, || {
            format!("9 tasks / 3 per worker: pids {pids:?}")
        })?;
        for chunk in pids.chunks(3) {
            check(chunk.iter().all(|p| *p == chunk[0]), || {
                format!("pids {pids:?}")
            })?;
        }
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}

fn main() {
    offload::init(process_support::FUNCTIONS);
    process_support::run(&[(
        "max_tasks_per_worker_recycles",
        max_tasks_per_worker_recycles,
    )]);
}
