//! Remote functions and the wire format, shared by the remote tiers (worker processes and MPI
//! ranks).
//!
//! - [`RemoteFn`]: a named `fn(A) -> R` with serde arguments and result, typed at the call
//!   site; [`Registry`]: the functions of this binary, by name, with a build id.
//! - [`init`]: call it first thing in `main`. It installs the registry and, in a process the
//!   pool started as a worker, serves tasks and exits instead of returning.
//! - [`shared`] and [`shared_bytes`]: the read-only data a pool gave every worker once
//!   (DESIGN.md §5, Listing 2); large data is one sealed memory file that all workers map.
//! - [`wire`]: frames, headers and the worker-side call runner.

mod registry;
mod shared;
pub(crate) mod wire;

pub(crate) use registry::install_panic_hook;
pub use registry::{AnyRemoteFn, CallFailure, Registry, RemoteFn};
pub(crate) use shared::{
    MAPPED_SHARED_DATA, SealedFile, adopt_bytes, adopt_file, map_inherited, set_shared_bytes,
};
pub use shared::{shared, shared_bytes};

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
