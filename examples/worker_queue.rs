//! Workers and queues, done so that the four lessons of the source notes hold:
//!
//! 1. **Bounded queues.** Both queues have a capacity (`--queue`): the producer waits when the
//!    workers fall behind, so memory stays flat however long the input. (On Linux, Python's
//!    default queue was unbounded; it ate the RAM and the OS killed the workers.) The run
//!    prints the deepest the job queue ever got.
//! 2. **Read-only data shared before the workers start.** A table of primes is built once and
//!    handed to every worker as an `Arc` — no copy, no lock.
//! 3. **Child errors keep their trace.** A job that fails sends back an error naming the worker,
//!    the input and the cause, with the backtrace captured where it failed (the notes'
//!    `traceback` wrapper).
//! 4. **Each worker's exit status is checked.** Every worker's handle is awaited: a worker that
//!    panicked is reported with its message and the tier's worker id, not silently lost.
//!
//! The work: factor numbers by trial division with the shared table. By default the input has
//! one number beyond the table (an error with its trace) and one poison pill that makes a worker
//! panic (an exit status to report); `--clean` leaves both out.
//!
//! ```text
//! cargo run --release --example worker_queue
//! cargo run --example worker_queue -- --jobs 200   # small and quick
//! ```

use std::backtrace::Backtrace;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use offload::{Executor, ShutdownMode};

mod common;

/// The poison pill: a worker that takes it panics.
pub const POISON: u64 = u64::MAX;

/// A job's failure, with where it happened.
#[derive(Debug)]
pub struct JobError {
    /// The worker that ran the job.
    pub worker: usize,
    /// The job's input.
    pub input: u64,
    /// What went wrong.
    pub cause: String,
    /// The stack where it went wrong.
    pub trace: Backtrace,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} failed on {}: {}",
            self.worker, self.input, self.cause
        )
    }
}

impl std::error::Error for JobError {}

/// The primes up to `limit` (sieve of Eratosthenes).
pub fn primes_up_to(limit: u64) -> Vec<u64> {
    let n = usize::try_from(limit).unwrap_or(usize::MAX - 1);
    let mut composite = vec![false; n + 1];
    let mut out = Vec::new();
    for i in 2..=n {
        if !composite[i] {
            out.push(i as u64);
            let mut j = i * i;
            while j <= n {
                composite[j] = true;
                j += i;
            }
        }
    }
    out
}

/// Factors `n` with the table; fails when `n` has a factor beyond the table's square.
pub fn factor(n: u64, table: &[u64]) -> Result<Vec<u64>, String> {
    if n < 2 {
        return Ok(vec![]);
    }
    let mut rest = n;
    let mut out = Vec::new();
    for &p in table {
        if p.saturating_mul(p) > rest {
            break;
        }
        while rest % p == 0 {
            out.push(p);
            rest /= p;
        }
    }
    let largest = *table.last().unwrap_or(&1);
    if rest > 1 && largest.saturating_mul(largest) < rest {
        return Err(format!(
            "{rest} is beyond the table: primes up to {largest} factor numbers up to {}",
            largest.saturating_mul(largest)
        ));
    }
    if rest > 1 {
        out.push(rest);
    }
    Ok(out)
}

/// One job's outcome, as a worker sends it back.
type Outcome = Result<(u64, Vec<u64>), JobError>;

/// A worker: takes jobs until the queue is closed; returns how many it did.
fn worker(
    id: usize,
    table: Arc<Vec<u64>>,
    jobs: async_channel::Receiver<u64>,
    results: async_channel::Sender<Outcome>,
) -> usize {
    let mut done = 0;
    while let Ok(n) = jobs.recv_blocking() {
        if n == POISON {
            panic!("worker {id} swallowed the poison pill");
        }
        // The wrapper of the notes: the failure goes back as a value, with its context and trace.
        let outcome = factor(n, &table).map(|f| (n, f)).map_err(|cause| JobError {
            worker: id,
            input: n,
            cause,
            trace: Backtrace::force_capture(),
        });
        done += 1;
        if results.send_blocking(outcome).is_err() {
            break;
        }
    }
    done
}

