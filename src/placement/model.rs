//! The duration model: per call-site key and per size bucket (a quarter of an octave of the
//! size hint), a smoothed estimate of how long a call takes wherever it ran, and the bucket's
//! **gate**: whether its calls may run inline now. Kept in atomics so that reading the decision
//! is one load.
//!
//! Durations are modelled in the log domain (fixed point, 1/256 octave): costs of CPU work spread
//! multiplicatively, a preempted 1 µs call that took 1 ms is ten octaves away and moves the
//! estimate by 10/8 octave instead of by half a millisecond, and a cost that jumps by a factor
//! of 5000 is followed in a few samples.
//!
//! The gate decides from the risk that a call overruns, not from the estimate alone: a bucket
//! goes inline only after a clean streak (no sample over the budget) whose required length
//! doubles with every surprise (a sample far over the budget where the estimate said short), and
//! it leaves inline only on a surprise or when its estimate passes twice the budget
//! (hysteresis). The formulas and the reasons are in `README.md` next to this file.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::config::PlacementConfig;
use super::usage::Judged;

/// One octave in the fixed-point log domain.
pub(crate) const ONE: i64 = 256;

/// The prediction of a bucket that has never been timed.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// Largest finite prediction (one below [`UNKNOWN`]).
const MAX_FINITE: u64 = u64::MAX - 1;

/// Size buckets per octave of the size hint, as a shift: 4 per octave, so a bucket spans a
/// factor of at most 1.25 and a cost linear in the size varies by at most that within one.
const SUB_BITS: u32 = 2;

/// Buckets for sized calls: bit length 0..=64 times 4 sub-buckets (the sub-buckets of bit
/// lengths 0..=2 are not all used).
pub(crate) const SIZED_BUCKETS: usize = 65 << SUB_BITS;

/// The bucket of calls without a size hint.
pub(crate) const UNSIZED: usize = SIZED_BUCKETS;

/// Buckets per key.
pub(crate) const BUCKETS: usize = SIZED_BUCKETS + 1;

/// The bucket of a size hint: its bit length, then the two bits after the leading one (a
/// quarter octave): 0 for 0, then 1, 2..=3, 4, 5, 6, 7, 8..=9, 10..=11, ...
#[inline]
pub(crate) fn size_bucket(n: u64) -> usize {
    let bl = 64 - n.leading_zeros();
    let sub = if bl > SUB_BITS {
        (n >> (bl - 1 - SUB_BITS)) as usize & ((1 << SUB_BITS) - 1)
    } else {
        // Sizes 0..=3: the bits after the leading one, shifted into place (1 → 0, 2 → 0, 3 → 2).
        ((n << (SUB_BITS + 1 - bl.max(1))) as usize) & ((1 << SUB_BITS) - 1)
    };
    ((bl as usize) << SUB_BITS) | sub
}

/// The smallest size hint that falls in sized bucket `idx`.
pub(crate) fn bucket_floor(idx: usize) -> u64 {
    let bl = (idx >> SUB_BITS) as u32;
    let sub = (idx & ((1 << SUB_BITS) - 1)) as u64;
    if bl == 0 {
        return 0;
    }
    let lead = 1u128 << (bl - 1);
    let v = lead + ((sub as u128) << (bl - 1)) / (1 << SUB_BITS);
    v.min(u128::from(u64::MAX)) as u64
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
    /// Above this a sample is a spike, and an inline bucket whose upper estimate passes it
    /// leaves inline.
    pub(crate) leave_ns: u64,
    /// A bucket enters inline only with its upper estimate at or under this (¾ of `leave_ns`:
    /// the hysteresis band of the upper estimate).
    pub(crate) enter_upper_ns: u64,
    pub(crate) factor: u64,
    pub(crate) alpha_div: i64,
    pub(crate) beta_div: i64,
    pub(crate) dev_weight: i64,
    pub(crate) initial_dev: i64,
    /// The largest error one sample counts with: `4 × initial_dev` (4 octaves), so one outlier
    /// moves the mean by at most half an octave.
    pub(crate) outlier_clamp: i64,
    /// The least spread a new bucket starts with when it takes its key's (a quarter of
    /// `initial_dev`).
    pub(crate) min_first_dev: i64,
    pub(crate) clean_streak: u64,
    pub(crate) max_strikes: u32,
    pub(crate) strike_decay: u64,
    pub(crate) sample_after: u64,
}

