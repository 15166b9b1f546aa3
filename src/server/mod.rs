//! The server: [`Server`] binds the listeners and runs one event loop per
//! `--threads`, each on its own thread, sharing only
//! [`crate::process::Process`]. Knows nothing of commands.
//!
//! The rooms, one module each:
//!
//! * `bind`: what happens once, before any loop runs: the files read
//!   (certificates, token), every listener bound, the listeners of each
//!   loop, the socket budget.
//! * `event_loop`: one loop (`EventLoop`): a `Poll`, its slab of
//!   connections, its deadlines, its ready list, one turn after another.
//! * `admission`: accepting, and what each newcomer is to be (a client,
//!   one being turned away, one waiting for its PROXY header, a metrics
//!   connection), with the caps on each kind.
//! * `reload`: signals, and what SIGHUP reads again.

mod admission;
mod bind;
mod event_loop;
mod reload;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use crate::config::{Config, ListenAddr, ListenerOption, TokenFileError};
use crate::metrics::MetricsError;
use crate::process::Process;
use crate::service::Service;
use crate::sys;
use crate::systemd::Notifier;
use event_loop::EventLoop;

pub use crate::limits::READ_BUFFER_SIZE;
pub use bind::LISTEN_BACKLOG;

/// Why a running server stopped other than by a graceful shutdown.
#[derive(Debug)]
pub enum RunError {
    /// `poll` itself failed.
    Poll(io::Error),
    /// A second SIGINT or SIGTERM came during the graceful shutdown: every
    /// connection was closed at once.
    StoppedAtOnce,
    /// The thread of a second or later loop could not be started.
    Thread(io::Error),
    /// A loop panicked (a bug): the other loops were shut down gracefully.
    LoopPanicked {
        /// The loop's number, 0 being the first.
        index: usize,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Poll(e) => write!(f, "event loop failed: {e}"),
            RunError::StoppedAtOnce => {
                f.write_str("stopped at once: a second signal came during the graceful shutdown")
            }
            RunError::Thread(e) => write!(f, "cannot start an event loop thread: {e}"),
            RunError::LoopPanicked { index } => write!(f, "event loop {index} panicked"),
        }
    }
}

impl std::error::Error for RunError {}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A field of the `Config` is outside the range its option accepts
    /// (only a `Config` built by hand: the command line is checked by clap).
    Config(crate::config::ConfigError),
    /// A `--listen` host name could not be resolved.
    Resolve {
        /// The value whose host would not resolve.
        listen: ListenAddr,
        /// What the resolver said.
        source: io::Error,
    },
    /// An address of a `--listen` value could not be bound.
    Listen {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The `--listen` value that named `addr`.
        listen: ListenAddr,
        /// What the system said (in use, not permitted, ...).
        source: io::Error,
    },
    /// The poller, waker or signal handler could not be set up.
    Setup {
        /// Which of them.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// A TLS certificate, key or CA file cannot be used (it is named).
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsError),
    /// The `--auth-file` (or `--metrics-token-file`) could not be read, or
    /// holds no token.
    TokenFile {
        /// `--auth-file` or `--metrics-token-file`.
        option: &'static str,
        /// The file, as given.
        path: PathBuf,
        /// Why it gave no token.
        source: TokenFileError,
    },
    /// The `--metrics-listen` address could not be resolved or bound.
    Metrics(MetricsError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Resolve { listen, source } => {
                write!(f, "cannot resolve --listen {listen}: {source}")
            }
            StartError::Listen {
                addr,
                listen,
                source,
            } => {
                write!(f, "cannot listen on {addr}")?;
                // A host name resolves to addresses the user never typed:
                // say which value they came from.
                if matches!(listen.host, crate::config::Host::Name(_)) {
                    write!(f, " (from --listen {listen})")?;
                }
                write!(f, ": {source}")
            }
            StartError::Setup { what, source } => write!(f, "cannot set up {what}: {source}"),
            #[cfg(feature = "tls")]
            StartError::Tls(e) => write!(f, "cannot use {e}"),
            StartError::TokenFile {
                option,
                path,
                source,
            } => write!(f, "cannot use {option} {}: {source}", path.display()),
            StartError::Metrics(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            #[cfg(feature = "tls")]
            StartError::Tls(e) => Some(e),
            StartError::Resolve { source, .. }
            | StartError::Listen { source, .. }
            | StartError::Setup { source, .. } => Some(source),
            StartError::TokenFile { source, .. } => Some(source),
            StartError::Metrics(e) => Some(e),
        }
    }
}

