//! Placement: adaptive backgrounding (DESIGN.md §4), decided per call, before it runs.
//!
//! A [`CallSite`] names a place in the program that calls CPU work ("parse", "resize"). Each call
//! through it runs **inline** when the model says it is short and safe, and moves **off-core**
//! otherwise, to the tier with the lowest expected completion. Predictions come from, in order:
//! a user probe ([`Call::probe`], [`Call::expect`]), else the model: per key and per size bucket
//! (a quarter octave of the size hint, [`CallSite::sized`]), the smoothed durations of past
//! calls wherever they ran, and a **gate** per bucket that decides from the risk of overrunning
//! the budget: a bucket goes inline after a streak of calls without a spike, a streak that
//! doubles with each surprise, so a key whose cost cannot be predicted (bimodal, heavy-tailed)
//! settles off-core instead of coming back inline every few calls, and a bucket whose cost sits
//! at the budget does not flip (hysteresis). Unknown keys start off-core; each tier's learned
//! overhead is its hand-off, queueing is read live. The formulas are in `README.md` here.
//!
//! | file | concern |
//! | --- | --- |
//! | `config.rs` | the tuning constants and [`PlacementConfig`] |
//! | `model.rs` | the duration estimate per bucket, its arithmetic, the gate (risk, back-off, hysteresis) |
//! | `policy.rs` | which tier, exploration, each tier's learned hand-off |
//! | `site.rs` | [`CallSite`], [`Call`], [`Stage`]: the calls themselves and their timing |
//! | `stats.rs` | [`PlacementStats`]: per-key counts, mean and p99, tier overheads |
//! | `README.md` | the formulas, the constants, and why |
//!
//! ```
//! use offload::{Scheduler, Stage};
//!
//! let sched = Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
//! let parse = sched.site("parse");
//! sched.block_on(async {
//!     // Sized calls: the model learns duration per log2 of the size.
//!     let doc = vec![7u8; 1 << 10];
//!     let n = parse.sized(doc.len() as u64).call(move || doc.iter().filter(|&&b| b == 7).count()).await?;
//!     assert_eq!(n, 1024);
//!     // A staged call decides halfway, with what its first part computed.
//!     let v = parse
//!         .staged(|| {
//!             let todo = 10u64;
//!             if todo < 100 { Stage::Done(todo) } else { Stage::Offload(move || todo * 2) }
//!         })
//!         .await?;
//!     assert_eq!(v, 10);
//!     Ok::<_, offload::Error>(())
//! })?;
//! let stats = sched.placement_stats();
//! assert_eq!(stats.key("parse").map(|k| k.calls), Some(2));
//! # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Killable work
//!
//! [`CallSite::killable`] marks work that must be isolated and stoppable: it never runs inline
//! nor on the thread tier. It runs on a tier whose
//! [`TierKind::is_killable`](crate::TierKind::is_killable) is true — worker processes
//! ([`ProcessPool`](crate::ProcessPool)) or the MPI cluster — attached with
//! [`SchedulerBuilder::placement_tier`](crate::SchedulerBuilder::placement_tier) or
//! [`Placement::new`]. Those tiers run registered functions, so killable work is a
//! [`RemoteFn`](crate::RemoteFn) called with [`Call::remote`]; a crash fails only that call.
//! With no eligible tier, a call fails with
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) naming the fix.
//!
//! ```no_run
//! use offload::{ProcessPool, RemoteFn, Scheduler};
//!
//! static RENDER: RemoteFn<String, usize> = RemoteFn::new("render", |doc| doc.len());
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     offload::init(&[&RENDER]); // first: worker processes are this binary
//!     let pool = ProcessPool::builder().workers(2).build()?;
//!     let sched = Scheduler::builder().placement_tier(pool.clone()).build()?;
//!     let render = sched.site("render").killable();
//!     let n = sched.block_on(render.remote(&RENDER, "untrusted input".to_string()))?;
//!     assert_eq!(n, 15);
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::BuildError;
use crate::scheduler::Scheduler;

mod config;
#[cfg(test)]
mod killable_tests;
mod model;
mod policy;
mod site;
mod stats;
mod usage;

pub use config::PlacementConfig;
pub use policy::PlacementTier;
pub use site::{Call, CallSite, Stage};
pub use stats::{BucketStats, KeyStats, PlacementStats, TierCost};

use model::{BUCKETS, Bucket, KeyPrior, Params, UNKNOWN, UNSIZED, bucket_floor};
use policy::TierSlot;
use stats::{KeyCounters, tier_index};

