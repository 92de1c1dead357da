//! What placement tells about itself: a per-key snapshot (calls, per-tier counts, mean and p99
//! duration, mispredictions) and each off-core tier's learned overhead.
//!
//! Durations go into a log-scale histogram per key, four bins per octave, in atomics: recording
//! is two `fetch_add`s; the p99 is read as the upper edge of its bin (at most 19 % high).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::tier::TierKind;

/// Bins of the duration histogram: four per octave over 64 octaves.
const HIST_BINS: usize = 256;

fn bin(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros() as usize;
    let sub = ((ns >> (octave - 2)) & 3) as usize;
    octave * 4 + sub
}

/// The largest duration that falls in bin `i`.
fn bin_upper(i: usize) -> u64 {
    if i < 8 {
        return i as u64;
    }
    let (octave, sub) = (i / 4, (i % 4) as u128);
    let upper = ((5 + sub) << (octave - 2)) - 1;
    upper.min(u128::from(u64::MAX)) as u64
}

/// Timed durations of one key.
#[derive(Debug)]
pub(crate) struct Histogram {
    bins: [AtomicU64; HIST_BINS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bins: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub(crate) fn record(&self, ns: u64) {
        self.bins[bin(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// (count, mean, p99) of what was recorded.
    pub(crate) fn summary(&self) -> (u64, Duration, Duration) {
        let counts: Vec<u64> = self.bins.iter().map(|b| b.load(Relaxed)).collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return (0, Duration::ZERO, Duration::ZERO);
        }
        let mean = Duration::from_nanos(self.sum_ns.load(Relaxed) / n);
        // The smallest bin whose cumulative count reaches 99 % of the calls.
        let rank = n - n / 100;
        let mut seen = 0;
        let mut p99 = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                p99 = bin_upper(i);
                break;
            }
        }
        (n, mean, Duration::from_nanos(p99))
    }
}

/// Per-key counters that are not per bucket.
#[derive(Debug, Default)]
pub(crate) struct KeyCounters {
    /// Off-core calls per tier, indexed by [`tier_index`].
    pub(crate) tiers: [AtomicU64; 4],
    pub(crate) mispredictions: AtomicU64,
    /// The most strikes any bucket of the key has had: a new bucket starts with them.
    pub(crate) strikes: AtomicU32,
    /// Timed samples since the last spike of any bucket of the key where it was inline or
    /// said short (see [`KeyPrior::trusted`](super::model::KeyPrior)).
    pub(crate) quiet: AtomicU64,
    pub(crate) hist: Histogram,
}

/// A tier's slot in per-tier arrays.
pub(crate) fn tier_index(t: TierKind) -> usize {
    match t {
        TierKind::Inline => 0,
        TierKind::Threads => 1,
        TierKind::Processes => 2,
        TierKind::Cluster => 3,
    }
}

/// A snapshot of one call-site key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStats {
    /// The call-site key.
    pub key: String,
    /// Calls placed (every decision, timed or not).
    pub calls: u64,
    /// Calls run inline (including staged calls that finished in their first part).
    pub inline: u64,
    /// Calls run on the thread tier.
    pub threads: u64,
    /// Calls run on the process tier.
    pub processes: u64,
    /// Calls run on the cluster tier.
    pub cluster: u64,
    /// Calls that were timed: every off-core call, and inline calls as sampled (one in
    /// 16 cheap ones). Mean and p99 are over these.
    pub timed: u64,
    /// Mean duration of the timed calls (the task's own run time, wherever it ran).
    pub mean: Duration,
    /// 99th percentile of the timed calls' durations (upper edge of a quarter-octave bin).
    pub p99: Duration,
    /// Inline calls that ran far over their prediction and past the inline budget.
    pub mispredictions: u64,
    /// Decisions flipped to explore the other side.
    pub explored: u64,
    /// The size buckets that were used, by size (the bucket of calls without a size hint last).
    pub buckets: Vec<BucketStats>,
}

/// One size bucket of a key: calls of sizes from `size_from` up to the next bucket's, a quarter
/// of an octave (sizes 1024..=1279, 1280..=1535, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketStats {
    /// The smallest size in the bucket; `None` for calls without a size hint.
    pub size_from: Option<u64>,
    /// Calls placed inline.
    pub inline: u64,
    /// Calls placed off-core.
    pub off_core: u64,
    /// The model's upper estimate now (`2^(mean + k·dev)` in octaves), `None` while unknown.
    pub prediction: Option<Duration>,
    /// The model's typical duration now (`2^mean`, a median), `None` while unknown.
    pub typical: Option<Duration>,
    /// Surprises not yet forgiven: the bucket needs `CLEAN_STREAK × 2^strikes` clean samples in
    /// a row to go inline (see `src/placement/README.md`).
    pub strikes: u32,
}

impl KeyStats {
    /// The bucket holding calls of size `n` (`None`: calls without a size hint), if used.
    pub fn bucket(&self, n: Option<u64>) -> Option<&BucketStats> {
        let from = n.map(|n| super::model::bucket_floor(super::model::size_bucket(n)));
        self.buckets.iter().find(|b| b.size_from == from)
    }
}

impl KeyStats {
    /// Calls that ran off the caller's thread, on any tier.
    pub fn off_core(&self) -> u64 {
        self.threads + self.processes + self.cluster
    }

