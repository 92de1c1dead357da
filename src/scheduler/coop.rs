//! Cooperative yielding for long async loops.
//!
//! A loop that does a little CPU work per item between rare awaits can hold its runtime thread
//! for a long time. [`Cooperate`] yields to the runtime once a time budget has passed since the
//! last yield, so other tasks on the thread get their turn; [`yield_now`] yields once.

use std::time::{Duration, Instant};

/// Default time between yields: 1 ms keeps the worst added latency for the other tasks on a
/// thread at about a millisecond while costing one clock read per tick.
pub(crate) const DEFAULT_YIELD_EVERY: Duration = Duration::from_millis(1);

/// Yields once to the runtime, so other tasks can run.
pub async fn yield_now() {
    tokio::task::yield_now().await;
}

/// Yields to the runtime whenever a time budget has passed; call [`tick`](Self::tick) once per
/// iteration of a long loop.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut coop = offload::Cooperate::new(std::time::Duration::from_micros(200));
/// let mut sum = 0u64;
/// for i in 0..100_000u64 {
///     sum += i;
///     coop.tick().await;
/// }
/// assert_eq!(sum, 4_999_950_000);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Cooperate {
    every: Duration,
    last: Instant,
    yields: u64,
}

impl Default for Cooperate {
    fn default() -> Self {
        Cooperate::new(DEFAULT_YIELD_EVERY)
    }
}

impl Cooperate {
    /// Yields at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Cooperate {
            every,
            last: Instant::now(),
            yields: 0,
        }
    }

    /// Yields if the budget has passed since the last yield; otherwise returns at once.
    pub async fn tick(&mut self) {
        if self.last.elapsed() >= self.every {
            tokio::task::yield_now().await;
            self.yields += 1;
            self.last = Instant::now();
        }
    }

    /// How many times it yielded.
    pub fn yields(&self) -> u64 {
        self.yields
    }
}
