//! The accept loop of the example servers (`echo_server`, `compute_server`): a cap on open
//! connections that tells every refused client why, one named task per connection, a back-off
//! when descriptors run out, and a graceful, bounded shutdown on Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use offload::Scheduler;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::lines::{LINGER, ServerStats, refuse};

/// Connections being refused at once (each holds a descriptor for up to
/// [`LINGER`](super::lines::LINGER) while the client reads why). The accept loop waits for a
/// free slot before it accepts, so a burst past the cap waits in the backlog instead of
/// running the process out of descriptors.
pub const REFUSAL_SLOTS: usize = 32;

/// How long the accept loop sleeps after `accept` fails for want of descriptors (EMFILE,
/// ENFILE) or memory, before it tries again: long enough not to spin, short enough that a
/// client waiting in the backlog is soon served or refused.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits of [`accept_loop`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is told `ERR server full` and closed.
    pub max_conns: usize,
    /// How long the handlers get to finish once shutdown is asked; those still running then
    /// are stopped.
    pub grace: Duration,
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM, with the signal's name. systemd,
/// `docker stop` and Kubernetes stop a service with SIGTERM: it gets the same graceful stop as
/// Ctrl-C.
pub async fn shutdown_signal() -> &'static str {
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term => "SIGTERM",
        _ = int => "SIGINT",
    }
}

/// Whether an `accept` error means the process or system ran out of a resource (descriptors,
/// memory, buffers): nothing to do but wait for some to be freed.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections on `listener` until `shutdown` resolves.
///
/// While fewer than `limits.max_conns` are open, a connection is served by
/// `handle(stream, peer, stop)` in a task of `sched` named `{name}/client` (watched for slow
/// polls); past the cap, a task `{name}/refuse` tells the client `ERR server full` and closes
/// it. When `accept` fails for want of descriptors the loop backs off for
/// [`ACCEPT_BACKOFF`] and logs it once. Once `shutdown` resolves the listener closes, `stop`
/// turns true for every handler, and the handlers get `limits.grace` to finish; those still
/// running then are stopped.
///
/// Returns whether every handler finished within the grace period.
pub async fn accept_loop<H, F>(
    sched: &Scheduler,
    listener: TcpListener,
    name: &str,
    limits: Limits,
    stats: &ServerStats,
    shutdown: impl Future<Output = ()>,
    mut handle: H,
) -> bool
where
    H: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (client_task, refuse_task) = (format!("{name}/client"), format!("{name}/refuse"));
    let permits = Arc::new(Semaphore::new(limits.max_conns));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let kill = CancellationToken::new();
    let mut starved = 0u64;
    tokio::pin!(shutdown);
    loop {
        // A refusal slot first: whatever comes next can then be served or told why.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            s = refusals.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if out_of_resources(&e) => {
                if starved == 0 {
                    tracing::warn!(
                        error = %e,
                        backoff_ms = ACCEPT_BACKOFF.as_millis() as u64,
                        "accept failed: out of descriptors; backing off (logged once)"
                    );
                }
                starved += 1;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => {
                // The peer gave up before we took it, and the like: nothing to back off for.
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ServerStats::bump(&stats.refused_full);
            tracing::info!(%peer, max = limits.max_conns, "refused: server full");
            let msg = format!("ERR server full: {} connections at most", limits.max_conns);
            sched.spawn(&refuse_task, async move {
                let _slot = slot;
                let mut stream = stream;
                let (mut rd, mut wr) = stream.split();
                refuse(&mut rd, &mut wr, &msg).await;
            });
            continue;
        };
        drop(slot);
        ServerStats::bump(&stats.accepted);
        let served = handle(stream, peer, stop_rx.clone());
        let kill = kill.clone();
        sched.spawn(&client_task, async move {
            let _permit = permit;
            tokio::select! {
                _ = served => {}
                _ = kill.cancelled() => {}
            }
        });
    }
    drop(listener);
    if starved > 1 {
        tracing::info!(times = starved, "accept ran out of descriptors");
    }
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_conns).unwrap_or(u32::MAX);
    let finished = tokio::time::timeout(limits.grace, permits.acquire_many(all))
        .await
        .is_ok();
    if !finished {
        // Bounded: the handlers left are stopped, their connections closed.
        kill.cancel();
        let _ = tokio::time::timeout(LINGER, permits.acquire_many(all)).await;
    }
    // Refusals end within their linger.
    let slots = u32::try_from(REFUSAL_SLOTS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(LINGER, refusals.acquire_many(slots)).await;
    finished
}
