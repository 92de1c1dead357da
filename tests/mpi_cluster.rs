//! The cluster tier under `mpiexec` (harness = false: ranks 1.. become workers inside
//! `offload::init`, before any test code runs).
//!
//! ```text
//! cargo build --features mpi --tests
//! mpiexec -n 3 --oversubscribe --allow-run-as-root target/debug/deps/mpi_cluster-<hash>
//! ```
//!
//! Run without `mpiexec` (as `cargo test --features mpi` does) it checks that no cluster is
//! built and exits 0.

use futures::StreamExt;
use offload::tier::mpi::{Cluster, Detected, detect, launched_with_workers};
use offload::{RemoteFn, ShutdownMode, TierKind, TrySubmitError};

static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);
static BOOM: RemoteFn<u32, u32> = RemoteFn::new("boom", |x| panic!("boom on input {x}"));
static WHOAMI: RemoteFn<(), usize> = RemoteFn::new("whoami", |()| {
    detect().launch().map_or(usize::MAX, |l| l.rank)
});
static SHARED_SUM: RemoteFn<(), (usize, u64)> = RemoteFn::new("shared_sum", |()| {
    let table = offload::shared::<Vec<u64>>().expect("shared data on a worker rank");
    let rank = detect().launch().map_or(usize::MAX, |l| l.rank);
    (rank, table.iter().sum())
});
static SUM_BYTES: RemoteFn<Vec<u8>, (usize, u64, Vec<u8>)> = RemoteFn::new("sum_bytes", |v| {
    let sum = v.iter().map(|&b| u64::from(b)).sum();
    (v.len(), sum, v)
});
static SLOW_RANK: RemoteFn<u64, usize> = RemoteFn::new("slow_rank", |ms| {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    detect().launch().map_or(usize::MAX, |l| l.rank)
});

/// Encodes as its number, except 13, which fails: an argument that cannot be encoded.
#[derive(Debug, serde::Deserialize)]
struct Picky(u32);
impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            Err(serde::ser::Error::custom("13 is refused"))
        } else {
            s.serialize_u32(self.0)
        }
    }
}
static PICKY: RemoteFn<Picky, u32> = RemoteFn::new("picky", |p| p.0);

fn check(name: &str, ok: bool, detail: impl std::fmt::Display) {
    if ok {
        println!("test {name} ... ok");
    } else {
        println!("test {name} ... FAILED: {detail}");
        std::process::exit(1);
    }
}