    /// Calls on `tier`.
    pub fn on(&self, tier: TierKind) -> u64 {
        match tier {
            TierKind::Inline => self.inline,
            TierKind::Threads => self.threads,
            TierKind::Processes => self.processes,
            TierKind::Cluster => self.cluster,
        }
    }
}

/// What placement learned about one off-core tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierCost {
    /// The tier.
    pub tier: TierKind,
    /// Its learned overhead: a caller's wall time minus the task's own run time, smoothed.
    pub overhead: Duration,
    /// Trips it was learned from.
    pub samples: u64,
}

/// A snapshot of placement: every key seen, and every off-core tier.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlacementStats {
    /// One entry per call-site key, sorted by key.
    pub keys: Vec<KeyStats>,
    /// The off-core tiers in the order they were attached.
    pub tiers: Vec<TierCost>,
    /// What one pair of clock reads costs here (measured at start): the reason cheap inline
    /// calls are timed only one in 16.
    pub clock_pair: Duration,
}

impl PlacementStats {
    /// The snapshot of `key`, if it was ever used.
    pub fn key(&self, key: &str) -> Option<&KeyStats> {
        self.keys.iter().find(|k| k.key == key)
    }
}

/// A duration in the unit that reads best: `850ns`, `12.3µs`, `4.56ms`, `1.20s`.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos() as f64;
        let text = if ns < 1e3 {
            format!("{ns:.0}ns")
        } else if ns < 1e6 {
            format!("{:.1}µs", ns / 1e3)
        } else if ns < 1e9 {
            format!("{:.2}ms", ns / 1e6)
        } else {
            format!("{:.2}s", ns / 1e9)
        };
        f.pad(&text)
    }
}

/// One line: calls, where they ran, mean and p99, mispredictions.
impl fmt::Display for KeyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            self.key,
            self.calls,
            self.inline,
            self.off_core(),
            Short(self.mean),
            Short(self.p99),
            self.mispredictions,
            self.buckets.len(),
        )
    }
}

/// A small table, one key a line, then what each off-core tier's hand-off costs:
///
/// ```text
/// key                  calls    inline  off-core      mean       p99  mispred buckets
/// parse                 1000       981        19     3.1µs    45.0µs        0       3
/// off-core threads: hand-off 4.9µs (19 trips)
/// ```
impl fmt::Display for PlacementStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "key", "calls", "inline", "off-core", "mean", "p99", "mispred", "buckets"
        )?;
        for k in &self.keys {
            writeln!(f, "{k}")?;
        }
        for t in &self.tiers {
            writeln!(
                f,
                "off-core {}: hand-off {} ({} trips)",
                t.tier,
                Short(t.overhead),
                t.samples
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_a_table_with_one_line_per_key() {
        let key = KeyStats {
            key: "parse".into(),
            calls: 1000,
            inline: 981,
            threads: 19,
            processes: 0,
            cluster: 0,
            timed: 100,
            mean: Duration::from_nanos(3_100),
            p99: Duration::from_micros(45),
            mispredictions: 0,
            explored: 0,
            buckets: Vec::new(),
        };
        let stats = PlacementStats {
            keys: vec![key],
            tiers: vec![TierCost {
                tier: TierKind::Threads,
                overhead: Duration::from_nanos(4_900),
                samples: 19,
            }],
            clock_pair: Duration::from_nanos(40),
        };
        let text = stats.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("key") && lines[0].contains("p99"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("parse") && lines[1].contains("45.0µs"),
            "{text}"
        );
        assert!(
            lines[1].contains("3.1µs") && lines[1].contains("981"),
            "{text}"
        );
        assert_eq!(lines[2], "off-core threads: hand-off 4.9µs (19 trips)");
    }

    #[test]
    fn bins_cover_their_values() {
        for ns in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            999,
            1_000,
            1 << 20,
            5_000_000,
            u64::MAX,
        ] {
            let i = bin(ns);
            assert!(i < HIST_BINS);
            assert!(bin_upper(i) >= ns, "{ns} in bin {i} up to {}", bin_upper(i));
            if i > 8 {
                assert!(bin_upper(i - 1) < ns, "{ns}");
            }
        }
    }

    #[test]
    fn p99_and_mean_of_a_known_mix() {
        let h = Histogram::default();
        for _ in 0..990 {
            h.record(1_000);
        }
        for _ in 0..10 {
            h.record(1_000_000);
        }
        let (n, mean, p99) = h.summary();
        assert_eq!(n, 1000);
        assert_eq!(
            mean,
            Duration::from_nanos((990 * 1_000 + 10 * 1_000_000) / 1000)
        );
        // The 99th percentile is the last of the 1 µs calls: its bin's upper edge.
        assert!(p99 >= Duration::from_nanos(1_000) && p99 < Duration::from_nanos(1_200));
        h.record(1_000_000);
        h.record(1_000_000);
        let (_, _, p99) = h.summary();
        assert!(p99 >= Duration::from_millis(1), "{p99:?}");
    }

    #[test]
    fn empty_histogram_is_zero() {
        assert_eq!(
            Histogram::default().summary(),
            (0, Duration::ZERO, Duration::ZERO)
        );
    }
}
