//! The showcase: why this library exists, in one command.
//!
//! ```text
//! cargo run --release --example showcase            # about 30 s on 2 cores
//! cargo run --release --example showcase -- --quick # a few seconds, smaller load
//! ```
//!
//! It runs the compute server (`examples/compute_server.rs`) in this process on loopback, once
//! per placement policy — `inline`, `offload`, `adaptive` — and drives it with two kinds of
//! client at once:
//! - **echo clients** send `echo` lines at a steady pace and measure each reply's latency (what
//!   every other user of a service feels);
//! - **compute clients** send requests of mixed cost back to back (mostly tiny, a few long) and
//!   count the replies (what the service gets done).
//!
//! Then it prints a table (echo p50 / p99 / p99.9, compute requests per second, calls per tier,
//! slow polls seen by the scheduler's watchdog), writes `target/showcase/results.json` and draws
//! `target/showcase/latency.svg`. The `inline` row shows the problem: every long request stalls
//! the echo replies queued behind it. `offload` fixes latency but pays a hand-off on every tiny
//! call; `adaptive` keeps the tiny calls inline and sends only the long ones away.
//!
//! Then a **flood phase**, per policy: the same number of clients send cheap requests
//! (`primes 300`) at a steady pace and measure their latency, first alone, then while one
//! client floods the most expensive valid request (`primes 2000000`) over 8 connections. The
//! compute server bounds its queued CPU work and sheds the excess with `ERR busy, retry` (the
//! flooder retries at once; the server reads its next request 10 ms later). It prints the cheap requests' p50 / p99 without
//! and with the flood, the flood's requests served and shed, and writes
//! `target/showcase/flood.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use offload::Scheduler;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[allow(dead_code)]
#[path = "compute_server.rs"]
mod compute_server;

pub use compute_server::Policy;
use compute_server::common;
use compute_server::{ComputeConfig, Dispatch, ServerStats, hash_bytes, sum_primes};

/// The longest any client waits for one reply before it counts an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The watchdog threshold used while measuring: a poll that holds the I/O thread for 1 ms
/// delays every echo reply behind it by as much.
const SLOW_POLL: Duration = Duration::from_millis(1);

/// What a run does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Policies to run, in order.
    pub policies: Vec<Policy>,
    /// Rounds: each runs every policy once, in order, so that a change in the machine's load
    /// over the run falls on every policy alike. A policy's figures merge its rounds.
    pub rounds: u32,
    /// Load before measuring, per policy and round (the adaptive model learns here).
    pub warmup: Duration,
    /// Measured time per policy and round.
    pub measure: Duration,
    /// Echo clients.
    pub echo_clients: usize,
    /// Time between one echo client's requests.
    pub echo_interval: Duration,
    /// Compute clients (closed loop: the next request when the last reply came).
    pub compute_clients: usize,
    /// Server runtime (I/O) threads.
    pub io_threads: usize,
    /// Server CPU pool threads.
    pub cpu_workers: usize,
    /// Where results.json and latency.svg go.
    pub out: PathBuf,
    /// Show progress bars.
    pub progress: bool,
    /// Print what placement learned, per key, after each policy.
    pub verbose: bool,
    /// Measured time of each half of a round of the flood phase (without, then with the
    /// flood; `rounds` rounds per policy); `None` skips the phase.
    pub flood: Option<Duration>,
}

impl Settings {
    /// The README's run: about 30 s in all.
    pub fn full() -> Self {
        Settings {
            policies: vec![Policy::Inline, Policy::Offload, Policy::Adaptive],
            rounds: 8,
            warmup: Duration::from_millis(250),
            measure: Duration::from_millis(1000),
            echo_clients: 8,
            echo_interval: Duration::from_millis(5),
            compute_clients: 4,
            io_threads: 1,
            cpu_workers: 1,
            out: default_out(),
            progress: true,
            verbose: false,
            flood: Some(Duration::from_millis(600)),
        }
    }

    /// A few seconds in all, for CI and tests.
    pub fn quick() -> Self {
        Settings {
            rounds: 1,
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(700),
            echo_clients: 2,
            compute_clients: 2,
            flood: Some(Duration::from_millis(600)),
            ..Settings::full()
        }
    }
}