fn main() {
    offload::init(&[
        &SQUARE,
        &BOOM,
        &WHOAMI,
        &SHARED_SUM,
        &SUM_BYTES,
        &SLOW_RANK,
        &PICKY,
    ]);
    // From here on this is rank 0 (or a plain process).
    if !launched_with_workers() {
        let e = Cluster::builder()
            .build()
            .expect_err("no cluster outside mpiexec");
        check("no_cluster_outside_mpiexec", true, e);
        println!("mpi_cluster: not under mpiexec with >1 rank; run it with mpiexec -n 3");
        return;
    }
    let launch = match detect() {
        Detected::Launched(l) => l,
        other => {
            check("detects_the_launch", false, format!("{other:?}"));
            return;
        }
    };
    check("detects_rank_0", launch.is_master(), format!("{launch:?}"));

    // Shared data that cannot be encoded fails the build (and leaves the cluster unbuilt).
    let e = Cluster::builder().shared_data(&Picky(13)).build();
    check(
        "unencodable_shared_data_fails_the_build",
        e.as_ref()
            .is_err_and(|e| e.to_string().contains("shared data could not be encoded")),
        format!("{e:?}"),
    );
    // A shared file that cannot be read fails the build, naming it.
    let e = Cluster::builder()
        .shared_file("/nonexistent/offload-table.bin")
        .build();
    check(
        "an_unreadable_shared_file_fails_the_build",
        e.as_ref()
            .is_err_and(|e| e.to_string().contains("/nonexistent/offload-table.bin")),
        format!("{e:?}"),
    );
    let table: Vec<u64> = (1..=1000).collect();
    let cluster = Cluster::builder()
        .shared_data(&table)
        .build()
        .expect("the cluster builds");
    // Rank 0 reads the same shared data, for remote functions placed inline there.
    let here = SHARED_SUM.call_local(());
    check(
        "shared_data_reads_on_rank_0_too",
        here.1 == table.iter().sum::<u64>(),
        format!("{here:?}"),
    );
    check(
        "sees_every_rank",
        Some(cluster.ranks()) == launch.size && cluster.tier() == TierKind::Cluster,
        format!("{cluster:?} vs {launch:?}"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        // Results right.
        let h = cluster.submit(&SQUARE, 12).await.expect("submit");
        let v = h.await;
        check("submit_result", matches!(v, Ok(144)), format!("{v:?}"));
        let r = cluster.submit(&WHOAMI, ()).await.expect("submit").await;
        check(
            "runs_on_a_worker_rank",
            matches!(r, Ok(n) if n >= 1 && n < cluster.ranks()),
            format!("{r:?}"),
        );

        // map: ordered, chunked, every item right.
        let squares: Vec<_> = cluster.map(&SQUARE, 0..100u64).collect().await;
        let want: Vec<u64> = (0..100u64).map(|x| x * x).collect();
        let got: Vec<u64> = squares
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        check("map_in_order", got == want, format!("{got:?}"));

        // Tasks go to whichever rank is free: two slow tasks at once use two ranks.
        if cluster.workers() >= 2 {
            let a = cluster.submit(&SLOW_RANK, 200).await.expect("submit");
            let b = cluster.submit(&SLOW_RANK, 200).await.expect("submit");
            let (a, b) = (a.await, b.await);
            check(
                "free_ranks_share_the_work",
                matches!((&a, &b), (Ok(x), Ok(y)) if x != y),
                format!("{a:?} {b:?}"),
            );
        }

        // A panic is an error of its task, with the message, and the rank serves on.
        let e = cluster.submit(&BOOM, 7).await.expect("submit").await;
        match e {
            Err(e) => check(
                "panic_is_an_error",
                e.is_panic()
                    && e.to_string().contains("boom on input 7")
                    && e.tier() == Some(TierKind::Cluster)
                    && e.worker().is_some_and(|w| w >= 1),
                &e,
            ),
            Ok(v) => check("panic_is_an_error", false, v),
        }
        let items: Vec<_> = cluster.map_chunked(&BOOM, 0..6u32, 4).collect().await;
        check(
            "panic_fails_only_its_items",
            items.len() == 6
                && items
                    .iter()
                    .all(|r| r.as_ref().is_err_and(|e| e.is_panic())),
            format!("{items:?}"),
        );
        let mut serving = Vec::new();
        for _ in 0..(2 * cluster.workers()) {
            serving.push(cluster.submit(&SQUARE, 3).await.expect("submit"));
        }
        let mut all_ok = true;
        for h in serving {
            all_ok &= matches!(h.await, Ok(9));
        }
        check(
            "ranks_serve_on_after_a_panic",
            all_ok,
            "a rank stopped serving",
        );

        // Shared data reaches every rank: ask each rank (the slow task pins one per rank).
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..(8 * cluster.workers()) {
            let r = cluster.submit(&SHARED_SUM, ()).await.expect("submit").await;
            match r {
                Ok((rank, sum)) => {
                    seen.insert(rank, sum);
                }
                Err(e) => check("shared_data_reaches_every_rank", false, e),
            }
            if seen.len() == cluster.workers() {
                break;
            }
        }
        let want: u64 = table.iter().sum();
        check(
            "shared_data_reaches_every_rank",
            seen.len() == cluster.workers() && seen.values().all(|&s| s == want),
            format!("{seen:?}"),
        );

        // The direct path (a caller sends its task and polls for the reply itself, see the
        // module docs on the round trip) must leave no task behind.
        // A handle that is never waited on still finishes: the MPI thread takes the task over
        // when the caller's lease ends.
        let h = cluster.submit(&SQUARE, 5).await.expect("submit");
        let t0 = std::time::Instant::now();
        while !h.is_finished() && t0.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let finished = h.is_finished();
        let v = h.await;
        check(
            "unwaited_task_finishes",
            finished && matches!(v, Ok(25)),
            format!("finished {finished}, {v:?}"),
        );
        // A task longer than the caller's spin is handed over and its result still comes.
        let r = cluster
            .submit_blocking(&SLOW_RANK, 20)
            .expect("submit")
            .blocking_wait();
        check(
            "long_task_is_handed_over",
            matches!(r, Ok(n) if n >= 1),
            format!("{r:?}"),
        );
        // Handles dropped while their tasks run: the ranks are freed and serve on.
        for _ in 0..(2 * cluster.workers()) {
            drop(cluster.submit(&SLOW_RANK, 10).await.expect("submit"));
        }
        let mut all_ok = true;
        for i in 0..(4 * cluster.workers() as u64) {
            all_ok &= matches!(cluster.submit(&SQUARE, i).await.expect("submit").await, Ok(v) if v == i * i);
        }
        check(
            "dropped_handles_free_their_ranks",
            all_ok,
            "a rank stayed busy",
        );
        // Requests over a worker's small-message buffer (64 KiB) travel in two messages; the
        // reply comes back whole. Small ones after them still go in one.
        for n in [10usize, 64 << 10, (64 << 10) + 1, 3 << 20] {
            let v: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let want: u64 = v.iter().map(|&b| u64::from(b)).sum();
            let r = cluster
                .submit(&SUM_BYTES, v.clone())
                .await
                .expect("submit")
                .await;
            check(
                "big_requests_and_replies",
                matches!(&r, Ok((len, sum, back)) if *len == n && *sum == want && *back == v),
                format!("{n} bytes: {:?}", r.map(|(l, s, _)| (l, s))),
            );
        }
        // Over the frame limit (64 MiB): refused at submit with an encoding error, as on the
        // process tier.
        let r = cluster.submit(&SUM_BYTES, vec![1u8; 64 << 20]).await;
        check(
            "oversized_request_is_refused_at_submit",
            r.as_ref().is_err_and(|e| e.kind() == offload::ErrorKind::Encoding),
            format!("{:?}", r.map(|_| "a handle")),
        );
        let t = cluster.try_submit(&SQUARE, 4);
        let v = match t {
            Ok(h) => h.await,
            Err(e) => Err(offload::Error::new(offload::ErrorKind::Pool, format!("{e:?}"))),
        };
        check("try_submit_result", matches!(v, Ok(16)), format!("{v:?}"));
        // Arguments that cannot be encoded: try_submit says why (Rejected, with the encoding
        // error), not "shut down", and hands the arguments back.
        match cluster.try_submit(&PICKY, Picky(13)) {
            Err(TrySubmitError::Rejected(back, e)) => check(
                "try_submit_unencodable_is_rejected",
                e.is_encoding() && back.0 == 13,
                format!("{e} (handed back {back:?})"),
            ),
            Err(other) => check("try_submit_unencodable_is_rejected", false, other),
            Ok(h) => check(
                "try_submit_unencodable_is_rejected",
                false,
                format!("a handle: {:?}", h.await),
            ),
        }
        // Over the frame limit: Rejected as well, the error naming the size, the bytes back.
        match cluster.try_submit(&SUM_BYTES, vec![1u8; 64 << 20]) {
            Err(TrySubmitError::Rejected(back, e)) => check(
                "try_submit_oversized_is_rejected",
                e.is_encoding()
                    && e.to_string().contains("maximum frame size")
                    && back.len() == 64 << 20,
                &e,
            ),
            Err(other) => check("try_submit_oversized_is_rejected", false, other),
            Ok(h) => check(
                "try_submit_oversized_is_rejected",
                false,
                format!("a handle: {:?}", h.await.map(|(l, s, _)| (l, s))),
            ),
        }
        let v = cluster.submit(&PICKY, Picky(12)).await.expect("submit").await;
        check("picky_encodes_others", matches!(v, Ok(12)), format!("{v:?}"));
        // Several threads at once, short tasks and a map alongside: some go direct, some
        // through the queue, and a caller's watch completes other callers' tasks.
        let bad = std::sync::atomic::AtomicUsize::new(0);
        let first_bad = std::sync::Mutex::new(String::new());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (cluster, bad, first_bad) = (&cluster, &bad, &first_bad);
                s.spawn(move || {
                    for i in 0..300u64 {
                        let x = t * 1000 + i;
                        let r = cluster
                            .submit_blocking(&SQUARE, x)
                            .and_then(|h| h.blocking_wait());
                        if !matches!(r, Ok(v) if v == x * x)
                            && bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0
                        {
                            *first_bad.lock().unwrap() = format!("square({x}): {r:?}");
                        }
                    }
                });
            }
            let squares: Vec<_> = futures::executor::block_on(
                cluster.map(&SQUARE, 0..500u64).collect::<Vec<_>>(),
            );
            let ok = squares
                .iter()
                .enumerate()
                .all(|(i, r)| matches!(r, Ok(v) if *v == (i as u64) * (i as u64)));
            if !ok && bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                *first_bad.lock().unwrap() = format!("map: {squares:?}");
            }
        });
        let bad = bad.into_inner();
        check(
            "many_callers_at_once",
            bad == 0,
            format!(
                "{bad} wrong results, the first: {}",
                first_bad.into_inner().unwrap()
            ),
        );

        // A task past its time limit fails "timed out" and its rank is retired; the others
        // serve on. Last: the cluster has one rank fewer afterwards.
        if cluster.workers() >= 2 {
            let t0 = std::time::Instant::now();
            let r = cluster
                .submit_timeout(&SLOW_RANK, 1500, std::time::Duration::from_millis(100))
                .await
                .expect("submit")
                .await;
            let took = t0.elapsed();
            check(
                "task_timeout_fails_the_task",
                r.as_ref().is_err_and(|e| e.is_timeout() && e.to_string().contains("timed out"))
                    && took < std::time::Duration::from_millis(1000),
                format!("{r:?} after {took:?}"),
            );
            let retired = r.as_ref().err().and_then(|e| e.worker());
            let mut others = true;
            for i in 0..(4 * cluster.workers() as u64) {
                let r = cluster.submit(&WHOAMI, ()).await.expect("submit").await;
                others &= matches!(r, Ok(n) if Some(n) != retired);
                others &= matches!(cluster.submit(&SQUARE, i).await.expect("submit").await, Ok(v) if v == i * i);
            }
            check(
                "timed_out_rank_is_retired_and_others_serve_on",
                others && retired.is_some(),
                format!("retired {retired:?}"),
            );
        }

        cluster.shutdown(ShutdownMode::Drain).await;
        let e = cluster.submit(&SQUARE, 1).await;
        check(
            "refuses_after_shutdown",
            e.as_ref().is_err_and(|e| e.is_shut_down()),
            format!("{e:?}"),
        );
        let t = cluster.try_submit(&SQUARE, 2);
        check(
            "try_submit_after_shutdown_is_shut_down",
            matches!(&t, Err(TrySubmitError::ShutDown(2))),
            format!("{:?}", t.map(|_| "a handle")),
        );
    });
    println!(
        "mpi_cluster: all tests passed on {} ranks",
        launch.size.unwrap_or(0)
    );
}
