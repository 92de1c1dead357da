//! The read-only data a pool gives every worker once (DESIGN.md §5, Listing 2).
//!
//! Two ways to travel, chosen by size when the pool is built:
//!
//! - **inline**: small data rides in the setup frame and each worker keeps its own copy;
//! - **mapped**: larger data is written once into a sealed anonymous memory file
//!   (`memfd_create`, sealed against writing, growing and shrinking) that every worker
//!   inherits and maps read-only. All workers, replacements included, then share the same
//!   physical pages, and the data is not bounded by the maximum frame size.
//!
//! The seals are what make the mapping sound to hand out as a `&'static [u8]`: once sealed,
//! no process (the pool included) can change or truncate the file, so the bytes under the
//! slice never change and never vanish. A worker checks the seals before it maps.

use std::any::Any;
use std::fs::File;
use std::io::Write;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{Error, ErrorKind};

/// The seals a shared-data file carries: nothing may write, grow or shrink it, and the seal
/// set itself is closed.
#[cfg(target_os = "linux")]
const SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;

/// A sealed anonymous memory file holding a pool's shared data (the pool's side).
///
/// It is close-on-exec in the pool's process; a worker's start clears that flag in the
/// child only, so no other program the pool's process starts inherits it.
#[derive(Debug)]
pub(crate) struct SealedFile {
    file: File,
    len: u64,
}

impl SealedFile {
    /// A sealed file holding `bytes`.
    pub(crate) fn from_bytes(bytes: &[u8]) -> std::io::Result<SealedFile> {
        let mut file = memfd()?;
        file.write_all(bytes)?;
        seal(file)
    }

    /// A sealed file holding a copy of the file at `path` (copied inside the kernel where
    /// the file system allows it, never through this process's heap).
    pub(crate) fn from_path(path: &Path) -> std::io::Result<SealedFile> {
        let mut src = File::open(path)?;
        let mut file = memfd()?;
        std::io::copy(&mut src, &mut file)?;
        seal(file)
    }

    /// The descriptor a worker inherits.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The data's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

/// Whether this platform has sealed memory files (Linux's `memfd_create` and file seals);
/// elsewhere shared data always travels inline.
pub(crate) const MAPPED_SHARED_DATA: bool = cfg!(target_os = "linux");

#[cfg(not(target_os = "linux"))]
fn memfd() -> std::io::Result<File> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "sealed memory files need Linux",
    ))
}

#[cfg(not(target_os = "linux"))]
fn seal(_file: File) -> std::io::Result<SealedFile> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "sealed memory files need Linux",
    ))
}

#[cfg(not(target_os = "linux"))]
fn check_seals(fd: RawFd) -> Result<(), String> {
    Err(format!(
        "descriptor {fd}: sealed memory files need Linux, so shared data travels inline here"
    ))
}

#[cfg(target_os = "linux")]
fn memfd() -> std::io::Result<File> {
    #[allow(unsafe_code)]
    // SAFETY: the name is a NUL-terminated C string literal; memfd_create reads only it.
    let fd = unsafe {
        libc::memfd_create(
            c"offload-shared".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd == -1 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if fd > 2 {
        return Ok(File::from(owned));
    }
    // A process that closed its stdin or stderr gets 0..2 back; a worker's start puts its
    // own stdin and stderr there before it clears close-on-exec, so move the file above.
    #[allow(unsafe_code)]
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own into the lowest free number of
    // at least 3; it reads nothing else.
    let high = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if high == -1 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    let high = unsafe { OwnedFd::from_raw_fd(high) };
    Ok(File::from(high))
}

#[cfg(target_os = "linux")]
fn seal(file: File) -> std::io::Result<SealedFile> {
    let len = file.metadata()?.len();
    #[allow(unsafe_code)]
    // SAFETY: fcntl on a descriptor this File owns; F_ADD_SEALS takes an int argument.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SealedFile { file, len })
}

/// The shared data as this worker holds it.
enum SharedBytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SharedBytes::Owned(v) => v,
            SharedBytes::Mapped(m) => m,
        }
    }
}

static SHARED_BYTES: OnceLock<SharedBytes> = OnceLock::new();
static SHARED_VALUE: OnceLock<Box<dyn Any + Send + Sync>> = OnceLock::new();

/// Records the shared data a worker received inline at setup.
pub(crate) fn set_shared_bytes(bytes: Vec<u8>) {
    let _ = SHARED_BYTES.set(SharedBytes::Owned(bytes));
}

