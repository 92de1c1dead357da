//! The tuning numbers of placement: each a named constant saying why it has its value, and
//! [`PlacementConfig`] to override them (through
//! [`SchedulerBuilder::placement`](crate::SchedulerBuilder::placement) or [`Placement::new`]).
//! The formulas they feed are in `src/placement/README.md`.
//!
//! [`Placement::new`]: super::Placement::new

use std::time::Duration;

use crate::error::BuildError;

/// The longest a call may be predicted to take and still run inline on the I/O thread.
///
/// Tokio's guidance is 10–100 µs between awaits; 50 µs is the middle of it, and about twice the
/// ~25 µs it costs to hand work to a parked thread on the machines this was measured on, so an
/// inline call never holds the runtime much longer than two hand-offs would have cost.
pub(crate) const INLINE_BUDGET: Duration = Duration::from_micros(50);

/// An inline call that ran this many times longer than predicted (and past the budget) is
/// counted as a misprediction (in the stats and as a `tracing` event). 4 is twice the spread the
/// model already allows for ([`DEV_WEIGHT`] deviations), so ordinary noise never trips it. What
/// moves a bucket off-core is the gate: a spike over [`LEAVE_FACTOR`] budgets.
pub(crate) const MISPREDICT_FACTOR: u32 = 4;

/// One inline decision in this many (per bucket, scaled by trip / prediction) is sent off-core
/// instead, refreshing the tier's learned overhead. 64 keeps the exploration share under 1.6 %.
/// 0 turns it off. Off-core decisions are never explored inline: off-core calls are timed
/// where they run, so the model of an off-core bucket stays honest without putting a possibly
/// long call on the I/O thread.
pub(crate) const EXPLORE_EVERY: u64 = 64;

/// Hysteresis and spikes, in budgets: an inline bucket stays inline until its upper estimate
/// passes `LEAVE_FACTOR × budget`, and a sample above that is a **spike** (a call the I/O thread
/// must not run). 2 makes the band between entering (≤ budget) and leaving a factor of two: a
/// bucket whose cost sits at the budget does not flip call by call, and an inline call is never
/// expected to hold the I/O thread longer than two budgets.
pub(crate) const LEAVE_FACTOR: u32 = 2;

/// Clean samples in a row (no spike over [`LEAVE_FACTOR`] budgets) a bucket needs before it
/// goes inline, doubled per strike. 4: after four clean samples, a cost that is a function of the size is known well
/// enough (its estimate is under the budget too); a bucket that surprised `k` times needs
/// `4 × 2^k`, so a key whose long calls come every ~20 calls needs more than 20 after three
/// surprises and stays off-core (the "rule of three": `n` clean samples bound the over-budget
/// rate below ~3/n).
pub(crate) const CLEAN_STREAK: u64 = 4;

/// The most strikes a bucket keeps: the streak it needs stops doubling at `4 × 2^16`.
pub(crate) const MAX_STRIKES: u32 = 16;

/// A strike is forgiven after this many times the streak the bucket needs, clean: a preempted
/// call long ago does not keep a cheap key wary forever, a key whose long calls are merely rare
/// (one in ~`4 × 16 × 2^k`) does not get forgiven between them. It also sets the lone-spike
/// horizon: a spike with no other in the last `STRIKE_DECAY × CLEAN_STREAK` (64) samples adds
/// no strike (on a busy machine a preempted call looks long).
pub(crate) const STRIKE_DECAY: u64 = 16;

/// An inline bucket times every call until its clean streak reaches this (times `2^strikes`);
/// only then are its cheapest calls sampled (one in [`SAMPLE_EVERY`]). So a long call among
/// cheap ones is seen the first time it runs inline, while a key that has been clean for 1024
/// calls pays for the clock only on a sixteenth of its calls.
pub(crate) const SAMPLE_AFTER: u64 = 1024;