/// `target/showcase` of this package (or of `CARGO_TARGET_DIR`).
pub fn default_out() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("showcase")
}

/// One policy's figures (a row of the table and an object of results.json).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: Policy,
    /// Echo latency, median, µs.
    pub echo_p50_us: u64,
    /// Echo latency, 99th percentile, µs.
    pub echo_p99_us: u64,
    /// Echo latency, 99.9th percentile, µs.
    pub echo_p999_us: u64,
    /// Echo latency, worst, µs.
    pub echo_max_us: u64,
    /// Echo replies measured.
    pub echo_count: u64,
    /// Compute replies per second.
    pub compute_rps: f64,
    /// Compute replies measured.
    pub compute_count: u64,
    /// Calls per tier while measuring.
    pub tier_counts: BTreeMap<String, u64>,
    /// Polls of the server's tasks longer than 1 ms while measuring.
    pub slow_polls: u64,
    /// Inline calls that overran their prediction (placement; adaptive only) while measuring.
    pub mispredictions: u64,
    /// Calls placed against the model to keep it honest (placement; adaptive only).
    pub explored: u64,
    /// Replies that were wrong, errors, or late.
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
}

/// The compute mix: (request, weight out of 100). Mostly tiny calls, a few long ones.
pub const MIX: [(&str, u32); 4] = [
    ("primes 300", 70),
    ("hash 2000", 20),
    ("primes 30000", 8),
    ("hash 4000000", 2),
];

fn expected_reply(req: &str) -> String {
    let (verb, n) = req.split_once(' ').expect("MIX entries have an argument");
    let n: u64 = n.parse().expect("MIX arguments are numbers");
    match verb {
        "primes" => sum_primes(n).to_string(),
        _ => format!("{:016x}", hash_bytes(n)),
    }
}

struct Load {
    measuring: AtomicBool,
    stop: AtomicBool,
    compute_done: AtomicU64,
    errors: AtomicU64,
}

/// One policy's figures from one round.
struct Round {
    hist: Histogram<u64>,
    compute_count: u64,
    seconds: f64,
    tier_counts: BTreeMap<String, u64>,
    slow_polls: u64,
    mispredictions: u64,
    explored: u64,
    errors: u64,
}

impl Round {
    fn merge(&mut self, other: Round) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.compute_count += other.compute_count;
        self.seconds += other.seconds;
        for (k, v) in other.tier_counts {
            *self.tier_counts.entry(k).or_insert(0) += v;
        }
        self.slow_polls += other.slow_polls;
        self.mispredictions += other.mispredictions;
        self.explored += other.explored;
        self.errors += other.errors;
    }

    fn result(self, policy: Policy) -> PolicyResult {
        let h = &self.hist;
        PolicyResult {
            policy,
            echo_p50_us: h.value_at_quantile(0.50),
            echo_p99_us: h.value_at_quantile(0.99),
            echo_p999_us: h.value_at_quantile(0.999),
            echo_max_us: h.max(),
            echo_count: h.len(),
            compute_rps: self.compute_count as f64 / self.seconds.max(f64::MIN_POSITIVE),
            compute_count: self.compute_count,
            tier_counts: self.tier_counts,
            slow_polls: self.slow_polls,
            mispredictions: self.mispredictions,
            explored: self.explored,
            errors: self.errors,
            seconds: self.seconds,
        }
    }
}

