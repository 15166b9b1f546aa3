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
//! * [`framing`]: cuts request lines out of a byte stream; knows nothing
//!   else. Partial lines wait, CR is stripped, the line limit is enforced.
//! * [`protocol`]: maps one request line to one response line; knows
//!   nothing of sockets.
//! * [`connection`]: one client's socket, buffers and state machine: read,
//!   frame, answer, write, backpressure, the careful close.
//! * [`server`]: the event loop: `Poll`, listeners, the slab of
//!   connections keyed by `Token`, timers, signals, shutdown. Knows nothing
//!   of commands.
//! * [`timer`]: the deadline heap that drives the `Poll` timeout.
//! * [`config`]: command-line options and the limits derived from them.
//! * [`stats`]: the counters `STATS` reports.
//! * [`summaries`]: rate-limited log lines for refusals and limit closes.
//! * [`sys`]: the few calls that differ between Linux, macOS and FreeBSD.

pub mod config;
pub mod connection;
pub mod framing;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod summaries;
pub mod sys;
pub mod timer;

pub use config::Config;
pub use server::{RunError, Server, ShutdownHandle, StartError};
