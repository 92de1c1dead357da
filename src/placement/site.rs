//! Call sites and the calls through them: the fast path (decided inline), the off-core path,
//! and the staged call (Listing 4 of the source article, without the generator trick).
//!
//! The fast path is three loads from the bucket's cache line (gate value, sampling and
//! exploration masks), one compare, one `fetch_add` (the bucket's inline counter, which picks
//! the sampled and explored calls), the call itself under `catch_unwind` (free unless it
//! panics), and on the timed calls only (every call until the bucket is confident, then at most
//! 2 % of the calls' time, see [`TIMING_RATIO`]) two clock reads and the model update. No
//! allocation, no lock, no string hashing: the key was interned when the site was made.
//!
//! [`TIMING_RATIO`]: super::TIMING_RATIO

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{Gate, Transition, UNKNOWN, UNSIZED, is_overrun, size_bucket};
use super::policy::{self, Backend, Hint, TierSlot, explore_mask, explores_masked, sample_mask};
use super::stats::{KeyStats, tier_index};
use super::usage::{Judged, Usage};
use super::{Shared, SiteState};
use crate::error::{Error, ErrorKind, panic_message};
use crate::remote::RemoteFn;
use crate::task::TaskHandle;
use crate::tier::TierKind;

const TARGET: &str = "offload::placement";

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

fn shown(pred: u64) -> Option<u64> {
    (pred != UNKNOWN).then_some(pred)
}

/// The prediction as the thread tier takes it (`None`: not known yet), so that it serves work
/// predicted short, and unknown keys, apart from work predicted long.
fn expected(pred: u64) -> Option<Duration> {
    shown(pred).map(Duration::from_nanos)
}

/// Work on its way off-core: a closure (tiers that run closures only) or a registered remote
/// function with its arguments (any tier: an executor runs it as a closure).
trait OffCoreWork<T> {
    /// Whether tiers that run only remote functions can take it.
    const REMOTE: bool;

    /// Submits the work to `slot`'s tier, named `key`; `pred` is the call's predicted
    /// duration in ns ([`UNKNOWN`] when there is none), for a tier that orders work by it.
    fn submit(
        self,
        slot: &TierSlot,
        key: Arc<str>,
        pred: u64,
    ) -> impl Future<Output = Result<TaskHandle<T>, Error>> + Send;
}

/// Cancels the task when the call's future is dropped before its outcome: a queued task is
/// withdrawn (as any dropped handle does), and a running one on a killable tier is stopped (its
/// worker killed), since nobody will read its result.
struct CancelOnDrop<T>(Option<TaskHandle<T>>);

impl<T> Drop for CancelOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.as_ref().filter(|h| !h.is_finished()) {
            h.cancel();
        }
    }
}

/// A closure.
struct Closure<F>(F);

impl<F, T> OffCoreWork<T> for Closure<F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    const REMOTE: bool = false;

    async fn submit(
        self,
        slot: &TierSlot,
        key: Arc<str>,
        pred: u64,
    ) -> Result<TaskHandle<T>, Error> {
        match &slot.backend {
            Backend::Exec(e) => e.submit_expected(key, expected(pred), self.0).await,
            // `pick` never chooses such a tier for a closure; refuse rather than panic.
            Backend::Remote(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "a closure cannot run on a remote-function tier",
            )
            .with_task(key)),
        }
    }
}

/// A remote function and its arguments.
struct Remote<'a, A, R> {
    f: &'a RemoteFn<A, R>,
    args: A,
}

impl<A, R> OffCoreWork<R> for Remote<'_, A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    const REMOTE: bool = true;

    async fn submit(
        self,
        slot: &TierSlot,
        key: Arc<str>,
        pred: u64,
    ) -> Result<TaskHandle<R>, Error> {
        let Remote { f, args } = self;
        match &slot.backend {
            Backend::Exec(e) => {
                let func = f.function();
                e.submit_expected(key, expected(pred), move || func(args))
                    .await
            }
            Backend::Remote(p) => p.submit(f, args).await,
        }
    }
}

/// How a call was routed.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Run here; `n` is the bucket's inline-decision index, `pred` the prediction used.
    Inline { n: u64, pred: u64 },
    /// Send off-core; `pred` is the duration predicted for the call.
    OffCore { pred: u64 },
}

