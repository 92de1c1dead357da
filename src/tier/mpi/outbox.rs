//! Rank 0's sends to worker ranks, which never wait on a rank that may be gone.
//!
//! A blocking `MPI_Send` to a rank that died or whose host is cut off can wait for ever: over
//! OpenMPI's TCP transport it retries the connection inside the send (seen across simulated
//! hosts: rank 0's MPI thread stuck in `mca_pml_ob1_send`, under the MPI lock, so the whole
//! cluster hung). So rank 0 posts every message to a worker with `MPI_Isend` and keeps the
//! buffer here until the send completes, which for a small message to a live rank is at once
//! (the buffer comes straight back for reuse). The MPI thread completes the rest as it polls;
//! when a rank is declared lost its sends are abandoned: the requests are freed and their
//! buffers leaked, since MPI may still read them.

use std::os::raw::c_int;

use mpi::ffi;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

struct Posted {
    rank: usize,
    request: ffi::MPI_Request,
    /// Read by MPI until the request completes: never freed before.
    buf: Vec<u8>,
}

// SAFETY: an MPI request handle is a plain handle, used only under the MPI lock.
#[allow(unsafe_code)]
unsafe impl Send for Posted {}

/// The sends posted to worker ranks and not complete yet.
#[derive(Default)]
pub(super) struct Outbox {
    pending: Vec<Posted>,
}

impl Outbox {
    /// Posts `buf` to `rank` with `tag`. Returns the buffer when the send completed at once
    /// (to reuse it); otherwise keeps it until [`progress`](Self::progress) sees it complete.
    pub(super) fn post(
        &mut self,
        world: &SimpleCommunicator,
        rank: usize,
        tag: i32,
        buf: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let mut posted = Posted {
            rank,
            request: isend(world, rank, tag, &buf),
            buf,
        };
        if test(&mut posted.request) {
            return Some(posted.buf);
        }
        self.pending.push(posted);
        None
    }

    /// Completes the sends that have finished, freeing their buffers.
    pub(super) fn progress(&mut self) {
        self.pending.retain_mut(|p| !test(&mut p.request));
    }

    /// Whether every send has completed.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Abandons every send still in progress (see [`abandon`](Self::abandon)).
    pub(super) fn abandon_all(&mut self) {
        for mut p in self.pending.drain(..) {
            free(&mut p.request);
            std::mem::forget(p.buf);
        }
    }

    /// Abandons the sends to the lost `rank`: their requests are freed and their buffers
    /// leaked (MPI may still read them; a few small messages per lost rank).
    pub(super) fn abandon(&mut self, rank: usize) {
        let (lost, kept): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.rank == rank);
        self.pending = kept;
        for mut p in lost {
            free(&mut p.request);
            std::mem::forget(p.buf);
        }
    }
}

/// `MPI_Isend` of `buf` to `rank`: the caller keeps `buf` alive and unmoved in memory (a
/// `Vec`'s heap buffer does not move with the `Vec`) until the request completes or is freed
/// with the buffer leaked.
#[allow(unsafe_code)]
fn isend(world: &SimpleCommunicator, rank: usize, tag: i32, buf: &[u8]) -> ffi::MPI_Request {
    let count = c_int::try_from(buf.len()).expect("messages are bounded by DEFAULT_MAX_FRAME");
    let dest = c_int::try_from(rank).expect("a rank of the world fits an int");
    // SAFETY: `buf` is valid for `count` bytes and, per this function's contract, stays valid
    // until the request completes (or is freed with the buffer leaked); the datatype, rank
    // and communicator are valid handles of an initialised MPI; `request` is written by MPI.
    unsafe {
        let mut request = ffi::RSMPI_REQUEST_NULL;
        ffi::MPI_Isend(
            buf.as_ptr().cast(),
            count,
            u8::equivalent_datatype().as_raw(),
            dest,
            tag,
            world.as_raw(),
            &mut request,
        );
        request
    }
}

/// `MPI_Test`: whether the send is complete (the request is then null).
#[allow(unsafe_code)]
fn test(request: &mut ffi::MPI_Request) -> bool {
    let mut flag: c_int = 0;
    // SAFETY: `request` is a request from `isend` (or already null, which MPI_Test allows);
    // the status is ignored.
    unsafe {
        ffi::MPI_Test(request, &mut flag, ffi::RSMPI_STATUS_IGNORE);
    }
    flag != 0
}

/// `MPI_Request_free` of a send that may never complete.
#[allow(unsafe_code)]
fn free(request: &mut ffi::MPI_Request) {
    // SAFETY: `request` is an active request from `isend`; the caller leaks its buffer, which
    // MPI may still read.
    unsafe {
        ffi::MPI_Request_free(request);
    }
}
