//! Remote functions and the wire format, shared by the remote tiers (worker processes and MPI
//! ranks).
//!
//! - [`RemoteFn`]: a named `fn(A) -> R` with serde arguments and result, typed at the call
//!   site; [`Registry`]: the functions of this binary, by name, with a build id.
//! - [`init`]: call it first thing in `main`. It installs the registry and, in a process the
//!   pool started as a worker, serves tasks and exits instead of returning.
//! - [`shared`]: the read-only data a pool gave every worker once (DESIGN.md §5, Listing 2).
//! - [`wire`]: frames, headers and the worker-side call runner.

use std::any::Any;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};

mod registry;
pub mod wire;

pub(crate) use registry::install_panic_hook;
pub use registry::{AnyRemoteFn, CallFailure, Registry, RemoteFn};

/// Makes this binary able to serve remote work; call it at the very top of `main`, before
/// anything else runs, listing every [`RemoteFn`] this binary offers.
///
/// In a normal run it records the functions and returns at once. In a process that a
/// [`ProcessPool`](crate::tier::ProcessPool) started from this same binary, it never returns:
/// it serves tasks until the pool lets it go, then exits the process. Anything `main` does
/// before the call is therefore done by every worker too.
///
/// A pool refuses to start in a binary that did not call `init`, and a worker that does not
/// reach `init` (a call placed too late, behind a condition) is reported as a start-up error
/// naming this function.
///
/// # Panics
///
/// When two functions share a name.
///
/// ```
/// use offload::RemoteFn;
///
/// static ADD: RemoteFn<(u32, u32), u32> = RemoteFn::new("add", |(a, b)| a + b);
///
/// fn main() {
///     offload::init(&[&ADD]);
///     // ... the program; ProcessPool::submit(&ADD, (1, 2)) runs it in a worker.
/// }
/// ```
pub fn init(functions: &[&'static dyn AnyRemoteFn]) {
    let registry = Registry::new(functions);
    if !registry.install() {
        tracing::warn!("offload::init was called twice; the first registry stays");
    }
    // Under mpiexec: a worker rank serves and exits here; rank 0 starts its MPI thread.
    #[cfg(feature = "mpi")]
    crate::tier::mpi::start_up();
    if let Some(spec) = crate::tier::process::worker_spec() {
        // A worker of a process pool: serve, then exit. Never returns.
        crate::tier::process::serve_as_worker(spec);
    }
}

static SHARED_BYTES: OnceLock<Vec<u8>> = OnceLock::new();
static SHARED_VALUE: OnceLock<Box<dyn Any + Send + Sync>> = OnceLock::new();

/// Records the shared data a worker received at setup.
pub(crate) fn set_shared_bytes(bytes: Vec<u8>) {
    let _ = SHARED_BYTES.set(bytes);
}

/// The read-only data the pool gave this worker at start-up
/// ([`ProcessPoolBuilder::shared_data`](crate::tier::ProcessPoolBuilder::shared_data)),
/// decoded as `T` once per process and kept for its lifetime.
///
/// Call it from inside a remote function. Errors with [`ErrorKind::Unsupported`] outside a
/// worker or when the pool gave no data, and with [`ErrorKind::Encoding`] when the data is not
/// a `T` (or a different `T` was asked for before).
pub fn shared<T: DeserializeOwned + Send + Sync + 'static>() -> Result<&'static T, Error> {
    if let Some(v) = SHARED_VALUE.get() {
        return v.downcast_ref::<T>().ok_or_else(|| {
            Error::new(
                ErrorKind::Encoding,
                format!(
                    "the shared data was already read as another type than {}",
                    std::any::type_name::<T>()
                ),
            )
        });
    }
    let bytes = SHARED_BYTES
        .get()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "no shared data here: only a worker whose pool set shared_data has it",
            )
        })?;
    let value: T = postcard::from_bytes(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Encoding,
            format!(
                "could not decode the shared data as {}: {e}",
                std::any::type_name::<T>()
            ),
        )
    })?;
    // Another thread of the task may have raced us; either value is the same data.
    let stored = SHARED_VALUE.get_or_init(|| Box::new(value));
    stored.downcast_ref::<T>().ok_or_else(|| {
        Error::new(
            ErrorKind::Encoding,
            "the shared data was read concurrently as another type",
        )
    })
}
