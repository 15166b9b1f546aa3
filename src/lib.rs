//! loopline: an engine for line protocols on a hand-rolled, edge-triggered
//! mio event loop (one by default, or one per thread with `--threads N`,
//! sharing only counters and limits), and loopline's own small protocol on
//! it (READY, PING, ECHO, QUIT, HELP, STATS, AUTH). Plain TCP or TLS,
//! behind a load balancer (PROXY protocol) or not, under systemd, with
//! Prometheus metrics; every socket bounded in memory and time.
//!
//! The contract (protocol bytes, limits, command line, exit codes) is
//! docs/protocol.md; the rest of `docs/` explains the design.
//!
//! # Your own protocol
//!
//! A line protocol is a [`Service`]: a session per connection, one
//! response per request line, written into a buffer the engine lends (see
//! [`service`] for the trait and what the engine guarantees it). [`serve`]
//! makes a program of it, with the engine's whole command line:
//!
//! ```no_run
//! use loopline::service::{After, Context, Service};
//!
//! struct Echo;
//!
//! impl Service for Echo {
//!     type Session = ();
//!     fn session(&self, _: &Context) {}
//!     fn respond(&self, line: &[u8], _: &mut (), _: &Context, out: &mut Vec<u8>) -> After {
//!         out.extend_from_slice(line);
//!         out.push(b'\n');
//!         After::KeepOpen
//!     }
//! }
//!
//! #[derive(clap::Parser)]
//! #[command(name = "echo", about = "Echoes lines")]
//! struct Args {}
//!
//! fn main() -> std::process::ExitCode {
//!     loopline::serve(|_: Args| Echo)
//! }
//! ```
//!
//! (The program depends on `clap` with its `derive` feature for the
//! `Parser` derive. The engine's options keep their `LOOPLINE_`
//! environment variables in every program built on it.)
//!
//! Or bind a [`Server`] in-process, for tests or a program with its own
//! configuration:
//!
//! ```no_run
//! let config = loopline::Config { listen: vec!["127.0.0.1:0".parse().unwrap()], ..Default::default() };
//! let server = loopline::Server::bind(config, loopline::protocol::Loopline).expect("bind");
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
//! * [`serve`] (module `run`): a program of a service: the command line,
//!   systemd's sockets, logging, signals, the exit status.
//! * [`config`]: the engine's command line (clap), validated
//!   (`Config::validate`), joined to a program's own ([`config::command`]),
//!   and the [`limits::Limits`] derived from it.
//! * [`server`]: binding (`bind`), the event loops (`event_loop`: each a
//!   `Poll` on its own thread, the slab of every socket it holds keyed by
//!   `Token`, their deadlines, the ready list), admission and the caps on
//!   each kind of socket (`admission`), signals and reloads (`reload`).
//!   Knows nothing of commands.
//! * [`process`]: beside `server`, what its loops share: the counters and
//!   admission limits, the `--max-memory` cap, the socket budget, the
//!   summary lines, reloads and the shutdown request.
//! * [`connection`]: one socket the loop holds, whatever it serves (a
//!   client, one being turned away, one waiting for its PROXY header or TLS
//!   handshake, a lingering one, a metrics connection): its opening, input,
//!   output and closing, each a module; the memory bounds; the careful
//!   close.
//! * [`framing`]: cuts request lines out of a byte stream; knows nothing
//!   else. Partial lines wait, CR is stripped, the line limit is enforced.
//! * [`service`]: the trait a line protocol implements ([`Service`]), what
//!   it may look at while it answers ([`service::Context`]), and the lines
//!   the engine sends on its own ([`service::Notice`]). The engine is
//!   generic over it: static dispatch, the protocol inlined in the loop
//!   over lines.
//! * [`protocol`]: loopline's protocol, one service ([`protocol::Loopline`]):
//!   maps one request line to one response line; knows nothing of sockets.
//!   [`metrics`]: what an HTTP request head to the metrics endpoint is
//!   answered, and the Prometheus text of [`stats`].
//!
//! Beside them, leaves that any layer may use: [`limits`] (every bound,
//! and the process-wide memory cap), [`guard`] (what one client address
//! may do: IPv6 grouping, the connection rate, `AUTH` failures, in bounded
//! tables), [`timer`] (one deadline per socket,
//! in the heap that sets the `Poll` timeout), [`queue`] (sockets of a
//! capped kind, oldest first), [`stats`] (the counters `STATS` reports),
//! [`summaries`] (rate-limited log lines for refusals and limit closes),
//! [`files`] (reading configured files without blocking), [`token`] (a
//! token file's secret, compared in constant time), [`sys`] (the few
//! calls that differ between Linux, macOS and FreeBSD), [`systemd`]
//! (sockets passed by systemd, readiness notification, journal
//! priorities), [`transport`] (plain TCP or a TLS session under a
//! connection), [`tls`] (loading certificates and keys; the `tls`
//! feature), [`proxy`] (where a PROXY protocol header ends and the client
//! address it carries, for `proxy` listeners).
//!
//! Around the crate, in the repository: `src/main.rs` is the thin binary;
//! `tests/` runs the real binary on loopback, one file per concern, with
//! the shared harness in `tests/util/`; `examples/` is the tutorial's
//! ladder, from a blocking server to this loop and a protocol of your own
//! on it (`step6_tally`), and `kv`, a key-value store on the engine;
//! `benches/` holds criterion
//! micro-benchmarks; `fuzz/` the cargo-fuzz targets; `tools/` the load
//! generator, the soak driver and the `/proc` readers they and the tests
//! share (workspace members of their own); `scripts/` every script;
//! `docs/` the contract and the design.

// Every public item says what it is: the library is an engine others build on.
#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod files;
pub mod framing;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod process;
pub mod protocol;
pub mod proxy;
pub mod queue;
mod run;
pub mod server;
pub mod service;
pub mod stats;
pub mod summaries;
pub mod sys;
pub mod systemd;
pub mod timer;
#[cfg(feature = "tls")]
pub mod tls;
pub mod token;
pub mod transport;

pub use config::Config;
pub use run::serve;
pub use server::{RunError, Server, ShutdownHandle, StartError};
pub use service::Service;