/// Mispredictions and explorations placement counted so far, over every key.
fn learning(sched: &Scheduler) -> (u64, u64) {
    sched
        .placement_stats()
        .keys
        .iter()
        .fold((0, 0), |(m, e), k| (m + k.mispredictions, e + k.explored))
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Runs every policy of `settings`, prints the table, writes results.json and latency.svg.
pub fn run(settings: &Settings) -> Result<Vec<PolicyResult>, Box<dyn std::error::Error>> {
    let multi = MultiProgress::new();
    if !settings.progress {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let bars: Vec<ProgressBar> = settings
        .policies
        .iter()
        .map(|&p| multi.add(progress_bar(settings, p)))
        .collect();
    let mut merged: Vec<Option<Round>> = settings.policies.iter().map(|_| None).collect();
    let per_round = (settings.warmup + settings.measure).as_millis() as u64;
    for r in 0..settings.rounds.max(1) {
        for (i, &policy) in settings.policies.iter().enumerate() {
            let round = run_round(policy, settings, &bars[i], u64::from(r) * per_round)?;
            match &mut merged[i] {
                Some(m) => m.merge(round),
                slot => *slot = Some(round),
            }
        }
    }
    let mut results = Vec::new();
    for ((&policy, bar), m) in settings.policies.iter().zip(&bars).zip(merged) {
        let result = m
            .expect("every policy ran at least one round")
            .result(policy);
        bar.finish_with_message(format!(
            "{:.0} compute req/s, echo p99 {} µs",
            result.compute_rps, result.echo_p99_us
        ));
        results.push(result);
    }
    print_table(&results);
    std::fs::create_dir_all(&settings.out)?;
    let json = settings.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let svg = settings.out.join("latency.svg");
    std::fs::write(&svg, latency_svg(&results))?;
    println!("wrote {} and {}", json.display(), svg.display());
    Ok(results)
}

fn progress_bar(settings: &Settings, policy: Policy) -> ProgressBar {
    let total =
        u64::from(settings.rounds.max(1)) * (settings.warmup + settings.measure).as_millis() as u64;
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{prefix:>9} [{bar:32}] {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(policy.name());
    bar.set_message("waiting");
    bar
}

fn run_round(
    policy: Policy,
    settings: &Settings,
    bar: &ProgressBar,
    base_ms: u64,
) -> Result<Round, Box<dyn std::error::Error>> {
    let sched = Scheduler::builder()
        .io_threads(settings.io_threads)
        .cpu_workers(settings.cpu_workers)
        .slow_poll_threshold(SLOW_POLL)
        .build()?;
    let dispatch = Arc::new(Dispatch::new(sched.clone(), policy));
    let stats = Arc::new(ServerStats::default());
    let listener = sched.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = sched.spawn(
        "compute/listener",
        compute_server::serve(
            sched.clone(),
            listener,
            dispatch.clone(),
            ComputeConfig::default(),
            stats,
            async {
                let _ = stopped.await;
            },
        ),
    );

    // The clients get a runtime of their own, on this thread.
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load = Arc::new(Load {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        compute_done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let expected: Arc<Vec<(String, String, u32)>> = Arc::new(
        MIX.iter()
            .map(|(r, w)| (r.to_string(), expected_reply(r), *w))
            .collect(),
    );

    let measured = clients.block_on(async {
        let mut echo = tokio::task::JoinSet::new();
        for c in 0..settings.echo_clients {
            echo.spawn(echo_client(addr, c, settings.echo_interval, load.clone()));
        }
        let mut compute = tokio::task::JoinSet::new();
        for c in 0..settings.compute_clients {
            compute.spawn(compute_client(
                addr,
                c as u64,
                expected.clone(),
                load.clone(),
            ));
        }

        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        while t0.elapsed() < settings.warmup {
            tokio::time::sleep(tick).await;
            bar.set_position(base_ms + t0.elapsed().as_millis() as u64);
            bar.set_message("warming up");
        }
        let tiers_before = dispatch.tier_counts();
        let slow_before = sched.stats().slow_polls;
        let learned_before = learning(&sched);
        load.measuring.store(true, Ordering::Release);
        let m0 = Instant::now();
        while m0.elapsed() < settings.measure {
            tokio::time::sleep(tick.min(settings.measure)).await;
            let done = load.compute_done.load(Ordering::Relaxed);
            bar.set_position(base_ms + t0.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{:.0} compute req/s",
                done as f64 / m0.elapsed().as_secs_f64()
            ));
        }
        load.measuring.store(false, Ordering::Release);
        let seconds = m0.elapsed().as_secs_f64();
        let tiers_after = dispatch.tier_counts();
        let slow_polls = sched.stats().slow_polls - slow_before;
        let learned = learning(&sched);
        let learned = (learned.0 - learned_before.0, learned.1 - learned_before.1);
        load.stop.store(true, Ordering::Release);

        let mut hist = new_histogram();
        while let Some(h) = echo.join_next().await {
            match h {
                Ok(h) => hist.add(&h).expect("histograms share their bounds"),
                Err(e) => {
                    tracing::warn!(error = %e, "echo client failed");
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while compute.join_next().await.is_some() {}
        let tier_counts = tiers_after
            .iter()
            .map(|(k, v)| (k.clone(), v - tiers_before.get(k).copied().unwrap_or(0)))
            .collect();
        (hist, seconds, tier_counts, slow_polls, learned)
    });
    let (hist, seconds, tier_counts, slow_polls, (mispredictions, explored)) = measured;
    let _ = stop_server.send(());
    let _ = sched.block_on(server);
    if settings.verbose && policy == Policy::Adaptive {
        for k in sched.placement_stats().keys {
            println!(
                "  {:<7} calls {:>7}  inline {:>7}  threads {:>6}  mean {:>9.1?}  p99 {:>9.1?}  \
                 mispredictions {}  explored {}",
                k.key, k.calls, k.inline, k.threads, k.mean, k.p99, k.mispredictions, k.explored
            );
        }
    }
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(2));

    Ok(Round {
        hist,
        compute_count: load.compute_done.load(Ordering::Relaxed),
        seconds,
        tier_counts,
        slow_polls,
        mispredictions,
        explored,
        errors: load.errors.load(Ordering::Relaxed),
    })
}

async fn connect(
    addr: SocketAddr,
) -> Option<(
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
)> {
    let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    Some((BufReader::new(rd), wr))
}

/// Sends `echo` lines at a steady pace; returns the latency histogram (µs) of the measured ones.
async fn echo_client(
    addr: SocketAddr,
    id: usize,
    every: Duration,
    load: Arc<Load>,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    let Some((mut rd, mut wr)) = connect(addr).await else {
        load.errors.fetch_add(1, Ordering::Relaxed);
        return hist;
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reply = String::new();
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Acquire) {
        ticks.tick().await;
        seq += 1;
        let text = format!("client {id} ping {seq}");
        let t0 = Instant::now();
        reply.clear();
        let ok = tokio::time::timeout(REPLY_TIMEOUT, async {
            wr.write_all(format!("echo {text}\n").as_bytes()).await?;
            rd.read_line(&mut reply).await
        })
        .await;
        let took = t0.elapsed();
        if !matches!(ok, Ok(Ok(n)) if n > 0) || reply.trim_end() != text {
            load.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if load.measuring.load(Ordering::Acquire) {
            hist.saturating_record(took.as_micros() as u64);
        }
    }
    hist
}

/// Sends requests from [`MIX`] back to back, checking each reply.
async fn compute_client(
    addr: SocketAddr,
    id: u64,
    mix: Arc<Vec<(String, String, u32)>>,
    load: Arc<Load>,
) {
    let Some((mut rd, mut wr)) = connect(addr).await else {
        load.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let total: u32 = mix.iter().map(|m| m.2).sum();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut reply = String::new();
    while !load.stop.load(Ordering::Acquire) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut pick = (rng % u64::from(total)) as u32;
        let (req, want, _) = mix
            .iter()
            .find(|m| {
                if pick < m.2 {
                    true
                } else {
                    pick -= m.2;
                    false
                }
            })
            .expect("pick is below the total weight");
        reply.clear();
        let ok = tokio::time::timeout(REPLY_TIMEOUT, async {
            wr.write_all(format!("{req}\n").as_bytes()).await?;
            rd.read_line(&mut reply).await
        })
        .await;
        if !matches!(ok, Ok(Ok(n)) if n > 0) || reply.trim_end() != want {
            load.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if load.measuring.load(Ordering::Acquire) {
            load.compute_done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn print_table(results: &[PolicyResult]) {
    println!();
    println!(
        "{:<9} {:>10} {:>10} {:>11} {:>12} {:>8} {:>8} {:>10} {:>6}",
        "policy",
        "echo p50",
        "echo p99",
        "echo p99.9",
        "compute r/s",
        "inline",
        "threads",
        "slow poll",
        "errors"
    );
    for r in results {
        let tier = |k: &str| r.tier_counts.get(k).copied().unwrap_or(0);
        println!(
            "{:<9} {:>8}µs {:>8}µs {:>9}µs {:>12.0} {:>8} {:>8} {:>10} {:>6}",
            r.policy.name(),
            r.echo_p50_us,
            r.echo_p99_us,
            r.echo_p999_us,
            r.compute_rps,
            tier("inline"),
            tier("threads"),
            r.slow_polls,
            r.errors
        );
    }
    let find = |p: Policy| results.iter().find(|r| r.policy == p);
    if let (Some(i), Some(o), Some(a)) = (
        find(Policy::Inline),
        find(Policy::Offload),
        find(Policy::Adaptive),
    ) {
        let p99 = a.echo_p99_us as f64 / o.echo_p99_us.max(1) as f64;
        let best = i.compute_rps.max(o.compute_rps);
        let rps = a.compute_rps / best.max(f64::MIN_POSITIVE);
        let verdict = |ok: bool| if ok { "holds" } else { "MISSED" };
        println!();
        println!(
            "adaptive placed {} calls inline and {} on threads; {} mispredictions, {} explorations",
            a.tier_counts.get("inline").copied().unwrap_or(0),
            a.tier_counts.get("threads").copied().unwrap_or(0),
            a.mispredictions,
            a.explored
        );
        println!(
            "adaptive echo p99 = {p99:.2} x offload's (floor: <= 1.2, {})",
            verdict(p99 <= 1.2)
        );
        println!(
            "adaptive compute r/s = {rps:.2} x the better of inline and offload (floor: >= 0.95, {})",
            verdict(rps >= 0.95)
        );
    }
    println!();
}

/// The flood phase's expensive request: the most expensive valid one.
pub const FLOOD_REQUEST: &str = "primes 2000000";
/// The flood phase's cheap request.
pub const CHEAP_REQUEST: &str = "primes 300";
/// Connections the flooding client uses.
pub const FLOOD_CONNECTIONS: usize = 8;
/// Rounds of the flood phase at most (each ends when the flood's requests in flight are
/// answered: seconds under `inline`).
const FLOOD_ROUNDS: u32 = 4;
/// Time after the flood starts before its half is measured (the queue fills).
const FLOOD_SETTLE: Duration = Duration::from_millis(200);

/// One policy's figures from the flood phase (a row of its table and of flood.json).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloodResult {
    /// The policy.
    pub policy: Policy,
    /// Cheap-request latency of the other clients without the flood, median, µs.
    pub calm_p50_us: u64,
    /// Same, 99th percentile, µs.
    pub calm_p99_us: u64,
    /// Cheap-request latency of the other clients during the flood, median, µs.
    pub flood_p50_us: u64,
    /// Same, 99th percentile, µs.
    pub flood_p99_us: u64,
    /// Cheap requests answered during the flood's measured halves.
    pub cheap_count: u64,
    /// Cheap requests of the other clients shed (`ERR busy` or `ERR deadline`) in either half.
    pub cheap_shed: u64,
    /// Flood requests answered with their value.
    pub flood_served: u64,
    /// Flood requests shed with `ERR busy, retry`.
    pub flood_busy: u64,
    /// Replies that were wrong, errors, or late.
    pub errors: u64,
}

/// Where the flood phase is (`Phase as u8` in an atomic).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd)]
enum Phase {
    Warm,
    Calm,
    Settle,
    Flood,
    Stop,
}

struct FloodLoad {
    phase: std::sync::atomic::AtomicU8,
    flooding: AtomicBool,
    cheap_shed: AtomicU64,
    flood_served: AtomicU64,
    flood_busy: AtomicU64,
    errors: AtomicU64,
}

impl FloodLoad {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Warm,
            1 => Phase::Calm,
            2 => Phase::Settle,
            3 => Phase::Flood,
            _ => Phase::Stop,
        }
    }

    fn set(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }
}

/// Runs the flood phase for every policy of `settings` (nothing when `settings.flood` is
/// `None`), prints its table and writes flood.json.
pub fn run_flood(settings: &Settings) -> Result<Vec<FloodResult>, Box<dyn std::error::Error>> {
    let Some(half) = settings.flood else {
        return Ok(Vec::new());
    };
    let mut results = Vec::new();
    for &policy in &settings.policies {
        results.push(flood_round(policy, settings, half)?);
    }
    print_flood_table(&results, settings);
    std::fs::create_dir_all(&settings.out)?;
    let json = settings.out.join("flood.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    println!("wrote {}", json.display());
    Ok(results)
}

fn flood_round(
    policy: Policy,
    settings: &Settings,
    half: Duration,
) -> Result<FloodResult, Box<dyn std::error::Error>> {
    let sched = Scheduler::builder()
        .io_threads(settings.io_threads)
        .cpu_workers(settings.cpu_workers)
        .build()?;
    let dispatch = Arc::new(Dispatch::new(sched.clone(), policy));
    let listener = sched.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = sched.spawn(
        "compute/listener",
        compute_server::serve(
            sched.clone(),
            listener,
            dispatch.clone(),
            ComputeConfig::default(),
            Arc::new(ServerStats::default()),
            async {
                let _ = stopped.await;
            },
        ),
    );
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load = Arc::new(FloodLoad {
        phase: std::sync::atomic::AtomicU8::new(Phase::Warm as u8),
        flooding: AtomicBool::new(false),
        cheap_shed: AtomicU64::new(0),
        flood_served: AtomicU64::new(0),
        flood_busy: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let cheap_want: Arc<str> = expected_reply(CHEAP_REQUEST).into();
    let flood_want: Arc<str> = expected_reply(FLOOD_REQUEST).into();
    let (calm, flood) = clients.block_on(async {
        let mut cheap = tokio::task::JoinSet::new();
        for _ in 0..settings.echo_clients {
            cheap.spawn(cheap_client(
                addr,
                settings.echo_interval,
                cheap_want.clone(),
                load.clone(),
            ));
        }
        // The server learns both costs before anything is measured.
        if let Some((mut rd, mut wr)) = connect(addr).await {
            let mut reply = String::new();
            let asked = tokio::time::timeout(REPLY_TIMEOUT, async {
                wr.write_all(format!("{FLOOD_REQUEST}\n").as_bytes())
                    .await?;
                rd.read_line(&mut reply).await
            })
            .await;
            if !matches!(asked, Ok(Ok(n)) if n > 0) || reply.trim_end() != &*flood_want {
                load.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(settings.warmup).await;
        // Rounds of calm and flood in turn, so that a change in the machine's load falls on
        // both halves alike.
        for _ in 0..settings.rounds.clamp(1, FLOOD_ROUNDS) {
            load.set(Phase::Calm);
            tokio::time::sleep(half).await;
            load.set(Phase::Settle);
            load.flooding.store(true, Ordering::Release);
            let mut flooders = tokio::task::JoinSet::new();
            for _ in 0..FLOOD_CONNECTIONS {
                flooders.spawn(flood_client(addr, flood_want.clone(), load.clone()));
            }
            tokio::time::sleep(FLOOD_SETTLE).await;
            load.set(Phase::Flood);
            tokio::time::sleep(half).await;
            load.set(Phase::Settle);
            // The flood's requests in flight are answered before the next calm half.
            load.flooding.store(false, Ordering::Release);
            while flooders.join_next().await.is_some() {}
        }
        load.set(Phase::Stop);
        let (mut calm, mut flood) = (new_histogram(), new_histogram());
        while let Some(h) = cheap.join_next().await {
            match h {
                Ok((c, f)) => {
                    calm.add(&c).expect("histograms share their bounds");
                    flood.add(&f).expect("histograms share their bounds");
                }
                Err(_) => {
                    load.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        (calm, flood)
    });
    let _ = stop_server.send(());
    let _ = sched.block_on(server);
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(2));
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    Ok(FloodResult {
        policy,
        calm_p50_us: q(&calm, 0.5),
        calm_p99_us: q(&calm, 0.99),
        flood_p50_us: q(&flood, 0.5),
        flood_p99_us: q(&flood, 0.99),
        cheap_count: flood.len(),
        cheap_shed: load.cheap_shed.load(Ordering::Relaxed),
        flood_served: load.flood_served.load(Ordering::Relaxed),
        flood_busy: load.flood_busy.load(Ordering::Relaxed),
        errors: load.errors.load(Ordering::Relaxed),
    })
}

/// Sends the cheap request at a steady pace; returns its latency (µs) without and with the
/// flood.
async fn cheap_client(
    addr: SocketAddr,
    every: Duration,
    want: Arc<str>,
    load: Arc<FloodLoad>,
) -> (Histogram<u64>, Histogram<u64>) {
    let (mut calm, mut flood) = (new_histogram(), new_histogram());
    let Some((mut rd, mut wr)) = connect(addr).await else {
        load.errors.fetch_add(1, Ordering::Relaxed);
        return (calm, flood);
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reply = String::new();
    while load.phase() != Phase::Stop {
        ticks.tick().await;
        let t0 = Instant::now();
        let sent_in = load.phase();
        reply.clear();
        let ok = tokio::time::timeout(REPLY_TIMEOUT, async {
            wr.write_all(format!("{CHEAP_REQUEST}\n").as_bytes())
                .await?;
            rd.read_line(&mut reply).await
        })
        .await;
        let took = t0.elapsed().as_micros() as u64;
        // Counted in the half it was sent in, however late its answer.
        let phase = sent_in;
        if !matches!(ok, Ok(Ok(n)) if n > 0) {
            load.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let reply = reply.trim_end();
        if reply == &*want {
            match phase {
                Phase::Calm => calm.saturating_record(took),
                Phase::Flood => flood.saturating_record(took),
                _ => {}
            }
        } else if reply.starts_with("ERR busy") || reply.starts_with("ERR deadline") {
            if matches!(phase, Phase::Calm | Phase::Flood) {
                load.cheap_shed.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            load.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    (calm, flood)
}

/// One connection of the flooding client: the expensive request back to back, even after
/// `ERR busy, retry`.
async fn flood_client(addr: SocketAddr, want: Arc<str>, load: Arc<FloodLoad>) {
    let Some((mut rd, mut wr)) = connect(addr).await else {
        load.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut reply = String::new();
    while load.flooding.load(Ordering::Acquire) {
        reply.clear();
        let ok = tokio::time::timeout(REPLY_TIMEOUT, async {
            wr.write_all(format!("{FLOOD_REQUEST}\n").as_bytes())
                .await?;
            rd.read_line(&mut reply).await
        })
        .await;
        if !matches!(ok, Ok(Ok(n)) if n > 0) {
            load.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let reply = reply.trim_end();
        if reply == &*want {
            load.flood_served.fetch_add(1, Ordering::Relaxed);
        } else if reply.starts_with(compute_server::BUSY) || reply.starts_with("ERR deadline") {
            // Asks again at once: the server paces it.
            load.flood_busy.fetch_add(1, Ordering::Relaxed);
        } else {
            load.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

fn print_flood_table(results: &[FloodResult], settings: &Settings) {
    println!();
    println!(
        "flood: {} clients send {CHEAP_REQUEST:?} every {} ms; then one client floods \
         {FLOOD_REQUEST:?} over {FLOOD_CONNECTIONS} connections",
        settings.echo_clients,
        settings.echo_interval.as_millis()
    );
    println!(
        "{:<9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>9} {:>6}",
        "policy",
        "calm p50",
        "calm p99",
        "flood p50",
        "flood p99",
        "shed",
        "flood ok",
        "flood busy",
        "errors"
    );
    for r in results {
        println!(
            "{:<9} {:>8}µs {:>8}µs {:>8}µs {:>8}µs {:>7} {:>9} {:>10} {:>6}",
            r.policy.name(),
            r.calm_p50_us,
            r.calm_p99_us,
            r.flood_p50_us,
            r.flood_p99_us,
            r.cheap_shed,
            r.flood_served,
            r.flood_busy,
            r.errors
        );
    }
    if let Some(a) = results.iter().find(|r| r.policy == Policy::Adaptive) {
        let ratio = a.flood_p99_us as f64 / a.calm_p99_us.max(1) as f64;
        println!(
            "adaptive cheap p99 under the flood = {ratio:.2} x without (floor: <= 2, {})",
            if ratio <= 2.0 { "holds" } else { "MISSED" }
        );
    }
    println!();
}

/// A grouped bar chart of echo latency per policy (log scale), as SVG text.
pub fn latency_svg(results: &[PolicyResult]) -> String {
    const W: f64 = 760.0;
    const LEFT: f64 = 90.0;
    const RIGHT: f64 = 150.0;
    const TOP: f64 = 50.0;
    const ROW: f64 = 80.0;
    const BAR: f64 = 16.0;
    type Series = (&'static str, &'static str, fn(&PolicyResult) -> u64);
    let series: [Series; 3] = [
        ("p50", "#4c78a8", |r| r.echo_p50_us),
        ("p99", "#f58518", |r| r.echo_p99_us),
        ("p99.9", "#e45756", |r| r.echo_p999_us),
    ];
    let max = results
        .iter()
        .flat_map(|r| series.iter().map(move |s| s.2(r)))
        .max()
        .unwrap_or(1)
        .max(10);
    let decades = (max as f64).log10().ceil().max(1.0);
    let plot_w = W - LEFT - RIGHT;
    let x = |us: u64| LEFT + plot_w * ((us.max(1) as f64).log10() / decades).clamp(0.0, 1.0);
    let h = TOP + ROW * results.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">Echo latency under mixed compute load (µs, log scale)</text>"#
    );
    for d in 0..=decades as u32 {
        let us = 10u64.pow(d);
        let gx = x(us);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{us}</text>"##,
            h - 30.0,
            h - 16.0
        );
    }
    for (i, r) in results.iter().enumerate() {
        let y0 = TOP + ROW * i as f64 + 8.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text>"#,
            LEFT - 8.0,
            y0 + 1.5 * BAR + 4.0,
            r.policy.name()
        );
        for (j, (name, color, get)) in series.iter().enumerate() {
            let v = get(r);
            let y = y0 + BAR * j as f64;
            let bw = (x(v) - LEFT).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT}" y="{y:.1}" width="{bw:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}">{name} {v} µs</text>"#,
                BAR - 2.0,
                LEFT + bw + 4.0,
                y + BAR - 5.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}" fill="#333">{:.0} compute req/s</text>"##,
            y0 + 3.0 * BAR + 11.0,
            r.compute_rps
        );
    }
    s.push_str("</svg>\n");
    s
}

#[allow(dead_code)]
#[derive(clap::Parser, Debug)]
#[command(
    about = "Echo latency and compute throughput of the compute server, per placement policy"
)]
struct Args {
    /// Small, fast settings (a few seconds in all).
    #[arg(long)]
    quick: bool,
    /// Policies to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    policies: Option<Vec<Policy>>,
    /// Measured seconds per policy and round.
    #[arg(long)]
    secs: Option<f64>,
    /// Rounds (each runs every policy once, interleaved).
    #[arg(long)]
    rounds: Option<u32>,
    /// Echo clients.
    #[arg(long)]
    echo_clients: Option<usize>,
    /// Compute clients.
    #[arg(long)]
    compute_clients: Option<usize>,
    /// Output folder (default: target/showcase).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Print what placement learned, per key.
    #[arg(long)]
    verbose: bool,
    /// Skip the flood phase.
    #[arg(long)]
    no_flood: bool,
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    // The watchdog's slow-poll warnings are counted in the table instead.
    common::init_tracing("warn,offload::scheduler=error");
    let args = Args::parse();
    let mut settings = if args.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(p) = args.policies {
        settings.policies = p;
    }
    if let Some(secs) = args.secs {
        settings.measure = Duration::try_from_secs_f64(secs)?;
    }
    if let Some(n) = args.echo_clients {
        settings.echo_clients = n;
    }
    if let Some(n) = args.compute_clients {
        settings.compute_clients = n;
    }
    if let Some(n) = args.rounds {
        settings.rounds = n.max(1);
    }
    if let Some(out) = args.out {
        settings.out = out;
    }
    settings.progress = !args.no_progress;
    settings.verbose = args.verbose;
    if args.no_flood {
        settings.flood = None;
    }
    println!(
        "showcase: compute server on loopback, {} echo clients every {} ms, {} compute clients; \
         {} round(s) of {:.2} s per policy ({:.2} s warm-up, {:.2} s measured)",
        settings.echo_clients,
        settings.echo_interval.as_millis(),
        settings.compute_clients,
        settings.rounds,
        (settings.warmup + settings.measure).as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!(
        "compute mix: {}",
        MIX.map(|(r, w)| format!("{w}% {r}")).join(", ")
    );
    run(&settings)?;
    run_flood(&settings)?;
    Ok(())
}
