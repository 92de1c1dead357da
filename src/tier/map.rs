//! The chunked `map` of every tier ([`ProcessPool::map`](super::ProcessPool::map),
//! `mpi::Cluster::map`, and [`Executor::map`](crate::Executor::map) on the thread tier): how
//! big a chunk is, and the stream with its window.
//!
//! A tier gives [`chunked_map`] (or [`chunked_stream`]) a "send one chunk" closure: it queues
//! the chunk on the tier's own path (encoded, for the remote tiers), and returns a future of
//! the chunk's results. Everything else is the same on every tier, and lives here:
//!
//! - the input is cut into chunks as they are needed: single items until a chunk reports its
//!   run time ([`ChunkStats`]), then as many as run about the tier's target ([`Sizing`]:
//!   [`MAP_CHUNK_TARGET`] for the remote tiers, whose trip costs tens of microseconds;
//!   [`THREADS_CHUNK_TARGET`] for the thread tier, whose trip costs one to 25);
//! - at most `window` chunks are in flight; the input is pulled only as results are consumed
//!   (backpressure), so an endless iterator keeps memory flat;
//! - results come out in input order (or, unordered, chunk by chunk as chunks finish), one per
//!   item: a chunk that fails as a whole (not sent, or its worker died) fails each of its items
//!   with that error.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::Either;
use futures::stream::{self, Stream, StreamExt};

use crate::error::Error;

/// `map` sizes its chunks so that one runs about this long: long enough that the trip
/// (tens of microseconds) is a few percent of it, short enough to balance the workers.
pub(crate) const MAP_CHUNK_TARGET: Duration = Duration::from_millis(2);

/// The largest `map` chunk, in items (bounds the frame and the memory per chunk).
pub(crate) const MAP_MAX_CHUNK: usize = 4096;

/// The thread tier's `map` sizes its chunks so that one runs about this long. A chunk costs one
/// hand-off (about 1 µs to a spinning worker, ~25 µs to a parked one, plus two small
/// allocations); at this length that is at most a tenth of the chunk, and 2 × workers chunks
/// in flight still spread uneven items over the workers.
pub(crate) const THREADS_CHUNK_TARGET: Duration = Duration::from_micros(250);

/// The largest thread-tier `map` chunk, in items: no frame to bound, only memory (the window
/// holds 2 × workers chunks); at this size a hand-off costs well under a nanosecond per item
/// even when the worker has to be woken.
pub(crate) const THREADS_MAX_CHUNK: usize = 16_384;

/// How a chunked map cuts its input: a fixed chunk size, or chunks aimed at a run time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizing {
    /// A fixed chunk size (`map_chunked`); `None`: sized from the measured item cost.
    pub(crate) fixed: Option<usize>,
    /// The run time an adaptive chunk aims at.
    pub(crate) target: Duration,
    /// The largest chunk, in items.
    pub(crate) max: usize,
}

impl Sizing {
    /// The remote tiers' sizing: [`MAP_CHUNK_TARGET`], at most [`MAP_MAX_CHUNK`] items.
    pub(crate) fn remote(fixed: Option<usize>) -> Self {
        Sizing {
            fixed,
            target: MAP_CHUNK_TARGET,
            max: MAP_MAX_CHUNK,
        }
    }

    /// The thread tier's sizing: [`THREADS_CHUNK_TARGET`], at most [`THREADS_MAX_CHUNK`] items.
    pub(crate) fn threads(fixed: Option<usize>) -> Self {
        Sizing {
            fixed,
            target: THREADS_CHUNK_TARGET,
            max: THREADS_MAX_CHUNK,
        }
    }

    fn next(&self, stats: &ChunkStats) -> usize {
        match self.fixed {
            Some(n) => n.max(1),
            None => chunk_for(stats, self.target, self.max),
        }
    }
}

/// Learns how long one item of a `map` takes, to size the next chunks.
#[derive(Debug, Default)]
pub(crate) struct ChunkStats {
    /// Exponentially weighted mean run time per item, in nanoseconds (0: unknown yet).
    pub(crate) per_item_ns: AtomicU64,
}

