//! loopline: a TCP server for a small line protocol (READY, PING, ECHO,
//! QUIT, HELP, STATS), on a hand-rolled, single-threaded mio event loop.
//!
//! The contract (protocol bytes, limits, command line, exit codes) is
//! docs/protocol.md; the rest of `docs/` explains the design. Embedding it:
//!
//! ```no_run
//! let config = loopline::Config { listen: vec!["127.0.0.1:0".parse().unwrap()], ..Default::default() };
//! let server = loopline::Server::bind(config).expect("bind");
//! println!("listening on {}", server.local_addrs()[0]);
//! let shutdown = server.shutdown_handle();
//! std::thread::spawn(move || server.run());
//! // ... later, from any thread:
//! shutdown.shutdown();
//! ```
//!
//! # Layout
//!
//! The layers, top to bottom; a module imports only from layers below it.
//!
//! * [`config`]: the command line (clap), validated (`Config::validate`),
//!   and the [`connection::Limits`] derived from it.
//! * [`server`]: the event loop: `Poll`, listeners, the slab of
//!   connections keyed by `Token`, timers, signals, admission, the socket
//!   budget, shutdown. Knows nothing of commands.
//! * [`connection`]: one client's socket, buffers and state machine (Open,
//!   Paused, Draining, Closing, Lingering, Closed): read, frame, answer,
//!   write, backpressure, the memory bounds, the careful close.
//! * [`framing`]: cuts request lines out of a byte stream; knows nothing
//!   else. Partial lines wait, CR is stripped, the line limit is enforced.
//! * [`protocol`]: maps one request line to one response line; knows
//!   nothing of sockets.
//!
//! Beside them, leaves that any layer may use: [`timer`] (the deadline
//! heap that sets the `Poll` timeout), [`stats`] (the counters `STATS`
//! reports), [`summaries`] (rate-limited log lines for refusals and limit
//! closes), [`sys`] (the few calls that differ between Linux, macOS and
//! FreeBSD), [`transport`] (plain TCP or a TLS session under a
//! connection), [`tls`] (loading certificates and keys; the `tls` feature),
//! [`proxy`] (where a PROXY protocol header ends and the client address it
//! carries, for `proxy` listeners).
//!
//! Around the crate, in the repository: `src/main.rs` is the thin binary;
//! `tests/` runs the real binary on loopback, one file per concern, with
//! the shared harness in `tests/util/`; `examples/` is the tutorial's
//! ladder, from a blocking server to this loop; `benches/` holds criterion
//! micro-benchmarks; `fuzz/` the cargo-fuzz targets; `tools/` the load
//! generator and the soak driver (workspace members of their own);
//! `scripts/` every script; `docs/` the contract and the design.

pub mod config;
pub mod connection;
pub mod framing;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod stats;
pub mod summaries;
pub mod sys;
pub mod timer;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;

pub use config::Config;
pub use server::{RunError, Server, ShutdownHandle, StartError};