/// Asks a running server, from any thread, to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    process: Arc<Process>,
}

impl ShutdownHandle {
    /// Starts a graceful shutdown of every loop, as SIGTERM would.
    pub fn shutdown(&self) {
        // Sets the flag, then wakes each loop's `poll` on its WAKER token;
        // each loop then sees the flag.
        self.process.request_shutdown();
    }
}

/// A bound loopline server: `--threads` event loops, each with its own
/// listeners. [`Server::bind`] binds every listener (so the real ports are
/// known before it runs); [`Server::run`] runs the loops until a graceful
/// shutdown ends.
pub struct Server<S: Service> {
    /// The loops, by index; loop 0 runs on the thread that calls `run`,
    /// and handles the signals.
    loops: Vec<EventLoop<S>>,
    /// What the loops share.
    process: Arc<Process>,
    /// What the start-up log says of the listeners.
    announced: Announced,
}

/// What `Server::announce` says, gathered while binding.
struct Announced {
    /// The bound addresses, with real ports, in `--listen` order (the same
    /// for every loop), each with the `--listen` value it came from.
    listeners: Vec<(SocketAddr, ListenAddr)>,
    /// The first this many listeners were passed in (by systemd), not
    /// bound from `--listen`: the log says so.
    inherited: usize,
    /// Whether `--auth-file` is set (for the warning on plain listeners).
    auth: bool,
    /// Where the metrics endpoint listens, if it does.
    metrics: Option<SocketAddr>,
}

impl<S: Service> Server<S> {
    /// Binds every `--listen` address, once per loop, and prepares the
    /// loops, which will speak `service`'s protocol.
    pub fn bind(config: Config, service: S) -> Result<Server<S>, StartError> {
        Server::bind_with(config, Vec::new(), service)
    }

    /// Like [`Server::bind`], serving also `inherited`: listening sockets
    /// the process was given, as systemd passes them (see
    /// `systemd::take_passed_listeners`). They are plain listeners, served
    /// first; `config.listen` may then be empty.
    pub fn bind_with(
        config: Config,
        inherited: Vec<std::net::TcpListener>,
        service: S,
    ) -> Result<Server<S>, StartError> {
        bind::bind(config, inherited, service)
    }