/// Everything placement learned about one call-site key.
#[derive(Debug)]
pub(crate) struct SiteState {
    pub(crate) key: Arc<str>,
    pub(crate) buckets: Box<[Bucket]>,
    pub(crate) counters: KeyCounters,
}

impl SiteState {
    fn new(key: Arc<str>) -> Self {
        SiteState {
            key,
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            counters: KeyCounters::default(),
        }
    }

    /// The gate value of bucket `idx` (≤ budget: inline). A sized bucket that is off-core only
    /// for want of evidence — never timed, or no strikes and an estimate that says short but
    /// its clean streak not yet long enough — borrows from the nearest larger bucket of the key
    /// that was timed, when that one is inline or, with no strikes, says short: a larger input
    /// of the same key being cheap says this one is too. Otherwise its own value ([`UNKNOWN`]
    /// when never timed).
    pub(crate) fn predict(&self, idx: usize, p: &Params) -> u64 {
        let b = &self.buckets[idx];
        let own = b.prediction();
        if own <= p.budget_ns || idx >= UNSIZED {
            return own;
        }
        if own != UNKNOWN && (b.gate().strikes > 0 || !b.view().short(p)) {
            return own;
        }
        for larger in &self.buckets[idx + 1..UNSIZED] {
            let q = larger.prediction();
            if q != UNKNOWN {
                return larger.lends(p).unwrap_or(own);
            }
        }
        own
    }

    /// What the rest of the key tells bucket `idx` (see [`KeyPrior`]). Its spread is looked up
    /// only for a bucket's first sample (the nearest sized bucket with a few samples, at most
    /// two octaves away); the rest is two loads.
    pub(crate) fn prior(&self, idx: usize, p: &Params) -> KeyPrior {
        let c = &self.counters;
        let strikes = c.strikes.load(Relaxed);
        let trusted =
            strikes == 0 && c.quiet.load(Relaxed) >= p.clean_streak.saturating_mul(p.strike_decay);
        let dev = if idx < UNSIZED && self.buckets[idx].estimate().samples == 0 {
            (1..=8usize)
                .flat_map(|d| [idx.checked_sub(d), Some(idx + d).filter(|&j| j < UNSIZED)])
                .flatten()
                .map(|j| self.buckets[j].estimate())
                .find(|e| e.samples >= p.clean_streak)
                .map(|e| e.dev)
        } else {
            None
        };
        KeyPrior {
            strikes,
            dev,
            trusted,
        }
    }

    fn snapshot(&self) -> KeyStats {
        let c = &self.counters;
        let buckets: Vec<BucketStats> = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let out = b.flipped_out.load(Relaxed);
                let inline = b.inline.load(Relaxed).saturating_sub(out);
                let off_core = b.off.load(Relaxed) + out;
                (inline + off_core > 0).then(|| BucketStats {
                    size_from: (i < UNSIZED).then(|| bucket_floor(i)),
                    inline,
                    off_core,
                    prediction: Some(b.upper())
                        .filter(|&p| p != UNKNOWN)
                        .map(Duration::from_nanos),
                    typical: Some(b.typical())
                        .filter(|&p| p != UNKNOWN)
                        .map(Duration::from_nanos),
                    strikes: b.gate().strikes,
                })
            })
            .collect();
        let inline: u64 = buckets.iter().map(|b| b.inline).sum();
        let explored: u64 = self
            .buckets
            .iter()
            .map(|b| b.flipped_out.load(Relaxed))
            .sum();
        let tier = |t| c.tiers[tier_index(t)].load(Relaxed);
        let (threads, processes, cluster) = (
            tier(crate::TierKind::Threads),
            tier(crate::TierKind::Processes),
            tier(crate::TierKind::Cluster),
        );
        let (timed, mean, p99) = c.hist.summary();
        KeyStats {
            key: self.key.to_string(),
            calls: inline + threads + processes + cluster,
            inline,
            threads,
            processes,
            cluster,
            timed,
            mean,
            p99,
            mispredictions: c.mispredictions.load(Relaxed),
            explored,
            buckets,
        }
    }
}

/// State shared by every call site of one [`Placement`].
pub(crate) struct Shared {
    pub(crate) params: Params,
    pub(crate) sample_every: u64,
    pub(crate) timing_ratio: u64,
    pub(crate) explore_every: u64,
    pub(crate) clock_pair_ns: u64,
    pub(crate) tiers: Vec<TierSlot>,
    sites: Mutex<HashMap<Arc<str>, Arc<SiteState>>>,
    config: PlacementConfig,
}

