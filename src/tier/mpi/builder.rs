//! [`ClusterBuilder`]: the cluster's settings and its start (the setup broadcast).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::error::BuildError;
use crate::remote::wire::{DEFAULT_MAX_FRAME, Request, SharedData, encode_payload};

use super::cluster::{Cluster, Inner};
use super::detect::detect;
use super::lifecycle::{Command, SERVICE};

/// How long a waiter spins for a result before it parks, while the cluster's recent tasks are
/// this short: one thread wake-up (~25 µs here). Longer tasks park at once. Used only when
/// rank 0 may run on at least [`SPIN_MIN_CORES`] cores: with fewer, the waiter, the MPI thread
/// and a local worker rank fight for the cores and spinning makes the round trip slower, not
/// faster (measured: 37 µs spinning against 12 µs parking on a 2-core VM, `mpiexec -n 2`).
pub const RESULT_SPIN: Duration = Duration::from_micros(25);

/// How long a caller that sent its task itself (the direct path, see the module docs) polls
/// for the reply before it hands the task to the MPI thread and parks; also the longest recent
/// mean run time for which a task takes the direct path at all. Two thread wake-ups here
/// (~25 µs each): what handing over costs a task that ends just after the spin, so a task
/// never pays much more than twice its run time to the spin, and a long task (ms) never
/// spins.
pub const DIRECT_SPIN: Duration = Duration::from_micros(50);

/// The fewest cores rank 0 must be allowed to run on (its CPU affinity, which `mpiexec`'s
/// binding sets) before its waiters spin: one for the caller, one for the MPI thread, one
/// spare.
pub const SPIN_MIN_CORES: usize = 3;

fn default_result_spin() -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= SPIN_MIN_CORES {
        RESULT_SPIN
    } else {
        Duration::ZERO
    }
}

/// Settings for a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    /// The encoded shared data, or why it could not be encoded (reported by `build`).
    shared: Result<Vec<u8>, String>,
    chunk_size: Option<usize>,
    result_spin: Duration,
    direct_spin: Duration,
    task_timeout: Option<Duration>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            shared: Ok(Vec::new()),
            chunk_size: None,
            result_spin: default_result_spin(),
            direct_spin: DIRECT_SPIN,
            task_timeout: None,
        }
    }
}

impl ClusterBuilder {
    /// Read-only data every worker rank gets once, by one `MPI_Bcast` when the cluster starts;
    /// remote functions read it with [`crate::shared`]. Errors at [`build`](Self::build) when
    /// it cannot be encoded or is over 64 MiB.
    pub fn shared_data<T: Serialize + ?Sized>(&mut self, data: &T) -> &mut Self {
        self.shared = postcard::to_allocvec(data)
            .map_err(|e| format!("the shared data could not be encoded: {e}"));
        self
    }

    /// Raw read-only bytes every worker rank gets once, read with
    /// [`crate::shared_bytes`] (the cluster's side of
    /// [`ProcessPoolBuilder::shared_bytes`](crate::tier::ProcessPoolBuilder::shared_bytes)).
    /// Ranks may sit on other hosts, so the bytes are broadcast, never mapped; errors at
    /// [`build`](Self::build) when over 64 MiB.
    pub fn shared_bytes(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.shared = Ok(bytes.into());
        self
    }

    /// The contents of the file at `path`, read on rank 0 and broadcast to every worker rank
    /// as with [`shared_bytes`](Self::shared_bytes). A file that cannot be read fails
    /// [`build`](Self::build) with its path.
    pub fn shared_file(&mut self, path: impl AsRef<std::path::Path>) -> &mut Self {
        let path = path.as_ref();
        self.shared = std::fs::read(path)
            .map_err(|e| format!("could not read the shared file {}: {e}", path.display()));
        self
    }

    /// The longest a task (or a [`Cluster::map`] chunk: one message) may run on a worker
    /// rank, from when it is sent (default: no limit). Past it the task fails with
    /// [`Error::is_timeout`](crate::Error::is_timeout) and its rank is *retired*: never given work again, since a
    /// running MPI task cannot be stopped on its own. For tasks that run too long: a rank that
    /// dies, freezes or becomes unreachable fails its task without any limit (see the module
    /// docs on dead ranks). [`Cluster::submit_timeout`] sets a limit for one task.
    pub fn task_timeout(&mut self, limit: Duration) -> &mut Self {
        self.task_timeout = Some(limit);
        self
    }

