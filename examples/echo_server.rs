//! Echo server: a listener task spawning a client handler per connection (the `multitask`
//! example of the sources), on the scheduler's runtime, with the limits a real server needs.
//!
//! - loopback by default (`--addr`);
//! - byte-transparent: each line comes back exactly as it came, its terminator (`\n` or
//!   `\r\n`) included;
//! - bounded line length (`--max-line`, not counting the terminator): a longer line is refused
//!   with `ERR line too long`, and the server never holds more than the limit of it;
//! - idle timeout (`--idle-timeout-ms`): a client that sends no complete line for that long is
//!   dropped with `ERR idle timeout` — a client trickling one byte a second does not keep a
//!   connection forever;
//! - maximum connections (`--max-conns`): one more is told `ERR server full` and closed. At
//!   start the soft fd limit is raised to the hard one and the cap lowered to what the limit
//!   leaves room for (said on the first line), so that every refused client is told why;
//! - graceful shutdown on Ctrl-C or SIGTERM (systemd, `docker stop`, Kubernetes): the listener
//!   stops, every client is told `BYE`, the handlers get a grace period, and the process
//!   exits 0.
//!
//! ```text
//! cargo run --example echo_server                 # serve on 127.0.0.1:7878 until Ctrl-C
//! cargo run --example echo_server -- --self-test  # serve, echo a few clients, exit
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use offload::Scheduler;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub mod common;

pub use common::lines::ServerStats;
use common::lines::{Line, READ_CHUNK, read_line, refuse};
use common::listener::{Limits, accept_loop, shutdown_signal};

/// Default longest line, in bytes.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default idle timeout: the longest a client may take to send a complete line.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default maximum number of connections served at once.
pub const DEFAULT_MAX_CONNS: usize = 1024;
/// Default time the handlers get to finish after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The server's limits.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Longest line accepted, in bytes (without its terminator, `\n` or `\r\n`).
    pub max_line: usize,
    /// Longest time without a complete line before the client is dropped.
    pub idle_timeout: Duration,
    /// Connections served at once; more are refused with a message.
    pub max_conns: usize,
    /// How long the handlers get to finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            max_line: DEFAULT_MAX_LINE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_conns: DEFAULT_MAX_CONNS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// The listener task: accepts until `shutdown` resolves, one handler per connection (a named
/// task of `sched`, watched for slow polls), then tells every client `BYE` and waits up to
/// the grace period for the handlers. Returns when the listener is closed.
pub async fn serve(
    sched: Scheduler,
    listener: TcpListener,
    cfg: EchoConfig,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = Arc::new(cfg);
    let limits = Limits {
        max_conns: cfg.max_conns,
        grace: cfg.shutdown_grace,
    };
    let serve_client = |stream, peer, stop| {
        let (cfg, stats) = (cfg.clone(), stats.clone());
        async move { client_handler(stream, peer, &cfg, &stats, stop).await }
    };
    let all_closed = accept_loop(
        &sched,
        listener,
        "echo",
        limits,
        &stats,
        shutdown,
        serve_client,
    )
    .await;
    if all_closed {
        tracing::info!("all clients closed");
    } else {
        tracing::warn!(
            grace_ms = cfg.shutdown_grace.as_millis() as u64,
            "grace period over: the clients still open were disconnected"
        );
    }
}

struct Active<'a>(&'a ServerStats);

impl<'a> Active<'a> {
    fn enter(stats: &'a ServerStats) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Active(stats)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client handler: reads bounded lines and writes each one back until the client closes,
/// breaks a limit, or the server shuts down.
async fn client_handler(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: &EchoConfig,
    stats: &ServerStats,
    mut stop: watch::Receiver<bool>,
) {
    let _active = Active::enter(stats);
    if *stop.borrow_and_update() {
        return;
    }
    let (rd, wr) = stream.split();
    let mut rd = BufReader::with_capacity(READ_CHUNK, rd);
    let mut wr = BufWriter::with_capacity(READ_CHUNK, wr);
    let mut line = Vec::new();
    loop {
        let read = tokio::select! {
            // Only `true` is ever sent, and a dropped sender means the server is gone too.
            _ = stop.changed() => {
                let _ = wr.flush().await;
                refuse(&mut rd, &mut wr, "BYE server shutting down").await;
                return;
            }
            r = tokio::time::timeout(cfg.idle_timeout, read_line(&mut rd, &mut line, cfg.max_line, stats)) => r,
        };
        let got = match read {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "read failed");
                return;
            }
            Err(_) => {
                ServerStats::bump(&stats.dropped_idle);
                tracing::info!(%peer, "dropped: idle timeout");
                let _ = wr.flush().await;
                let msg = format!(
                    "ERR idle timeout: no complete line in {} ms",
                    cfg.idle_timeout.as_millis()
                );
                refuse(&mut rd, &mut wr, &msg).await;
                return;
            }
        };
        match got {
            Line::Complete => {
                let wrote = tokio::time::timeout(cfg.idle_timeout, async {
                    wr.write_all(&line).await?;
                    // Flush when no further input is already here: one write per burst.
                    if rd.buffer().is_empty() {
                        wr.flush().await?;
                    }
                    Ok::<(), std::io::Error>(())
                })
                .await;
                if !matches!(wrote, Ok(Ok(()))) {
                    tracing::debug!(%peer, "write failed or timed out");
                    return;
                }
                ServerStats::bump(&stats.lines);
                stats
                    .bytes_out
                    .fetch_add(line.len() as u64, Ordering::Relaxed);
            }
            Line::Eof => {
                // An unterminated last line is echoed as it came.
                let _ = wr.write_all(&line).await;
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                return;
            }
            Line::TooLong => {
                ServerStats::bump(&stats.dropped_too_long);
                tracing::info!(%peer, max = cfg.max_line, "dropped: line too long");
                let _ = wr.flush().await;
                let msg = format!("ERR line too long: {} bytes at most", cfg.max_line);
                refuse(&mut rd, &mut wr, &msg).await;
                return;
            }
        }
    }
}