/// The frames of a backtrace that belong to this program (function, and file:line when the
/// binary has debug info), at most `max` of them.
fn own_frames(trace: &Backtrace, max: usize) -> Vec<String> {
    let text = trace.to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some((_, func)) = l.split_once(": ") else {
            continue;
        };
        if !func.starts_with("worker_queue::") {
            continue;
        }
        match lines.get(i + 1).and_then(|n| n.strip_prefix("at ")) {
            Some(at) => out.push(format!("{func} ({at})")),
            None => out.push(func.to_string()),
        }
        if out.len() == max {
            break;
        }
    }
    out
}

#[derive(clap::Parser, Debug)]
#[command(about = "Workers with bounded queues, shared read-only data, checked exits")]
struct Args {
    /// Numbers to factor.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Capacity of each queue.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Leave out the deliberate failures (a number beyond the table, a poison pill).
    #[arg(long)]
    clean: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    common::init_tracing("warn");
    let args = Args::parse();
    // One line per panic: the worker's exit status below carries the message to the caller.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        eprintln!("panic in thread {} at {at}", thread.name().unwrap_or("?"));
    }));
    let workers = args.workers.max(1);
    let queue = args.queue.max(1);

    // Lesson 2: the shared table exists before any worker starts.
    let table = Arc::new(primes_up_to(1 << 20));
    println!(
        "{} primes shared read-only with {workers} workers; queues of {queue}",
        table.len()
    );

    // Lesson 1: bounded queues both ways.
    let (job_tx, job_rx) = async_channel::bounded::<u64>(queue);
    let (res_tx, res_rx) = async_channel::bounded::<Outcome>(queue);
    // One thread per worker, and each worker's own task: the pool's threads are the workers.
    let pool = Executor::threads(workers)?;
    let mut handles = Vec::new();
    for id in 0..workers {
        let (t, j, r) = (table.clone(), job_rx.clone(), res_tx.clone());
        handles.push(
            pool.submit_named(format!("worker-{id}"), move || worker(id, t, j, r))
                .await?,
        );
    }
    drop((job_rx, res_tx));

    let deepest = Arc::new(AtomicUsize::new(0));
    let producer = {
        let deepest = deepest.clone();
        let (jobs, clean) = (args.jobs, args.clean);
        tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15_u64;
            for i in 0..jobs {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = match i {
                    _ if clean => x % 1_000_000_000_000,
                    // Two primes above the table: their product cannot be factored with it.
                    7 => 1_048_583 * 1_048_589,
                    // Half way, the poison pill.
                    i if i == jobs / 2 => POISON,
                    _ => x % 1_000_000_000_000,
                };
                if job_tx.send(n).await.is_err() {
                    break;
                }
                deepest.fetch_max(job_tx.len(), Ordering::Relaxed);
            }
            // Dropping the sender closes the queue: the workers finish and return.
        })
    };

    let (mut ok, mut failed, mut factors) = (0u64, 0u64, 0usize);
    while let Ok(outcome) = res_rx.recv().await {
        match outcome {
            Ok((_, f)) => {
                ok += 1;
                factors += f.len();
            }
            Err(e) => {
                failed += 1;
                // Lesson 3: the child's error, with where it happened.
                println!("job error: {e}");
                for frame in own_frames(&e.trace, 4) {
                    println!("    at {frame}");
                }
            }
        }
    }
    producer.await?;

    // Lesson 4: every worker's exit status.
    let mut dead = 0;
    for (id, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(n) => println!("worker {id}: exited normally after {n} jobs"),
            Err(e) => {
                dead += 1;
                println!("worker {id}: FAILED: {e}");
            }
        }
    }
    pool.shutdown(ShutdownMode::Drain).await;
    println!(
        "{ok} numbers factored ({factors} prime factors), {failed} job errors, {dead} workers \
         lost; the job queue never held more than {} of {queue}",
        deepest.load(Ordering::Relaxed)
    );
    if args.clean && (failed > 0 || dead > 0) {
        return Err("failures in a clean run".into());
    }
    Ok(())
}
