//! The decision (DESIGN.md §4): inline while the prediction is under the inline budget, else the
//! off-core tier with the lowest expected completion, `overhead + queue delay + prediction`,
//! where each tier's overhead is learned from the trips its tasks made. Killable work skips
//! every in-process tier. A small exploration share flips decisions to keep the model honest.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::model::{UNKNOWN, exp2_fixed, log2_fixed};
use crate::executor::Executor;
use crate::tier::{ProcessPool, RemotePool, TierKind, TierStats};

/// What the caller said about this call, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// Nothing: the model decides.
    Model,
    /// An expected duration in ns: used as the prediction.
    Expect(u64),
    /// A probe said "long": off-core.
    Long,
    /// A probe said "short": inline.
    Short,
}

impl Hint {
    /// The prediction this hint stands for, or `None` to ask the model.
    pub(crate) fn prediction(self) -> Option<u64> {
        match self {
            Hint::Model => None,
            Hint::Expect(ns) => Some(ns),
            Hint::Long => Some(UNKNOWN),
            Hint::Short => Some(0),
        }
    }
}

/// The exploration mask of an inline bucket predicted at `pred` ns when the cheapest off-core
/// trip costs `overhead_ns`: one inline decision in `every × max(1, overhead / pred)`, rounded up
/// to a power of two, is explored off-core. An exploration costs about one trip, so this keeps
/// exploring under ~1/`every` of the key's own time: a 100 ns call is not sent on a 25 µs trip
/// one time in 64. `u64::MAX` (never) when `every` is 0.
pub(crate) fn explore_mask(every: u64, pred: u64, overhead_ns: u64) -> u64 {
    if every == 0 || pred == UNKNOWN {
        return u64::MAX;
    }
    let ratio = (overhead_ns / pred.max(1)).max(1);
    every
        .saturating_mul(ratio)
        .checked_next_power_of_two()
        .map_or(u64::MAX, |p| p - 1)
}

/// The sampling mask of an inline bucket predicted at `pred` ns: one call in
/// `clock_pair × ratio / pred` is timed, rounded up to a power of two, at most `max_every`; so
/// timing costs at most 1/`ratio` of the calls' own time. An unknown prediction times every call.
pub(crate) fn sample_mask(max_every: u64, clock_pair_ns: u64, ratio: u64, pred: u64) -> u64 {
    if pred == UNKNOWN {
        return 0;
    }
    let want = clock_pair_ns.saturating_mul(ratio).div_ceil(pred.max(1));
    want.clamp(1, max_every.max(1))
        .checked_next_power_of_two()
        .map_or(u64::MAX, |p| p - 1)
}

/// Whether inline decision `n` is explored under `mask`.
#[inline]
pub(crate) fn explores_masked(n: u64, mask: u64) -> bool {
    n & mask == mask
}

/// Expected completion on a tier, saturating: `overhead + queue delay + predicted` (an unknown
/// prediction counts as 0: it is the same for every tier, so only overheads decide).
pub(crate) fn expected_completion(overhead_ns: u64, queue_delay_ns: u64, predicted: u64) -> u64 {
    let p = if predicted == UNKNOWN { 0 } else { predicted };
    overhead_ns.saturating_add(queue_delay_ns).saturating_add(p)
}

/// Delay before a new task starts on a busy tier: `queued × mean run time / workers`.
pub(crate) fn queue_delay(queued: usize, mean_run_ns: u64, workers: usize) -> u64 {
    (queued as u64).saturating_mul(mean_run_ns) / workers.max(1) as u64
}

/// An off-core tier placement may send calls to: an [`Executor`] (closures and remote
/// functions) or a remote-function tier ([`ProcessPool`], an MPI cluster: remote functions
/// only, see [`Call::remote`](super::Call::remote)). Made with `From`, so
/// [`Placement::new`](super::Placement::new) and
/// [`SchedulerBuilder::placement_tier`](crate::SchedulerBuilder::placement_tier) take any of them.
#[derive(Clone, Debug)]
pub struct PlacementTier {
    backend: Backend,
}

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// Runs closures (and remote functions, as the closure that calls them).
    Exec(Executor),
    /// Runs registered remote functions only.
    Remote(RemotePool),
}

impl PlacementTier {
    /// The tier's kind.
    pub fn kind(&self) -> TierKind {
        match &self.backend {
            Backend::Exec(e) => e.tier(),
            Backend::Remote(p) => p.tier(),
        }
    }

    /// Whether the tier runs closures (an [`Executor`]); a remote-function tier does not.
    pub fn runs_closures(&self) -> bool {
        matches!(self.backend, Backend::Exec(_))
    }
}

impl From<Executor> for PlacementTier {
    fn from(e: Executor) -> Self {
        PlacementTier {
            backend: Backend::Exec(e),
        }
    }
}

impl From<RemotePool> for PlacementTier {
    fn from(p: RemotePool) -> Self {
        let backend = match p {
            // In-process: the executor runs closures too.
            RemotePool::Local(e) => Backend::Exec(e),
            other => Backend::Remote(other),
        };
        PlacementTier { backend }
    }
}