/// The most inline calls per timed one (a power of two). A pair of clock reads costs 40–90 ns
/// on these VMs, more than the whole fast-path budget, so the cheapest calls are timed only one
/// in 16 (~5 ns a call); a cost that drifts upward is still seen within 16 calls.
pub(crate) const SAMPLE_EVERY: u64 = 16;

/// Inline calls are timed one in `clock pair × TIMING_RATIO / prediction` (a power of two, at
/// most [`SAMPLE_EVERY`]): timing then costs at most 1/50 = 2 % of the calls' own time, and a
/// call predicted above 50 clock pairs (~3.5 µs here) is timed every time.
pub(crate) const TIMING_RATIO: u64 = 50;

/// Smoothing of the duration estimate, as a shift: each timed call moves the estimate 1/8 of
/// the way (in octaves) toward itself, the gain TCP's RTT estimator uses (RFC 6298).
pub(crate) const SMOOTHING_SHIFT: u32 = 3;

/// Smoothing of the spread (mean absolute deviation, in octaves), as a shift: 1/8, so a single
/// outlier widens the prediction by at most 2^(2 × 1/8 × its distance) rather than by the
/// whole outlier.
pub(crate) const DEV_SMOOTHING_SHIFT: u32 = 3;

/// The prediction is the estimate plus this many deviations (in octaves): a margin so that a
/// key whose cost varies is predicted at the upper part of its range, not its middle.
pub(crate) const DEV_WEIGHT: u32 = 2;

/// The spread assumed after the first sample of a bucket, in 1/256 octave: one octave, so a
/// single sample is trusted only up to a factor of 4 (with [`DEV_WEIGHT`] = 2).
pub(crate) const INITIAL_DEV: u32 = 256;

/// The placement settings; every field starts at its documented constant.
///
/// ```
/// use std::time::Duration;
/// let mut cfg = offload::PlacementConfig::default();
/// cfg.inline_budget(Duration::from_micros(100)).explore_every(0);
/// let sched = offload::Scheduler::builder().placement(cfg).build()?;
/// # drop(sched);
/// # Ok::<(), offload::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementConfig {
    pub(crate) inline_budget: Duration,
    pub(crate) mispredict_factor: u32,
    pub(crate) explore_every: u64,
    pub(crate) leave_factor: u32,
    pub(crate) clean_streak: u64,
    pub(crate) max_strikes: u32,
    pub(crate) strike_decay: u64,
    pub(crate) sample_after: u64,
    pub(crate) sample_every: u64,
    pub(crate) timing_ratio: u64,
    pub(crate) smoothing_shift: u32,
    pub(crate) dev_smoothing_shift: u32,
    pub(crate) dev_weight: u32,
    pub(crate) initial_dev: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            inline_budget: INLINE_BUDGET,
            mispredict_factor: MISPREDICT_FACTOR,
            explore_every: EXPLORE_EVERY,
            leave_factor: LEAVE_FACTOR,
            clean_streak: CLEAN_STREAK,
            max_strikes: MAX_STRIKES,
            strike_decay: STRIKE_DECAY,
            sample_after: SAMPLE_AFTER,
            sample_every: SAMPLE_EVERY,
            timing_ratio: TIMING_RATIO,
            smoothing_shift: SMOOTHING_SHIFT,
            dev_smoothing_shift: DEV_SMOOTHING_SHIFT,
            dev_weight: DEV_WEIGHT,
            initial_dev: INITIAL_DEV,
        }
    }
}

impl PlacementConfig {
    /// The inline budget in force: the longest predicted call that may run inline (what
    /// [`inline_budget`](Self::inline_budget) set; 50 µs by default).
    pub fn budget(&self) -> Duration {
        self.inline_budget
    }

    /// The longest predicted call that may run inline (default 50 µs).
    pub fn inline_budget(&mut self, d: Duration) -> &mut Self {
        self.inline_budget = d;
        self
    }

    /// Overrun factor that makes an inline call a misprediction (default
    /// 4, at least 1).
    pub fn mispredict_factor(&mut self, x: u32) -> &mut Self {
        self.mispredict_factor = x;
        self
    }

