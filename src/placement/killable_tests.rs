//! Killable work never runs inline nor on the thread tier. Without a killable tier it is
//! refused with a clear "unsupported" error; with one attached (here a stand-in tier that says
//! it is the process tier), every call goes there, however cheap the model learns it is.
//! Inside the crate: the stand-in implements the internal `Tier` trait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::task::{Job, WorkerCtx};
use crate::tier::{PushError, PushFuture, Tier, TierStats};
use crate::{ErrorKind, Executor, Scheduler, ShutdownMode, Stage, TierKind};

/// A stand-in killable tier: runs each job on a fresh thread and reports itself as processes.
#[derive(Debug, Default)]
struct StandIn {
    done: Arc<AtomicU64>,
}

impl Tier for StandIn {
    fn kind(&self) -> TierKind {
        TierKind::Processes
    }
    fn try_push(&self, job: Job) -> Result<(), PushError> {
        let done = self.done.clone();
        std::thread::Builder::new()
            .name("stand-in-process".into())
            .spawn(move || {
                job.run(WorkerCtx {
                    tier: TierKind::Processes,
                    worker: Some(0),
                });
                done.fetch_add(1, Ordering::Relaxed);
            })
            .expect("a thread starts");
        Ok(())
    }
    fn push(&self, job: Job) -> PushFuture<'_> {
        let r = self.try_push(job).map_err(|e| match e {
            PushError::Full(j) | PushError::Closed(j) => j,
        });
        Box::pin(std::future::ready(r))
    }
    fn push_blocking(&self, job: Job) -> Result<(), Job> {
        self.try_push(job).map_err(|e| match e {
            PushError::Full(j) | PushError::Closed(j) => j,
        })
    }
    fn shutdown(&self, _mode: ShutdownMode) {}
    fn stats(&self) -> TierStats {
        TierStats {
            workers: 1,
            completed: self.done.load(Ordering::Relaxed),
            ..TierStats::default()
        }
    }
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_string()
}

#[test]
fn without_a_killable_tier_killable_calls_are_refused_and_never_run() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .expect("scheduler starts");
    let site = sched.site("untrusted").killable();
    assert!(site.is_killable());
    let ran = Arc::new(AtomicBool::new(false));
    sched.block_on(async {
        for _ in 0..5 {
            let r = ran.clone();
            let e = site
                .call(move || r.store(true, Ordering::Relaxed))
                .await
                .expect_err("no killable tier");
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            let text = e.to_string();
            assert!(
                text.contains("untrusted") && text.contains("killable"),
                "{text}"
            );
            assert!(
                text.contains("placement_tier"),
                "the error names the fix: {text}"
            );
            // A probe saying "short" does not bring it inline either.
            let r = ran.clone();
            let e = site
                .probe(|| false)
                .call(move || r.store(true, Ordering::Relaxed))
                .await
                .expect_err("no killable tier");
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            // Nor does a staged call's long part.
            let e = site
                .staged(|| Stage::Offload(|| 1u32))
                .await
                .expect_err("no killable tier");
            assert_eq!(e.kind(), ErrorKind::Unsupported);
        }
    });
    assert!(
        !ran.load(Ordering::Relaxed),
        "a killable call ran in-process"
    );
    assert_eq!(site.stats().inline, 0);
    assert_eq!(site.stats().threads, 0);
    sched.shutdown_timeout_blocking(ShutdownMode::Drain, Duration::from_secs(5));
}

#[test]
fn with_a_killable_tier_every_killable_call_goes_there() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .placement_tier(Executor::from_tier(Arc::new(StandIn::default())))
        .build()
        .expect("scheduler starts");
    let site = sched.site("isolated").killable();
    sched.block_on(async {
        // A trivially cheap call, 100 times: the model learns it is cheap, and still never
        // runs it inline nor on the thread tier.
        for _ in 0..100 {
            let name = site.call(thread_name).await.expect("runs");
            assert_eq!(name, "stand-in-process");
        }
        let name = site.probe(|| false).call(thread_name).await.expect("runs");
        assert_eq!(name, "stand-in-process");
    });
    let s = site.stats();
    assert_eq!((s.inline, s.threads, s.processes), (0, 0, 101));
    assert!(site.prediction(None).expect("learned") < site.budget());
    sched.shutdown_timeout_blocking(ShutdownMode::Drain, Duration::from_secs(5));
}