impl Params {
    pub(crate) fn new(cfg: &PlacementConfig) -> Self {
        let budget_ns = u64::try_from(cfg.inline_budget.as_nanos()).unwrap_or(MAX_FINITE);
        let leave_ns = budget_ns.saturating_mul(u64::from(cfg.leave_factor));
        Params {
            budget_ns,
            leave_ns,
            enter_upper_ns: (leave_ns / 4).saturating_mul(3).max(budget_ns),
            factor: u64::from(cfg.mispredict_factor),
            alpha_div: 1 << cfg.smoothing_shift,
            beta_div: 1 << cfg.dev_smoothing_shift,
            dev_weight: i64::from(cfg.dev_weight),
            initial_dev: i64::from(cfg.initial_dev),
            outlier_clamp: i64::from(cfg.initial_dev).saturating_mul(4).max(1),
            min_first_dev: i64::from(cfg.initial_dev) / 4,
            clean_streak: cfg.clean_streak,
            max_strikes: cfg.max_strikes,
            strike_decay: cfg.strike_decay,
            sample_after: cfg.sample_after,
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

    /// Folds one duration in: `mean += (s − mean)/2^a`, `dev += (|s − mean| − dev)/2^b`, with
    /// `s − mean` clamped to ± [`Params::outlier_clamp`] (4 octaves): one outlier (a call
    /// preempted on a worker, measured on the wall clock) moves the mean by at most half an
    /// octave; a real change of cost of more than 4 octaves is learned over a few more samples. A first sample starts the
    /// deviation at [`Params::initial_dev`].
    #[cfg(test)]
    pub(crate) fn observe(self, ns: u64, p: &Params) -> Estimate {
        self.observe_from(ns, p.initial_dev, p)
    }

    /// [`observe`](Self::observe), a first sample starting the deviation at `first_dev`.
    pub(crate) fn observe_from(self, ns: u64, first_dev: i64, p: &Params) -> Estimate {
        let s = log2_fixed(ns);
        if self.samples == 0 {
            return Estimate {
                mean: s,
                dev: first_dev,
                samples: 1,
            };
        }
        let err = (s - self.mean).clamp(-p.outlier_clamp, p.outlier_clamp);
        Estimate {
            mean: self.mean + err / p.alpha_div,
            dev: self.dev + (err.abs() - self.dev) / p.beta_div,
            samples: self.samples + 1,
        }
    }

    /// The upper estimate in nanoseconds: `2^(mean + k·dev)`; [`UNKNOWN`] before any sample.
    pub(crate) fn predict_ns(&self, p: &Params) -> u64 {
        if self.samples == 0 {
            return UNKNOWN;
        }
        exp2_fixed(self.mean + p.dev_weight * self.dev)
    }

    /// The typical duration (the log-domain mean, a median for a log-symmetric spread);
    /// [`UNKNOWN`] before any sample.
    pub(crate) fn typical_ns(&self) -> u64 {
        if self.samples == 0 {
            return UNKNOWN;
        }
        exp2_fixed(self.mean)
    }
}

/// Whether an inline call that took `ns` against a prediction of `predicted` is a
/// misprediction: past the budget and more than `factor` times the prediction.
pub(crate) fn is_overrun(ns: u64, predicted: u64, p: &Params) -> bool {
    ns > p.budget_ns && predicted != UNKNOWN && ns > predicted.saturating_mul(p.factor)
}

/// What the estimate says about a bucket: its typical duration (`2^mean`) and its upper
/// estimate (`2^(mean + k·dev)`), both [`UNKNOWN`] before the first sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) typical: u64,
    pub(crate) upper: u64,
}

impl View {
    /// Before any sample.
    pub(crate) const UNKNOWN: View = View {
        typical: UNKNOWN,
        upper: UNKNOWN,
    };

    /// What `e` says.
    pub(crate) fn of(e: &Estimate, p: &Params) -> View {
        View {
            typical: e.typical_ns(),
            upper: e.predict_ns(p),
        }
    }

    /// Whether the estimate says "short": the typical call is within the budget and the upper
    /// estimate within ¾ of the leave threshold (so a bucket that enters is not at once near
    /// leaving again).
    pub(crate) fn short(&self, p: &Params) -> bool {
        self.typical <= p.budget_ns && self.upper <= p.enter_upper_ns
    }
}

/// What one timed sample did to a bucket's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The bucket stays where it was.
    Stay,
    /// The bucket goes inline: its estimate says short and its clean streak is long enough.
    Enter,
    /// A lone spike (a sample over the leave threshold) while the bucket was inline or its
    /// estimate said short ([`View::short`]), the first in a while: the bucket is off-core now,
    /// without a strike (an inline one without strikes until one clean sample).
    Spike,
    /// A spike like [`Transition::Spike`] that came soon after another: as well, the streak the
    /// bucket needs doubles (a strike).
    Surprise,
    /// An inline bucket whose estimate drifted past the leave threshold goes off-core (a strike
    /// too: a bucket that goes back and forth pays more each time).
    Drift,
}

