//! Listing 4 of the source article: refactoring a legacy sequential function so that it starts
//! here and moves the rest of its work to another core only when what it computed so far says
//! the rest will be long.
//!
//! The legacy function, `analyse`, tokenizes a text (cheap, and tells how big the job is), then
//! counts word pairs within a window (the long part for a long text). The article turned such a
//! function into a generator that yields "backgrounded" and re-ran its first part on the other
//! CPU. With [`CallSite::staged`] the first part runs inline, returns either the finished
//! result ([`Stage::Done`]) or the rest of the work as a closure that owns what the first part
//! computed ([`Stage::Offload`]) — nothing is computed twice, and the call site's model learns
//! the whole duration.
//!
//! While each call runs, a ticker task on the same runtime thread counts 1 ms ticks: the legacy
//! function, called from async code, stalls the runtime for the whole call (no ticks); the
//! staged one stalls it only for the first part.
//!
//! ```text
//! cargo run --release --example staged
//! cargo run --example staged -- --max-words 20000   # small and quick
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use offload::{CallSite, Scheduler, Stage};

mod common;

/// Words on each side counted as a pair.
pub const WINDOW: usize = 8;

/// Pair updates above which the rest of the work is long enough to move (the probe): about a
/// millisecond of hashing.
pub const LONG_WORK: usize = 50_000;

/// What `analyse` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Words in the text.
    pub words: usize,
    /// Distinct words.
    pub distinct_words: usize,
    /// Distinct pairs of words within the window.
    pub distinct_pairs: usize,
    /// The most frequent pair and its count.
    pub top_pair: Option<(String, String, u32)>,
}

/// The first part: words as numbers, and the vocabulary.
pub fn tokenize(text: &str) -> (Vec<u32>, Vec<String>) {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut vocab = Vec::new();
    let words = text
        .split_whitespace()
        .map(|w| {
            *ids.entry(w).or_insert_with(|| {
                vocab.push(w.to_string());
                (vocab.len() - 1) as u32
            })
        })
        .collect();
    (words, vocab)
}

/// The rest: pairs within the window.
pub fn count_pairs(words: &[u32], vocab: &[String]) -> Report {
    let mut pairs: HashMap<(u32, u32), u32> = HashMap::new();
    for (i, &a) in words.iter().enumerate() {
        for &b in words.iter().skip(i + 1).take(WINDOW) {
            *pairs.entry((a.min(b), a.max(b))).or_insert(0) += 1;
        }
    }
    let top_pair = pairs
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
        .map(|(&(a, b), &n)| (vocab[a as usize].clone(), vocab[b as usize].clone(), n));
    Report {
        words: words.len(),
        distinct_words: vocab.len(),
        distinct_pairs: pairs.len(),
        top_pair,
    }
}

/// The legacy function: both parts, in sequence, wherever it is called.
pub fn analyse(text: &str) -> Report {
    let (words, vocab) = tokenize(text);
    count_pairs(&words, &vocab)
}

/// The refactoring: the first part inline; the rest inline too when it is short, else on the
/// pool, with the words the first part made.
pub async fn analyse_staged(site: &CallSite, text: &str) -> Result<Report, offload::Error> {
    site.staged(|| {
        let (words, vocab) = tokenize(text);
        if words.len() * WINDOW < LONG_WORK {
            Stage::Done(count_pairs(&words, &vocab))
        } else {
            Stage::Offload(move || count_pairs(&words, &vocab))
        }
    })
    .await
}

/// A text of `n` words from a skewed vocabulary.
pub fn make_text(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let mut s = String::with_capacity(n * 6);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Skewed: small ids are frequent.
        let id = (x % 4096) * (x >> 52) / 4096;
        s.push_str(&format!("w{id} "));
    }
    s
}

#[derive(clap::Parser, Debug)]
#[command(about = "Listing 4: a legacy function that decides mid-way to move its rest off-core")]
struct Args {
    /// The largest text, in words (the sizes go up by 10x from 100).
    #[arg(long, default_value_t = 100_000)]
    max_words: usize,
}

#[derive(Debug, Default)]
struct Measured {
    took: Duration,
    ticks: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    common::init_tracing("warn,offload=error");
    let args = Args::parse();
    let sched = Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    let site = sched.site("analyse");

    // The ticker: on the one runtime thread, like every other task of a service.
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        sched.spawn("ticker", async move {
            let mut every = tokio::time::interval(Duration::from_millis(1));
            // After a stall, no burst of catch-up ticks: a tick counts only when it was served.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    println!(
        "{:>9} | {:>10} {:>6} | {:>10} {:>6} {:>8} | result",
        "words", "legacy ms", "ticks", "staged ms", "ticks", "ran on"
    );
    let mut sizes = vec![];
    let mut n = 100;
    while n <= args.max_words.max(100) {
        sizes.push(n);
        n *= 10;
    }
    for (i, &n) in sizes.iter().enumerate() {
        let text = Arc::new(make_text(n, 0x51_7cc1_b727_220a + i as u64));

        // Both calls run in a task on the runtime thread, as a request handler would.
        let measure = |fut: std::pin::Pin<
            Box<dyn Future<Output = Result<Report, offload::Error>> + Send>,
        >| {
            let ticks = ticks.clone();
            let task = sched.spawn("call", async move {
                let (t0, k0) = (Instant::now(), ticks.load(Ordering::Relaxed));
                let r = fut.await;
                let m = Measured {
                    took: t0.elapsed(),
                    ticks: ticks.load(Ordering::Relaxed) - k0,
                };
                (r, m)
            });
            sched.block_on(task)
        };

        let t = text.clone();
        let (legacy, lm) = measure(Box::pin(async move { Ok(analyse(&t)) }))?;
        let before = site.stats();
        let (t, s) = (text.clone(), site.clone());
        let (staged, sm) = measure(Box::pin(async move { analyse_staged(&s, &t).await }))?;
        let after = site.stats();
        let ran_on = if after.threads > before.threads {
            "threads"
        } else {
            "inline"
        };
        let (legacy, staged) = (legacy?, staged?);
        if legacy != staged {
            return Err(format!("the two versions disagree on {n} words").into());
        }
        let top = staged
            .top_pair
            .map(|(a, b, c)| format!("{a}+{b} x{c}"))
            .unwrap_or_default();
        println!(
            "{n:>9} | {:>10.2} {:>6} | {:>10.2} {:>6} {ran_on:>8} | {} pairs, top {top}",
            lm.took.as_secs_f64() * 1e3,
            lm.ticks,
            sm.took.as_secs_f64() * 1e3,
            sm.ticks,
            staged.distinct_pairs
        );
    }
    let s = site.stats();
    println!(
        "site \"analyse\": {} calls, {} inline (first part finished them), {} moved to threads",
        s.calls, s.inline, s.threads
    );
    println!("ticks: 1 ms timer ticks the runtime thread served during the call (0 = stalled)");
    ticker.abort();
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(2));
    Ok(())
}
