//! The duration model: per call-site key and per log2-size bucket, a smoothed estimate of how
//! long a call takes, wherever it ran, kept in atomics so that reading a prediction is one load.
//!
//! Durations are modelled in the log domain (fixed point, 1/256 octave): costs of CPU work spread
//! multiplicatively, a preempted 1 µs call that took 1 ms is ten octaves away and moves the
//! estimate by 10/8 octave instead of by half a millisecond, and a cost that jumps by a factor
//! of 5000 is followed in a few samples. The formulas are in `README.md` next to this file.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::config::PlacementConfig;

/// One octave in the fixed-point log domain.
pub(crate) const ONE: i64 = 256;

/// The prediction of a bucket that has never been timed.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// Largest finite prediction (one below [`UNKNOWN`]).
const MAX_FINITE: u64 = u64::MAX - 1;

/// Buckets for sized calls: size 0, then one per bit length 1..=64.
pub(crate) const SIZED_BUCKETS: usize = 65;

/// The bucket of calls without a size hint.
pub(crate) const UNSIZED: usize = SIZED_BUCKETS;

/// Buckets per key.
pub(crate) const BUCKETS: usize = SIZED_BUCKETS + 1;

/// The bucket of a size hint: its bit length (0 for 0, 1 for 1, 2 for 2..=3, ...).
#[inline]
pub(crate) fn size_bucket(n: u64) -> usize {
    (64 - n.leading_zeros()) as usize
}

/// log2 of `ns` in 1/256 octave: the integer part from the bit length, the fraction from the
/// next 8 bits (linear between powers of two; exactly inverted by [`exp2_fixed`]).
pub(crate) fn log2_fixed(ns: u64) -> i64 {
    let ns = ns.max(1);
    let i = 63 - i64::from(ns.leading_zeros());
    let frac = if i >= 8 {
        (ns >> (i - 8)) & 0xff
    } else {
        (ns << (8 - i)) & 0xff
    };
    i * ONE + frac as i64
}

/// The inverse of [`log2_fixed`], saturating below [`UNKNOWN`].
pub(crate) fn exp2_fixed(l: i64) -> u64 {
    if l <= 0 {
        return 1;
    }
    let i = l / ONE;
    let frac = (l % ONE) as u128;
    if i >= 64 {
        return MAX_FINITE;
    }
    let v = ((ONE as u128 + frac) << i) >> 8;
    v.min(u128::from(MAX_FINITE)) as u64
}

/// The model's numbers, derived once from a [`PlacementConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) budget_ns: u64,
    pub(crate) factor: u64,
    pub(crate) alpha_div: i64,
    pub(crate) beta_div: i64,
    pub(crate) dev_weight: i64,
    pub(crate) initial_dev: i64,
    pub(crate) forgive_after: u64,
}

impl Params {
    pub(crate) fn new(cfg: &PlacementConfig) -> Self {
        Params {
            budget_ns: u64::try_from(cfg.inline_budget.as_nanos()).unwrap_or(MAX_FINITE),
            factor: u64::from(cfg.mispredict_factor),
            alpha_div: 1 << cfg.smoothing_shift,
            beta_div: 1 << cfg.dev_smoothing_shift,
            dev_weight: i64::from(cfg.dev_weight),
            initial_dev: i64::from(cfg.initial_dev),
            forgive_after: cfg.forgive_after,
        }
    }
}

/// A bucket's estimate, as plain numbers (the arithmetic, testable without atomics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Smoothed log2 duration, 1/256 octave.
    pub(crate) mean: i64,
    /// Smoothed absolute deviation of log2 duration, 1/256 octave.
    pub(crate) dev: i64,
    /// Samples folded in.
    pub(crate) samples: u64,
}

impl Estimate {
    /// No sample yet.
    #[cfg(test)]
    pub(crate) const EMPTY: Estimate = Estimate {
        mean: 0,
        dev: 0,
        samples: 0,
    };

