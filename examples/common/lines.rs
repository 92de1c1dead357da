//! Bounded line I/O shared by the example servers (`echo_server`, `compute_server`).
//!
//! A server that reads "a line" must decide how much it is willing to hold for a client that
//! never sends the newline. Here the answer is `max_line` bytes of content, plus the two of a
//! `\r\n`: the line buffer grows by doubling up to that cap and never past it, and a longer line
//! is refused. Lines keep their terminator, so a server can hand them back byte for byte. The
//! buffer's capacity is reported to [`ServerStats::buffer_high_water`], so a test can check the
//! bound.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// Size of the read buffer under each connection.
pub const READ_CHUNK: usize = 8 * 1024;

/// How long a refused connection is drained before it is closed, so the client reads the
/// refusal instead of a reset (closing a socket with unread input sends RST).
pub const LINGER: Duration = Duration::from_millis(500);

/// The most bytes a refused connection is drained of before it is closed.
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// What [`read_line`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line is in the buffer, with its terminator (`\n` or `\r\n`) as it came.
    Complete,
    /// The peer closed; the buffer holds the unterminated rest, if any.
    Eof,
    /// The line passed `max_line` bytes; what was read of it has been dropped.
    TooLong,
}

/// The bytes of `line` without its terminator (`\n` or `\r\n`, whichever it has).
pub fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Counters of a server, shared by its connection handlers.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused because the server was full.
    pub refused_full: AtomicU64,
    /// Connections dropped for sending no complete line within the idle timeout.
    pub dropped_idle: AtomicU64,
    /// Connections dropped for a line over the limit.
    pub dropped_too_long: AtomicU64,
    /// Complete lines handled.
    pub lines: AtomicU64,
    /// Bytes written back.
    pub bytes_out: AtomicU64,
    /// Connections open now.
    pub active: AtomicUsize,
    /// The largest line-buffer capacity any connection reached, in bytes.
    pub buffer_high_water: AtomicUsize,
}

impl ServerStats {
    /// Reads one counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Adds one to a counter.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one line into `line` (cleared first), terminator included, holding at most
/// `max_line` bytes of content plus the two of a `\r\n`.
///
/// The limit counts the line without its terminator, whichever it is: a line of exactly
/// `max_line` bytes is accepted with `\n` and with `\r\n` alike, and comes back byte for
/// byte. A `\r` elsewhere is content like any other byte.
///
/// # Cancel safety
///
/// Cancel-safe as long as `line` is kept: every byte taken from `reader` is in `line` before
/// the next await. (The servers drop the connection when they cancel a read, so they clear it.)
pub async fn read_line<R>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max_line: usize,
    stats: &ServerStats,
) -> std::io::Result<Line>
where
    R: AsyncBufRead + Unpin,
{
    // Content, a `\r` that may turn out to be the terminator's, and the `\n`.
    let cap = max_line.saturating_add(2);
    line.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long(line, max_line) {
                line.clear();
                Line::TooLong
            } else {
                Line::Eof
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > cap {
            line.clear();
            return Ok(Line::TooLong);
        }
        grow_capped(line, take, cap, stats);
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if too_long(line, max_line) {
            line.clear();
            return Ok(Line::TooLong);
        }
        if done {
            return Ok(Line::Complete);
        }
    }
}

/// Whether what `line` holds is already more than `max_line` bytes of content: past the
/// limit by more than a terminator could account for (a final `\r` may still be the first
/// half of `\r\n`).
fn too_long(line: &[u8], max_line: usize) -> bool {
    let held = match line.last() {
        Some(b'\n') => content(line).len(),
        Some(b'\r') => line.len() - 1,
        _ => line.len(),
    };
    held > max_line
}

/// Makes room for `extra` more bytes, doubling but never past `cap`.
fn grow_capped(line: &mut Vec<u8>, extra: usize, cap: usize, stats: &ServerStats) {
    let need = line.len() + extra;
    if need > line.capacity() {
        let target = need.max((line.capacity() * 2).min(cap)).max(64);
        line.reserve_exact(target - line.len());
        stats
            .buffer_high_water
            .fetch_max(line.capacity(), Ordering::Relaxed);
    }
}

/// Sends `message` (one line) on `writer`, then drains `reader` for a short while (bounded in
/// time and bytes, through a fixed buffer) so that the peer reads the message rather than a
/// reset.
pub async fn refuse<R, W>(reader: &mut R, writer: &mut W, message: &str)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LINGER, async {
        writer.write_all(message.as_bytes()).await?;
        writer.write_all(b"\n").await?;
        writer.flush().await?;
        writer.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0u64;
        while drained < LINGER_BYTES {
            let n = reader.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            drained += n as u64;
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}
