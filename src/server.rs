//! The event loop (`EventLoop`): one `mio::Poll`, its listeners, the
//! connection slab and the timers. It knows nothing of commands;
//! [`Connection`] does the work. [`Server`] binds and runs one loop per
//! `--threads`, each on its own thread, sharing only
//! [`crate::process::Process`].
//!
//! One turn of the loop:
//!
//! 1. `poll` sleeps until a socket is ready, a deadline is due, a signal
//!    arrives, or (when some connection still has work) not at all.
//! 2. Each event is handled: accept on a listener, drive a connection.
//!    Readiness is edge-triggered: an event says "something changed" once,
//!    so every handler reads or accepts until the socket is drained, or
//!    until its fairness budget is spent and it is queued to go on.
//! 3. Connections with work left (read budget spent, backpressure lifted)
//!    run again (`run_ready`): no new event will come for bytes already
//!    waiting.
//! 4. Due timers fire (`fire_timers`).
//! 5. Connections closed during the turn are deregistered and removed
//!    (`reap`). Only now, after the batch: an event later in the same batch
//!    may still name a closed connection, and must not find its slot reused.
//! 6. Listeners that spent their accept budget accept on
//!    (`run_accept_again`), after the reap, so that descriptors freed by it
//!    (lingering sockets cut short) serve the newcomers; accepting resumes
//!    after a pause for descriptor exhaustion (`resume_accepting`).
//! 7. Housekeeping: at most 1,024 sockets linger (`bound_lingering`); if
//!    the process fell back below three quarters of `--max-memory`, every
//!    paused connection is put on the ready list (`wake_paused`); summary
//!    lines whose 10 s window has passed are logged (`Summaries::log_due`).
//! 8. During a graceful shutdown, the loop ends once every connection is
//!    gone or the shutdown deadline has passed; a second SIGINT or SIGTERM
//!    ends it at once.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::{read_token_file, show_duration, Config, ListenAddr, TokenFileError};
use crate::connection::{
    CloseReason, Connection, FirstLine, Limits, MemoryPressure, Next, Refusal, Shared, State,
};
use crate::metrics::{self, MetricsEndpoint, MetricsError};
use crate::process::{Process, Reloadable};
use crate::protocol::{self, AuthToken};
use crate::stats::{Counters, Full, Stats};
use crate::summaries::{Kind, Summaries};
use crate::sys;
use crate::systemd::Notifier;
use crate::timer::Timers;
use crate::transport::{TlsFailed, Transport};

/// The size of the one shared read buffer, and so the most one connection
/// reads per event (or per run from the ready list) before the others get
/// theirs: the fairness budget.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;

/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// Connections accepted per listener event (or per `run_accept_again`)
/// before the loop serves the others: a fairness budget, as
/// `READ_BUFFER_SIZE` is for reads.
const ACCEPTS_PER_TURN: usize = 64;

/// The listen backlog: room for a burst of connects beyond what std and mio
/// give (128). The kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG: i32 = 4096;

/// When the process runs out of descriptors and the spare one cannot help,
/// accepting pauses this long (the listener stays readable; retrying at once
/// would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sockets that may linger at once after their last line (clients, and busy
/// rejects). They no longer count as clients, but each holds a descriptor:
/// past this many, or when the process needs their descriptors for
/// newcomers, the oldest is closed at once (`evict_lingering`).
const MAX_LINGERING: usize = 1024;

/// Descriptors the server needs besides one per socket it holds: stdio,
/// epoll, the signal pipe, the waker, the spare, and a margin; listeners are
/// counted on top. A turn may accept a few sockets past the budget before
/// the reap frees the descriptors of those evicted for them: if that runs
/// into the real limit, the spare descriptor answers (see
/// `turn_away_without_descriptors`).
const RESERVED_DESCRIPTORS: u64 = 16;

