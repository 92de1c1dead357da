//! The cluster tier's round trip against a raw MPI ping-pong, in the same `mpiexec` run.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_roundtrip
//! mpiexec -n 2 target/release/examples/mpi_roundtrip [rounds] [result_spin_us] [direct_spin_us]
//! ```
//!
//! Prints the median (and p90/p99) of: a raw 8-byte `MPI_Send`/`MPI_Recv` ping-pong between
//! rank 0's MPI thread and rank 1; one trivial task submitted and awaited on the cluster tier
//! from async code; the same from sync code (`submit_blocking` + `blocking_wait`); and the
//! ratio of each to the raw ping-pong (the goal is at most 10×).
//!
//! The optional arguments override the cluster's result spin and direct spin (µs) to compare;
//! `mpi_roundtrip 2000 0 0` measures the queue path alone (every task through rank 0's MPI
//! thread, as when MPI grants only `MPI_THREAD_FUNNELED`).
//!
//! `--tcp ADDR` adds a third peer in the same run: a raw TCP ping-pong (8 bytes each way,
//! `TCP_NODELAY`, blocking std sockets) between rank 0 and rank 1, which listens on
//! `0.0.0.0:`[`TCP_PORT`] (started as a task); ADDR is rank 1's host address as rank 0 reaches
//! it (`127.0.0.1` when both share a host). Across hosts this is the floor that neither MPI
//! nor the cluster can beat; `tests/multihost/run.sh` runs it with one rank per host:
//!
//! ```text
//! mpiexec --hostfile hosts.txt --map-by node -n 2 mpi_roundtrip 2000 --tcp 10.231.0.2
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use offload::tier::mpi::{Cluster, launched_with_workers};
use offload::{RemoteFn, ShutdownMode};

static NOOP: RemoteFn<u64, u64> = RemoteFn::new("noop", |x| x);

/// The port rank 1 listens on for the TCP ping-pong.
const TCP_PORT: u16 = 47_913;

/// On rank 1: listens on [`TCP_PORT`], then (on a thread) echoes `rounds` 8-byte messages to
/// the one peer that connects. Returns once listening.
static TCP_ECHO: RemoteFn<u32, bool> = RemoteFn::new("tcp_echo", |rounds| {
    let Ok(listener) = TcpListener::bind(("0.0.0.0", TCP_PORT)) else {
        return false;
    };
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 8];
        for _ in 0..rounds {
            if s.read_exact(&mut buf).is_err() || s.write_all(&buf).is_err() {
                return;
            }
        }
    });
    true
});

/// Rank 0's side of the TCP ping-pong with rank 1 at `addr`: `rounds` round trips, timed.
fn tcp_ping_pong(addr: &str, rounds: u32) -> std::io::Result<Vec<Duration>> {
    let mut s = TcpStream::connect((addr, TCP_PORT))?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 8];
    let mut out = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let t0 = Instant::now();
        s.write_all(&u64::from(i).to_le_bytes())?;
        s.read_exact(&mut buf)?;
        out.push(t0.elapsed());
    }
    Ok(out)
}

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
    (q(0.5), q(0.9), q(0.99))
}

fn line(name: &str, v: Vec<Duration>, base: Option<Duration>) -> Duration {
    let (p50, p90, p99) = quantiles(v);
    let ratio = base.map_or(String::new(), |b| {
        format!("  ratio {:.1}x", p50.as_secs_f64() / b.as_secs_f64())
    });
    println!("{name:<34} median {p50:>10.2?}  p90 {p90:>10.2?}  p99 {p99:>10.2?}{ratio}");
    p50
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(&[&NOOP, &TCP_ECHO]);
    if !launched_with_workers() {
        eprintln!(
            "run me under mpiexec with at least 2 ranks: mpiexec -n 2 {}",
            std::env::args().next().unwrap_or_default()
        );
        return Ok(());
    }
    // Positional: rounds, result spin, direct spin; `--tcp ADDR` anywhere.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tcp = args.iter().position(|a| a == "--tcp").map(|i| {
        let addr = args
            .get(i + 1)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into());
        args.drain(i..(i + 2).min(args.len()));
        addr
    });
    let rounds: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let mut builder = Cluster::builder();
    if let Some(us) = args.get(1).and_then(|s| s.parse().ok()) {
        builder.result_spin(Duration::from_micros(us));
    }
    if let Some(us) = args.get(2).and_then(|s| s.parse().ok()) {
        builder.direct_spin(Duration::from_micros(us));
    }
    let cluster = builder.build()?;
    println!(
        "{} ranks ({} workers), {rounds} rounds each",
        cluster.ranks(),
        cluster.workers()
    );
    // Warm up both paths.
    cluster.raw_ping_pong(1, 1000)?;
    let raw = cluster.raw_ping_pong(1, rounds)?;
    let base = line("raw MPI ping-pong (8 B)", raw, None);
    let tcp_base = match &tcp {
        Some(addr) if cluster.workers() == 1 => {
            let listening = cluster
                .submit_blocking(&TCP_ECHO, rounds + 1000)?
                .blocking_wait()?;
            if !listening {
                return Err(format!("rank 1 could not listen on port {TCP_PORT}").into());
            }
            let mut v = tcp_ping_pong(addr, rounds + 1000)?;
            v.drain(..1000);
            Some(line("raw TCP ping-pong (8 B, NODELAY)", v, Some(base)))
        }
        Some(_) => {
            println!("--tcp needs exactly one worker rank (mpiexec -n 2); skipped");
            None
        }
        None => None,
    };
    let vs_tcp = |p50: Duration| {
        if let Some(t) = tcp_base {
            println!(
                "{:<34} ratio to raw TCP {:.1}x",
                "",
                p50.as_secs_f64() / t.as_secs_f64()
            );
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let async_times = rt.block_on(async {
        let mut v = Vec::with_capacity(rounds as usize);
        for i in 0..(rounds + 1000) {
            let t0 = Instant::now();
            let h = cluster.submit(&NOOP, u64::from(i)).await?;
            let r = h.await?;
            let dt = t0.elapsed();
            assert_eq!(r, u64::from(i));
            if i >= 1000 {
                v.push(dt);
            }
        }
        Ok::<_, offload::Error>(v)
    })?;
    vs_tcp(line(
        "cluster submit + await (async)",
        async_times,
        Some(base),
    ));

    let mut sync_times = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let t0 = Instant::now();
        let r = cluster
            .submit_blocking(&NOOP, u64::from(i))?
            .blocking_wait()?;
        sync_times.push(t0.elapsed());
        assert_eq!(r, u64::from(i));
    }
    vs_tcp(line(
        "cluster submit_blocking + wait",
        sync_times,
        Some(base),
    ));

    // The same ping-pong again after the tier's traffic, to show the baseline did not drift.
    let raw2 = cluster.raw_ping_pong(1, rounds)?;
    line("raw MPI ping-pong again", raw2, Some(base));
    cluster.shutdown_blocking(ShutdownMode::Drain);
    Ok(())
}