impl From<ProcessPool> for PlacementTier {
    fn from(p: ProcessPool) -> Self {
        RemotePool::from(p).into()
    }
}

#[cfg(feature = "mpi")]
impl From<crate::tier::mpi::Cluster> for PlacementTier {
    fn from(c: crate::tier::mpi::Cluster) -> Self {
        RemotePool::from(c).into()
    }
}

/// A trip component learned in the log domain (1/256 octave), smoothed with the model's gain:
/// one 30 ms outlier among 5 µs trips moves it by 12/8 octave for one sample and is then
/// forgotten, where a linear mean would carry milliseconds for dozens of trips.
#[derive(Debug, Default)]
struct LogEwma {
    log: AtomicI64,
    samples: AtomicU64,
}

impl LogEwma {
    fn learn(&self, ns: u64, shift: u32) {
        let s = log2_fixed(ns.max(1));
        let n = self.samples.fetch_add(1, Relaxed);
        let old = self.log.load(Relaxed);
        let new = if n == 0 {
            s
        } else {
            old + (s - old) / (1i64 << shift)
        };
        self.log.store(new, Relaxed);
    }

    fn ns(&self) -> u64 {
        if self.samples.load(Relaxed) == 0 {
            0
        } else {
            exp2_fixed(self.log.load(Relaxed))
        }
    }
}

/// An off-core tier as placement sees it: where it sends work, and its learned hand-off.
///
/// The hand-off is learned in two parts from each task's [`RunInfo`](crate::RunInfo):
/// **start** (submit → the task starts, `queued`), learned only from tasks that found a worker
/// free (placement's own calls in flight on the tier fewer than its workers, its queue empty):
/// otherwise that time is queueing; and **finish** (the task ends → the caller has its value,
/// `wall − queued − run_time`), learned from every task. Queueing is not learned: it is read
/// live from the tier's queue at decision time ([`queue_delay`]).
pub(crate) struct TierSlot {
    pub(crate) backend: Backend,
    pub(crate) kind: TierKind,
    start: LogEwma,
    finish: LogEwma,
    in_flight: AtomicUsize,
    shift: u32,
}

impl fmt::Debug for TierSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierSlot")
            .field("kind", &self.kind)
            .field("overhead_ns", &self.overhead_ns())
            .field("samples", &self.samples())
            .finish()
    }
}

/// Placement's call in flight on a tier; counted down when dropped.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl TierSlot {
    pub(crate) fn new(tier: impl Into<PlacementTier>, shift: u32) -> Self {
        let tier = tier.into();
        TierSlot {
            kind: tier.kind(),
            backend: tier.backend,
            start: LogEwma::default(),
            finish: LogEwma::default(),
            in_flight: AtomicUsize::new(0),
            shift,
        }
    }

    /// The tier's queue and run-time figures now.
    pub(crate) fn stats(&self) -> TierStats {
        match &self.backend {
            Backend::Exec(e) => e.stats(),
            Backend::Remote(p) => p.stats(),
        }
    }

    /// Whether the tier can run a closure (else only remote functions).
    pub(crate) fn runs_closures(&self) -> bool {
        matches!(self.backend, Backend::Exec(_))
    }

    /// Learned hand-off, start plus finish (0 until the first trip: an untried tier looks cheap
    /// and gets tried).
    pub(crate) fn overhead_ns(&self) -> u64 {
        self.start.ns().saturating_add(self.finish.ns())
    }

    /// Trips folded in.
    pub(crate) fn samples(&self) -> u64 {
        self.finish.samples.load(Relaxed)
    }

    /// Counts a call going to this tier now; the returned guard counts it out. `true` with it
    /// when a worker should be free for it (fewer of placement's calls in flight than workers,
    /// and nothing queued): then its start time is a hand-off, not queueing.
    pub(crate) fn enter(&self) -> (InFlight<'_>, bool) {
        let before = self.in_flight.fetch_add(1, Relaxed);
        let s = self.stats();
        let free = before < s.workers.max(1) && s.queued == 0;
        (InFlight(&self.in_flight), free)
    }

    /// Folds in one trip: `start_ns` (submit → start; `None` when the task may have queued) and
    /// `finish_ns` (end of the run → the caller has the value).
    pub(crate) fn learn(&self, start_ns: Option<u64>, finish_ns: u64) {
        if let Some(s) = start_ns {
            self.start.learn(s, self.shift);
        }
        self.finish.learn(finish_ns, self.shift);
    }

    /// The expected completion of a call predicted at `predicted` ns on this tier, now.
    fn expected(&self, predicted: u64) -> u64 {
        let s = self.stats();
        let mean = u64::try_from(s.mean_run_time.as_nanos()).unwrap_or(u64::MAX);
        let q = queue_delay(s.queued, mean, s.workers);
        expected_completion(self.overhead_ns(), q, predicted)
    }
}