impl ChunkStats {
    /// Takes in the run time of a chunk of `items` items.
    pub(crate) fn record(&self, items: usize, run_ns: u64) {
        if items == 0 {
            return;
        }
        let x = (run_ns / items as u64).max(1);
        let old = self.per_item_ns.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { old - old / 4 + x / 4 };
        self.per_item_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// The expected run time of a chunk of `items` items, once an item's cost is known.
    pub(crate) fn expected(&self, items: usize) -> Option<Duration> {
        match self.per_item_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns.saturating_mul(items as u64))),
        }
    }
}

/// The next chunk size of a `map`: aimed at [`MAP_CHUNK_TARGET`] once the run time per item
/// is known, 1 until then.
/// The input cut into chunks, each sized as it is cut (so later chunks use what earlier ones
/// measured).
struct Chunks<It> {
    items: It,
    sizing: Sizing,
    stats: Arc<ChunkStats>,
}

impl<It: Iterator> Iterator for Chunks<It> {
    type Item = Vec<It::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let size = self.sizing.next(&self.stats);
        let chunk: Vec<It::Item> = self.items.by_ref().take(size).collect();
        (!chunk.is_empty()).then_some(chunk)
    }
}

#[cfg(test)]
pub(crate) fn next_chunk(stats: &ChunkStats) -> usize {
    chunk_for(stats, MAP_CHUNK_TARGET, MAP_MAX_CHUNK)
}

/// Items per chunk so that one runs about `target`, at most `max`; 1 until the item cost is
/// known.
fn chunk_for(stats: &ChunkStats, target: Duration, max: usize) -> usize {
    let per_item = stats.per_item_ns.load(Ordering::Relaxed);
    if per_item == 0 {
        // Nothing measured yet: single items, so that a few long ones spread over the workers.
        return 1;
    }
    let target = u64::try_from(target.as_nanos()).unwrap_or(u64::MAX);
    usize::try_from(target / per_item)
        .unwrap_or(max)
        .clamp(1, max.max(1))
}

/// The results of `items`, in order, computed chunk by chunk through `send`.
///
/// Chunks are `fixed` items long, or sized by [`next_chunk`] from the [`ChunkStats`] that
/// `send` gets with each chunk (its completer records the chunk's run time there). `send`
/// is called as a chunk is pulled, in input order; its future is polled within a window of
/// `window` chunks. An `Err` from it fails every item of its chunk.
pub(crate) fn chunked_map<A, R, I, S, F>(
    items: I,
    fixed: Option<usize>,
    window: usize,
    send: S,
) -> impl Stream<Item = Result<R, Error>> + Send + use<A, R, I, S, F>
where
    I: IntoIterator<Item = A>,
    I::IntoIter: Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
    S: FnMut(Vec<A>, Arc<ChunkStats>) -> F + Send + 'static,
    F: Future<Output = Result<Vec<Result<R, Error>>, Error>> + Send + 'static,
{
    chunked_stream(items, Sizing::remote(fixed), window, true, send)
}

/// As [`chunked_map`], with the tier's own [`Sizing`], and in input order or (`ordered` false)
/// chunk by chunk as chunks finish (`map_unordered`).
pub(crate) fn chunked_stream<A, R, I, S, F>(
    items: I,
    sizing: Sizing,
    window: usize,
    ordered: bool,
    mut send: S,
) -> impl Stream<Item = Result<R, Error>> + Send + use<A, R, I, S, F>
where
    I: IntoIterator<Item = A>,
    I::IntoIter: Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
    S: FnMut(Vec<A>, Arc<ChunkStats>) -> F + Send + 'static,
    F: Future<Output = Result<Vec<Result<R, Error>>, Error>> + Send + 'static,
{
    let stats = Arc::new(ChunkStats::default());
    // An iterator, not an async unfold: the stream stays `Unpin`, as callers expect of `map`.
    let chunks = stream::iter(Chunks {
        items: items.into_iter(),
        sizing,
        stats: stats.clone(),
    });
    let futures = chunks.map(move |chunk: Vec<A>| {
        let n = chunk.len();
        let sent = send(chunk, stats.clone());
        async move {
            match sent.await {
                Ok(v) => v,
                Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
            }
        }
    });
    let window = window.max(1);
    let done = if ordered {
        Either::Left(futures.buffered(window))
    } else {
        Either::Right(futures.buffer_unordered(window))
    };
    Flat {
        chunks: done,
        current: Vec::new().into_iter(),
    }
}