/// Bits of the packed gate word that hold the clean streak (the low 32).
const STREAK_MASK: u64 = (1 << 32) - 1;

/// The largest "samples since the last surprise" the gate word holds (25 bits); it stands for
/// "never" too.
const QUIET_MAX: u64 = (1 << 25) - 1;

/// The most strikes a first verified spike of a bucket adds (see [`Gate::step`]).
const FIRST_VERIFIED_STRIKES: u32 = 2;

/// How many octaves a spike of `ns` went past the leave threshold, rounded up: after a surprise
/// (a repeated spike) a bucket needs at least `clean_streak × ns / leave` clean samples, so that
/// a key let back inline risks, per call, about a quarter of the leave threshold of I/O-thread
/// time to its long calls (a 20 ms spike asks for ~800 clean calls, a 200 µs one for 8).
fn overrun_octaves(ns: u64, p: &Params) -> u32 {
    let ratio = ns / p.leave_ns.max(1);
    if ratio <= 1 {
        return 0;
    }
    64 - (ratio - 1).leading_zeros()
}

/// A bucket's gate, as plain numbers (the state machine, testable without atomics).
///
/// States: **off** (calls go off-core) and **inline**. Transitions, each made only by
/// [`Gate::step`] on a timed sample:
/// - off → inline (`Enter`): the estimate says short ([`View::short`]: typical ≤ budget, upper
///   ≤ ¾ × leave threshold) and `streak ≥ need`;
/// - inline → off (`Spike` or `Surprise`): a spike, a sample over the leave threshold
///   (2 × budget);
/// - inline → off (`Drift`): the upper estimate passed the leave threshold (a strike);
/// - off → off (`Spike` or `Surprise`): a spike while the estimate said short restarts the
///   streak.
///
/// A spike where the bucket was inline or its estimate said short is a `Surprise`, and adds a
/// strike, when another came within the last `strike_decay × clean_streak` (64) samples; a lone
/// one is a `Spike`, without a strike (an inline bucket without strikes then comes back after
/// one clean sample with a short estimate) (a preempted call on a busy machine looks like a long call; one
/// such sample in a while must not make a cheap key wary). `need = clean_streak × 2^strikes`;
/// a strike is forgiven after `strike_decay × need` clean samples in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gate {
    /// Calls go inline.
    pub(crate) inline: bool,
    /// Surprises not yet forgiven (at most `max_strikes`).
    pub(crate) strikes: u32,
    /// Timed samples in a row that were not spikes (at or under the leave threshold).
    pub(crate) streak: u64,
    /// Samples since the last spike that surprised ([`QUIET_MAX`]: none yet).
    pub(crate) quiet: u64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            inline: false,
            strikes: 0,
            streak: 0,
            quiet: QUIET_MAX,
        }
    }
}

impl Gate {
    /// One word: streak in bits 0..32, quiet in 32..57, strikes in 57..63, inline in 63.
    fn pack(self) -> u64 {
        self.streak.min(STREAK_MASK)
            | (self.quiet.min(QUIET_MAX) << 32)
            | (u64::from(self.strikes.min(63)) << 57)
            | (u64::from(self.inline) << 63)
    }

    fn unpack(v: u64) -> Gate {
        Gate {
            inline: v >> 63 == 1,
            strikes: ((v >> 57) & 63) as u32,
            quiet: (v >> 32) & QUIET_MAX,
            streak: v & STREAK_MASK,
        }
    }

    /// The clean streak this bucket needs before it goes inline.
    pub(crate) fn need(&self, p: &Params) -> u64 {
        p.clean_streak.saturating_mul(1u64 << self.strikes.min(63))
    }

    /// Whether the bucket is inline with so long a clean streak that its cheapest calls may be
    /// timed only one in [`SAMPLE_EVERY`](super::SAMPLE_EVERY); until then every call is timed,
    /// so a long call among cheap ones is seen the first time it runs inline.
    pub(crate) fn confident(&self, p: &Params) -> bool {
        self.inline && self.streak >= p.sample_after.saturating_mul(1u64 << self.strikes.min(63))
    }