/// The off-core tier for a call: the cheapest eligible one by expected completion. Killable
/// calls may only use killable tiers; a closure (`remote` false) only tiers that run closures.
/// `None` when no tier is eligible.
pub(crate) fn pick(
    tiers: &[TierSlot],
    predicted: u64,
    killable: bool,
    remote: bool,
) -> Option<&TierSlot> {
    let mut eligible = tiers
        .iter()
        .filter(|t| (!killable || t.kind.is_killable()) && (remote || t.runs_closures()));
    let first = eligible.next()?;
    let Some(second) = eligible.next() else {
        return Some(first);
    };
    let mut best = (first.expected(predicted), first);
    for t in std::iter::once(second).chain(eligible) {
        let c = t.expected(predicted);
        if c < best.0 {
            best = (c, t);
        }
    }
    Some(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exploration_of_cheap_calls_is_scaled_by_the_trip_they_would_make() {
        // A 2 µs call and a 20 µs trip: 64 × 10 = 640, rounded to 1024.
        let m = explore_mask(64, 2_000, 20_000);
        assert_eq!(m, 1023);
        assert_eq!((0..4096).filter(|&n| explores_masked(n, m)).count(), 4);
        // A call longer than the trip: plain 1 in 64.
        assert_eq!(explore_mask(64, 40_000, 20_000), 63);
        // Unknown overhead: 1 in 64.
        assert_eq!(explore_mask(64, 100, 0), 63);
        // Off, and unknown prediction: never.
        assert_eq!(explore_mask(0, 100, 0), u64::MAX);
        assert_eq!(explore_mask(64, UNKNOWN, 0), u64::MAX);
        assert!(!explores_masked(12345, u64::MAX));
    }

    #[test]
    fn timing_is_sampled_by_how_cheap_the_call_is() {
        // 70 ns of clock reads, ratio 50: a 100 ns call is timed at the cap, 1 in 16.
        assert_eq!(sample_mask(16, 70, 50, 100), 15);
        // A 1 µs call: 3500 / 1000 = 3.5, so 1 in 4.
        assert_eq!(sample_mask(16, 70, 50, 1_000), 3);
        // A 5 µs call: every time.
        assert_eq!(sample_mask(16, 70, 50, 5_000), 0);
        assert_eq!(sample_mask(16, 70, 50, UNKNOWN), 0);
        assert_eq!(sample_mask(16, 70, 50, 0), 15);
        assert_eq!(sample_mask(1, 70, 50, 1), 0);
    }

    #[test]
    fn expected_completion_adds_and_saturates() {
        assert_eq!(expected_completion(20_000, 5_000, 1_000_000), 1_025_000);
        assert_eq!(expected_completion(20_000, 0, UNKNOWN), 20_000);
        assert_eq!(expected_completion(u64::MAX, 1, 1), u64::MAX);
    }

    #[test]
    fn queue_delay_spreads_over_workers() {
        assert_eq!(queue_delay(10, 2_000, 2), 10_000);
        assert_eq!(queue_delay(0, 2_000, 2), 0);
        assert_eq!(queue_delay(3, 1_000, 0), 3_000);
    }

    #[test]
    fn hints_stand_for_predictions() {
        assert_eq!(Hint::Model.prediction(), None);
        assert_eq!(Hint::Short.prediction(), Some(0));
        assert_eq!(Hint::Long.prediction(), Some(UNKNOWN));
        assert_eq!(Hint::Expect(7).prediction(), Some(7));
    }

    #[test]
    fn overhead_is_the_hand_off_and_forgets_queueing() {
        let exec = Executor::inline();
        let t = TierSlot::new(exec, 3);
        assert_eq!(t.overhead_ns(), 0);
        t.learn(Some(16_384), 4_096);
        let near = |v: u64, want: u64| v.abs_diff(want) * 100 <= want;
        assert!(near(t.overhead_ns(), 20_480), "{}", t.overhead_ns());
        // A trip that queued: its start is not learned, only its finish.
        for _ in 0..50 {
            t.learn(None, 4_096);
        }
        assert!(near(t.overhead_ns(), 20_480), "{}", t.overhead_ns());
        // One outlier finish (a busy caller thread) moves it an eighth of the way in octaves.
        t.learn(None, 4_096 << 12);
        assert!(t.overhead_ns() < 30_000, "{}", t.overhead_ns());
        assert_eq!(t.samples(), 52);
    }

    #[test]
    fn killable_calls_skip_in_process_tiers() {
        let tiers = [TierSlot::new(Executor::inline(), 3)];
        assert!(pick(&tiers, 1_000, true, false).is_none());
        assert!(pick(&tiers, 1_000, true, true).is_none());
        assert_eq!(
            pick(&tiers, 1_000, false, false).map(|t| t.kind),
            Some(TierKind::Inline)
        );
    }

    #[test]
    fn the_cheaper_tier_wins() {
        let a = TierSlot::new(Executor::inline(), 3);
        let b = TierSlot::new(Executor::inline(), 3);
        a.learn(Some(40_000), 10_000);
        b.learn(Some(8_000), 2_000);
        let b_overhead = Some(b.overhead_ns());
        let tiers = [a, b];
        let chosen = pick(&tiers, 1_000, false, false).map(|t| t.overhead_ns());
        assert_eq!(chosen, b_overhead);
    }
}