    /// Folds one duration in: `mean += (s − mean)/2^a`, `dev += (|s − mean| − dev)/2^b`.
    pub(crate) fn observe(self, ns: u64, p: &Params) -> Estimate {
        let s = log2_fixed(ns);
        if self.samples == 0 {
            return Estimate {
                mean: s,
                dev: p.initial_dev,
                samples: 1,
            };
        }
        let err = s - self.mean;
        Estimate {
            mean: self.mean + err / p.alpha_div,
            dev: self.dev + (err.abs() - self.dev) / p.beta_div,
            samples: self.samples + 1,
        }
    }

    /// A misprediction: the estimate jumps to the sample (the spread still widens by it).
    pub(crate) fn jump(self, ns: u64, p: &Params) -> Estimate {
        let s = log2_fixed(ns);
        let err = (s - self.mean).abs();
        Estimate {
            mean: s,
            dev: self.dev + (err - self.dev) / p.beta_div,
            samples: self.samples + 1,
        }
    }

    /// The prediction in nanoseconds: `2^(mean + k·dev)`; [`UNKNOWN`] before any sample.
    pub(crate) fn predict_ns(&self, p: &Params) -> u64 {
        if self.samples == 0 {
            return UNKNOWN;
        }
        exp2_fixed(self.mean + p.dev_weight * self.dev)
    }
}

/// Whether an inline call that took `ns` against a prediction of `predicted` is a
/// misprediction: past the budget and more than `factor` times the prediction.
pub(crate) fn is_overrun(ns: u64, predicted: u64, p: &Params) -> bool {
    ns > p.budget_ns && predicted != UNKNOWN && ns > predicted.saturating_mul(p.factor)
}

const NOT_HELD: i64 = i64::MIN;

/// One bucket of one key, in atomics on its own cache lines (the hot ones first).
///
/// Updates are load-compute-store without a lock: two calls finishing at the same instant may
/// lose one of their samples, which only blurs an estimate that is smoothed anyway. The
/// counters that the stats report use `fetch_add` and are exact.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Bucket {
    predict: AtomicU64,
    /// Decisions for inline, explored or not (the fast path's one read-modify-write; it also
    /// picks the sampled and the explored calls).
    pub(crate) inline: AtomicU64,
    /// Decisions for off-core, explored or not (it picks the calls explored inline).
    pub(crate) off: AtomicU64,
    /// Which inline decisions are timed: those with `n & mask == 0`.
    sample_mask: AtomicU64,
    /// Which inline decisions are explored off-core: those with `n & mask == mask`.
    explore_mask: AtomicU64,
    /// Inline decisions flipped off-core by exploration.
    pub(crate) flipped_out: AtomicU64,
    /// Off-core decisions flipped inline by exploration.
    pub(crate) flipped_in: AtomicU64,
    mean: AtomicI64,
    dev: AtomicI64,
    samples: AtomicU64,
    held: AtomicI64,
    last_miss: AtomicU64,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            predict: AtomicU64::new(UNKNOWN),
            inline: AtomicU64::new(0),
            off: AtomicU64::new(0),
            sample_mask: AtomicU64::new(0),
            explore_mask: AtomicU64::new(u64::MAX),
            flipped_out: AtomicU64::new(0),
            flipped_in: AtomicU64::new(0),
            mean: AtomicI64::new(0),
            dev: AtomicI64::new(0),
            samples: AtomicU64::new(0),
            held: AtomicI64::new(NOT_HELD),
            last_miss: AtomicU64::new(0),
        }
    }
}

impl Bucket {
    /// The current prediction in ns ([`UNKNOWN`] before the first sample).
    #[inline]
    pub(crate) fn prediction(&self) -> u64 {
        self.predict.load(Relaxed)
    }

    /// The mask that picks inline decisions to explore (see [`super::policy::explore_mask`]).
    #[inline]
    pub(crate) fn explore_mask(&self) -> u64 {
        self.explore_mask.load(Relaxed)
    }

    /// The mask that picks inline decisions to time (see [`super::policy::sample_mask`]).
    #[inline]
    pub(crate) fn sample_mask(&self) -> u64 {
        self.sample_mask.load(Relaxed)
    }

