//! `map`, `map_chunked`, `map_window` and `map_unordered`: the input cut into chunks (one
//! task per chunk, sized from the measured item cost; `tier/map.rs`), or one task per item.

use std::sync::Arc;

use futures::stream::{self, Stream, StreamExt};

use super::{Executor, MAP_WINDOW_PER_WORKER, MIN_MAP_WINDOW};
use crate::error::{Error, panic_message};
use crate::task::Expect;
use crate::tier::TierKind;
use crate::tier::map::{ChunkStats, Sizing, chunked_stream};

impl Executor {
    /// The default `map` window for this executor, in chunks (for [`map_window`](Self::map_window),
    /// in items).
    pub fn default_window(&self) -> usize {
        (self.inner.workers * MAP_WINDOW_PER_WORKER).max(MIN_MAP_WINDOW)
    }

    /// Applies `f` to every item, results in input order, one per item.
    ///
    /// Items run in chunks, one task per chunk: the first chunks hold one item each; once a
    /// chunk has run, the measured cost of an item sizes the next ones so that a chunk runs
    /// about 250 µs (at most
    /// 16,384 items). So an item of 1 µs travels with a
    /// few hundred others and pays a few nanoseconds of hand-off, and an item of 1 ms travels
    /// alone and spreads over the workers. [`map_chunked`](Self::map_chunked) fixes the size.
    ///
    /// At most [`default_window`](Self::default_window) chunks are in flight and the input is
    /// pulled only as results are consumed, so an endless iterator is fine and memory stays
    /// flat. A panic fails only its item.
    ///
    /// ```
    /// use offload::prelude::*;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let pool = Executor::threads(2)?;
    /// let out: Vec<Result<u64, Error>> = pool
    ///     .map(1..=4u64, |x| if x == 3 { panic!("three") } else { x * 10 })
    ///     .collect()
    ///     .await;
    /// assert_eq!(out[0].as_ref().ok(), Some(&10));
    /// assert!(out[2].as_ref().unwrap_err().is_panic()); // only that item failed
    /// assert_eq!(out[3].as_ref().ok(), Some(&40));
    /// pool.shutdown(ShutdownMode::Drain).await;
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map<I, F, T>(
        &self,
        items: I,
        f: F,
    ) -> impl Stream<Item = Result<T, Error>> + Send + use<I, F, T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.chunks(items, None, true, f)
    }

    /// As [`map`](Self::map) with a fixed chunk size (at least 1; Python's `chunksize`).
    ///
    /// ```
    /// use offload::prelude::*;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let pool = Executor::threads(2)?;
    /// let n = pool.map_chunked(0..10_000u32, 500, |x| x % 7).filter(|r| std::future::ready(r.is_ok())).count().await;
    /// assert_eq!(n, 10_000);
    /// pool.shutdown(ShutdownMode::Drain).await;
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map_chunked<I, F, T>(
        &self,
        items: I,
        chunk: usize,
        f: F,
    ) -> impl Stream<Item = Result<T, Error>> + Send + use<I, F, T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.chunks(items, Some(chunk.max(1)), true, f)
    }

    /// One task per item, results in input order, with at most `window` items (at least 1) in
    /// flight. For items of a millisecond or more, or when each item must be its own task
    /// (cancellation, a lane of its own); [`map`](Self::map) batches small items.
    ///
    /// ```
    /// use offload::prelude::*;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let pool = Executor::threads(2)?;
    /// // Endless input: only `window` items are pulled ahead of what is consumed.
    /// let first: Vec<u64> = pool
    ///     .map_window(1.., 4, |x: u64| x * x)
    ///     .take(3)
    ///     .map(|r| r.expect("no panic"))
    ///     .collect()
    ///     .await;
    /// assert_eq!(first, [1, 4, 9]);
    /// pool.shutdown(ShutdownMode::Drain).await;
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map_window<I, F, T>(
        &self,
        items: I,
        window: usize,
        f: F,
    ) -> impl Stream<Item = Result<T, Error>> + Send + use<I, F, T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let window = window.max(1);
        self.item_futures(items, window, f).buffered(window)
    }

    /// As [`map`](Self::map), yielding results as their chunks finish (`as_completed` order;
    /// within a chunk, input order).
    ///
    /// ```
    /// use offload::prelude::*;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let pool = Executor::threads(2)?;
    /// let mut got: Vec<u32> = pool
    ///     .map_unordered(0..100u32, |x| x + 1)
    ///     .map(|r| r.expect("no panic"))
    ///     .collect()
    ///     .await;
    /// got.sort();
    /// assert_eq!(got, (1..=100).collect::<Vec<_>>());
    /// pool.shutdown(ShutdownMode::Drain).await;
    /// # Ok::<(), offload::Error>(())
    /// # }).unwrap();
    /// ```
    #[must_use = "a map stream does nothing unless polled: consume it (e.g. `.collect().await`)"]
    pub fn map_unordered<I, F, T>(
        &self,
        items: I,
        f: F,
    ) -> impl Stream<Item = Result<T, Error>> + Send + use<I, F, T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.chunks(items, None, false, f)
    }

    /// The chunked stream behind `map`, `map_chunked` and `map_unordered`.
    fn chunks<I, F, T>(
        &self,
        items: I,
        fixed: Option<usize>,
        ordered: bool,
        f: F,
    ) -> impl Stream<Item = Result<T, Error>> + Send + use<I, F, T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        let f = Arc::new(f);
        let window = self.default_window();
        chunked_stream(
            items,
            Sizing::threads(fixed),
            window,
            ordered,
            move |chunk: Vec<I::Item>, stats: Arc<ChunkStats>| {
                let this = this.clone();
                let f = f.clone();
                // Chunks sized from a measured cost carry their prediction; the first ones are
                // plain submissions.
                let expect = stats
                    .expected(chunk.len())
                    .map_or(Expect::Unsaid, Expect::About);
                let tier = this.tier();
                async move {
                    let mut h = this
                        .submit_inner(None, expect, move || run_chunk(&*f, chunk, &stats, tier))
                        .await?;
                    // Polled now, needed only when the chunks before it are consumed.
                    h.no_spin();
                    h.await
                }
            },
        )
    }

    /// One task future per item; with a window over 1, the handles do not spin for results
    /// (each is polled at submission, long before its turn).
    fn item_futures<I, F, T>(
        &self,
        items: I,
        window: usize,
        f: F,
    ) -> impl Stream<Item = impl Future<Output = Result<T, Error>> + Send + use<I, F, T>>
    + Send
    + use<I, F, T>
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        let f = Arc::new(f);
        stream::iter(items).map(move |item| {
            let this = this.clone();
            let f = f.clone();
            async move {
                let mut h = this.submit(move || f(item)).await?;
                if window > 1 {
                    h.no_spin();
                }
                h.await
            }
        })
    }
}

/// Runs `f` on every item of a chunk: each item's panic becomes that item's error; the chunk's
/// run time per item goes to `stats`, to size the next chunks. One `catch_unwind` per chunk
/// (and one more after each panic), not per item.
fn run_chunk<A, T, F>(
    f: &F,
    chunk: Vec<A>,
    stats: &ChunkStats,
    tier: TierKind,
) -> Vec<Result<T, Error>>
where
    F: Fn(A) -> T,
{
    let n = chunk.len();
    let t0 = std::time::Instant::now();
    let mut out: Vec<Result<T, Error>> = Vec::with_capacity(n);
    let mut items = chunk.into_iter();
    loop {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for a in items.by_ref() {
                out.push(Ok(f(a)));
            }
        }));
        match ran {
            Ok(()) => break,
            // The item that panicked was taken from `items`: its slot is this error.
            Err(p) => out.push(Err(
                Error::panicked(panic_message(&*p), None).fill(None, tier, None)
            )),
        }
    }
    stats.record(
        n,
        u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
    );
    out
}
