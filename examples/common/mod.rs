//! What the examples share, so that each file shows only its own subject. Not an example of its
//! own: each example includes it with `mod common;`.
//!
//! - [`init_tracing`]: the log set-up of every example;
//! - [`lines`]: bounded line I/O for the two servers (`echo_server`, `compute_server`);
//! - [`listener`]: their accept loop, with a connection cap, a graceful shutdown, and the
//!   shutdown signal (Ctrl-C or SIGTERM);
//! - [`fds`]: the fd limit raised at start and the connection cap sized to it.

#![allow(dead_code)]

pub mod fds;
pub mod lines;
pub mod listener;

/// Prints the library's `tracing` events (on stdout, `tracing-subscriber`'s default), filtered
/// by `RUST_LOG` when it is set and by `default` otherwise: a filter directive such as
/// `"warn"` or `"warn,offload=error"`.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}
