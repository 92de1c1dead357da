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
pub const INLINE_BUDGET: Duration = Duration::from_micros(50);

/// An inline call that ran this many times longer than predicted (and past the budget) is a
/// misprediction: its bucket is moved off-core at once. 4 is twice the spread the model already
/// allows for ([`DEV_WEIGHT`] deviations), so ordinary noise never trips it.
pub const MISPREDICT_FACTOR: u32 = 4;

/// One decision in this many (per bucket) is flipped to check the other side: an inline call
/// goes off-core (refreshing the tier's overhead and the off-core run time), an off-core call
/// near the budget runs inline. 64 keeps the exploration share at 1.6 %. 0 turns it off.
pub const EXPLORE_EVERY: u64 = 64;

/// An off-core call is explored inline only when predicted under this many budgets, so an
/// exploration never holds the I/O thread for more than 2 × [`INLINE_BUDGET`].
pub const EXPLORE_INLINE_LIMIT: u32 = 2;

/// The most inline calls per timed one (a power of two). A pair of clock reads costs 40–90 ns
/// on these VMs, more than the whole fast-path budget, so the cheapest calls are timed only one
/// in 16 (~5 ns a call); a cost that drifts upward is still seen within 16 calls.
pub const SAMPLE_EVERY: u64 = 16;

/// Inline calls are timed one in `clock pair × TIMING_RATIO / prediction` (a power of two, at
/// most [`SAMPLE_EVERY`]): timing then costs at most 1/50 = 2 % of the calls' own time, and a
/// call predicted above 50 clock pairs (~3.5 µs here) is timed every time.
pub const TIMING_RATIO: u64 = 50;

/// Smoothing of the duration estimate, as a shift: each timed call moves the estimate 1/8 of
/// the way (in octaves) toward itself, the gain TCP's RTT estimator uses (RFC 6298).
pub const SMOOTHING_SHIFT: u32 = 3;

/// Smoothing of the spread (mean absolute deviation, in octaves), as a shift: 1/8, so a single
/// outlier widens the prediction by at most 2^(2 × 1/8 × its distance) rather than by the
/// whole outlier.
pub const DEV_SMOOTHING_SHIFT: u32 = 3;

/// The prediction is the estimate plus this many deviations (in octaves): a margin so that a
/// key whose cost varies is predicted at the upper part of its range, not its middle.
pub const DEV_WEIGHT: u32 = 2;

/// The spread assumed after the first sample of a bucket, in 1/256 octave: one octave, so a
/// single sample is trusted only up to a factor of 4 (with [`DEV_WEIGHT`] = 2).
pub const INITIAL_DEV: u32 = 256;

/// A misprediction is forgiven (the bucket's previous estimate comes back) when the very next
/// sample contradicts it and the bucket had no other misprediction in this many calls: a
/// preempted 1 µs call must not send its key off-core for long, a key that really drifted
/// keeps mispredicting and is not forgiven.
pub const FORGIVE_AFTER: u64 = 64;

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
    pub(crate) explore_inline_limit: u32,
    pub(crate) sample_every: u64,
    pub(crate) timing_ratio: u64,
    pub(crate) smoothing_shift: u32,
    pub(crate) dev_smoothing_shift: u32,
    pub(crate) dev_weight: u32,
    pub(crate) initial_dev: u32,
    pub(crate) forgive_after: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            inline_budget: INLINE_BUDGET,
            mispredict_factor: MISPREDICT_FACTOR,
            explore_every: EXPLORE_EVERY,
            explore_inline_limit: EXPLORE_INLINE_LIMIT,
            sample_every: SAMPLE_EVERY,
            timing_ratio: TIMING_RATIO,
            smoothing_shift: SMOOTHING_SHIFT,
            dev_smoothing_shift: DEV_SMOOTHING_SHIFT,
            dev_weight: DEV_WEIGHT,
            initial_dev: INITIAL_DEV,
            forgive_after: FORGIVE_AFTER,
        }
    }
}

impl PlacementConfig {
    /// The longest predicted call that may run inline (default [`INLINE_BUDGET`]).
    pub fn inline_budget(&mut self, d: Duration) -> &mut Self {
        self.inline_budget = d;
        self
    }

    /// Overrun factor that makes an inline call a misprediction (default
    /// [`MISPREDICT_FACTOR`], at least 1).
    pub fn mispredict_factor(&mut self, x: u32) -> &mut Self {
        self.mispredict_factor = x;
        self
    }

    /// One decision in `n` explores the other side (default [`EXPLORE_EVERY`]; 0 = never).
    pub fn explore_every(&mut self, n: u64) -> &mut Self {
        self.explore_every = n;
        self
    }

    /// Inline exploration only under this many budgets (default [`EXPLORE_INLINE_LIMIT`]).
    pub fn explore_inline_limit(&mut self, x: u32) -> &mut Self {
        self.explore_inline_limit = x;
        self
    }

    /// At most `n` inline calls per timed one, a power of two (default [`SAMPLE_EVERY`]; 1
    /// times every call).
    pub fn sample_every(&mut self, n: u64) -> &mut Self {
        self.sample_every = n;
        self
    }

    /// Calls predicted above `x` clock-read pairs are always timed (default [`TIMING_RATIO`]).
    pub fn timing_ratio(&mut self, x: u64) -> &mut Self {
        self.timing_ratio = x;
        self
    }

    /// Estimate smoothing shift (default [`SMOOTHING_SHIFT`], 0..=8).
    pub fn smoothing_shift(&mut self, s: u32) -> &mut Self {
        self.smoothing_shift = s;
        self
    }

    /// Spread smoothing shift (default [`DEV_SMOOTHING_SHIFT`], 0..=8).
    pub fn dev_smoothing_shift(&mut self, s: u32) -> &mut Self {
        self.dev_smoothing_shift = s;
        self
    }

    /// Deviations added to the estimate to predict (default [`DEV_WEIGHT`]).
    pub fn dev_weight(&mut self, k: u32) -> &mut Self {
        self.dev_weight = k;
        self
    }

    /// Spread after a bucket's first sample, in 1/256 octave (default [`INITIAL_DEV`]).
    pub fn initial_dev(&mut self, d: u32) -> &mut Self {
        self.initial_dev = d;
        self
    }

    /// Calls without a misprediction after which one is forgiven (default [`FORGIVE_AFTER`]).
    pub fn forgive_after(&mut self, n: u64) -> &mut Self {
        self.forgive_after = n;
        self
    }

    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.mispredict_factor == 0 {
            return Err(BuildError::invalid(
                "placement: the misprediction factor must be at least 1",
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