    /// One timed sample of `ns`; `before` and `after` are what the bucket's estimate said
    /// before and after it was folded in. `verified`: the thread's own counters showed the
    /// figure is the call's (it computed or blocked that long; see `usage.rs`), so a spike in
    /// it is never taken for preemption.
    ///
    /// `trusted`: the key has gone a horizon of samples without a spike or a strike anywhere
    /// ([`KeyPrior::trusted`]); a bucket of it without strikes then enters inline after one
    /// sample that says short, instead of [`need`](Self::need).
    pub(crate) fn step(
        self,
        ns: u64,
        verified: bool,
        trusted: bool,
        before: View,
        after: View,
        p: &Params,
    ) -> (Gate, Transition) {
        let mut g = self;
        if ns > p.leave_ns {
            g.streak = 0;
            if g.inline || before.short(p) {
                let lone = g.quiet >= p.clean_streak.saturating_mul(p.strike_decay);
                g.quiet = 0;
                g.inline = false;
                if lone && verified {
                    // The call itself ran that long (no preemption inside this OS): a strike
                    // per octave it went past, but at most two (16 clean samples), not all of
                    // them: a VM's host can still have stolen the time unseen, and a cheap key
                    // must not pay hundreds of calls off-core for that.
                    g.strikes = (g.strikes + 1)
                        .max(overrun_octaves(ns, p).min(FIRST_VERIFIED_STRIKES))
                        .min(p.max_strikes);
                    return (g, Transition::Surprise);
                }
                if lone {
                    // An inline bucket without strikes comes back after one clean sample: a
                    // preempted call among many concurrent ones must not send a whole burst of
                    // them off-core. A wary bucket starts its streak over.
                    if self.inline && g.strikes == 0 {
                        g.streak = g.need(p).saturating_sub(1);
                    }
                    return (g, Transition::Spike);
                }
                g.strikes = (g.strikes + 1)
                    .max(overrun_octaves(ns, p))
                    .min(p.max_strikes);
                return (g, Transition::Surprise);
            }
            g.quiet = (g.quiet + 1).min(QUIET_MAX);
            return (g, Transition::Stay);
        }
        g.quiet = (g.quiet + 1).min(QUIET_MAX);
        g.streak = g.streak.saturating_add(1);
        if g.strikes > 0 && g.streak >= g.need(p).saturating_mul(p.strike_decay) {
            g.strikes -= 1;
        }
        if g.inline {
            if after.upper > p.leave_ns {
                g.inline = false;
                g.strikes = (g.strikes + 1).min(p.max_strikes);
                g.streak = 0;
                return (g, Transition::Drift);
            }
            return (g, Transition::Stay);
        }
        let need = if trusted && g.strikes == 0 {
            1
        } else {
            g.need(p)
        };
        if after.short(p) && g.streak >= need {
            g.inline = true;
            return (g, Transition::Enter);
        }
        (g, Transition::Stay)
    }

    /// The number the fast path compares with the budget: ≤ budget exactly when the gate is
    /// inline (then the typical duration, capped at the budget: what sampling and the
    /// misprediction count go by), above it otherwise (the upper estimate, at least budget + 1;
    /// [`UNKNOWN`] before the first sample).
    pub(crate) fn gate_value(&self, v: View, p: &Params) -> u64 {
        if self.inline {
            v.typical.min(p.budget_ns)
        } else if v.upper == UNKNOWN {
            UNKNOWN
        } else {
            v.upper.max(p.budget_ns.saturating_add(1))
        }
    }
}

/// What the rest of a key tells one of its buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyPrior {
    /// The most strikes any bucket of the key has had: a new bucket starts with them.
    pub(crate) strikes: u32,
    /// The deviation of the nearest bucket of the key with a few samples: a new bucket starts
    /// with it (within `[min_first_dev, initial_dev]`) instead of `initial_dev`, so a key whose
    /// cost follows its size hint closely trusts a new size's first sample as much as it
    /// trusts the sizes it knows.
    pub(crate) dev: Option<i64>,
    /// The key went a horizon (`strike_decay × clean_streak` samples) without a spike where
    /// it was inline or said short, and has no strikes: its cost is a function of its size
    /// hint so far, and a new bucket of it needs one sample that says short, not a streak.
    pub(crate) trusted: bool,
}

