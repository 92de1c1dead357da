//! A parameter sweep with `map` and a progress bar (the textbook's `pool.map` over a range).
//!
//! For each growth rate `r` of the logistic map `x → r·x·(1−x)`, it estimates the Lyapunov
//! exponent λ(r): negative where the map settles into a cycle, positive where it is chaotic.
//! [`Executor::map`] runs the points on the pool with a bounded window in flight and yields the
//! results in input order, so the bar advances as they come and the output needs no sorting.
//! Then it draws λ along `r` and names the first `r` where chaos sets in (about 3.5699).
//!
//! ```text
//! cargo run --release --example sweep
//! cargo run --example sweep -- --points 60 --iters 2000   # small and quick
//! ```

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use offload::{Executor, ShutdownMode};

mod common;

/// The Lyapunov exponent of the logistic map at `r`, over `iters` steps after a burn-in.
pub fn lyapunov(r: f64, iters: u32) -> f64 {
    let mut x = 0.5;
    for _ in 0..iters / 4 {
        x = r * x * (1.0 - x);
    }
    let mut sum = 0.0;
    for _ in 0..iters {
        x = r * x * (1.0 - x);
        sum += (r * (1.0 - 2.0 * x)).abs().max(1e-300).ln();
    }
    sum / f64::from(iters)
}

#[derive(clap::Parser, Debug)]
#[command(about = "A parameter sweep with map and a progress bar")]
struct Args {
    /// Points of r between --from and --to.
    #[arg(long, default_value_t = 2_000)]
    points: usize,
    /// Iterations per point.
    #[arg(long, default_value_t = 200_000)]
    iters: u32,
    /// First r.
    #[arg(long, default_value_t = 2.8)]
    from: f64,
    /// Last r.
    #[arg(long, default_value_t = 4.0)]
    to: f64,
    /// Worker threads (default: cores - 1, at least 1).
    #[arg(long)]
    workers: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    common::init_tracing("warn");
    let args = Args::parse();
    if args.points < 2 || args.to <= args.from {
        return Err("want at least 2 points and --to above --from".into());
    }
    let workers = args
        .workers
        .unwrap_or_else(offload::tier::default_workers)
        .max(1);
    let pool = Executor::threads(workers)?;
    let (from, step) = (args.from, (args.to - args.from) / (args.points - 1) as f64);
    let rs: Vec<f64> = (0..args.points).map(|i| from + step * i as f64).collect();
    println!(
        "sweeping r over [{}, {}] in {} points, {} iterations each, {workers} workers",
        args.from, args.to, args.points, args.iters
    );

    let bar = ProgressBar::new(args.points as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} points  {elapsed} ({eta} left)")
    {
        bar.set_style(style);
    }
    let iters = args.iters;
    let t0 = std::time::Instant::now();
    let mut results = pool.map(rs.clone(), move |r| lyapunov(r, iters));
    let mut lambdas = Vec::with_capacity(args.points);
    while let Some(l) = results.next().await {
        lambdas.push(l?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{} points in {:.2} s",
        args.points,
        t0.elapsed().as_secs_f64()
    );

    // A strip: one column per bin of r; '+' where any point of the bin is chaotic.
    let cols = 64.min(args.points);
    let strip: String = (0..cols)
        .map(|c| {
            let lo = c * args.points / cols;
            let hi = ((c + 1) * args.points / cols).max(lo + 1);
            if lambdas[lo..hi].iter().any(|&l| l > 0.0) {
                '+'
            } else {
                '-'
            }
        })
        .collect();
    println!("r = {:<5} {strip} r = {}", args.from, args.to);
    println!("      ('-' settles into a cycle, '+' chaotic)");
    match rs.iter().zip(&lambdas).find(|(_, l)| **l > 0.0) {
        Some((r, l)) => {
            println!("chaos first at r = {r:.4} (lambda = {l:.4}); the theory says 3.5699")
        }
        None => println!("no chaos in this range"),
    }
    let (r_min, l_min) = rs
        .iter()
        .zip(&lambdas)
        .min_by(|a, b| a.1.total_cmp(b.1))
        .expect("at least two points");
    println!("most stable: r = {r_min:.4} (lambda = {l_min:.3}, a superstable cycle)");
    pool.shutdown(ShutdownMode::Drain).await;
    Ok(())
}
