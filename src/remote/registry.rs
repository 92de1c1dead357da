//! Remote functions: typed at the call site, found by name in the worker.
//!
//! A [`RemoteFn<A, R>`] is a plain `fn(A) -> R` with a name. The caller's side only ever sends
//! the name and the encoded `A`; the type parameters make a call with the wrong argument or
//! result type a compile error. The worker's side finds the function by name in the
//! [`Registry`] that [`init`](crate::init) installed and runs it through the type-erased
//! [`AnyRemoteFn`] face, which decodes, calls (catching panics) and encodes.

use std::any::type_name;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::panic_message;
use crate::remote::wire::{FailKind, ItemOutcome};

/// A named function that can run in another process (or on another MPI rank).
///
/// Declare it as a `static` (a closure that captures nothing coerces to `fn`), list it in
/// [`init`](crate::init) at the top of `main`, and pass it by reference to a remote tier:
///
/// ```
/// use offload::RemoteFn;
///
/// static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);
///
/// fn main() {
///     offload::init(&[&SQUARE]);
///     assert_eq!(SQUARE.call_local(7), 49);
/// }
/// ```
///
/// Several arguments travel as a tuple: `RemoteFn<(String, u32), Vec<u8>>`.
pub struct RemoteFn<A, R> {
    name: &'static str,
    f: fn(A) -> R,
}

impl<A, R> RemoteFn<A, R> {
    /// A remote function called `name` (unique within the binary) that runs `f`.
    pub const fn new(name: &'static str, f: fn(A) -> R) -> Self {
        RemoteFn { name, f }
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The plain function, to run it here on an in-process tier.
    pub fn function(&self) -> fn(A) -> R {
        self.f
    }

    /// Runs the function here, in this process.
    pub fn call_local(&self, args: A) -> R {
        (self.f)(args)
    }
}

impl<A, R> fmt::Debug for RemoteFn<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RemoteFn({:?}: {} -> {})",
            self.name,
            type_name::<A>(),
            type_name::<R>()
        )
    }
}

/// Why a remote call did not produce its encoded result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// The function panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// The backtrace captured where it panicked.
        backtrace: Option<String>,
    },
    /// The arguments could not be decoded, or the result encoded.
    Failed {
        /// What went wrong.
        kind: FailKind,
        /// A sentence saying so.
        message: String,
    },
}

mod sealed {
    pub trait Sealed {}
}

/// The type-erased face of a [`RemoteFn`], as the worker's side uses it. Implemented only by
/// `RemoteFn`.
pub trait AnyRemoteFn: sealed::Sealed + Send + Sync + 'static {
    /// The registered name.
    fn name(&self) -> &'static str;

    /// The argument and result type names (part of the build id).
    fn signature(&self) -> (&'static str, &'static str);

    /// Decodes one argument from `args`, runs the function, appends the encoded result to `out`.
    fn call(&self, args: &[u8], out: &mut Vec<u8>) -> Result<(), CallFailure>;

    /// Decodes a `Vec<A>` from `args`, runs the function on each item (a panic fails only its
    /// item), appends the encoded `Vec<ItemOutcome<R>>` to `out`.
    fn call_batch(&self, args: &[u8], out: &mut Vec<u8>) -> Result<(), CallFailure>;
}

impl<A, R> sealed::Sealed for RemoteFn<A, R> {}

impl<A, R> AnyRemoteFn for RemoteFn<A, R>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn signature(&self) -> (&'static str, &'static str) {
        (type_name::<A>(), type_name::<R>())
    }

    fn call(&self, args: &[u8], out: &mut Vec<u8>) -> Result<(), CallFailure> {
        let a: A = postcard::from_bytes(args).map_err(|e| CallFailure::Failed {
            kind: FailKind::Decode,
            message: format!(
                "could not decode the arguments of {:?} as {}: {e}",
                self.name,
                type_name::<A>()
            ),
        })?;
        let r = run_catching(self.f, a)
            .map_err(|(message, backtrace)| CallFailure::Panicked { message, backtrace })?;
        encode_into(&r, out).map_err(|e| CallFailure::Failed {
            kind: FailKind::Encode,
            message: format!("could not encode the result of {:?}: {e}", self.name),
        })
    }

    fn call_batch(&self, args: &[u8], out: &mut Vec<u8>) -> Result<(), CallFailure> {
        let items: Vec<A> = postcard::from_bytes(args).map_err(|e| CallFailure::Failed {
            kind: FailKind::Decode,
            message: format!(
                "could not decode a batch of {:?} arguments as {}: {e}",
                self.name,
                type_name::<A>()
            ),
        })?;
        let outcomes: Vec<ItemOutcome<R>> = items
            .into_iter()
            .map(|a| match run_catching(self.f, a) {
                Ok(r) => ItemOutcome::Ok(r),
                Err((message, backtrace)) => ItemOutcome::Panicked { message, backtrace },
            })
            .collect();
        encode_into(&outcomes, out).map_err(|e| CallFailure::Failed {
            kind: FailKind::Encode,
            message: format!("could not encode the results of {:?}: {e}", self.name),
        })
    }
}

fn encode_into<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(v, buf)?;
    Ok(())
}

thread_local! {
    static IN_CALL: RefCell<Option<Option<(String, String)>>> = const { RefCell::new(None) };
}

/// Runs `f(a)` catching a panic; the panic hook installed by [`install_panic_hook`] records the
/// message and a backtrace while a call runs, instead of printing them.
fn run_catching<A, R>(f: fn(A) -> R, a: A) -> Result<R, (String, Option<String>)> {
    IN_CALL.with(|c| *c.borrow_mut() = Some(None));
    let result = catch_unwind(AssertUnwindSafe(|| f(a)));
    let captured = IN_CALL.with(|c| c.borrow_mut().take()).flatten();
    result.map_err(|payload| {
        let fallback = panic_message(&*payload);
        match captured {
            Some((message, backtrace)) => (message, Some(backtrace)),
            None => (fallback, None),
        }
    })
}