/// One bucket of one key, in atomics on its own cache lines (the hot ones first).
///
/// Updates are load-compute-store without a lock: two calls finishing at the same instant may
/// lose one of their samples, which only blurs an estimate that is smoothed anyway. The gate is
/// one word, so it is never seen half-updated. The counters that the stats report use
/// `fetch_add` and are exact.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Bucket {
    /// The gate value ([`Gate::gate_value`]): ≤ budget means inline.
    predict: AtomicU64,
    /// Decisions for inline, explored or not (the fast path's one read-modify-write; it also
    /// picks the sampled and the explored calls).
    pub(crate) inline: AtomicU64,
    /// Decisions for off-core.
    pub(crate) off: AtomicU64,
    /// Which inline decisions are timed: those with `n & mask == 0`.
    sample_mask: AtomicU64,
    /// Which inline decisions are explored off-core: those with `n & mask == mask`.
    explore_mask: AtomicU64,
    /// Inline decisions flipped off-core by exploration.
    pub(crate) flipped_out: AtomicU64,
    mean: AtomicI64,
    dev: AtomicI64,
    samples: AtomicU64,
    gate: AtomicU64,
    upper: AtomicU64,
    typical: AtomicU64,
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
            mean: AtomicI64::new(0),
            dev: AtomicI64::new(0),
            samples: AtomicU64::new(0),
            gate: AtomicU64::new(Gate::default().pack()),
            upper: AtomicU64::new(UNKNOWN),
            typical: AtomicU64::new(UNKNOWN),
        }
    }
}

impl Bucket {
    /// The gate value in ns: ≤ budget iff the bucket is inline ([`UNKNOWN`] before the first
    /// sample).
    #[inline]
    pub(crate) fn prediction(&self) -> u64 {
        self.predict.load(Relaxed)
    }

    /// The upper estimate `2^(mean + k·dev)` ([`UNKNOWN`] before the first sample).
    pub(crate) fn upper(&self) -> u64 {
        self.upper.load(Relaxed)
    }