    /// A fixed number of items per MPI message in [`Cluster::map`] (default: adaptive, as
    /// on the process tier).
    pub fn chunk_size(&mut self, n: usize) -> &mut Self {
        self.chunk_size = Some(n);
        self
    }

    /// How long a waiter spins for a short task's result before it parks (default
    /// [`RESULT_SPIN`] when rank 0 may use [`SPIN_MIN_CORES`] cores or more, else zero: park
    /// at once).
    pub fn result_spin(&mut self, d: Duration) -> &mut Self {
        self.result_spin = d;
        self
    }

    /// How long a caller that sent its task itself polls for the reply before handing it to
    /// the MPI thread (default [`DIRECT_SPIN`]); zero turns the direct path off, so that every
    /// task goes through rank 0's MPI thread. See the module docs on the round trip.
    pub fn direct_spin(&mut self, d: Duration) -> &mut Self {
        self.direct_spin = d;
        self
    }

    /// Sets the cluster up: broadcasts the setup and waits for every worker rank to answer.
    /// Blocks the calling thread for that exchange (milliseconds).
    ///
    /// Fails when this process is not rank 0 of an MPI job with worker ranks started through
    /// [`crate::init`], when a cluster was built already, or when a rank refuses the setup (for
    /// example because it runs another build).
    pub fn build(&self) -> Result<Cluster, BuildError> {
        if self.chunk_size == Some(0) {
            return Err(BuildError::invalid("the chunk size must be at least 1"));
        }
        let shared = self.shared.as_ref().map_err(BuildError::invalid)?;
        if shared.len() > DEFAULT_MAX_FRAME {
            return Err(BuildError::invalid(format!(
                "the shared data is {} bytes, over the {DEFAULT_MAX_FRAME}-byte limit",
                shared.len()
            )));
        }
        let Some(launch) = detect().launch() else {
            return Err(BuildError::invalid(
                "not launched by mpiexec: the cluster tier needs an MPI job (see auto())",
            ));
        };
        if !launch.is_master() {
            return Err(BuildError::invalid(format!(
                "rank {} is a worker rank: call offload::init() first in main",
                launch.rank
            )));
        }
        let Some(service) = SERVICE.get() else {
            return Err(BuildError::invalid(
                "the MPI thread is not running: call offload::init() first in main, under \
                 mpiexec with more than one rank",
            ));
        };
        let world = service.state.wait_world().map_err(BuildError::invalid)?;
        if world.size < 2 {
            return Err(BuildError::invalid(
                "the MPI job has one rank: no worker rank to run tasks",
            ));
        }
        if service.taken.swap(true, Ordering::AcqRel) {
            return Err(BuildError::invalid(
                "a cluster was built already in this process (clone its handle instead)",
            ));
        }
        let registry = crate::remote::Registry::global().ok_or_else(|| {
            BuildError::invalid("offload::init() was not called: no registry of remote functions")
        })?;
        let setup = Request::Setup {
            build_id: registry.build_id(),
            worker: 0,
            init: None,
            init_args_len: 0,
            shared: SharedData::Inline,
        };
        let payload = encode_payload(&setup, shared)
            .map_err(|e| BuildError::invalid(format!("cannot encode the setup: {e}")))?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        service
            .tx
            .send_blocking(Command::Setup { payload, reply })
            .map_err(|_| BuildError::invalid("the MPI thread has stopped"))?;
        let ranks = answer
            .recv()
            .map_err(|_| BuildError::invalid("the MPI thread stopped during the setup"))?
            .map_err(|e| BuildError::invalid(e.to_string()))?;
        tracing::info!(ranks = ranks.len(), "cluster tier ready");
        // Remote functions run on rank 0 itself (inline, by placement) read the same data.
        crate::remote::adopt_bytes(shared);
        Ok(Cluster {
            inner: Arc::new(Inner {
                service,
                ranks: ranks.len(),
                chunk_size: self.chunk_size,
                result_spin: self.result_spin,
                direct_spin: self.direct_spin,
                task_timeout: self.task_timeout,
                closed: AtomicBool::new(false),
            }),
        })
    }
}