const SIGNAL: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// Listener `i` has token `LISTENER_BASE + i`; slab keys stay far below.
const LISTENER_BASE: usize = usize::MAX / 2;

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
    LoopPanicked { index: usize },
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
        listen: crate::config::ListenAddr,
        source: io::Error,
    },
    /// An address of a `--listen` value could not be bound.
    Listen {
        addr: SocketAddr,
        /// The `--listen` value that named `addr`.
        listen: crate::config::ListenAddr,
        source: io::Error,
    },
    /// The poller, waker or signal handler could not be set up.
    Setup {
        what: &'static str,
        source: io::Error,
    },
    /// A TLS certificate, key or CA file cannot be used (it is named).
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsError),
    /// The `--auth-file` could not be read, or holds no token.
    TokenFile {
        path: PathBuf,
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
            StartError::Tls(e) => write!(f, "cannot use TLS file {e}"),
            StartError::TokenFile { path, source } => {
                write!(f, "cannot use --auth-file {}: {source}", path.display())
            }
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
pub struct Server {
    /// The loops, by index; loop 0 runs on the thread that calls `run`,
    /// and handles the signals.
    loops: Vec<EventLoop>,
    /// What the loops share.
    process: Arc<Process>,
    /// The bound addresses, with real ports, in `--listen` order (the same
    /// for every loop).
    local_addrs: Vec<SocketAddr>,
    /// Per address, the `--listen` value it came from.
    listened_from: Vec<ListenAddr>,
    /// Whether `--auth-file` is set (for the warning on plain listeners).
    auth: bool,
    /// The first this many listeners were passed in (by systemd), not
    /// bound from `--listen`: the log says so.
    inherited_listeners: usize,
    /// Where the metrics endpoint listens, if it does.
    metrics_addr: Option<SocketAddr>,
}

/// One event loop: a `Poll` on one thread, its listeners, its connections
/// and timers. With `--threads 1` (the default) the server is exactly one
/// of these; with more, each runs the same code on its own thread and
/// shares only [`Process`] with the others.
struct EventLoop {
    /// Its place among the loops (0 handles the signals).
    index: usize,
    poll: Poll,
    listeners: Vec<TcpListener>,
    local_addrs: Vec<SocketAddr>,
    conns: Slab<Connection>,
    config: Config,
    limits: Limits,
    /// This loop's handle onto the process's counters.
    stats: Stats,
    timers: Timers,
    read_buf: Box<[u8]>,
    spare_output: Vec<u8>,
    /// Connections to run again before the next poll, with their ids.
    ready: Vec<(usize, u64)>,
    ready_spare: Vec<(usize, u64)>,
    /// Connections closed during this turn, removed at its end.
    closing: Vec<usize>,
    next_id: u64,
    now: Instant,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// What the loops share: counters, limits, shutdown, reloads.
    process: Arc<Process>,
    /// Set once a graceful shutdown starts: when it must end.
    shutdown_deadline: Option<Instant>,
    /// Accepting is paused after descriptor exhaustion until then.
    accept_paused_until: Option<Instant>,
    /// A descriptor kept in reserve for accepting (and turning away) a
    /// connection when the process has no other descriptor left.
    spare_fd: Option<File>,
    /// Per listener: it spent its accept budget with clients still queued.
    accept_again: Vec<bool>,
    /// This loop's view of the process-wide cap on client buffer memory.
    memory: MemoryPressure,
    /// The lifts of memory pressure this loop has acted on
    /// (see `wake_paused`).
    lifts_seen: u64,
    /// Connections lingering after their last line, oldest first (entries
    /// of connections closed since are skipped when met).
    lingering: VecDeque<(usize, u64)>,
    /// A second SIGINT or SIGTERM came during the shutdown.
    stop_at_once: bool,
    /// Per listener, the `--listen` value it came from (for its options:
    /// `tls`).
    listened_from: Vec<ListenAddr>,
    /// What new TLS connections use; SIGHUP replaces it (open connections
    /// keep the one they started with).
    #[cfg(feature = "tls")]
    tls_config: Option<Arc<rustls::ServerConfig>>,
    /// The `--auth-file` token (SIGHUP reads it again), `None` when
    /// authentication is off.
    token: Option<Arc<AuthToken>>,
    /// The reloads published by the signal loop that this loop has picked up.
    reloads_seen: u64,
    /// Tells systemd the server is ready, stopping, and how many
    /// connections it holds (loop 0 only: `Server::notify_systemd`).
    notifier: Option<Notifier>,
    /// The `--metrics-listen` endpoint and its HTTP connections (loop 0
    /// only: the process has one endpoint, reporting every loop's counters).
    metrics: Option<MetricsEndpoint>,
}

impl Server {
    /// Binds every `--listen` address, once per loop, and prepares the loops.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_with(config, Vec::new())
    }

    /// Like [`Server::bind`], serving also `inherited`: listening sockets
    /// the process was given, as systemd passes them (see
    /// `systemd::take_passed_listeners`). They are plain listeners, served
    /// first; `config.listen` may then be empty.
    pub fn bind_with(
        config: Config,
        inherited: Vec<std::net::TcpListener>,
    ) -> Result<Server, StartError> {
        // A `Config` built by hand has not been through clap's checks, and
        // an out-of-range value would overflow or panic deep in the loop.
        config
            .validate_with(inherited.len())
            .map_err(StartError::Config)?;
        // Certificates first: a file that cannot be used fails the start
        // before any address is bound.
        #[cfg(feature = "tls")]
        let tls_config = match tls_files(&config) {
            Some(files) => Some(crate::tls::load(&files).map_err(StartError::Tls)?),
            None => None,
        };
        // Read before binding: a start that fails on its token binds nothing.
        let token = match &config.auth_file {
            Some(path) => Some(load_token(path).map_err(|source| StartError::TokenFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let setup = |what| move |source| StartError::Setup { what, source };
        let descriptor_limit = check_descriptor_limit(config.max_connections);
        // Validated: between 1 and 1024.
        let loop_count = usize::try_from(config.threads).unwrap_or(1);
        // Several loops get a listener each per address where the kernel
        // spreads connections over them; elsewhere they share one.
        let own_listeners = loop_count > 1 && sys::SPREADS_ACCEPTS;

        // Bind every address before announcing any: a start that fails on
        // its second address must log no `listening on` line, or a script
        // waiting for that line would take a failed start for a running one.
        let is_name =
            |listen_addr: &ListenAddr| matches!(listen_addr.host, crate::config::Host::Name(_));
        let address_missing_here = |e: &io::Error| {
            e.kind() == io::ErrorKind::AddrNotAvailable
                || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
        };
        // The first loop's listeners, with their addresses and the
        // `--listen` value each came from.
        let mut listeners = Vec::new();
        let mut local_addrs = Vec::new();
        let mut listened_from: Vec<ListenAddr> = Vec::new();
        // Addresses of a host name that this machine lacks, skipped.
        let mut skipped = Vec::new();
        let inherited_listeners = inherited.len();
        for listener in inherited {
            let (listener, local) =
                adopt_listener(listener).map_err(setup("a listening socket passed by systemd"))?;
            listeners.push(listener);
            local_addrs.push(local);
            listened_from.push(ListenAddr::from(local));
        }
        for listen_addr in &config.listen {
            let resolved = listen_addr
                .resolve()
                .map_err(|source| StartError::Resolve {
                    listen: listen_addr.clone(),
                    source,
                })?;
            let bound_before = listeners.len();
            let mut last_skipped = None;
            for addr in resolved {
                let failed = |source| StartError::Listen {
                    addr,
                    listen: listen_addr.clone(),
                    source,
                };
                let bound = if own_listeners {
                    refuse_if_taken(addr).and_then(|()| listen(addr, true))
                } else {
                    listen(addr, false)
                };
                let listener = match bound {
                    Ok(listener) => listener,
                    // A host name may name an address this machine lacks
                    // (::1 in /etc/hosts with IPv6 turned off, as in many
                    // containers): skip it, if another of its addresses binds.
                    Err(e) if is_name(listen_addr) && address_missing_here(&e) => {
                        skipped.push(format!("{addr} of --listen {listen_addr}: {e}"));
                        last_skipped = Some(failed(e));
                        continue;
                    }
                    Err(e) => return Err(failed(e)),
                };
                local_addrs.push(listener.local_addr().map_err(failed)?);
                listeners.push(listener);
                listened_from.push(listen_addr.clone());
            }
            // Every address of the name was missing: that is a failure.
            if listeners.len() == bound_before {
                if let Some(error) = last_skipped {
                    return Err(error);
                }
            }
        }
        for skip in skipped {
            warn!("skipped {skip}");
        }

        // The other loops' listeners: on the real address (port 0 was
        // resolved by the first bind), each its own socket where the
        // kernel spreads connections, else a second descriptor for the
        // first loop's socket. A socket systemd passed is always shared:
        // it was bound without SO_REUSEPORT, so no other socket can join it.
        let mut listeners_by_loop = vec![listeners];
        for _ in 1..loop_count {
            let mut mine = Vec::with_capacity(local_addrs.len());
            for (i, &addr) in local_addrs.iter().enumerate() {
                let failed = |source| StartError::Listen {
                    addr,
                    listen: listened_from[i].clone(),
                    source,
                };
                mine.push(if own_listeners && i >= inherited_listeners {
                    listen(addr, true).map_err(failed)?
                } else {
                    share_listener(&listeners_by_loop[0][i]).map_err(failed)?
                });
            }
            listeners_by_loop.push(mine);
        }

        // One poller and waker per loop; each loop's listeners registered
        // with its own poller, listener `i` on token LISTENER_BASE + i.
        let mut polls = Vec::with_capacity(loop_count);
        let mut wakers = Vec::with_capacity(loop_count);
        for listeners in &mut listeners_by_loop {
            let poll = Poll::new().map_err(setup("the poller"))?;
            wakers.push(Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(setup("the waker"))?,
            ));
            for (i, listener) in listeners.iter_mut().enumerate() {
                poll.registry()
                    .register(listener, Token(LISTENER_BASE + i), Interest::READABLE)
                    .map_err(|source| StartError::Listen {
                        addr: local_addrs[i],
                        listen: listened_from[i].clone(),
                        source,
                    })?;
            }
            polls.push(poll);
        }

        let now = Instant::now();
        let limits = Limits::from_config(&config);
        // The metrics endpoint, served by loop 0 for the whole process.
        let mut metrics = match &config.metrics_listen {
            Some(listen) => Some(
                MetricsEndpoint::bind(
                    listen,
                    metrics_settings(&config, &limits),
                    polls[0].registry(),
                    now,
                )
                .map_err(StartError::Metrics)?,
            ),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(MetricsEndpoint::local_addr);
        // Besides one descriptor per socket: the reserve, every listener
        // descriptor, per extra loop its poller, waker and spare, and the
        // metrics endpoint's own (out of the clients' budget).
        let listener_descriptors = (local_addrs.len() * loop_count) as u64;
        let metrics_descriptors = metrics.as_ref().map_or(0, MetricsEndpoint::descriptors);
        let socket_budget = descriptor_limit
            .saturating_sub(
                RESERVED_DESCRIPTORS
                    + listener_descriptors
                    + 3 * (loop_count as u64 - 1)
                    + metrics_descriptors,
            )
            .max(1);
        let counters = Counters::new(now, loop_count);
        let process = Arc::new(Process::new(
            counters.clone(),
            Summaries::new(
                config.max_connections,
                config.max_connections_per_ip,
                descriptor_limit,
                config.max_line,
                &show_duration(config.idle_timeout),
                &show_duration(config.write_timeout),
                &show_duration(config.handshake_timeout),
            ),
            usize::try_from(socket_budget).unwrap_or(usize::MAX),
            wakers,
            Reloadable {
                #[cfg(feature = "tls")]
                tls_config,
                token: token.map(Arc::new),
            },
        ));
        let reloaded = process.reloadable();
        let loops = polls
            .into_iter()
            .zip(listeners_by_loop)
            .enumerate()
            .map(|(index, (poll, listeners))| EventLoop {
                index,
                #[cfg(feature = "tls")]
                tls_config: reloaded.tls_config.clone(),
                token: reloaded.token.clone(),
                reloads_seen: 0,
                notifier: None,
                metrics: if index == 0 { metrics.take() } else { None },
                listened_from: listened_from.clone(),
                memory: MemoryPressure::new(process.memory.clone()),
                lifts_seen: 0,
                lingering: VecDeque::new(),
                stop_at_once: false,
                accept_again: vec![false; listeners.len()],
                poll,
                listeners,
                local_addrs: local_addrs.clone(),
                conns: Slab::new(),
                limits: limits.clone(),
                config: config.clone(),
                stats: counters.for_loop(index),
                timers: Timers::new(),
                read_buf: vec![0; READ_BUFFER_SIZE].into_boxed_slice(),
                spare_output: Vec::new(),
                ready: Vec::new(),
                ready_spare: Vec::new(),
                closing: Vec::new(),
                next_id: 0,
                now,
                signals: None,
                process: process.clone(),
                shutdown_deadline: None,
                accept_paused_until: None,
                spare_fd: File::open("/dev/null").ok(),
            })
            .collect();
        Ok(Server {
            loops,
            process,
            local_addrs,
            listened_from,
            auth: config.auth_file.is_some(),
            inherited_listeners,
            metrics_addr,
        })
    }

    /// The bound addresses, with real ports, in `--listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
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
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let setup = |source| StartError::Setup {
            what: "signal handling",
            source,
        };
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(setup)?;
        let first = &mut self.loops[0];
        first
            .poll
            .registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(setup)?;
        first.signals = Some(signals);
        Ok(())
    }

    /// Tell systemd, through `notifier`, when the server is ready
    /// (`READY=1`, once every listener is announced), when it stops
    /// (`STOPPING=1`), and how many connections it holds (`STATUS=`).
    /// Loop 0 does it for the whole process.
    pub fn notify_systemd(&mut self, notifier: Notifier) {
        self.loops[0].notifier = Some(notifier);
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
            let index = event_loop.index;
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
        if let Some(notifier) = first.notifier.as_mut() {
            notifier.ready(first.now, first.stats.connections());
        }
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
        for (index, (local, listen_addr)) in
            self.local_addrs.iter().zip(&self.listened_from).enumerate()
        {
            let options = listen_addr.options();
            if index < self.inherited_listeners {
                info!("listening on {local} (from systemd)");
            } else if options.is_empty() {
                info!("listening on {local}");
            } else {
                info!("listening on {local} ({})", options.join(", "));
            }
            if !local.ip().is_loopback() {
                warn!("{local} is not a loopback address: clients on the network can reach this server");
                if self.auth && !listener_encrypts(listen_addr) {
                    warn!("{local}: AUTH tokens cross the network in clear on this listener");
                }
            }
        }
        // Never worded `listening on`: whoever reads those lines finds
        // only protocol listeners.
        if let Some(local) = self.metrics_addr {
            info!("metrics on {local}");
            if !local.ip().is_loopback() {
                warn!(
                    "{local} is not a loopback address: anyone on the network can read the metrics"
                );
            }
        }
    }
}

impl EventLoop {
    /// Runs the loop, and if it fails or panics, shuts the other loops down.
    fn run_guarded(self) -> Result<(), RunError> {
        let index = self.index;
        let process = self.process.clone();
        // The loop's state is dropped with the panic and not looked at
        // again: nothing half-updated can be seen.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()))
            .unwrap_or(Err(RunError::LoopPanicked { index }));
        if result.is_err() && !process.stop_at_once() {
            process.request_shutdown();
        }
        process.loop_stopped();
        result
    }

    /// Runs the event loop until a graceful shutdown has finished.
    fn run(mut self) -> Result<(), RunError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                // A signal landed during epoll_wait: not an error, poll again.
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RunError::Poll(e));
            }
            // One clock read per turn: every deadline and idle time this turn uses it.
            self.now = Instant::now();
            self.pick_up_reload();

            for event in events.iter() {
                match event.token() {
                    SIGNAL => self.on_signal(),
                    WAKER => self.on_wake(),
                    token if metrics::owns(token) => self.on_metrics_event(token),
                    Token(t) if t >= LISTENER_BASE => self.accept_within_budget(t - LISTENER_BASE),
                    Token(key) => {
                        // Closed and error flags are hints: a read tells for
                        // sure. A hang-up without EPOLLIN must still be read:
                        // only the read reports the EOF or the error.
                        let hangup = event.is_read_closed() || event.is_error();
                        if event.is_writable() {
                            if let Some(conn) = self.conns.get_mut(key) {
                                conn.writable_again();
                            }
                        }
                        self.on_connection_event(key, event.is_readable() || hangup, hangup);
                    }
                }
            }
            self.run_ready();
            self.fire_timers();
            self.run_metrics_due();
            self.reap();
            self.run_accept_again();
            self.resume_accepting();
            self.bound_lingering();
            self.wake_paused();
            self.process.summaries.log_due(self.now);
            if let Some(notifier) = self.notifier.as_mut() {
                notifier.connections_now(self.now, self.stats.connections());
            }

            if self.stop_at_once {
                info!(
                    "stopping at once: closing {} connection(s)",
                    self.conns.len()
                );
                self.close_all_now();
                return Err(RunError::StoppedAtOnce);
            }
            if let Some(deadline) = self.shutdown_deadline {
                // Loop 0 holds the signal handlers, the metrics endpoint and
                // systemd's notifier: it leaves last, so that a second
                // signal is heard while any loop still drains.
                let others_done = self.index != 0 || self.process.loops_running() <= 1;
                if self.conns.is_empty() && others_done {
                    debug!("loop {}: every connection finished", self.index);
                    return Ok(());
                }
                if self.now >= deadline {
                    info!(
                        "shutdown timeout: closing {} connection(s) that did not finish",
                        self.conns.len()
                    );
                    self.close_all_now();
                    return Ok(());
                }
            }
        }
    }

    /// The loop's waker rang: another thread asked every loop to shut down
    /// or stop at once, published a reload (picked up at the top of each
    /// turn), or lifted memory pressure (see `wake_paused`).
    fn on_wake(&mut self) {
        if self.process.stop_at_once() {
            self.stop_at_once = true;
        } else if self.process.shutdown_requested() {
            self.begin_shutdown();
        }
    }

    /// Takes what the latest SIGHUP reloaded, if this loop has not yet:
    /// one relaxed load per turn when nothing changed.
    fn pick_up_reload(&mut self) {
        let reloads = self.process.reloads();
        if reloads != self.reloads_seen {
            self.reloads_seen = reloads;
            let reloaded = self.process.reloadable();
            #[cfg(feature = "tls")]
            {
                self.tls_config = reloaded.tls_config;
            }
            self.token = reloaded.token;
        }
    }

    /// A readiness event for the metrics listener or one of its connections.
    fn on_metrics_event(&mut self, token: Token) {
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.on_event(token, self.poll.registry(), &self.stats, self.now);
        }
    }

    /// The metrics endpoint's deadlines, and its accepting left for later.
    fn run_metrics_due(&mut self) {
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.run_due(self.poll.registry(), self.now);
        }
    }

    /// Closes and removes every connection now.
    fn close_all_now(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key);
        }
        self.reap();
    }

    /// How long `poll` may sleep: not at all when a connection has work
    /// left (or a closed one still holds its socket), else until the
    /// nearest deadline, else forever.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty()
            || !self.closing.is_empty()
            || self.accept_again.contains(&true)
            || self
                .metrics
                .as_ref()
                .is_some_and(MetricsEndpoint::wants_to_run)
        {
            return Some(Duration::ZERO);
        }
        let deadline = [
            self.timers.next_deadline(),
            self.metrics
                .as_ref()
                .and_then(MetricsEndpoint::next_deadline),
            self.shutdown_deadline,
            self.accept_paused_until,
            self.process.summaries.next_due(),
            // A changed connection count waits for its status line. With
            // several loops, the others change it without waking this one:
            // look again within the status interval.
            self.notifier.as_ref().and_then(|n| {
                n.status_due(self.stats.connections())
                    .or((self.process.loops() > 1)
                        .then(|| self.now + crate::systemd::STATUS_INTERVAL))
            }),
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Measured from the time read at the top of this turn: one clock
        // read per turn; a deadline is at most one turn late.
        Some(deadline.saturating_duration_since(self.now))
    }

    /// Splits the borrows: the slab on one side, what a connection is lent on the other.
    fn parts(&mut self) -> (&mut Slab<Connection>, Shared<'_>) {
        let shared = Shared {
            now: self.now,
            limits: &self.limits,
            stats: &mut self.stats,
            token: self.token.as_deref(),
            timers: &mut self.timers,
            read_buf: &mut self.read_buf,
            spare_output: &mut self.spare_output,
            memory: &mut self.memory,
            lingering: &mut self.lingering,
        };
        (&mut self.conns, shared)
    }

    fn on_connection_event(&mut self, key: usize, readable: bool, hangup: bool) {
        let (conns, mut shared) = self.parts();
        // An event for a token we no longer hold, or for a connection closed
        // earlier in this batch, is stale: ignore it.
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.state() == State::Closed {
            return;
        }
        let id = conn.id();
        let next = conn.drive(readable, hangup, &mut shared);
        // Only a readable event completes a PROXY header.
        if matches!(conn.state(), State::Admitting(_)) {
            self.admit_proxied(key, id);
            return;
        }
        self.act_on(key, id, next);
    }

    /// Runs the connections that had work left at the end of their turn.
    fn run_ready(&mut self) {
        // Swap in the spare list: connections that ask to run again during
        // this pass go to the next one. Both lists keep their memory.
        let mut ready = std::mem::take(&mut self.ready_spare);
        std::mem::swap(&mut ready, &mut self.ready);
        for &(key, id) in &ready {
            let (conns, mut shared) = self.parts();
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if conn.id() != id || conn.state() == State::Closed {
                continue;
            }
            conn.unqueue();
            let next = conn.drive(true, false, &mut shared);
            self.act_on(key, id, next);
        }
        ready.clear();
        self.ready_spare = ready;
    }

    fn fire_timers(&mut self) {
        while let Some(timer) = self.timers.pop_due(self.now) {
            let (conns, mut shared) = self.parts();
            // The id check drops entries of connections long gone whose slot
            // now holds another connection (cancellation is lazy).
            let Some(conn) = conns.get_mut(timer.key) else {
                continue;
            };
            if conn.id() != timer.conn_id || conn.state() == State::Closed {
                continue;
            }
            let next = conn.on_timer(timer.kind, &mut shared);
            self.act_on(timer.key, timer.conn_id, next);
        }
    }

    /// The process fell back below three quarters of `--max-memory`: every
    /// connection paused for it may read again. No socket event will come
    /// for the lines they hold, so they go on the ready list. The loop that
    /// lifted the pressure wakes the others, which see the count of lifts
    /// change (one relaxed load per turn when nothing changed).
    fn wake_paused(&mut self) {
        if std::mem::take(&mut self.memory.lifted) {
            self.process.memory_lifted(self.index);
        }
        let lifts = self.process.memory.lifts();
        if lifts == self.lifts_seen {
            return;
        }
        self.lifts_seen = lifts;
        for (key, conn) in self.conns.iter_mut() {
            if conn.state() == State::Paused && conn.mark_queued() {
                self.ready.push((key, conn.id()));
            }
        }
    }

    /// At most `MAX_LINGERING` sockets linger: past that, the oldest are
    /// closed at once. Entries of connections that closed since are dropped.
    fn bound_lingering(&mut self) {
        if self.lingering.len() <= MAX_LINGERING {
            return;
        }
        let conns = &self.conns;
        self.lingering.retain(|&(key, id)| {
            conns
                .get(key)
                .is_some_and(|c| c.id() == id && c.state() == State::Lingering)
        });
        while self.lingering.len() > MAX_LINGERING {
            self.evict_lingering(1);
        }
    }

    /// Closes up to `wanted` of the oldest lingering sockets, to free their
    /// descriptors (at the end of this turn, in `reap`). Every reply was
    /// written before they started lingering: only the courtesy drain is
    /// cut short. Returns how many were closed.
    fn evict_lingering(&mut self, wanted: usize) -> usize {
        let mut evicted = 0;
        while evicted < wanted {
            let Some((key, id)) = self.lingering.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.id() != id {
                continue;
            }
            if conn.cut_linger_short() == Next::Close {
                self.close(key);
                evicted += 1;
            }
        }
        evicted
    }

    /// Acts on what a connection asked for.
    fn act_on(&mut self, key: usize, id: u64, next: Next) {
        match next {
            Next::Wait => {}
            // Once on the list is enough: a connection that asks again
            // while queued would otherwise get several reads per turn.
            Next::Again => {
                if self.conns.get_mut(key).is_some_and(|c| c.mark_queued()) {
                    self.ready.push((key, id));
                }
            }
            Next::Close => self.close(key),
        }
    }

    /// The one close path. The connection is only marked here; it is
    /// removed by `reap` after the batch, so its slab slot cannot be reused
    /// while events that name it may still follow.
    fn close(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.state() != State::Closed {
                if matches!(conn.state(), State::ProxyHeader(_) | State::Admitting(_)) {
                    // It never got its header (or not its admission).
                    self.process.header_awaited();
                }
                conn.mark_closed(&self.stats);
                self.process.socket_given_back();
                self.closing.push(key);
            }
        }
    }

    /// Removes the connections closed during this turn.
    fn reap(&mut self) {
        for key in self.closing.drain(..) {
            let mut conn = self.conns.remove(key);
            // Dropping the socket closes it (and so removes it from epoll),
            // but mio asks for an explicit deregister first.
            let _ = self.poll.registry().deregister(conn.stream_mut());
            if conn.is_client() {
                self.stats.client_left(conn.peer().ip());
            }
            let kind = match conn.reason() {
                Some(CloseReason::LineTooLong) => Some(Kind::LineTooLong),
                Some(CloseReason::IdleTimeout) => Some(Kind::IdleTimeout),
                Some(CloseReason::WriteTimeout) => Some(Kind::WriteTimeout),
                Some(CloseReason::HandshakeTimeout) => Some(Kind::HandshakeTimeout),
                _ => None,
            };
            if let Some(kind) = kind {
                self.stats.count_limit_hit(kind);
                self.process.summaries.note(kind, self.now);
            }
            if log::log_enabled!(log::Level::Debug) {
                let totals = conn.totals();
                let reason = conn
                    .reason()
                    .map_or("closed".to_string(), |r| r.to_string());
                debug!(
                    "closed {}: {reason}; open {:.3} s, {} bytes in, {} bytes out, {} command(s)",
                    conn.peer(),
                    self.now
                        .saturating_duration_since(totals.opened)
                        .as_secs_f64(),
                    totals.bytes_in,
                    totals.bytes_out,
                    totals.commands
                );
            }
        }
        // Stale timer entries of closed connections wait in the heap until
        // they come due; under heavy churn, sweep them out in one pass.
        if self.timers.len() > 4 * self.conns.len() + 4096 {
            let conns = &self.conns;
            self.timers
                .retain(|t| conns.get(t.key).is_some_and(|c| c.id() == t.conn_id));
        }
    }

    /// Accepts the queued connections on listener `index`, at most
    /// `ACCEPTS_PER_TURN`: edge-triggered, the listener reports a burst of
    /// connects once, so if the budget runs out it sets `accept_again`.
    fn accept_within_budget(&mut self, index: usize) {
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, index),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if sys::is_out_of_descriptors(&e) => {
                    if self.evict_lingering(ACCEPTS_PER_TURN) > 0 {
                        // Lingering sockets give their descriptors back at
                        // the end of this turn; accept on after that.
                        self.accept_again[index] = true;
                    } else {
                        self.turn_away_without_descriptors(index);
                    }
                    return;
                }
                // That one connection failed (aborted before we took it, ...);
                // the next one in the queue may be fine.
                Err(e) if sys::is_per_connection_accept_error(&e) => {
                    debug!("accept: skipped a failed connection: {e}")
                }
                Err(e) => {
                    warn!(
                        "accept on {} failed: {e}; retrying shortly",
                        self.local_addrs[index]
                    );
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        // Budget spent: more clients may be queued, and the listener will
        // not report them again. Accept on after the others had their turn.
        self.accept_again[index] = true;
    }

    /// Listeners whose accept budget ran out earlier accept on. The flag is
    /// taken first: `accept_within_budget` sets it again if the budget runs
    /// out once more, for the next turn.
    fn run_accept_again(&mut self) {
        for index in 0..self.accept_again.len() {
            if std::mem::take(&mut self.accept_again[index]) {
                self.accept_within_budget(index);
            }
        }
    }

    /// Admission before allocation: a connection over `--max-connections` is
    /// turned away before any client state or buffer exists for it. Every
    /// socket, whatever its state, holds a descriptor: when the server holds
    /// its whole budget of them, the oldest lingering socket is closed to
    /// make room, and a newcomer is turned away only if none lingers.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, listener: usize) {
        // Responses are small writes; without this, Nagle holds a reply
        // back while an earlier one is unacknowledged (up to 40 ms).
        let _ = stream.set_nodelay(true);
        // The session first: a connection that cannot get one is dropped
        // before anything counts it.
        let transport = match self.transport_for(listener) {
            Ok(transport) => transport,
            Err(e) => {
                warn!("cannot start a TLS session for {peer}: {}", e.0);
                return;
            }
        };
        // Sockets count for the whole process; only this loop's own
        // lingering sockets can be cut short to make room.
        let out_of_sockets = self.process.out_of_sockets() && self.evict_lingering(1) == 0;
        // Behind a balancer, `peer` is the balancer: the client's address,
        // and so its count, come with the PROXY header (`admit_proxied`).
        // Until then only a full server turns it away.
        let proxied = self.is_proxy(listener);
        // A connection waiting for its PROXY header is no client yet, and
        // all of them come from the balancer's address: they are capped on
        // their own, at --max-connections. Past that, a newcomer is closed
        // at once, without a line: nothing may be said before the header.
        if proxied && !self.process.try_await_header(self.config.max_connections) {
            self.count_refusal(Refusal::Busy);
            debug!("turned away {peer}: too many connections waiting for their PROXY header");
            return;
        }
        let refusal = if out_of_sockets {
            Some(Refusal::Busy)
        } else if proxied {
            (self.stats.connections() >= self.config.max_connections).then_some(Refusal::Busy)
        } else {
            self.open_client(peer.ip())
        };
        if let Some(refusal) = refusal {
            self.count_refusal(refusal);
            if out_of_sockets || self.lingering.len() >= MAX_LINGERING {
                // No descriptor to spare for a lingering close: say why and
                // close at once (a short write on a fresh socket cannot block).
                // A TLS client could not read a line outside the session:
                // it only sees the close.
                debug!("turned away {peer}: {} (no linger)", refusal.reason());
                if proxied {
                    // Closed before it could send its header.
                    self.process.header_awaited();
                } else if !self.is_tls(listener) {
                    let mut stream = stream;
                    let _ = stream.write(refusal.line());
                }
                return;
            }
        } else {
            // Counted in `connections` and against its address already
            // (not yet, behind a balancer: see `admit_proxied`).
            // Dead peers: let the kernel probe an idle connection, so one
            // that vanished (power loss, cable) ends as a reset would.
            if let Some(idle) = self.limits.tcp_keepalive {
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(idle.min(Duration::from_secs(75)));
                if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                    debug!("cannot set TCP keepalive for {peer}: {e}");
                }
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        // The connection needs its key (for its timers) before it is
        // inserted; `insert` below returns this same key, as nothing is
        // inserted in between.
        let key = self.conns.vacant_key();
        let first = match refusal {
            Some(refusal) => FirstLine::Refused(refusal),
            None => FirstLine::Ready,
        };
        let (conns, mut shared) = self.parts();
        let (conn, next) = if proxied {
            Connection::start_proxied(stream, transport, peer, key, id, first, &mut shared)
        } else {
            Connection::start(stream, transport, peer, key, id, first, &mut shared)
        };
        conns.insert(conn);
        self.process.socket_taken();
        match refusal {
            None if proxied => debug!(
                "accepted {peer}{} (proxy listener: waiting for its PROXY header)",
                self.which_loop()
            ),
            None => debug!("accepted {peer}{}", self.which_loop()),
            Some(Refusal::Busy) => {
                debug!("accepted {peer}{} (busy: turned away)", self.which_loop())
            }
            Some(Refusal::TooManyFromAddress) => debug!(
                "accepted {peer}{} (too many from its address: turned away)",
                self.which_loop()
            ),
        }

        // Read and write interest, edge-triggered, registered once for the
        // connection's whole life: no request ever costs an epoll_ctl. If
        // bytes are already waiting, epoll reports them right away.
        let registered = self.poll.registry().register(
            self.conns[key].stream_mut(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            Ok(()) => self.act_on(key, id, next),
            Err(e) => {
                warn!("cannot register {peer}: {e}");
                self.close(key);
            }
        }
    }

    /// Counts a client from `ip` as open, if `--max-connections` and
    /// `--max-connections-per-ip` allow it; else says which refusal it
    /// gets. Both limits count the whole process: the check and the count
    /// are one step, so two loops cannot both take the last place.
    fn open_client(&mut self, ip: std::net::IpAddr) -> Option<Refusal> {
        let limits = (
            self.config.max_connections,
            self.config.max_connections_per_ip,
        );
        match self.stats.try_open_client(ip, limits.0, limits.1) {
            Ok(()) => None,
            Err(Full::Server) => Some(Refusal::Busy),
            Err(Full::Address) => Some(Refusal::TooManyFromAddress),
        }
    }

    /// A connection is turned away: counted in `rejected`, in the metrics
    /// by reason, and in the summary lines.
    fn count_refusal(&mut self, refusal: Refusal) {
        let kind = refusal_kind(refusal);
        self.stats.count_rejected();
        self.stats.count_limit_hit(kind);
        self.process.summaries.note(kind, self.now);
    }

    /// A connection on a `proxy` listener has read its PROXY header: it is
    /// admitted now, under the client's address. It did not count as a
    /// client while the header was on its way, so `--max-connections` is
    /// checked again here (it was checked at accept too, where a busy
    /// server already chose `ERR server busy` for it, counted then), then
    /// `--max-connections-per-ip`. Admitted, it counts (`accepted`,
    /// `connections`, its address) from here to `client_left`, with the
    /// same address: `peer` no longer changes.
    fn admit_proxied(&mut self, key: usize, id: u64) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let State::Admitting(first) = conn.state() else {
            return;
        };
        // Its header came: it no longer waits for one.
        self.process.header_awaited();
        let (client, via) = (conn.peer(), conn.via());
        let refusal = match first {
            FirstLine::Refused(refusal) => Some(refusal),
            FirstLine::Ready => {
                let refusal = self.open_client(client.ip());
                if let Some(refusal) = refusal {
                    self.count_refusal(refusal);
                }
                refusal
            }
        };
        let turned_away = match refusal {
            None => "",
            Some(Refusal::Busy) => " (busy: turned away)",
            Some(Refusal::TooManyFromAddress) => " (too many from its address: turned away)",
        };
        match via {
            Some(balancer) => debug!("proxied {client} via {balancer}{turned_away}"),
            None => debug!("proxied {client} (LOCAL or UNKNOWN: the balancer itself){turned_away}"),
        }
        let first = refusal.map_or(FirstLine::Ready, FirstLine::Refused);
        let (conns, mut shared) = self.parts();
        let next = conns[key].proxy_admitted(first, &mut shared);
        self.act_on(key, id, next);
    }

    /// Out of descriptors, with no lingering socket to free: `accept`
    /// cannot make one, yet the listener stays readable with clients
    /// queued. Free the spare descriptor, accept one client with it, tell
    /// it we are busy, close it, take the spare back; repeat, within the
    /// same accept budget as ever (a connect flood must not keep the loop
    /// here while established clients wait). Clients hear why, the backlog
    /// does not stall, and the loop does not spin.
    fn turn_away_without_descriptors(&mut self, index: usize) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            if self.spare_fd.take().is_none() {
                // No spare to use: wait a little, then try again (see
                // resume_accepting).
                warn!("out of file descriptors: accepting paused for {ACCEPT_BACKOFF:?}");
                self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                return;
            }
            let accepted = listener.accept();
            match accepted {
                Ok((mut stream, peer)) => {
                    self.stats.count_rejected();
                    self.stats.count_limit_hit(Kind::OutOfDescriptors);
                    self.process
                        .summaries
                        .note(Kind::OutOfDescriptors, self.now);
                    // A TLS client could not read a line outside the session:
                    // it only sees the close.
                    if !self.is_tls(index) {
                        let _ = stream.write(protocol::BUSY);
                    }
                    debug!("turned away {peer}: out of file descriptors");
                    // Close it before taking the spare back: its descriptor is the spare's.
                    drop(stream);
                    self.spare_fd = File::open("/dev/null").ok();
                }
                Err(e) => {
                    self.spare_fd = File::open("/dev/null").ok();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    }
                    return;
                }
            }
        }
        // Budget spent: the rest of the queue waits for the next turn.
        self.accept_again[index] = true;
    }

    /// After a pause, accept by hand: the queued clients raised their edge
    /// while we were not accepting, and will not raise another.
    fn resume_accepting(&mut self) {
        if self.accept_paused_until.is_some_and(|t| t <= self.now) {
            self.accept_paused_until = None;
            if self.spare_fd.is_none() {
                self.spare_fd = File::open("/dev/null").ok();
            }
            for index in 0..self.listeners.len() {
                self.accept_within_budget(index);
            }
        }
    }

    /// Signals reach loop 0 only; it tells every loop (itself included)
    /// through the shared flags and their wakers.
    fn on_signal(&mut self) {
        use signal_hook::consts::SIGHUP;
        let mut reload = false;
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                if signal == SIGHUP {
                    // The server goes on whatever happens (the default
                    // action would kill it).
                    reload = true;
                } else if self.process.shutdown_requested() {
                    info!("received signal {signal} during the shutdown: stopping at once");
                    self.process.request_stop_at_once();
                } else {
                    info!("received signal {signal}: shutting down");
                    self.process.request_shutdown();
                }
            }
        }
        if reload {
            self.reload();
        }
    }

    /// SIGHUP: re-reads what comes from files (TLS certificate, key and
    /// client CA; the `--auth-file` token). New connections use what was
    /// read (and so do open ones that have not authenticated yet, for the
    /// token: they are lent the current one for every line); open TLS
    /// sessions and authenticated connections keep what they have. A file
    /// that cannot be used keeps the old value and is named in an error line.
    /// The files are read once, here, and what was read is published to
    /// every loop.
    fn reload(&mut self) {
        let mut reloaded = self.process.reloadable();
        let mut reloadable = false;
        #[cfg(feature = "tls")]
        if let Some(files) = tls_files(&self.config) {
            reloadable = true;
            match crate::tls::load(&files) {
                Ok(config) => {
                    reloaded.tls_config = Some(config);
                    info!(
                        "reload: TLS certificate {} and key {} reloaded{}",
                        files.cert.display(),
                        files.key.display(),
                        files
                            .client_ca
                            .as_ref()
                            .map(|ca| format!(", client CA {}", ca.display()))
                            .unwrap_or_default()
                    );
                }
                Err(e) => error!("reload: keeping the old TLS configuration: cannot use {e}"),
            }
        }
        if let Some(path) = &self.config.auth_file {
            reloadable = true;
            match load_token(path) {
                Ok(token) => {
                    reloaded.token = Some(Arc::new(token));
                    info!("reload: token reloaded from {}", path.display());
                }
                Err(e) => error!(
                    "reload: cannot reload the token from {}: {e}; keeping the old token",
                    path.display()
                ),
            }
        }
        if !reloadable {
            info!("reload: received SIGHUP; nothing to reload (no certificate, key or token file is configured)");
            return;
        }
        self.process.publish_reload(reloaded);
        // This loop takes it now: a connection accepted later in this very
        // turn must already use it.
        self.pick_up_reload();
    }

    /// ` on loop N` in log lines when there is more than one loop.
    fn which_loop(&self) -> WhichLoop {
        WhichLoop {
            index: self.index,
            loops: self.process.loops(),
        }
    }

    /// Whether listener `index` has the `tls` option.
    fn is_tls(&self, index: usize) -> bool {
        self.listened_from.get(index).is_some_and(listener_encrypts)
    }

    /// Whether listener `index` has the `proxy` option: its connections
    /// start with a PROXY header.
    fn is_proxy(&self, index: usize) -> bool {
        self.listened_from
            .get(index)
            .is_some_and(|l| l.has_option("proxy"))
    }

    /// The transport for a connection accepted on listener `index`.
    fn transport_for(&self, index: usize) -> Result<Transport, TlsFailed> {
        #[cfg(feature = "tls")]
        if self.is_tls(index) {
            if let Some(config) = &self.tls_config {
                return Transport::tls(config.clone());
            }
        }
        let _ = index;
        Ok(Transport::Plain)
    }

    /// Graceful shutdown: stop accepting, then give every connection its
    /// due responses and `ERR server shutting down`.
    ///
    /// Every loop begins it on the same request, and so closes its
    /// listeners at the same moment. On Linux, connections the kernel has
    /// queued on a `SO_REUSEPORT` listener are reset when that listener
    /// closes: one loop must never close its listeners while the others go
    /// on accepting (a loop that fails shuts every loop down, in
    /// `run_guarded`).
    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        if self.index == 0 {
            info!(
                "shutting down: {} connection(s) open",
                self.stats.connections()
            );
        }
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout);
        if let Some(notifier) = self.notifier.as_mut() {
            notifier.stopping(self.now, self.stats.connections());
        }
        self.accept_paused_until = None;
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.shut_down(self.poll.registry(), self.now);
        }
        let keys: Vec<(usize, u64)> = self.conns.iter().map(|(key, c)| (key, c.id())).collect();
        for (key, id) in keys {
            let (conns, mut shared) = self.parts();
            let next = conns[key].shut_down(&mut shared);
            self.act_on(key, id, next);
        }
    }
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