/// The cost of one pair of clock reads here: the least of 16 rounds of 16 pairs, so that a
/// round that was preempted does not count.
fn clock_pair_cost() -> u64 {
    let mut best = u64::MAX;
    for _ in 0..16 {
        let t0 = Instant::now();
        for _ in 0..16 {
            black_box(Instant::now().elapsed());
        }
        let per = u64::try_from(t0.elapsed().as_nanos() / 16).unwrap_or(u64::MAX);
        best = best.min(per);
    }
    best.max(1)
}

/// The placement engine: the registry of call-site keys, the model, and the off-core tiers.
/// Cheap to clone. A [`Scheduler`] has one ([`Scheduler::placement`]); build your own with
/// [`Placement::new`] to place calls over any executors.
#[derive(Clone)]
pub struct Placement {
    shared: Arc<Shared>,
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self
            .shared
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        f.debug_struct("Placement")
            .field("keys", &keys)
            .field("tiers", &self.shared.tiers)
            .field("inline_budget", &self.shared.config.inline_budget)
            .finish()
    }
}

impl Placement {
    /// Placement over off-core `tiers` (for example the thread tier, and a killable tier for
    /// [`CallSite::killable`] work: a [`ProcessPool`](crate::ProcessPool) or anything else
    /// that converts into a [`PlacementTier`]), with `config`. Inline needs no executor: it is
    /// the caller's own thread.
    ///
    /// ```
    /// use offload::{Executor, Placement, PlacementConfig};
    /// let placement = Placement::new(vec![Executor::threads(1)?], &PlacementConfig::default())?;
    /// let site = placement.site("hash");
    /// assert_eq!(site.key(), "hash");
    /// # Ok::<(), offload::BuildError>(())
    /// ```
    pub fn new<T: Into<PlacementTier>>(
        tiers: impl IntoIterator<Item = T>,
        config: &PlacementConfig,
    ) -> Result<Placement, BuildError> {
        config.validate()?;
        let tiers: Vec<PlacementTier> = tiers.into_iter().map(Into::into).collect();
        if tiers.is_empty() {
            return Err(BuildError::invalid(
                "placement needs at least one off-core tier (the thread tier)",
            ));
        }
        let params = Params::new(config);
        let clock_pair_ns = clock_pair_cost();
        tracing::debug!(
            clock_pair_ns,
            budget_ns = params.budget_ns,
            tiers = tiers.len(),
            "placement started"
        );
        Ok(Placement {
            shared: Arc::new(Shared {
                params,
                sample_every: config.sample_every,
                timing_ratio: config.timing_ratio,
                explore_every: config.explore_every,
                clock_pair_ns,
                tiers: tiers
                    .into_iter()
                    .map(|e| TierSlot::new(e, config.smoothing_shift))
                    .collect(),
                sites: Mutex::new(HashMap::new()),
                config: config.clone(),
            }),
        })
    }

    /// The call site of `key`: interned once here (a map lookup under a lock), then every call
    /// through it goes straight to its buckets. Sites of the same key share what they learn.
    pub fn site(&self, key: &str) -> CallSite {
        let state = {
            let mut sites = self.shared.sites.lock().unwrap_or_else(|p| p.into_inner());
            match sites.get(key) {
                Some(s) => s.clone(),
                None => {
                    let k: Arc<str> = key.into();
                    let s = Arc::new(SiteState::new(k.clone()));
                    sites.insert(k, s.clone());
                    s
                }
            }
        };
        CallSite::new(state, self.shared.clone())
    }

    /// The settings in force.
    pub fn config(&self) -> &PlacementConfig {
        &self.shared.config
    }

    /// A snapshot of every key and every off-core tier.
    pub fn stats(&self) -> PlacementStats {
        let sites: Vec<Arc<SiteState>> = self
            .shared
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut keys: Vec<KeyStats> = sites.iter().map(|s| s.snapshot()).collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        PlacementStats {
            keys,
            tiers: self
                .shared
                .tiers
                .iter()
                .map(|t| TierCost {
                    tier: t.kind,
                    overhead: Duration::from_nanos(t.overhead_ns()),
                    samples: t.samples(),
                })
                .collect(),
            clock_pair: Duration::from_nanos(self.shared.clock_pair_ns),
        }
    }
}

impl Scheduler {
    /// The call site of `key` on this scheduler's placement (see [`Placement::site`]).
    ///
    /// ```
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let site = sched.site("sum");
    /// let total = sched.block_on(site.call(|| (1..=100u64).sum::<u64>()))?;
    /// assert_eq!(total, 5050);
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn site(&self, key: &str) -> CallSite {
        self.placement().site(key)
    }

    /// A snapshot of what placement learned, per key (see [`Placement::stats`]).
    pub fn placement_stats(&self) -> PlacementStats {
        self.placement().stats()
    }
}