    /// The bound addresses, with real ports, in `--listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.announced.listeners.iter().map(|(a, _)| *a).collect()
    }

    /// A handle that starts a graceful shutdown from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            process: self.process.clone(),
        }
    }

    /// Shut down gracefully on SIGINT and SIGTERM (a second one during the
    /// shutdown stops at once); SIGHUP reloads and never stops the server.
    /// The signal handler only writes to a pipe that the first loop's
    /// `poll` watches on its own token: no work is done inside the handler.
    pub fn handle_signals(&mut self) -> Result<(), StartError> {
        self.loops[0].handle_signals()
    }

    /// Tell systemd, through `notifier`, when the server is ready
    /// (`READY=1`, once every listener is announced), when it stops
    /// (`STOPPING=1`), and how many connections it holds (`STATUS=`).
    /// Loop 0 does it for the whole process.
    pub fn notify_systemd(&mut self, notifier: Notifier) {
        self.loops[0].notify_systemd(notifier);
    }

    /// Runs every loop until a graceful shutdown has finished: loop 0 on
    /// this thread, the others on threads of their own. A loop that fails
    /// (or panics) shuts the others down gracefully: no loop may close its
    /// listeners alone while the others accept (see `begin_shutdown`).
    pub fn run(self) -> Result<(), RunError> {
        self.announce();
        let Server { loops, process, .. } = self;
        // Counted before any starts: loop 0 must never see itself alone
        // while another has yet to begin.
        for _ in &loops {
            process.loop_started();
        }
        let mut loops = loops.into_iter();
        let Some(mut first) = loops.next() else {
            return Ok(());
        };
        let mut others = Vec::new();
        for event_loop in loops {
            let index = event_loop.index();
            let spawned = std::thread::Builder::new()
                .name(format!("loopline-loop-{index}"))
                .spawn(move || event_loop.run_guarded());
            match spawned {
                Ok(handle) => others.push(handle),
                Err(e) => {
                    // The loops already running stop at once: the server
                    // cannot run as configured.
                    process.request_stop_at_once();
                    for handle in others {
                        let _ = handle.join();
                    }
                    return Err(RunError::Thread(e));
                }
            }
        }
        // Ready only once every loop runs: a thread that cannot start
        // fails the start before systemd hears READY=1.
        first.tell_systemd_ready();
        let mut result = first.run_guarded();
        for handle in others {
            // `run_guarded` catches a loop's panic, so `join` fails only if
            // that catch itself panicked.
            let joined = handle
                .join()
                .unwrap_or(Err(RunError::LoopPanicked { index: usize::MAX }));
            // The first failure is the one reported.
            if result.is_ok() {
                result = joined;
            }
        }
        process.summaries.log_all(Instant::now());
        if result.is_ok() {
            info!("shutdown complete");
        }
        result
    }

    /// Logs one `listening on ADDR` line per listener. Only here, as the
    /// loops start: every listener is bound by now (a start that fails on
    /// its second address logged none), and the signal handlers are in
    /// place (`handle_signals` comes between `bind` and `run`), so whoever
    /// waits for these lines may signal the server at once.
    fn announce(&self) {
        let loops = self.loops.len();
        if loops > 1 {
            let how = if sys::SPREADS_ACCEPTS {
                "each with its own listeners; the kernel spreads connections over them"
            } else {
                "sharing each listening socket"
            };
            info!("{loops} event loops, one thread each, {how}");
        }
        let announced = &self.announced;
        for (index, (local, listen_addr)) in announced.listeners.iter().enumerate() {
            let options: Vec<&str> = listen_addr.options().iter().map(|o| o.name()).collect();
            if index < announced.inherited {
                info!("listening on {local} (from systemd)");
            } else if options.is_empty() {
                info!("listening on {local}");
            } else {
                info!("listening on {local} ({})", options.join(", "));
            }
            if !local.ip().is_loopback() {
                warn!("{local} is not a loopback address: clients on the network can reach this server");
                if announced.auth && !listener_encrypts(listen_addr) {
                    // The engine names its option, not the command that carries the token.
                    warn!(
                        "{local}: --auth-file tokens cross the network in clear on this listener"
                    );
                }
            }
        }
        // Never worded `listening on`: whoever reads those lines finds
        // only protocol listeners.
        if let Some(local) = announced.metrics {
            info!("metrics on {local}");
            if !local.ip().is_loopback() {
                warn!(
                    "{local} is not a loopback address: anyone on the network can read the metrics"
                );
            }
        }
    }
}

/// Whether a listener protects what crosses it, an `AUTH` token included:
/// a `tls` listener does (and is exempt from the warning that tokens cross
/// the network in clear).
fn listener_encrypts(listen_addr: &ListenAddr) -> bool {
    cfg!(feature = "tls") && listen_addr.has(ListenerOption::Tls)
}

/// Names a loop in a log line, when there is more than one.
struct WhichLoop {
    index: usize,
    loops: usize,
}

impl std::fmt::Display for WhichLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.loops > 1 {
            write!(f, " on loop {}", self.index)?;
        }
        Ok(())
    }
}
