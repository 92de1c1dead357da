//! The accept loop of the example servers (`echo_server`, `compute_server`): a cap on open
//! connections that tells a refused client why, one named task per connection, and a graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use offload::Scheduler;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::lines::{ServerStats, refuse};

/// The limits of [`accept_loop`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is told `ERR server full` and closed.
    pub max_conns: usize,
    /// How long the handlers get to finish once shutdown is asked.
    pub grace: Duration,
}

/// Accepts connections on `listener` until `shutdown` resolves.
///
/// While fewer than `limits.max_conns` are open, a connection is served by
/// `handle(stream, peer, stop)` in a task of `sched` named `{name}/client` (watched for slow
/// polls); past the cap, a task `{name}/refuse` tells the client `ERR server full` and closes
/// it. Once `shutdown` resolves the listener closes, `stop` turns true for every handler, and
/// the handlers get `limits.grace` to finish.
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
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ServerStats::bump(&stats.refused_full);
            tracing::info!(%peer, max = limits.max_conns, "refused: server full");
            let msg = format!("ERR server full: {} connections at most", limits.max_conns);
            sched.spawn(&refuse_task, async move {
                let mut stream = stream;
                let (mut rd, mut wr) = stream.split();
                refuse(&mut rd, &mut wr, &msg).await;
            });
            continue;
        };
        ServerStats::bump(&stats.accepted);
        let served = handle(stream, peer, stop_rx.clone());
        sched.spawn(&client_task, async move {
            let _permit = permit;
            served.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_conns).unwrap_or(u32::MAX);
    tokio::time::timeout(limits.grace, permits.acquire_many(all))
        .await
        .is_ok()
}