/// Maps the sealed shared-data file this worker inherited as descriptor `fd`, `len` bytes
/// long, and records it; the descriptor is closed (the mapping outlives it). Errors with a
/// sentence for the pool when the descriptor is not such a file or cannot be mapped.
pub(crate) fn map_inherited(fd: i32, len: u64) -> Result<(), String> {
    // Check before taking ownership: a descriptor that is not open, not a sealed memory
    // file, or not of the announced size is refused untouched.
    check_seals(fd)?;
    let size = size_of_fd(fd)?;
    if size != len {
        return Err(format!(
            "the shared data's descriptor {fd} holds {size} bytes, the pool announced {len}"
        ));
    }
    #[allow(unsafe_code)]
    // SAFETY: the pool passed this descriptor in the setup frame after clearing its
    // close-on-exec flag for this exec only, and the checks above showed it is open and is
    // the sealed file of the announced size. Nothing else in this process knows the number,
    // so the File is its only owner.
    let file = unsafe { File::from_raw_fd(fd) };
    let map = map_sealed(&file, len)?;
    drop(file);
    let _ = SHARED_BYTES.set(SharedBytes::Mapped(map));
    Ok(())
}

/// The size of the file open as `fd`, without taking the descriptor over.
fn size_of_fd(fd: RawFd) -> Result<u64, String> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    #[allow(unsafe_code)]
    // SAFETY: fstat writes a `stat` into the buffer we pass, which is large enough; an
    // invalid descriptor fails with EBADF and writes nothing.
    let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if r == -1 {
        return Err(format!(
            "could not stat the shared data's descriptor {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    #[allow(unsafe_code)]
    // SAFETY: fstat succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Whether `fd` is a memory file sealed against writing and shrinking, or why not.
#[cfg(target_os = "linux")]
fn check_seals(fd: RawFd) -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: F_GET_SEALS only reads the seal set of the descriptor; an invalid one fails
    // with EBADF.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals == -1 {
        return Err(format!(
            "the shared data's descriptor {fd} is not a sealed memory file: {}",
            std::io::Error::last_os_error()
        ));
    }
    let needed = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK;
    if seals & needed != needed {
        return Err(format!(
            "the shared data's file (descriptor {fd}) is not sealed against writing and \
             shrinking (seals {seals:#x})"
        ));
    }
    Ok(())
}

/// Maps a sealed memory file of `len` bytes read-only, after checking its seals and size.
fn map_sealed(file: &File, len: u64) -> Result<memmap2::Mmap, String> {
    check_seals(file.as_raw_fd())?;
    let size = file
        .metadata()
        .map_err(|e| format!("could not stat the shared data's file: {e}"))?
        .len();
    if size != len {
        return Err(format!(
            "the shared data's file holds {size} bytes, the pool announced {len}"
        ));
    }
    // A private read-only mapping: the kernels before 6.x refuse a shared one of a file
    // sealed against writing (EPERM), and since the pages are never written, a private
    // mapping still shares them with every other process that maps the file.
    #[allow(unsafe_code)]
    // SAFETY: the file is sealed against writing and shrinking (checked above, and a seal
    // cannot be removed), so no process can change or remove the bytes under the mapping
    // while this process lives: handing them out as `&'static [u8]` is sound.
    unsafe { memmap2::MmapOptions::new().map_copy_read_only(file) }.map_err(|e| {
        format!(
            "could not map the shared data ({len} bytes): {e} (a memory limit counts the \
             mapping in each worker's address space)"
        )
    })
}

/// Makes a pool's shared `bytes` readable in the pool's own process too, so that a remote
/// function run in place (inline or on threads by placement, or through
/// [`RemoteFn::call_local`](crate::RemoteFn::call_local)) reads what the workers read.
///
/// The first pool with data wins: a later pool with other data is logged, since calls in
/// this process keep reading the first one's.
pub(crate) fn adopt_bytes(bytes: &[u8]) {
    if !bytes.is_empty() && !already_adopted(bytes) {
        adopt(SharedBytes::Owned(bytes.to_vec()));
    }
}

/// As [`adopt_bytes`], for data in a sealed file: this process maps it as the workers do.
pub(crate) fn adopt_file(file: &SealedFile) {
    if file.len == 0 || SHARED_BYTES.get().is_some() {
        // Nothing, or the first pool's data is here: mapping this one only to compare would
        // cost more than the warning is worth.
        return;
    }
    match map_sealed(&file.file, file.len) {
        Ok(map) => adopt(SharedBytes::Mapped(map)),
        Err(e) => tracing::warn!(
            error = %e,
            "the pool's shared data is not readable in this process (its workers have it)"
        ),
    }
}

/// Whether this process holds shared data already; logs when it is not `bytes`.
fn already_adopted(bytes: &[u8]) -> bool {
    let Some(first) = SHARED_BYTES.get() else {
        return false;
    };
    if **first != *bytes {
        tracing::warn!(
            "a second pool with other shared data: its workers read it, but remote functions \
             run in this process keep reading the first pool's"
        );
    }
    true
}

fn adopt(here: SharedBytes) {
    // A pool built at the same moment on another thread may have won: it stays.
    if let Err(here) = SHARED_BYTES.set(here) {
        already_adopted(&here);
    }
}

fn no_shared_data() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "no shared data here: only a pool's workers and the pool's own process have it, \
         once a pool was built with shared data",
    )
}