/// The TLS files of the configuration, if any listener has the `tls`
/// option (validation made sure both the certificate and key are given).
#[cfg(feature = "tls")]
fn tls_files(config: &Config) -> Option<crate::tls::TlsFiles> {
    if !config.listen.iter().any(|l| l.has_option("tls")) {
        return None;
    }
    Some(crate::tls::TlsFiles {
        cert: config.tls_cert.clone()?,
        key: config.tls_key.clone()?,
        client_ca: config.tls_client_ca.clone(),
    })
}

/// What the metrics endpoint takes from the configuration. Its head
/// timeout is the opening timeout: the same "finish your opening in time"
/// bound as a PROXY header's (`Limits::opening_timeout`).
fn metrics_settings(config: &Config, limits: &Limits) -> metrics::Settings {
    metrics::Settings {
        max_connections: config.max_connections,
        max_memory: config.max_memory,
        head_timeout: limits.opening_timeout(),
    }
}

/// Reads the `--auth-file` token, and warns when others may read the file.
/// Never logs the token itself.
fn load_token(path: &Path) -> Result<AuthToken, TokenFileError> {
    let file = read_token_file(path)?;
    if file.readable_by_others {
        warn!(
            "--auth-file {} is readable by other users; make it readable by the server's user only (chmod 600)",
            path.display()
        );
    }
    Ok(file.token)
}