    /// The typical duration `2^mean` ([`UNKNOWN`] before the first sample).
    pub(crate) fn typical(&self) -> u64 {
        self.typical.load(Relaxed)
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

    /// The gate now.
    pub(crate) fn gate(&self) -> Gate {
        Gate::unpack(self.gate.load(Relaxed))
    }

    /// What this bucket lends a smaller, less known bucket of its key: an inline gate value
    /// when it is inline, or has no strikes and its estimate says short.
    pub(crate) fn lends(&self, p: &Params) -> Option<u64> {
        let q = self.prediction();
        if q <= p.budget_ns {
            return Some(q);
        }
        let v = self.view();
        (q != UNKNOWN && self.gate().strikes == 0 && v.short(p)).then(|| v.typical.min(p.budget_ns))
    }

    /// What the bucket's estimate says now.
    pub(crate) fn view(&self) -> View {
        View {
            typical: self.typical(),
            upper: self.upper(),
        }
    }

    /// Folds a timed call in (`ran_inline`: where it ran) and steps the gate. A call that ran
    /// inline while the gate was off (it borrowed a larger bucket's inline decision, or a user
    /// probe said short) moves the gate inline first, when the bucket has no strikes and its
    /// estimate says short; a bucket's first sample starts its gate where that call ran. A new
    /// bucket starts with the key's strikes so far: a key that surprised elsewhere starts each
    /// new bucket wary.
    #[cfg(test)]
    pub(crate) fn observe(
        &self,
        ns: u64,
        ran_inline: bool,
        key_strikes: u32,
        p: &Params,
    ) -> (Gate, Transition) {
        let prior = KeyPrior {
            strikes: key_strikes,
            ..KeyPrior::default()
        };
        self.observe_judged(Judged::wall(ns), ran_inline, prior, p)
    }

    /// [`observe`](Self::observe) with a sample the thread's counters may have verified (see
    /// [`Gate::step`]) and what the rest of the key says ([`KeyPrior`]).
    pub(crate) fn observe_judged(
        &self,
        sample: Judged,
        ran_inline: bool,
        key: KeyPrior,
        p: &Params,
    ) -> (Gate, Transition) {
        let ns = sample.ns;
        let e = self.estimate();
        let (mut g, before) = if e.samples == 0 {
            let g = Gate {
                inline: ran_inline,
                strikes: key.strikes.min(p.max_strikes),
                ..Gate::default()
            };
            (g, View::UNKNOWN)
        } else {
            (self.gate(), View::of(&e, p))
        };
        if ran_inline && !g.inline && g.strikes == 0 && before.short(p) {
            g.inline = true;
        }
        let first_dev = key
            .dev
            .map_or(p.initial_dev, |d| d.clamp(p.min_first_dev, p.initial_dev));
        let e = e.observe_from(ns, first_dev, p);
        let after = View::of(&e, p);
        let (g, t) = g.step(ns, sample.verified, key.trusted, before, after, p);
        self.mean.store(e.mean, Relaxed);
        self.dev.store(e.dev, Relaxed);
        self.samples.store(e.samples, Relaxed);
        self.gate.store(g.pack(), Relaxed);
        self.upper.store(after.upper, Relaxed);
        self.typical.store(after.typical, Relaxed);
        self.predict.store(g.gate_value(after, p), Relaxed);
        (g, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params() -> Params {
        Params::new(&PlacementConfig::default())
    }

    /// splitmix64: a small deterministic generator for the simulated workloads.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Runs `calls` calls of costs drawn by `cost` through one bucket, as the call site would
    /// (inline when the gate says so, timing every call): (long calls run inline, gate changes).
    fn simulate(calls: usize, mut cost: impl FnMut(usize) -> u64) -> (usize, usize, Bucket) {
        let p = params();
        let b = Bucket::default();
        let (mut long_inline, mut changes) = (0, 0);
        let mut was = false;
        for i in 0..calls {
            let ns = cost(i);
            let inline = b.prediction() <= p.budget_ns;
            if inline != was {
                changes += 1;
                was = inline;
            }
            if inline && ns > p.leave_ns {
                long_inline += 1;
            }
            b.observe(ns, inline, 0, &p);
        }
        (long_inline, changes, b)
    }

    #[test]
    fn a_bucket_is_two_cache_lines_with_the_hot_fields_first() {
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
        assert_eq!(std::mem::size_of::<Bucket>(), 128);
    }

    #[test]
    fn buckets_are_quarter_octaves() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 4);
        assert_eq!(size_bucket(2), 8);
        assert_eq!(size_bucket(3), 10);
        assert_eq!(size_bucket(4), 12);
        assert_eq!(size_bucket(7), 15);
        assert_eq!(size_bucket(1024), 44);
        assert_eq!(size_bucket(1279), 44);
        assert_eq!(size_bucket(1280), 45);
        assert_eq!(size_bucket(2047), 47);
        assert_eq!(size_bucket(u64::MAX), SIZED_BUCKETS - 1);
        // Every size falls in the bucket whose floor is at or below it, and the next bucket's
        // floor is above it.
        for n in (0..5000u64).chain([1 << 40, (1 << 40) + (1 << 38), u64::MAX]) {
            let i = size_bucket(n);
            assert!(bucket_floor(i) <= n, "{n} in {i} from {}", bucket_floor(i));
            assert_eq!(size_bucket(bucket_floor(i)), i, "{n}");
            let next = (i + 1..SIZED_BUCKETS).find(|&j| size_bucket(bucket_floor(j)) == j);
            if let Some(j) = next {
                assert!(
                    bucket_floor(j) > n,
                    "{n}: next bucket {j} starts at {}",
                    bucket_floor(j)
                );
            }
        }
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
        let pred = e.predict_ns(&p);
        assert!((2_000..2_100).contains(&pred), "{pred}");
    }

    #[test]
    fn smoothing_moves_an_eighth_of_the_way_in_octaves() {
        let p = params();
        let mut e = Estimate::EMPTY.observe(1 << 10, &p);
        e.dev = 0;
        let e2 = e.observe(1 << 14, &p); // 4 octaves above
        assert_eq!(e2.mean, 10 * ONE + ONE / 2); // moved half an octave
        assert_eq!(e2.dev, ONE / 2); // |err| = 4 octaves, 1/8 of it
        // An outlier further away counts as 4 octaves: one sample moves the mean by at most
        // half an octave.
        let e3 = e.observe(1 << 30, &p);
        assert_eq!((e3.mean, e3.dev), (e2.mean, e2.dev));
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
    fn strikes_grow_with_the_octaves_a_spike_went_past() {
        let p = params();
        assert_eq!(overrun_octaves(p.leave_ns, &p), 0);
        assert_eq!(overrun_octaves(2 * p.leave_ns, &p), 1);
        assert_eq!(overrun_octaves(3 * p.leave_ns, &p), 2);
        assert_eq!(overrun_octaves(200 * p.leave_ns, &p), 8);
        assert_eq!(
            overrun_octaves(u64::MAX, &p),
            64 - (u64::MAX / p.leave_ns - 1).leading_zeros()
        );
    }

    #[test]
    fn the_gate_packs_into_one_word() {
        for g in [
            Gate::default(),
            Gate {
                inline: true,
                strikes: 3,
                streak: 12345,
                quiet: 77,
            },
            Gate {
                inline: false,
                strikes: 32,
                streak: STREAK_MASK,
                quiet: QUIET_MAX,
            },
        ] {
            assert_eq!(Gate::unpack(g.pack()), g);
        }
    }

    #[test]
    fn a_cheap_bucket_goes_inline_after_a_short_clean_streak() {
        let p = params();
        let b = Bucket::default();
        assert_eq!(b.prediction(), UNKNOWN);
        for i in 1..=p.clean_streak {
            let (g, t) = b.observe(1_000, false, 0, &p);
            assert_eq!(g.streak, i);
            assert_eq!(t == Transition::Enter, i == p.clean_streak, "sample {i}");
        }
        assert!(b.prediction() <= p.budget_ns);
        assert!(b.upper() < p.budget_ns);
    }

    #[test]
    fn a_spike_while_inline_goes_off_core_at_once_and_a_second_doubles_the_streak() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..20 {
            b.observe(1_000, false, 0, &p);
        }
        assert!(b.gate().inline);
        let five_ms = Duration::from_millis(5).as_nanos() as u64;
        // The first spike in a while: off-core at once, no strike.
        let (g, t) = b.observe(five_ms, true, 0, &p);
        assert_eq!(t, Transition::Spike);
        assert!(!g.inline && g.strikes == 0 && g.streak == p.clean_streak - 1);
        assert!(b.prediction() > p.budget_ns);
        let mut n = 0;
        while !b.gate().inline {
            b.observe(1_000, false, 0, &p);
            n += 1;
            assert!(n <= 30, "{:?}", b.gate());
        }
        // A second one soon after: strikes, as many as the octaves it went past the leave
        // threshold (5 ms / 100 µs = 50: 6), and 4 × 2^6 clean samples to come back.
        let (g, t) = b.observe(five_ms, true, 0, &p);
        assert_eq!(t, Transition::Surprise);
        assert!(!g.inline && g.strikes == 6, "{g:?}");
        assert_eq!(g.need(&p), p.clean_streak << 6);
        for _ in 1..g.need(&p) {
            assert!(!b.observe(1_000, false, 0, &p).0.inline);
        }
        assert!(b.observe(1_000, false, 0, &p).0.inline);
        // A spike after more than the horizon of clean samples is lone again: no strike.
        let (g, t) = b.observe(150_000, true, 0, &p);
        assert_eq!((t, g.strikes), (Transition::Spike, 6));
        // And a small one (150 µs) right after it adds one strike.
        let (g, t) = b.observe(150_000, false, 0, &p);
        assert_eq!((t, g.strikes), (Transition::Surprise, 7));
    }

    #[test]
    fn a_verified_spike_is_a_surprise_even_the_first_time() {
        // The thread's counters showed the call computed (or blocked) that long: not
        // preemption, so the first spike already strikes, as many octaves as it went past.
        let p = params();
        let b = Bucket::default();
        for _ in 0..20 {
            b.observe(1_000, false, 0, &p);
        }
        assert!(b.gate().inline);
        let verified = Judged {
            ns: Duration::from_millis(5).as_nanos() as u64,
            verified: true,
        };
        let (g, t) = b.observe_judged(verified, true, KeyPrior::default(), &p);
        assert_eq!((t, g.inline, g.strikes), (Transition::Surprise, false, 2));
        // One clean sample does not bring it back, as it would after a lone unverified spike.
        assert!(!b.observe(1_000, false, 0, &p).0.inline);
        // A second one soon after strikes as many octaves as it went past (5 ms / 100 µs: 6).
        for _ in 0..g.need(&p) {
            b.observe(1_000, false, 0, &p);
        }
        assert!(b.gate().inline);
        let (g, t) = b.observe_judged(verified, true, KeyPrior::default(), &p);
        assert_eq!((t, g.inline, g.strikes), (Transition::Surprise, false, 6));
        // A verified figure under the leave threshold (a preempted call learned at its CPU
        // time) is a clean sample.
        let b = Bucket::default();
        for _ in 0..20 {
            b.observe(1_000, false, 0, &p);
        }
        let cpu = Judged {
            ns: 1_500,
            verified: true,
        };
        let (g, t) = b.observe_judged(cpu, true, KeyPrior::default(), &p);
        assert_eq!((t, g.inline, g.strikes), (Transition::Stay, true, 0));
    }

    #[test]
    fn a_bimodal_bucket_settles_off_core() {
        // 95 % 5 µs, 5 % 20 ms, the same size: after a few surprises the streak it needs
        // outgrows the gaps between long calls.
        let mut rng = Rng(11);
        let (long_inline, changes, b) = simulate(20_000, |_| {
            if rng.next() % 20 == 0 {
                20_000_000
            } else {
                5_000
            }
        });
        assert!(
            long_inline <= 4,
            "{long_inline} long calls inline, {changes} changes"
        );
        assert!(!b.gate().inline);
        assert!(b.gate().strikes >= 4, "{:?}", b.gate());
    }

    #[test]
    fn a_heavy_tailed_bucket_stays_off_core() {
        // Pareto, median 30 µs, alpha 1.2, cut at 50 ms.
        let mut rng = Rng(5);
        let (long_inline, _, b) = simulate(20_000, |_| {
            let u = rng.unit().max(1e-12);
            let x = 30_000.0 / 2f64.powf(1.0 / 1.2) * u.powf(-1.0 / 1.2);
            x.min(50e6) as u64
        });
        // About 2 300 of the calls are over twice the budget; a handful may run inline while
        // the strikes build up, then none.
        assert!(long_inline <= 4, "{long_inline}");
        assert!(!b.gate().inline);
    }

    #[test]
    fn a_straddling_bucket_does_not_flip() {
        // Costs 25–50 µs, log-uniform: at the budget.
        let mut rng = Rng(3);
        let (_, changes, _) = simulate(5_000, |_| (25_000.0 * 2f64.powf(rng.unit())) as u64);
        assert!(changes <= 2, "{changes}");
        // 35–70 µs: some over the budget, none over twice it.
        let mut rng = Rng(4);
        let (_, changes, _) = simulate(5_000, |_| (35_000.0 * 2f64.powf(rng.unit())) as u64);
        assert!(changes <= 2, "{changes}");
    }

    #[test]
    fn a_constant_long_bucket_collects_no_strikes_and_comes_back_when_cheap() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..200 {
            b.observe(5_000_000, false, 0, &p);
        }
        assert_eq!(b.gate().strikes, 0);
        let mut n = 0;
        while b.prediction() > p.budget_ns {
            b.observe(1_000, false, 0, &p);
            n += 1;
            // 5 ms to 1 µs is 12 octaves: half an octave a sample while the error is over the
            // clamp (4 octaves), then an eighth of the rest.
            assert!(n <= 40, "still off-core after {n} samples");
        }
        assert!(n >= 10, "{n}");
    }