    /// One decision in `n` explores the other side (default 64; 0 = never).
    pub fn explore_every(&mut self, n: u64) -> &mut Self {
        self.explore_every = n;
        self
    }

    /// Hysteresis band and spike threshold, in budgets (default 2, at least 1).
    pub fn leave_factor(&mut self, x: u32) -> &mut Self {
        self.leave_factor = x;
        self
    }

    /// Clean samples in a row needed to go inline, before strikes (default 4,
    /// at least 1).
    pub fn clean_streak(&mut self, n: u64) -> &mut Self {
        self.clean_streak = n;
        self
    }

    /// The most strikes a bucket keeps (default 16, at most 32).
    pub fn max_strikes(&mut self, n: u32) -> &mut Self {
        self.max_strikes = n;
        self
    }

    /// A strike is forgiven after this many times the needed streak, clean (default
    /// 16).
    pub fn strike_decay(&mut self, n: u64) -> &mut Self {
        self.strike_decay = n;
        self
    }

    /// Clean streak (times `2^strikes`) after which an inline bucket's cheapest calls are
    /// sampled rather than all timed (default 1024).
    pub fn sample_after(&mut self, n: u64) -> &mut Self {
        self.sample_after = n;
        self
    }

    /// At most `n` inline calls per timed one, a power of two (default 16; 1
    /// times every call).
    pub fn sample_every(&mut self, n: u64) -> &mut Self {
        self.sample_every = n;
        self
    }

    /// Calls predicted above `x` clock-read pairs are always timed (default 50).
    pub fn timing_ratio(&mut self, x: u64) -> &mut Self {
        self.timing_ratio = x;
        self
    }

    /// Estimate smoothing shift (default 3, 0..=8).
    pub fn smoothing_shift(&mut self, s: u32) -> &mut Self {
        self.smoothing_shift = s;
        self
    }

    /// Spread smoothing shift (default 3, 0..=8).
    pub fn dev_smoothing_shift(&mut self, s: u32) -> &mut Self {
        self.dev_smoothing_shift = s;
        self
    }

    /// Deviations added to the estimate to predict (default 2).
    pub fn dev_weight(&mut self, k: u32) -> &mut Self {
        self.dev_weight = k;
        self
    }

    /// Spread after a bucket's first sample, in 1/256 octave (default 256).
    pub fn initial_dev(&mut self, d: u32) -> &mut Self {
        self.initial_dev = d;
        self
    }

    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.mispredict_factor == 0 {
            return Err(BuildError::invalid(
                "placement: the misprediction factor must be at least 1",
            ));
        }
        if self.leave_factor == 0 || self.clean_streak == 0 || self.max_strikes > 32 {
            return Err(BuildError::invalid(
                "placement: leave_factor and clean_streak must be at least 1, max_strikes at most 32",
            ));
        }
        if self.sample_every == 0 || !self.sample_every.is_power_of_two() {
            return Err(BuildError::invalid(
                "placement: sample_every must be a power of two (1 times every call)",
            ));
        }
        if self.smoothing_shift > 8 || self.dev_smoothing_shift > 8 {
            return Err(BuildError::invalid(
                "placement: smoothing shifts must be in 0..=8",
            ));
        }
        if self.dev_weight > 16 || self.initial_dev > 16 * 256 {
            return Err(BuildError::invalid(
                "placement: dev_weight must be at most 16 and initial_dev at most 16 octaves",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        assert!(PlacementConfig::default().validate().is_ok());
        assert!(
            PlacementConfig::default()
                .sample_every(6)
                .validate()
                .is_err()
        );
        assert!(
            PlacementConfig::default()
                .sample_every(0)
                .validate()
                .is_err()
        );
        assert!(
            PlacementConfig::default()
                .mispredict_factor(0)
                .validate()
                .is_err()
        );
        assert!(
            PlacementConfig::default()
                .smoothing_shift(9)
                .validate()
                .is_err()
        );
    }
}