/// A named place in the program that makes CPU-heavy calls; see the [module docs](super).
///
/// Cheap to clone (two `Arc`s). Every call through it is placed by the model of its key.
#[derive(Clone)]
pub struct CallSite {
    state: Arc<SiteState>,
    shared: Arc<Shared>,
    killable: bool,
}

impl fmt::Debug for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSite")
            .field("key", &self.state.key)
            .field("killable", &self.killable)
            .field("prediction", &self.prediction(None))
            .finish()
    }
}

/// The outcome of the first part of a [staged call](CallSite::staged).
pub enum Stage<T, G> {
    /// The first part finished the work: this is the result, nothing goes off-core.
    Done(T),
    /// The rest is long: run this off-core and return its result.
    Offload(G),
}

impl<T, G> fmt::Debug for Stage<T, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Done(_) => "Stage::Done(..)",
            Stage::Offload(_) => "Stage::Offload(..)",
        })
    }
}

/// One call being set up: a size hint, a user probe, then [`call`](Call::call) or
/// [`staged`](Call::staged). Made by [`CallSite::sized`], [`CallSite::expect`] and
/// [`CallSite::probe`]; the options chain.
#[derive(Debug, Clone, Copy)]
#[must_use = "a Call does nothing until .call(..) or .staged(..) is awaited"]
pub struct Call<'a> {
    site: &'a CallSite,
    bucket: usize,
    hint: Hint,
}

impl CallSite {
    pub(crate) fn new(state: Arc<SiteState>, shared: Arc<Shared>) -> Self {
        CallSite {
            state,
            shared,
            killable: false,
        }
    }

    /// The key this site was made with.
    pub fn key(&self) -> &str {
        &self.state.key
    }

    /// Marks the site's work as needing isolation: it never runs inline nor on an in-process
    /// tier, only on a killable tier (processes, cluster). Those run registered functions, so
    /// killable work goes through [`Call::remote`]. Without a killable tier attached, calls
    /// fail with [`ErrorKind::Unsupported`], and so do closures when the killable tiers run
    /// only registered functions.
    pub fn killable(mut self) -> Self {
        self.killable = true;
        self
    }

    /// Whether [`killable`](Self::killable) was set.
    pub fn is_killable(&self) -> bool {
        self.killable
    }