/// The lines of client `c`'s self-test, each with its terminator: `\n`, `\r\n`, a lone `\r`
/// inside, bytes that are not UTF-8, and one line of exactly `max_line` bytes ended by `\r\n`.
fn self_test_lines(c: usize, lines: usize, max_line: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..lines)
        .map(|i| {
            let mut l = format!("client {c} line {i} {}", "x".repeat(i % 97)).into_bytes();
            match i % 4 {
                0 => l.extend_from_slice(b"\n"),
                1 => l.extend_from_slice(b"\r\n"),
                2 => l.extend_from_slice(b" a\rb \xff\xfe\x00\n"),
                _ => l.extend_from_slice(b"\r\r\n"),
            }
            l
        })
        .collect();
    let mut longest = vec![b'y'; max_line];
    longest.extend_from_slice(b"\r\n");
    out.push(longest);
    out
}

/// Echo clients for `--self-test`: each sends its lines and checks every byte comes back.
#[allow(dead_code)]
async fn self_test(
    addr: SocketAddr,
    clients: usize,
    lines: usize,
    max_line: usize,
) -> Result<usize, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        tasks.spawn(async move {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("client {c}: connect: {e}"))?;
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            let mut got = Vec::new();
            let sent = self_test_lines(c, lines, max_line);
            for line in &sent {
                wr.write_all(line)
                    .await
                    .map_err(|e| format!("client {c}: write: {e}"))?;
                got.clear();
                rd.read_until(b'\n', &mut got)
                    .await
                    .map_err(|e| format!("client {c}: read: {e}"))?;
                if got != *line {
                    let show =
                        |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned();
                    return Err(format!(
                        "client {c}: sent {:?}, got {:?}",
                        show(line),
                        show(&got)
                    ));
                }
            }
            Ok::<usize, String>(sent.len())
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// The command line.
#[allow(dead_code)]
#[derive(clap::Parser, Debug)]
#[command(about = "Echo server: a listener task and a client handler per connection")]
pub struct Args {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Longest line accepted, in bytes (without its terminator).
    #[arg(long, default_value_t = DEFAULT_MAX_LINE)]
    max_line: usize,
    /// Longest time a client may take to send a complete line, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    idle_timeout_ms: u64,
    /// Connections served at once (lowered at start to what the fd limit leaves room for).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNS)]
    max_conns: usize,
    /// Serve on an ephemeral loopback port, echo a few clients, print the result and exit.
    #[arg(long)]
    self_test: bool,
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    common::init_tracing("info");
    run(Args::parse())
}

/// The server's life from parsed arguments (`main` less the log set-up): serves until Ctrl-C
/// or SIGTERM (or runs the self-test), then stops gracefully.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let fds = common::fds::fit_max_conns(args.max_conns);
    let cfg = EchoConfig {
        max_line: args.max_line,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        max_conns: fds.max_conns,
        ..EchoConfig::default()
    };
    let sched = Scheduler::builder().build()?;
    let stats = Arc::new(ServerStats::default());
    let addr = if args.self_test {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        args.addr
    };
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback");
    }
    let result = sched.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        println!(
            "echo server on {local} (max line {} B, idle timeout {} ms, {fds})",
            cfg.max_line,
            cfg.idle_timeout.as_millis(),
        );
        if args.self_test {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let max_line = cfg.max_line;
            let server = sched.spawn(
                "echo/listener",
                serve(sched.clone(), listener, cfg, stats.clone(), async {
                    let _ = rx.await;
                }),
            );
            let echoed = self_test(local, 8, 50, max_line).await;
            let _ = tx.send(());
            let _ = server.await;
            let echoed = echoed.map_err(std::io::Error::other)?;
            println!(
                "self-test: {echoed} lines from 8 clients (\\n, \\r\\n, bare \\r, non-UTF-8, one of \
                 {max_line} B) came back byte for byte"
            );
        } else {
            println!("Ctrl-C or SIGTERM to stop");
            serve(sched.clone(), listener, cfg, stats.clone(), async {
                let signal = shutdown_signal().await;
                println!("{signal}: shutting down");
            })
            .await;
        }
        Ok::<(), std::io::Error>(())
    });
    println!(
        "served {} connections, {} lines; refused {} (full); dropped {} (idle), {} (line too long)",
        ServerStats::get(&stats.accepted),
        ServerStats::get(&stats.lines),
        ServerStats::get(&stats.refused_full),
        ServerStats::get(&stats.dropped_idle),
        ServerStats::get(&stats.dropped_too_long),
    );
    // The handlers are done or stopped (the grace period is over): nothing is left but the
    // runtime, and no CPU work was ever queued.
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(2));
    result?;
    Ok(())
}