    pub(crate) fn set_masks(&self, sample: u64, explore: u64) {
        self.sample_mask.store(sample, Relaxed);
        self.explore_mask.store(explore, Relaxed);
    }

    pub(crate) fn estimate(&self) -> Estimate {
        Estimate {
            mean: self.mean.load(Relaxed),
            dev: self.dev.load(Relaxed),
            samples: self.samples.load(Relaxed),
        }
    }

    fn store(&self, e: Estimate, p: &Params) {
        self.mean.store(e.mean, Relaxed);
        self.dev.store(e.dev, Relaxed);
        self.samples.store(e.samples, Relaxed);
        self.predict.store(e.predict_ns(p), Relaxed);
    }

    /// Folds a timed call in. When the previous sample was a forgivable misprediction and this
    /// one is back under the budget, the estimate from before the misprediction comes back first.
    pub(crate) fn observe(&self, ns: u64, p: &Params) {
        let mut e = self.estimate();
        if self.held.load(Relaxed) != NOT_HELD {
            let held = self.held.swap(NOT_HELD, Relaxed);
            if held != NOT_HELD && ns <= p.budget_ns {
                e.mean = held;
            }
        }
        self.store(e.observe(ns, p), p);
    }

    /// Checks a timed inline call (the `at`-th inline decision of this bucket) against the
    /// prediction it was placed with. On a misprediction the estimate jumps to the duration
    /// (so the next call goes off-core) and `true` comes back; the caller counts it.
    pub(crate) fn check_overrun(&self, ns: u64, predicted: u64, at: u64, p: &Params) -> bool {
        if !is_overrun(ns, predicted, p) {
            return false;
        }
        let last = self.last_miss.swap(at + 1, Relaxed);
        let forgivable = last == 0 || (at + 1).saturating_sub(last) > p.forgive_after;
        let e = self.estimate();
        self.held
            .store(if forgivable { e.mean } else { NOT_HELD }, Relaxed);
        self.store(e.jump(ns, p), p);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params() -> Params {
        Params::new(&PlacementConfig::default())
    }

    #[test]
    fn a_bucket_is_two_cache_lines_with_the_hot_fields_first() {
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
        assert_eq!(std::mem::size_of::<Bucket>(), 128);
    }

    #[test]
    fn buckets_are_bit_lengths() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 1);
        assert_eq!(size_bucket(2), 2);
        assert_eq!(size_bucket(3), 2);
        assert_eq!(size_bucket(1024), 11);
        assert_eq!(size_bucket(u64::MAX), 64);
        assert!(size_bucket(u64::MAX) < UNSIZED);
    }

    #[test]
    fn log_and_exp_invert_within_a_percent() {
        for ns in [
            1u64,
            2,
            3,
            7,
            100,
            1_000,
            12_345,
            5_000_000,
            1 << 40,
            u64::MAX / 3,
        ] {
            let back = exp2_fixed(log2_fixed(ns));
            let err = (back as f64 - ns as f64).abs() / ns as f64;
            assert!(err < 0.01, "{ns} -> {back}");
        }
        assert_eq!(log2_fixed(1024), 10 * ONE);
        assert_eq!(log2_fixed(1536), 10 * ONE + 128);
        assert_eq!(exp2_fixed(-5), 1);
        assert_eq!(exp2_fixed(100 * ONE), MAX_FINITE);
    }

    #[test]
    fn first_sample_is_trusted_up_to_a_factor_of_four() {
        let p = params();
        let e = Estimate::EMPTY.observe(1_000, &p);
        assert_eq!(e.samples, 1);
        assert_eq!(e.dev, ONE);
        // 2^(log2(1000) + 2 octaves) = 4000, within the fixed point's rounding.
        let pred = e.predict_ns(&p);
        assert!((3_900..=4_100).contains(&pred), "{pred}");
        assert_eq!(Estimate::EMPTY.predict_ns(&p), UNKNOWN);
    }

    #[test]
    fn steady_samples_shrink_the_margin() {
        let p = params();
        let mut e = Estimate::EMPTY;
        for _ in 0..60 {
            e = e.observe(2_000, &p);
        }
        // dev decays by 7/8 a sample from one octave: after 60 samples the margin is tiny.
        let pred = e.predict_ns(&p);
        assert!((2_000..2_100).contains(&pred), "{pred}");
    }

    #[test]
    fn smoothing_moves_an_eighth_of_the_way_in_octaves() {
        let p = params();
        let mut e = Estimate::EMPTY.observe(1 << 10, &p);
        e.dev = 0;
        let e2 = e.observe(1 << 18, &p); // 8 octaves above
        assert_eq!(e2.mean, 11 * ONE); // moved one octave
        assert_eq!(e2.dev, ONE); // |err| = 8 octaves, 1/8 of it
    }

    #[test]
    fn one_outlier_does_not_push_a_cheap_key_past_the_budget() {
        let p = params();
        let mut e = Estimate::EMPTY;
        for _ in 0..50 {
            e = e.observe(1_000, &p);
        }
        e = e.observe(1_000_000, &p); // a preempted 1 µs call: 1 ms
        let pred = e.predict_ns(&p);
        assert!(pred < p.budget_ns, "{pred}");
        assert!(pred > 2_000, "{pred}");
    }

    #[test]
    fn overrun_needs_both_the_factor_and_the_budget() {
        let p = params();
        let budget = p.budget_ns;
        assert!(!is_overrun(budget, 1, &p)); // not past the budget
        assert!(is_overrun(budget + 1, 1, &p));
        assert!(!is_overrun(budget * 3, budget, &p)); // only 3x the prediction
        assert!(is_overrun(budget * 5, budget, &p));
        assert!(!is_overrun(u64::MAX - 1, UNKNOWN, &p));
    }

    #[test]
    fn a_misprediction_moves_the_bucket_off_core_at_once() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..20 {
            b.observe(1_000, &p);
        }
        let pred = b.prediction();
        assert!(pred < p.budget_ns);
        let five_ms = Duration::from_millis(5).as_nanos() as u64;
        assert!(b.check_overrun(five_ms, pred, 20, &p));
        assert!(b.prediction() >= five_ms, "{}", b.prediction());
        // A later sample that confirms it keeps it off-core.
        b.observe(five_ms, &p);
        assert!(b.prediction() > p.budget_ns);
    }

    #[test]
    fn a_lone_misprediction_contradicted_next_time_is_forgiven() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..20 {
            b.observe(1_000, &p);
        }
        let before = b.estimate().mean;
        assert!(b.check_overrun(1_000_000, b.prediction(), 100, &p));
        b.observe(1_000, &p);
        assert!(b.prediction() < p.budget_ns, "{}", b.prediction());
        assert_eq!(b.estimate().mean, before); // restored, then one 1 µs sample folded in
    }

    #[test]
    fn a_repeated_misprediction_is_not_forgiven() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..20 {
            b.observe(1_000, &p);
        }
        assert!(b.check_overrun(1_000_000, b.prediction(), 100, &p));
        b.observe(1_000, &p); // forgiven
        assert!(b.check_overrun(1_000_000, b.prediction(), 110, &p)); // 10 calls later
        b.observe(1_000, &p); // not forgiven this time
        assert!(b.prediction() > p.budget_ns, "{}", b.prediction());
    }

    #[test]
    fn a_key_that_got_cheap_comes_back_inline_within_25_samples() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..30 {
            b.observe(5_000_000, &p);
        }
        let mut n = 0;
        while b.prediction() > p.budget_ns {
            b.observe(1_000, &p);
            n += 1;
            assert!(n <= 25, "still off-core after {n} samples");
        }
        // The spread widens while the estimate travels 12 octaves down, so it takes about 20
        // samples; they run off-core, which costs hand-offs, never a stall.
        assert!(n >= 10, "{n}");
    }
}