    #[test]
    fn strikes_are_forgiven_after_a_long_clean_streak() {
        let p = params();
        let b = Bucket::default();
        for _ in 0..10 {
            b.observe(1_000, false, 0, &p);
        }
        b.observe(10_000_000, true, 0, &p); // a preempted call: a lone spike
        b.observe(1_000, false, 0, &p);
        b.observe(200_000, false, 0, &p); // and another soon after: a strike
        assert_eq!(b.gate().strikes, 1);
        let need = b.gate().need(&p);
        for _ in 0..need * p.strike_decay {
            b.observe(1_000, b.gate().inline, 0, &p);
        }
        assert_eq!(b.gate().strikes, 0);
        assert!(b.gate().inline);
    }

    #[test]
    fn rare_spikes_on_a_busy_machine_do_not_make_a_cheap_bucket_wary() {
        // One sample in 200 preempted (10 ms): each sends the bucket off-core for a few calls,
        // none is a strike.
        let (_, _, b) = simulate(19_990, |i| if i % 200 == 199 { 10_000_000 } else { 8_000 });
        assert_eq!(b.gate().strikes, 0);
        assert!(b.gate().inline);
    }

    #[test]
    fn a_new_bucket_of_a_key_that_surprised_starts_wary() {
        let p = params();
        let b = Bucket::default();
        let (g, _) = b.observe(1_000, false, 3, &p);
        assert_eq!(g.strikes, 3);
        assert_eq!(g.need(&p), p.clean_streak * 8);
        // A first sample that ran inline (borrowed) starts inline, and a spike sends it off.
        let b = Bucket::default();
        let (g, t) = b.observe(1_000, true, 0, &p);
        assert!(g.inline && t == Transition::Stay);
        let b = Bucket::default();
        let (g, t) = b.observe(1_000_000, true, 0, &p);
        assert!(!g.inline && t == Transition::Spike);
    }
}