pin_project_lite::pin_project! {
    /// The items of a stream of chunks, one by one: `flat_map(stream::iter)` without a stream
    /// layer per chunk (an item costs one `Vec` iterator step; this is the consumer's hot loop).
    struct Flat<S, T> {
        #[pin]
        chunks: S,
        current: std::vec::IntoIter<T>,
    }
}

impl<S: Stream<Item = Vec<T>>, T> Stream for Flat<S, T> {
    type Item = T;

    // The consumer's per-item step: worth inlining into its loop.
    #[inline]
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        let mut this = self.project();
        loop {
            if let Some(item) = this.current.next() {
                return std::task::Poll::Ready(Some(item));
            }
            match futures::ready!(this.chunks.as_mut().poll_next(cx)) {
                Some(chunk) => *this.current = chunk.into_iter(),
                None => return std::task::Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (lo, hi) = self.chunks.size_hint();
        let here = self.current.len();
        // A chunk holds at least one item.
        (here + lo, hi.and(None))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    #[test]
    fn results_keep_input_order_and_a_failed_chunk_fails_each_of_its_items() {
        // Chunks of 3 finish in reverse order; the chunk holding 4 fails as a whole.
        let out: Vec<Result<u32, String>> = block_on(
            chunked_map(0..10u32, Some(3), 4, |chunk: Vec<u32>, _| async move {
                let first = u64::from(chunk[0]);
                tokio::time::sleep(Duration::from_millis(20 - 2 * first)).await;
                if chunk.contains(&4) {
                    return Err(Error::shut_down());
                }
                Ok(chunk.into_iter().map(|x| Ok(x * 2)).collect())
            })
            .map(|r| r.map_err(|e| e.to_string()))
            .collect(),
        );
        let want: Vec<Result<u32, String>> = (0..10u32)
            .map(|x| match x {
                3..=5 => Err(Error::shut_down().to_string()),
                _ => Ok(x * 2),
            })
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn the_input_is_pulled_only_a_window_ahead_of_the_consumer() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let items = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let window = 4;
        let taken: Vec<u64> = block_on(
            chunked_map(items, Some(1), window, |chunk: Vec<u64>, _| async move {
                Ok(chunk.into_iter().map(Ok).collect())
            })
            .take(20)
            .map(|r| r.expect("no error"))
            .collect(),
        );
        assert_eq!(taken, (0..20).collect::<Vec<_>>());
        let pulled = pulled.load(Ordering::Relaxed);
        assert!(
            pulled <= 20 + window,
            "{pulled} items pulled for 20 results"
        );
    }

    #[test]
    fn adaptive_chunks_grow_once_a_chunk_reports_its_run_time() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let out: Vec<Result<u32, Error>> = block_on(
            chunked_map(0..7u32, None, 1, move |chunk: Vec<u32>, stats| {
                seen.lock().expect("not poisoned").push(chunk.len());
                // 1 ms per item: the next chunks hold MAP_CHUNK_TARGET / 1 ms = 2 items.
                stats.record(chunk.len(), 1_000_000 * chunk.len() as u64);
                async move { Ok(chunk.into_iter().map(Ok).collect()) }
            })
            .collect(),
        );
        assert_eq!(out.len(), 7);
        assert_eq!(*sizes.lock().expect("not poisoned"), vec![1, 2, 2, 2]);
    }

    #[test]
    fn chunks_are_single_until_the_item_time_is_known() {
        let s = ChunkStats::default();
        assert_eq!(next_chunk(&s), 1);
        s.per_item_ns.store(1_000_000, Ordering::Relaxed); // 1 ms per item
        assert_eq!(next_chunk(&s), 2);
        s.per_item_ns.store(10, Ordering::Relaxed);
        assert_eq!(next_chunk(&s), MAP_MAX_CHUNK);
    }
}