/// Installs (once) a panic hook that, while a remote call runs on this thread, records the
/// message (with its location) and a forced backtrace for the caller; other panics go to the
/// previous hook.
pub(crate) fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_call = IN_CALL.with(|c| c.borrow().is_some());
            if !in_call {
                previous(info);
                return;
            }
            let message = panic_message(info.payload());
            let message = match info.location() {
                Some(l) => format!("{message} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => message,
            };
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            IN_CALL.with(|c| {
                if let Ok(mut slot) = c.try_borrow_mut() {
                    *slot = Some(Some((message, bt)));
                }
            });
        }));
    });
}

/// The functions this binary can run for others, by name. Built once by
/// [`init`](crate::init).
pub struct Registry {
    by_name: HashMap<&'static str, &'static dyn AnyRemoteFn>,
    build_id: u64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("functions", &self.by_name.len())
            .field("build_id", &format_args!("{:016x}", self.build_id))
            .finish()
    }
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

impl Registry {
    /// Builds a registry. Panics on two functions with one name: that is a bug in the program,
    /// and the message names the function.
    pub(crate) fn new(functions: &[&'static dyn AnyRemoteFn]) -> Self {
        let mut by_name = HashMap::with_capacity(functions.len());
        for f in functions {
            if by_name.insert(f.name(), *f).is_some() {
                panic!(
                    "offload::init: two remote functions are named {:?}; names must be unique",
                    f.name()
                );
            }
        }
        let build_id = compute_build_id(&by_name);
        Registry { by_name, build_id }
    }

    /// Installs `self` as this process's registry; false when one was installed already.
    pub(crate) fn install(self) -> bool {
        REGISTRY.set(self).is_ok()
    }

    /// The registry [`init`](crate::init) installed, if it ran.
    pub fn global() -> Option<&'static Registry> {
        REGISTRY.get()
    }

    /// The function registered as `name`.
    pub fn get(&self, name: &str) -> Option<&'static dyn AnyRemoteFn> {
        self.by_name.get(name).copied()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Number of registered functions.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no function is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// This binary's build id: both ends of a connection must agree on it (the handshake).
    ///
    /// A hash of the crate version, every registered function's name and signature, and the
    /// size and modification time of the running executable. Two processes of the same binary
    /// file agree; a rebuilt binary or one with other functions does not.
    pub fn build_id(&self) -> u64 {
        self.build_id
    }
}

fn compute_build_id(by_name: &HashMap<&'static str, &'static dyn AnyRemoteFn>) -> u64 {
    // DefaultHasher::new() uses fixed keys: the same input hashes the same in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    crate::remote::wire::WIRE_VERSION.hash(&mut h);
    let mut names: Vec<_> = by_name.iter().collect();
    names.sort_by_key(|(n, _)| **n);
    for (name, f) in names {
        name.hash(&mut h);
        f.signature().hash(&mut h);
    }
    if let Ok(meta) = std::fs::metadata("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(std::fs::metadata))
    {
        meta.len().hash(&mut h);
        if let Ok(m) = meta.modified() {
            m.hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    static DOUBLE: RemoteFn<u32, u32> = RemoteFn::new("double", |x| x * 2);
    static BOOM: RemoteFn<u32, u32> = RemoteFn::new("boom", |x| panic!("boom {x}"));

    #[test]
    fn call_decodes_runs_and_encodes() {
        let args = postcard::to_allocvec(&21u32).expect("encodes");
        let mut out = Vec::new();
        DOUBLE.call(&args, &mut out).expect("runs");
        assert_eq!(postcard::from_bytes::<u32>(&out).expect("decodes"), 42);
    }

    #[test]
    fn a_panic_comes_back_with_its_message() {
        install_panic_hook();
        let args = postcard::to_allocvec(&7u32).expect("encodes");
        match BOOM.call(&args, &mut Vec::new()) {
            Err(CallFailure::Panicked { message, backtrace }) => {
                assert!(message.contains("boom 7"), "{message}");
                assert!(backtrace.is_some());
            }
            other => panic!("expected a panic, got {other:?}"),
        }
    }

    #[test]
    fn bad_arguments_are_a_decode_failure() {
        match DOUBLE.call(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &mut Vec::new()) {
            Err(CallFailure::Failed { kind, .. }) => assert_eq!(kind, FailKind::Decode),
            other => panic!("expected a decode failure, got {other:?}"),
        }
    }

    #[test]
    fn batch_fails_only_the_panicking_item() {
        install_panic_hook();
        let args = postcard::to_allocvec(&vec![1u32, 2]).expect("encodes");
        let mut out = Vec::new();
        BOOM.call_batch(&args, &mut out)
            .expect("the batch itself runs");
        let items: Vec<ItemOutcome<u32>> = postcard::from_bytes(&out).expect("decodes");
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[0], ItemOutcome::Panicked { message, .. } if message.contains("boom 1"))
        );
    }

    #[test]
    fn build_id_depends_on_the_functions() {
        let a = Registry::new(&[&DOUBLE]);
        let b = Registry::new(&[&DOUBLE, &BOOM]);
        assert_ne!(a.build_id(), b.build_id());
        assert_eq!(a.build_id(), Registry::new(&[&DOUBLE]).build_id());
        assert!(b.contains("boom") && b.get("nope").is_none());
    }
}