/// Whether a listener protects what crosses it, an `AUTH` token included:
/// a `tls` listener does (and is exempt from the warning that tokens cross
/// the network in clear).
fn listener_encrypts(listen_addr: &ListenAddr) -> bool {
    #[cfg(feature = "tls")]
    if listen_addr.has_option("tls") {
        return true;
    }
    let _ = listen_addr;
    false
}

/// The summary line a refusal is counted in.
fn refusal_kind(refusal: Refusal) -> Kind {
    match refusal {
        Refusal::Busy => Kind::Busy,
        Refusal::TooManyFromAddress => Kind::TooManyFromAddress,
    }
}

/// A TCP socket for `addr`, with the options every listener has.
fn listener_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restart without waiting for the old socket's TIME_WAIT to pass.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // [::]:port means IPv6 only; listen on 0.0.0.0 too for IPv4.
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Binds a listener with a real backlog (std and mio fix it at 128).
/// `spread`: it is one of several, one per loop, on the same address, and
/// the kernel spreads new connections over them (`sys::spread_accepts`).
fn listen(addr: SocketAddr, spread: bool) -> io::Result<TcpListener> {
    let socket = listener_socket(addr)?;
    if spread {
        sys::spread_accepts(&socket)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// With `SO_REUSEPORT`, binding an address another process of the same
/// user listens on with it succeeds, and the kernel then splits the
/// connections between the two processes. A second loopline started by
/// mistake must fail instead, as it does with one loop: a probe socket
/// without `SO_REUSEPORT` cannot bind where any socket listens.
fn refuse_if_taken(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        // The kernel picks a free port for the first loop's bind.
        return Ok(());
    }
    // Bound, never listening, and closed on return.
    listener_socket(addr)?.bind(&addr.into())
}

/// A second descriptor for a listening socket, for another loop to accept
/// on, where the kernel does not spread connections over several listeners
/// (macOS). Every loop that registered it is woken by a new connection; one
/// accepts it and the others find the queue empty (`WouldBlock`): a
/// thundering herd of N wake-ups per connection, small for N cores.
fn share_listener(listener: &TcpListener) -> io::Result<TcpListener> {
    let socket = socket2::SockRef::from(listener).try_clone()?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Takes a listening socket the process was given (already checked and
/// non-blocking: `systemd::take_passed_listeners`), with its address.
fn adopt_listener(listener: std::net::TcpListener) -> io::Result<(TcpListener, SocketAddr)> {
    // mio requires it; done here too for a socket passed in by an embedding program.
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    Ok((TcpListener::from_std(listener), local))
}

/// Raises the soft limit on open files to the hard limit, and warns when
/// `--max-connections` cannot fit under it.
fn check_descriptor_limit(max_connections: u64) -> u64 {
    let needed = max_connections.saturating_add(RESERVED_DESCRIPTORS);
    match sys::raise_descriptor_limit() {
        Ok(limit) => {
            if limit < needed {
                warn!(
                    "--max-connections {max_connections} needs about {needed} file descriptors, but the limit is {limit}; \
                     connections past it are turned away with ERR server busy"
                );
            } else {
                debug!("open file limit: {limit}");
            }
            limit
        }
        Err(e) => {
            warn!("cannot read or raise the open file limit: {e}");
            needed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream as StdStream;

    /// The one loop of a server bound on a free port, driven by hand.
    fn server() -> EventLoop {
        let config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        };
        Server::bind(config).expect("bind").loops.remove(0)
    }

    /// Connects a client and accepts it, as a listener event would.
    fn connect(server: &mut EventLoop) -> (StdStream, usize) {
        let client = StdStream::connect(server.local_addrs[0]).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let before: Vec<usize> = server.conns.iter().map(|(k, _)| k).collect();
        server.accept_within_budget(0);
        let key = server
            .conns
            .iter()
            .map(|(k, _)| k)
            .find(|k| !before.contains(k))
            .expect("accepted");
        (client, key)
    }

    fn read_some(client: &mut StdStream) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Regression guard for stale events after slot reuse (docs/pitfalls.md):
    /// a connection closed in a batch keeps
    /// its slot until the batch ends, so a later event of the same batch that
    /// names it can neither reach it nor a newcomer; and once the slot is
    /// reused, the old connection's timers do not reach the new one.
    #[test]
    fn stale_event_and_stale_timer_never_reach_a_reused_slot() {
        let mut server = server();
        let (mut a, key_a) = connect(&mut server);
        assert_eq!(read_some(&mut a), b"READY\n");
        let id_a = server.conns[key_a].id();

        // In one batch: A is closed, then B arrives, then a stale event for A.
        server.close(key_a);
        let (mut b, key_b) = connect(&mut server);
        assert_ne!(key_b, key_a, "slot reused inside the batch");
        assert_eq!(read_some(&mut b), b"READY\n");
        server.on_connection_event(key_a, true, false);
        assert_eq!(server.conns[key_a].state(), State::Closed);

        // End of batch: A is removed; C may now reuse A's slot.
        server.reap();
        assert!(server.conns.get(key_a).is_none());
        let (mut c, key_c) = connect(&mut server);
        assert_eq!(key_c, key_a, "slab reuses the freed slot");
        assert_eq!(read_some(&mut c), b"READY\n");

        // A timer entry of A, due now, must not touch C.
        server.timers.schedule(crate::timer::Timer {
            at: server.now,
            conn_id: id_a,
            key: key_a,
            kind: crate::timer::TimerKind::Idle,
        });
        server.now = Instant::now() + Duration::from_secs(1);
        server.fire_timers();
        assert_eq!(server.conns[key_c].state(), State::Open);
        assert!(server.closing.is_empty());
        // C is still served.
        std::io::Write::write_all(&mut c, b"PING\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            assert!(Instant::now() < deadline);
            server.on_connection_event(key_c, true, false);
            c.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            c.set_nonblocking(false).unwrap();
        }
        assert_eq!(got, b"PONG\n");
    }

    /// Regression: the loop's spare output buffer kept the capacity of the
    /// largest burst until exit. A read of 64 KiB of `STATS` lines makes
    /// about 1.5 MiB of replies in one call; afterwards the spare is back
    /// to its resting size, and the connection keeps only what is pending.
    #[test]
    fn the_spare_output_buffer_gives_a_burst_back() {
        let mut server = server();
        let (mut client, key) = connect(&mut server);
        assert_eq!(read_some(&mut client), b"READY\n");
        let burst = b"STATS\n".repeat(READ_BUFFER_SIZE / 6);
        std::io::Write::write_all(&mut client, &burst).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.stats.snapshot().commands < (READ_BUFFER_SIZE / 6) as u64 {
            assert!(Instant::now() < deadline, "burst never answered");
            server.on_connection_event(key, true, false);
            server.run_ready();
        }
        assert!(
            server.stats.snapshot().bytes_out + server.conns[key].pending_output() as u64 > 1 << 20,
            "the burst was too small to test anything"
        );
        assert!(
            server.spare_output.capacity() <= crate::connection::SPARE_OUTPUT_KEEP,
            "spare kept {} bytes",
            server.spare_output.capacity()
        );
        let (_, output_capacity) = server.conns[key].buffer_capacities();
        assert!(
            output_capacity <= crate::connection::output_capacity_bound(&server.limits),
            "connection kept {output_capacity} bytes"
        );
    }

    /// A client whose read fills the whole shared buffer is put on the ready
    /// list instead of being read to the end: the rest waits for the next
    /// turn, and other connections get theirs first (one client must not
    /// starve the rest: docs/pitfalls.md).
    #[test]
    fn a_flooding_client_is_served_one_buffer_per_turn() {
        let mut server = server();
        let (mut flood, key) = connect(&mut server);
        assert_eq!(read_some(&mut flood), b"READY\n");
        let requests = b"PING\n".repeat(3 * READ_BUFFER_SIZE / 5);
        std::io::Write::write_all(&mut flood, &requests).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Wait until the kernel holds more than one buffer's worth for us.
        let mut turns = 0;
        loop {
            server.on_connection_event(key, true, false);
            turns += 1;
            if !server.ready.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "never hit the read budget");
        }
        let commands = server.stats.snapshot().commands;
        assert!(
            commands <= (turns * READ_BUFFER_SIZE / 5) as u64,
            "read more than the budget: {commands}"
        );
        assert_eq!(server.ready[0].0, key);
        // More events in the same turn do not queue it twice (regression:
        // duplicates gave a flooding client several reads per turn).
        server.on_connection_event(key, true, false);
        server.on_connection_event(key, true, false);
        assert_eq!(server.ready.len(), 1);
        // The ready list is served before the next poll, one buffer at a time.
        while server.stats.snapshot().commands < (3 * READ_BUFFER_SIZE / 5) as u64 {
            assert!(Instant::now() < deadline);
            if server.ready.is_empty() {
                server.on_connection_event(key, true, false);
            }
            server.run_ready();
        }
    }
}