    fn with(&self, bucket: usize, hint: Hint) -> Call<'_> {
        Call {
            site: self,
            bucket,
            hint,
        }
    }

    /// A call with a size hint (bytes, items, n): the model learns duration per log2 of it.
    ///
    /// ```
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let checksum = sched.site("checksum");
    /// let data = vec![7u8; 4096];
    /// // The model learns this key's duration per size band of `data.len()`.
    /// let sum = sched.block_on(
    ///     checksum
    ///         .sized(data.len() as u64)
    ///         .call(move || data.iter().map(|&b| u64::from(b)).sum::<u64>()),
    /// )?;
    /// assert_eq!(sum, 7 * 4096);
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sized(&self, n: u64) -> Call<'_> {
        self.with(size_bucket(n), Hint::Model)
    }

    /// A call the caller expects to take `d`: that is the prediction, whatever the model says.
    ///
    /// ```
    /// use std::time::Duration;
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let render = sched.site("render");
    /// // 20 ms is far over the inline budget: this call goes off-core at once.
    /// let px = sched.block_on(render.expect(Duration::from_millis(20)).call(|| 640 * 480))?;
    /// assert_eq!(px, 307_200);
    /// assert_eq!(render.stats().threads, 1);
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn expect(&self, d: Duration) -> Call<'_> {
        self.with(UNSIZED, Hint::Expect(nanos(d)))
    }

    /// A call with a user probe, evaluated now: `true` means "long" (off-core), `false` means
    /// "short" (inline). It overrides the model.
    ///
    /// ```
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let sort = sched.site("sort");
    /// let mut v: Vec<u32> = (0..100).rev().collect();
    /// let len = v.len();
    /// // The caller knows its own cost law: short inputs are sorted inline.
    /// let v = sched.block_on(sort.probe(|| len > 100_000).call(move || {
    ///     v.sort_unstable();
    ///     v
    /// }))?;
    /// assert_eq!(v[0], 0);
    /// assert_eq!(sort.stats().inline, 1);
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn probe(&self, long: impl FnOnce() -> bool) -> Call<'_> {
        self.with(UNSIZED, if long() { Hint::Long } else { Hint::Short })
    }

    /// Runs `f` where the model says: inline when its prediction is under the inline budget,
    /// else off-core. See [`Call::call`].
    ///
    /// ```
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let fib = sched.site("fib");
    /// fn fib_of(n: u64) -> u64 { (0..n).fold((0u64, 1u64), |(a, b), _| (b, a + b)).0 }
    /// // A key never seen goes off-core; once learned cheap, its calls run inline.
    /// for _ in 0..50 {
    ///     assert_eq!(sched.block_on(fib.call(|| fib_of(50)))?, 12_586_269_025);
    /// }
    /// let s = fib.stats();
    /// assert_eq!(s.calls, 50);
    /// assert!(s.inline > 0 && s.off_core() > 0, "{s}");
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call<F, T>(&self, f: F) -> impl Future<Output = Result<T, Error>> + use<'_, F, T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.with(UNSIZED, Hint::Model).call(f)
    }

    /// Calls the registered function `f` with `args` where the model says. See
    /// [`Call::remote`].
    pub fn remote<'a, A, R>(
        &'a self,
        f: &'a RemoteFn<A, R>,
        args: A,
    ) -> impl Future<Output = Result<R, Error>> + use<'a, A, R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        self.with(UNSIZED, Hint::Model).remote(f, args)
    }

    /// A staged call: `first` runs inline, and decides with what it computed whether the rest
    /// goes off-core. See [`Call::staged`].
    ///
    /// ```
    /// use offload::Stage;
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let site = sched.site("parse-then-index");
    /// let words = sched.block_on(site.staged(|| {
    ///     let words: Vec<String> = "a short text".split(' ').map(String::from).collect();
    ///     if words.len() < 1_000 {
    ///         Stage::Done(words.len()) // small: finish here
    ///     } else {
    ///         Stage::Offload(move || words.len()) // large: the rest goes off-core
    ///     }
    /// }))?;
    /// assert_eq!(words, 3);
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn staged<F, G, T>(
        &self,
        first: F,
    ) -> impl Future<Output = Result<T, Error>> + use<'_, F, G, T>
    where
        F: FnOnce() -> Stage<T, G>,
        G: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.with(UNSIZED, Hint::Model).staged(first)
    }

    /// What the model predicts now for a call of this size (`None`: no size hint), or `None`
    /// when it does not know yet (such a call goes off-core).
    pub fn prediction(&self, size: Option<u64>) -> Option<Duration> {
        let idx = size.map_or(UNSIZED, size_bucket);
        shown(self.state.predict(idx, &self.shared.params)).map(Duration::from_nanos)
    }

    /// The inline budget of this site's placement: a call predicted longer goes off-core.
    pub fn budget(&self) -> Duration {
        self.shared.config.budget()
    }

    /// A snapshot of this site's key.
    pub fn stats(&self) -> KeyStats {
        self.state.snapshot()
    }

    fn panicked(&self, payload: Box<dyn Any + Send>) -> Error {
        Error::panicked(panic_message(&*payload), None)
            .with_task(self.state.key.clone())
            .with_tier(TierKind::Inline)
    }

    /// Why no off-core tier can take this call.
    fn no_tier(&self, remote: bool) -> Error {
        let killable_remote = self
            .shared
            .tiers
            .iter()
            .any(|t| t.kind.is_killable() && !t.runs_closures());
        let text = if self.killable && !remote && killable_remote {
            "the call site is marked killable and its killable tiers (processes, cluster) run \
             registered functions only: make the work a RemoteFn and call it with \
             .remote(&FUNCTION, args), or drop .killable() to let the thread tier run the \
             closure (a running thread cannot be stopped)"
        } else if self.killable {
            "the call site is marked killable, but no killable tier (processes, cluster) is \
             attached: attach one with SchedulerBuilder::placement_tier (or Placement::new), or \
             drop .killable() to let the thread tier run it (a running thread cannot be stopped)"
        } else {
            "no off-core tier of this placement runs closures: attach an Executor with \
             SchedulerBuilder::placement_tier (or Placement::new), or call a RemoteFn with \
             .remote(&FUNCTION, args)"
        };
        Error::new(ErrorKind::Unsupported, text).with_task(self.state.key.clone())
    }

    /// The decision. The first branch is the fast path; everything else is out of line.
    #[inline]
    fn route(&self, idx: usize, hint: Hint) -> Route {
        if !self.killable && hint == Hint::Model {
            let b = &self.state.buckets[idx];
            let pred = b.prediction();
            if pred <= self.shared.params.budget_ns {
                let n = b.inline.fetch_add(1, Relaxed);
                if !explores_masked(n, b.explore_mask()) {
                    return Route::Inline { n, pred };
                }
                b.flipped_out.fetch_add(1, Relaxed);
                return Route::OffCore { pred };
            }
        }
        self.route_slow(idx, hint)
    }

    #[inline(never)]
    fn route_slow(&self, idx: usize, hint: Hint) -> Route {
        let sh = &*self.shared;
        let budget = sh.params.budget_ns;
        let b = &self.state.buckets[idx];
        let (pred, user) = match hint.prediction() {
            Some(p) => (p, true),
            None => (self.state.predict(idx, &sh.params), false),
        };
        if !self.killable && pred <= budget {
            let n = b.inline.fetch_add(1, Relaxed);
            if !user && explores_masked(n, b.explore_mask()) {
                b.flipped_out.fetch_add(1, Relaxed);
                return Route::OffCore { pred };
            }
            return Route::Inline { n, pred };
        }
        b.off.fetch_add(1, Relaxed);
        // What a tier that orders work by duration is told: the user's figure, else the
        // bucket's upper estimate (UNKNOWN for a bucket never timed).
        let pred = if user { pred } else { b.upper() };
        Route::OffCore { pred }
    }

    /// Runs `f` here; timed when it is long enough for the clock to be cheap, or sampled.
    #[inline]
    fn run_inline<F, T>(&self, idx: usize, n: u64, pred: u64, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T,
    {
        if n & self.state.buckets[idx].sample_mask() != 0 {
            let r = catch_unwind(AssertUnwindSafe(f));
            tracing::trace!(
                target: TARGET,
                key = %self.state.key,
                predicted_ns = pred,
                tier = "inline",
                "placed"
            );
            return r.map_err(|p| self.panicked(p));
        }
        // Until the bucket is confident, the thread's counters are read too, so that a spike
        // can be told from preemption (usage.rs); a confident bucket relies on the lone-spike
        // rule instead and pays only the clock.
        let usage = if self.state.buckets[idx]
            .gate()
            .confident(&self.shared.params)
        {
            None
        } else {
            Usage::now()
        };
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(f));
        let ns = nanos(t0.elapsed());
        self.learn_inline(idx, pred, ns, usage);
        r.map_err(|p| self.panicked(p))
    }

    /// Folds a timed inline call into the model; an overrun is counted as a misprediction (the
    /// gate moves the bucket off-core on a spike, see [`Gate::step`]). A spike of a call whose
    /// thread counters were read at its start is judged by them: a preempted call is learned
    /// at its CPU time, a long one is a verified spike.
    #[inline(never)]
    fn learn_inline(&self, idx: usize, pred: u64, ns: u64, start: Option<Usage>) {
        let sh = &*self.shared;
        let c = &self.state.counters;
        let sample = match start {
            Some(s) if ns > sh.params.leave_ns => match Usage::now() {
                Some(end) => s.judge(&end, ns),
                None => Judged::wall(ns),
            },
            _ => Judged::wall(ns),
        };
        if sample.verified && sample.ns <= sh.params.leave_ns {
            tracing::debug!(
                target: TARGET,
                key = %self.state.key,
                wall_ns = ns,
                cpu_ns = sample.ns,
                "an inline call was preempted: learned at its CPU time"
            );
        }
        let ns = sample.ns;
        c.hist.record(ns);
        if is_overrun(ns, pred, &sh.params) {
            c.mispredictions.fetch_add(1, Relaxed);
            tracing::debug!(
                target: TARGET,
                key = %self.state.key,
                predicted_ns = pred,
                actual_ns = ns,
                "misprediction: an inline call overran"
            );
        }
        self.learn_judged(idx, sample, true);
        tracing::trace!(
            target: TARGET,
            key = %self.state.key,
            predicted_ns = pred,
            tier = "inline",
            actual_ns = ns,
            "placed"
        );
    }

    /// Folds one timed call of bucket `idx` into the model and steps the bucket's gate.
    fn learn(&self, idx: usize, ns: u64, ran_inline: bool) {
        self.learn_judged(idx, Judged::wall(ns), ran_inline);
    }

    /// [`learn`](Self::learn) with a sample the thread's counters may have verified.
    fn learn_judged(&self, idx: usize, sample: Judged, ran_inline: bool) {
        let sh = &*self.shared;
        let c = &self.state.counters;
        let b = &self.state.buckets[idx];
        let ns = sample.ns;
        let prior = self.state.prior(idx, &sh.params);
        let (gate, t) = b.observe_judged(sample, ran_inline, prior, &sh.params);
        if matches!(t, Transition::Spike | Transition::Surprise) {
            c.quiet.store(0, Relaxed);
        } else if !prior.trusted {
            // Counted only up to trust: a trusted key's timed calls pay no shared write.
            c.quiet.fetch_add(1, Relaxed);
        }
        if t != Transition::Stay {
            if t == Transition::Surprise {
                c.strikes.fetch_max(gate.strikes, Relaxed);
            }
            tracing::debug!(
                target: TARGET,
                key = %self.state.key,
                transition = ?t,
                actual_ns = ns,
                strikes = gate.strikes,
                needs = gate.need(&sh.params),
                "placement gate"
            );
        }
        self.refresh_masks(idx, gate);
    }

    /// Recomputes which inline decisions of bucket `idx` are timed and explored, from its gate,
    /// its prediction, the clock's cost and the cheapest learned trip. Until the gate is
    /// confident every call is timed.
    fn refresh_masks(&self, idx: usize, gate: Gate) {
        let sh = &*self.shared;
        let trip = sh.tiers.iter().map(|t| t.overhead_ns()).min().unwrap_or(0);
        let b = &self.state.buckets[idx];
        let pred = b.prediction();
        let sample = if gate.confident(&sh.params) {
            sample_mask(sh.sample_every, sh.clock_pair_ns, sh.timing_ratio, pred)
        } else {
            0
        };
        b.set_masks(sample, explore_mask(sh.explore_every, pred, trip));
    }

    /// Sends `work` to the cheapest eligible off-core tier and learns from its trip. `lead_ns`
    /// is time already spent on this call inline (a staged call's first part).
    async fn off_core<W, T>(&self, idx: usize, pred: u64, lead_ns: u64, work: W) -> Result<T, Error>
    where
        W: OffCoreWork<T>,
        T: Send + 'static,
    {
        let sh = &*self.shared;
        let st = &*self.state;
        let Some(slot) = policy::pick(&sh.tiers, pred, self.killable, W::REMOTE) else {
            return Err(self.no_tier(W::REMOTE));
        };
        st.counters.tiers[tier_index(slot.kind)].fetch_add(1, Relaxed);
        let (in_flight, free) = slot.enter();
        let t0 = Instant::now();
        let mut handle = CancelOnDrop(Some(work.submit(slot, st.key.clone(), pred).await?));
        let out = handle
            .0
            .as_mut()
            .expect("set above, taken only below")
            .await;
        let handle = handle.0.take().expect("set above");
        let wall = nanos(t0.elapsed());
        drop(in_flight);
        if let Some(info) = handle.run_info() {
            let run = nanos(info.run_time);
            let queued = nanos(info.queued);
            let total = run.saturating_add(lead_ns);
            st.counters.hist.record(total);
            self.learn(idx, total, false);
            let finish = wall.saturating_sub(run).saturating_sub(queued);
            slot.learn(free.then_some(queued), finish);
            tracing::trace!(
                target: TARGET,
                key = %st.key,
                predicted_ns = ?shown(pred),
                tier = slot.kind.name(),
                actual_ns = total,
                trip_ns = wall.saturating_sub(run),
                "placed"
            );
        }
        out
    }
}