/// The raw bytes of the read-only data the pool gave this worker, for the life of the
/// process: a file's contents for
/// [`ProcessPoolBuilder::shared_file`](crate::tier::ProcessPoolBuilder::shared_file), the
/// bytes given to [`shared_bytes`](crate::tier::ProcessPoolBuilder::shared_bytes), or the
/// postcard encoding of what was given to
/// [`shared_data`](crate::tier::ProcessPoolBuilder::shared_data).
///
/// Large data is a read-only mapping that every worker of the pool shares (no copy, no
/// decoding), so this is the way to reach a big table or file without paying for it per
/// worker.
///
/// The pool's own process reads the same data (the first pool built with shared data), so a
/// remote function that placement runs inline or on threads sees what it sees in a worker.
/// Errors with [`ErrorKind::Unsupported`] in a process without a pool that gave data.
///
/// ```
/// use offload::RemoteFn;
///
/// // Counts a byte in the file the pool mapped into every worker.
/// static COUNT: RemoteFn<u8, usize> = RemoteFn::new("count_byte", |b| {
///     let data = offload::shared_bytes().unwrap_or_default();
///     data.iter().filter(|&&x| x == b).count()
/// });
/// ```
pub fn shared_bytes() -> Result<&'static [u8], Error> {
    SHARED_BYTES
        .get()
        .map(|b| &**b)
        .filter(|b| !b.is_empty())
        .ok_or_else(no_shared_data)
}

/// The read-only data the pool gave this worker at start-up
/// ([`ProcessPoolBuilder::shared_data`](crate::tier::ProcessPoolBuilder::shared_data)),
/// decoded as `T` once per process and kept for its lifetime.
///
/// `T` may borrow from the data (`&'static str`, `&'static [u8]` fields): the bytes live as
/// long as the process, and large data is a mapping shared by all workers, so borrowed
/// fields cost neither a copy nor memory per worker.
///
/// Call it from inside a remote function; it works in the pool's own process too, as
/// [`shared_bytes`] does. Errors with [`ErrorKind::Unsupported`] in a process without a pool
/// that gave data, and with [`ErrorKind::Encoding`] when the data is not a `T` (or a
/// different `T` was asked for before).
pub fn shared<T: Deserialize<'static> + Send + Sync + 'static>() -> Result<&'static T, Error> {
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
    let bytes = shared_bytes()?;
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_holds_the_bytes_and_refuses_writes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sealed = SealedFile::from_bytes(&data).expect("a memfd");
        assert_eq!(sealed.len(), data.len() as u64);
        let mut f = sealed.file.try_clone().expect("dup");
        let err = f.write_all(b"x").expect_err("sealed against writing");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let err = f.set_len(10).expect_err("sealed against shrinking");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let mut back = Vec::new();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek");
        std::io::Read::read_to_end(&mut f, &mut back).expect("read");
        assert_eq!(back, data);
    }

    #[test]
    fn a_sealed_copy_of_a_file_and_a_missing_file() {
        let path = std::env::temp_dir().join(format!("offload-sealed-{}", std::process::id()));
        std::fs::write(&path, b"hello shared world").expect("write a temp file");
        let sealed = SealedFile::from_path(&path).expect("copied");
        let _ = std::fs::remove_file(&path);
        assert_eq!(sealed.len(), 18);
        let e = SealedFile::from_path(&path).expect_err("gone");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn an_unsealed_or_closed_descriptor_is_refused() {
        let f = memfd().expect("a memfd");
        let e = map_inherited(f.as_raw_fd(), 0).expect_err("not sealed");
        assert!(e.contains("not sealed"), "{e}");
        let e = map_inherited(-1, 0).expect_err("not open");
        assert!(e.contains("not a sealed memory file"), "{e}");
    }
}