impl Call<'_> {
    /// Adds a size hint (see [`CallSite::sized`]).
    pub fn sized(mut self, n: u64) -> Self {
        self.bucket = size_bucket(n);
        self
    }

    /// Sets the expected duration (see [`CallSite::expect`]).
    pub fn expect(mut self, d: Duration) -> Self {
        self.hint = Hint::Expect(nanos(d));
        self
    }

    /// Adds a user probe, evaluated now (see [`CallSite::probe`]).
    pub fn probe(mut self, long: impl FnOnce() -> bool) -> Self {
        self.hint = if long() { Hint::Long } else { Hint::Short };
        self
    }

    /// Runs `f` inline or off-core, as placed, and returns its value.
    ///
    /// Inline, `f` runs on this thread during the first poll; a panic comes back as an
    /// [`Error`] whose [`is_panic`](Error::is_panic) is true. Off-core, `f` is submitted to the
    /// chosen tier and awaited.
    ///
    /// # Errors
    ///
    /// A panic of `f`; "shut down" when the off-core tier was shut down (calls placed inline
    /// still run after a shutdown: they need no tier); [`ErrorKind::Unsupported`] for a
    /// killable site without a killable tier.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it finishes withdraws an off-core call that has not started;
    /// one that runs on a thread finishes there and its value is dropped. An inline call runs
    /// to completion within one poll.
    pub async fn call<F, T>(self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let site = self.site;
        match site.route(self.bucket, self.hint) {
            Route::Inline { n, pred } => site.run_inline(self.bucket, n, pred, f),
            // Boxed so that the future of a call stays small: the fast path never moves the
            // off-core state around, and the off-core path allocates its job anyway.
            Route::OffCore { pred } => {
                Box::pin(site.off_core(self.bucket, pred, 0, Closure(f))).await
            }
        }
    }

    /// Calls the registered function `f` with `args` where placement says: inline (a direct
    /// call of the function, here), or off-core on any tier, including the ones that run only
    /// registered functions: worker processes ([`ProcessPool`](crate::ProcessPool)) and the
    /// MPI cluster. A [killable](CallSite::killable) site sends every call to a killable tier,
    /// where a running call can be stopped and a crash fails only that call.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call); on a process or cluster tier, also the remote outcomes (a
    /// worker that died mid-call, a deadline, an encoding error), each an error of this call.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future withdraws a call that has not started; on the process tier a
    /// running call is stopped, its worker killed and replaced (see [`TaskHandle::cancel`]).
    pub async fn remote<A, R>(self, f: &RemoteFn<A, R>, args: A) -> Result<R, Error>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let site = self.site;
        match site.route(self.bucket, self.hint) {
            Route::Inline { n, pred } => {
                let func = f.function();
                site.run_inline(self.bucket, n, pred, move || func(args))
            }
            Route::OffCore { pred } => {
                Box::pin(site.off_core(self.bucket, pred, 0, Remote { f, args })).await
            }
        }
    }

    /// A staged call (Listing 4): `first` always runs inline; it returns [`Stage::Done`] with the
    /// value when what it computed says the work is short, or [`Stage::Offload`] with the rest
    /// of the work (a closure owning what it needs) when it is long. The rest goes to the
    /// off-core tier (for a killable site, only to a killable tier); the model of the key
    /// learns the whole duration, first part included.
    ///
    /// ```
    /// use offload::Stage;
    /// let sched = offload::Scheduler::builder().io_threads(1).cpu_workers(1).build()?;
    /// let site = sched.site("sum-below");
    /// let sum_below = |n: u64| {
    ///     site.staged(move || {
    ///         let items: Vec<u64> = (0..n).collect(); // the first part
    ///         if items.len() < 1_000 {
    ///             Stage::Done(items.iter().sum::<u64>())
    ///         } else {
    ///             Stage::Offload(move || items.iter().sum::<u64>()) // the long rest
    ///         }
    ///     })
    /// };
    /// assert_eq!(sched.block_on(sum_below(10))?, 45);
    /// assert_eq!(sched.block_on(sum_below(100_000))?, 4_999_950_000);
    /// let s = site.stats();
    /// assert_eq!((s.inline, s.threads), (1, 1));
    /// # sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, std::time::Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call); a panic of `first` is an error too.
    pub async fn staged<F, G, T>(self, first: F) -> Result<T, Error>
    where
        F: FnOnce() -> Stage<T, G>,
        G: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let site = self.site;
        let st = &*site.state;
        let sh = &*site.shared;
        let t0 = Instant::now();
        let stage = catch_unwind(AssertUnwindSafe(first)).map_err(|p| site.panicked(p))?;
        let lead = nanos(t0.elapsed());
        match stage {
            Stage::Done(v) => {
                st.buckets[self.bucket].inline.fetch_add(1, Relaxed);
                st.counters.hist.record(lead);
                site.learn(self.bucket, lead, true);
                tracing::trace!(
                    target: TARGET,
                    key = %st.key,
                    tier = "inline",
                    actual_ns = lead,
                    "staged call finished in its first part"
                );
                Ok(v)
            }
            Stage::Offload(rest) => {
                st.buckets[self.bucket].off.fetch_add(1, Relaxed);
                let pred = match self.hint.prediction() {
                    Some(p) => p,
                    None => st.predict(self.bucket, &sh.params),
                };
                site.off_core(self.bucket, pred, lead, Closure(rest)).await
            }
        }
    }
}
