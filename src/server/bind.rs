//! What happens once, before any loop runs, in this order: the files are
//! read (a file that cannot be used fails the start before any address is
//! bound), every listener is bound (and none announced until all are: a
//! start that fails on its second address logs no `listening on` line),
//! each loop gets its listeners, and the socket budget is worked out from
//! the open file limit.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpListener;
use mio::{Interest, Poll, Token, Waker};

use super::admission::{Listener, ListenerKind};
use super::event_loop::{EventLoop, LoopStart, LISTENER_BASE, WAKER};
use super::{Announced, Server, StartError};
use crate::config::{
    read_token_file, show_duration, Config, ConfigError, Host, ListenAddr, ListenerOption,
};
use crate::config::{TokenFile, TokenFileError};
use crate::guard::{AuthFailures, ConnectionRate, Grouping, Guards};
use crate::limits::{Limits, MAX_METRICS_CONNECTIONS};
use crate::metrics::{self, MetricsError, Page};
use crate::process::{Process, Reloadable};
use crate::service::Service;
use crate::stats::Counters;
use crate::summaries::{Kind, Summaries};
use crate::sys;
use crate::token::AuthToken;

/// The listen backlog: room for a burst of connects beyond what std and mio
/// give (128). The kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Descriptors the server needs besides one per socket it holds: stdio,
/// epoll, the signal pipe, the waker, the spare, and a margin; listeners are
/// counted on top. A turn may accept a few sockets past the budget before
/// the reap frees the descriptors of those evicted for them: if that runs
/// into the real limit, the spare descriptor answers (see
/// `turn_away_without_descriptors`).
const RESERVED_DESCRIPTORS: u64 = 16;

/// One bound listening socket of the first loop, and where it came from.
struct Bound {
    socket: TcpListener,
    addr: SocketAddr,
    /// The `--listen` value it came from (for its options).
    from: ListenAddr,
}

/// Binds everything and prepares the loops (see the module documentation).
pub(super) fn bind<S: Service>(
    config: Config,
    inherited: Vec<std::net::TcpListener>,
    service: S,
) -> Result<Server<S>, StartError> {
    // A `Config` built by hand has not been through clap's checks, and an
    // out-of-range value would overflow or panic deep in the loop.
    config
        .validate_with(inherited.len())
        .map_err(StartError::Config)?;
    if config.auth_file.is_some() && !service.authenticates() {
        return Err(StartError::Config(ConfigError::AuthUnused));
    }
    let reloadable = load_files(&config)?;
    let descriptor_limit = check_descriptor_limit(config.max_connections);
    // Validated: between 1 and 1024.
    let loop_count = usize::try_from(config.threads).unwrap_or(1);
    // Several loops get a listener each per address where the kernel
    // spreads connections over them; elsewhere they share one.
    let own_listeners = loop_count > 1 && sys::SPREADS_ACCEPTS;
    let inherited_count = inherited.len();
    let first = bind_listeners(&config, inherited, own_listeners)?;
    let metrics = bind_metrics(&config)?;
    let per_loop = listeners_for_each_loop(first, loop_count, own_listeners, inherited_count)?;
    let socket_budget = socket_budget(
        descriptor_limit,
        per_loop[0].len(),
        loop_count,
        metrics.is_some(),
    );
    let announced = Announced {
        listeners: per_loop[0]
            .iter()
            .map(|l| (l.addr, l.from.clone()))
            .collect(),
        inherited: inherited_count,
        auth: config.auth_file.is_some(),
        metrics: metrics.as_ref().map(|(_, addr)| *addr),
    };

    warn_of_open_balancer_listeners(&config, &per_loop[0]);

    let (polls, wakers) = pollers(loop_count)?;
    let now = Instant::now();
    let grouping = Grouping::new(u8::try_from(config.ipv6_prefix).unwrap_or(64));
    let counters = Counters::for_server(now, loop_count, grouping, per_loop[0].len());
    let process = Arc::new(Process::new(
        counters.clone(),
        summaries_for(&config, descriptor_limit),
        socket_budget,
        wakers,
        reloadable,
        guards_for(&config, grouping, now),
    ));
    let service = Arc::new(service);
    let loops = make_loops(
        &config,
        &service,
        polls,
        per_loop,
        metrics,
        (&counters, &process),
        now,
    )?;
    Ok(Server {
        loops,
        process,
        announced,
    })
}

/// One poller per loop, and the waker through which other threads reach it.
fn pollers(loops: usize) -> Result<(Vec<Poll>, Vec<Arc<Waker>>), StartError> {
    let setup = |what| move |source| StartError::Setup { what, source };
    let mut polls = Vec::with_capacity(loops);
    let mut wakers = Vec::with_capacity(loops);
    for _ in 0..loops {
        let poll = Poll::new().map_err(setup("the poller"))?;
        wakers.push(Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(setup("the waker"))?,
        ));
        polls.push(poll);
    }
    Ok((polls, wakers))
}

/// The loops, each with its poller and its listeners registered on it;
/// loop 0 also serves the metrics endpoint, for every loop's counters.
fn make_loops<S: Service>(
    config: &Config,
    service: &Arc<S>,
    polls: Vec<Poll>,
    mut per_loop: Vec<Vec<Bound>>,
    mut metrics: Option<(TcpListener, SocketAddr)>,
    (counters, process): (&Arc<Counters>, &Arc<Process>),
    now: Instant,
) -> Result<Vec<EventLoop<S>>, StartError> {
    let mut limits = Limits::from_config(config);
    // The service's own bound on one line (a response, its greeting, a
    // notice): room is made for it, and the output buffer's bound counts it.
    limits.longest_response = crate::service::longest_line(&**service, limits.max_line);
    let mut loops = Vec::with_capacity(polls.len());
    for (index, poll) in polls.into_iter().enumerate() {
        let mut listeners: Vec<Listener> = std::mem::take(&mut per_loop[index])
            .into_iter()
            .map(|b| Listener::new(b.socket, b.addr, kind_of(&b.from)))
            .collect();
        let page = match metrics.take().filter(|_| index == 0) {
            Some((socket, addr)) => {
                let tls = config
                    .metrics_listen
                    .as_ref()
                    .is_some_and(|l| cfg!(feature = "tls") && l.has(ListenerOption::Tls));
                let mut page = Page::new(metrics_settings(config, &listeners), now);
                listeners.push(Listener::new(socket, addr, ListenerKind::Metrics { tls }));
                page.token = process.reloadable().metrics_token;
                Some(page)
            }
            None => None,
        };
        register(&poll, &mut listeners)?;
        loops.push(EventLoop::new(LoopStart {
            index,
            service: service.clone(),
            poll,
            listeners,
            config: config.clone(),
            limits: limits.clone(),
            stats: counters.for_loop(index),
            process: process.clone(),
            page,
            now,
        }));
    }
    Ok(loops)
}

/// Reads what comes from files, before any address is bound: a start that
/// fails on its certificate or token binds nothing.
fn load_files(config: &Config) -> Result<Reloadable, StartError> {
    #[cfg(feature = "tls")]
    let tls_config = match tls_files(config) {
        Some(files) => Some(crate::tls::load(&files).map_err(StartError::Tls)?),
        None => None,
    };
    let token_of = |option: &'static str, file: &Option<std::path::PathBuf>| match file {
        Some(path) => load_token(option, path)
            .map(|token| Some(Arc::new(token)))
            .map_err(|source| StartError::TokenFile {
                option,
                path: path.clone(),
                source,
            }),
        None => Ok(None),
    };
    Ok(Reloadable {
        #[cfg(feature = "tls")]
        tls_config,
        token: token_of("--auth-file", &config.auth_file)?,
        metrics_token: token_of("--metrics-token-file", &config.metrics_token_file)?,
    })
}

/// A `proxy` listener that a peer other than the balancer can reach, with
/// no `--proxy-from` to tell the balancer apart: any such peer can claim
/// any client address. Loopback ones only the machine itself reaches.
fn warn_of_open_balancer_listeners(config: &Config, bound: &[Bound]) {
    if !config.proxy_from.is_empty() {
        return;
    }
    for b in bound {
        if b.from.has(ListenerOption::Proxy) && !b.addr.ip().is_loopback() {
            warn!(
                "--listen {}: any peer that reaches {} may send a PROXY header and claim any client address; \
                 name the balancers with --proxy-from CIDR",
                b.from, b.addr
            );
        }
    }
}

/// The per-address rules the options turn on.
fn guards_for(config: &Config, grouping: Grouping, now: Instant) -> Guards {
    let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Guards {
        grouping,
        rate: (config.max_connection_rate_per_ip > 0)
            .then(|| ConnectionRate::new(count(config.max_connection_rate_per_ip), now)),
        // Failures exist only where AUTH does.
        auth: (config.auth_file.is_some() && config.max_auth_failures_per_ip > 0)
            .then(|| AuthFailures::new(count(config.max_auth_failures_per_ip), now)),
    }
}

/// The first loop's listeners: the sockets systemd passed, then every
/// address of every `--listen` value.
fn bind_listeners(
    config: &Config,
    inherited: Vec<std::net::TcpListener>,
    own_listeners: bool,
) -> Result<Vec<Bound>, StartError> {
    let setup = |source| StartError::Setup {
        what: "a listening socket passed by systemd",
        source,
    };
    let mut bound = Vec::new();
    for listener in inherited {
        let (socket, addr) = adopt_listener(listener).map_err(setup)?;
        bound.push(Bound {
            socket,
            addr,
            from: ListenAddr::from(addr),
        });
    }
    // Addresses of a host name that this machine lacks, skipped.
    let mut skipped = Vec::new();
    for listen_addr in &config.listen {
        let resolved = listen_addr
            .resolve()
            .map_err(|source| StartError::Resolve {
                listen: listen_addr.clone(),
                source,
            })?;
        let bound_before = bound.len();
        let mut last_skipped = None;
        for addr in resolved {
            let failed = |source| StartError::Listen {
                addr,
                listen: listen_addr.clone(),
                source,
            };
            let socket = if own_listeners {
                refuse_if_taken(addr).and_then(|()| listen(addr, true))
            } else {
                listen(addr, false)
            };
            let socket = match socket {
                Ok(socket) => socket,
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
            let addr = socket.local_addr().map_err(failed)?;
            bound.push(Bound {
                socket,
                addr,
                from: listen_addr.clone(),
            });
        }
        // Every address of the name was missing: that is a failure.
        if bound.len() == bound_before {
            if let Some(error) = last_skipped {
                return Err(error);
            }
        }
    }
    for skip in skipped {
        warn!("skipped {skip}");
    }
    Ok(bound)
}

fn is_name(listen_addr: &ListenAddr) -> bool {
    matches!(listen_addr.host, Host::Name(_))
}

fn address_missing_here(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

/// The `--metrics-listen` socket (its first address that binds, for a host
/// name), if the option is given.
fn bind_metrics(config: &Config) -> Result<Option<(TcpListener, SocketAddr)>, StartError> {
    let Some(listen_addr) = &config.metrics_listen else {
        return Ok(None);
    };
    let failed = |addr, source| {
        StartError::Metrics(MetricsError {
            listen: listen_addr.clone(),
            addr,
            source,
        })
    };
    let addrs = listen_addr.resolve().map_err(|e| failed(None, e))?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    let mut tried = None;
    for addr in addrs {
        match listen(addr, false) {
            Ok(socket) => {
                let local = socket.local_addr().map_err(|e| failed(Some(addr), e))?;
                return Ok(Some((socket, local)));
            }
            Err(e) => {
                tried = Some(addr);
                last = e;
            }
        }
    }
    Err(failed(tried, last))
}

/// Every loop's listeners, loop 0's first: on the real address (port 0
/// was resolved by the first bind), each its own socket where the kernel
/// spreads connections, else a second descriptor for the first loop's
/// socket. A socket systemd passed is always shared: it was bound without
/// SO_REUSEPORT, so no other socket can join it.
fn listeners_for_each_loop(
    first: Vec<Bound>,
    loop_count: usize,
    own_listeners: bool,
    inherited: usize,
) -> Result<Vec<Vec<Bound>>, StartError> {
    let mut per_loop = Vec::with_capacity(loop_count);
    for _ in 1..loop_count {
        let mut mine = Vec::with_capacity(first.len());
        for (i, b) in first.iter().enumerate() {
            let failed = |source| StartError::Listen {
                addr: b.addr,
                listen: b.from.clone(),
                source,
            };
            let socket = if own_listeners && i >= inherited {
                listen(b.addr, true).map_err(failed)?
            } else {
                share_listener(&b.socket).map_err(failed)?
            };
            mine.push(Bound {
                socket,
                addr: b.addr,
                from: b.from.clone(),
            });
        }
        per_loop.push(mine);
    }
    per_loop.insert(0, first);
    Ok(per_loop)
}

/// Registers a loop's listeners with its poller, listener `i` on token
/// `LISTENER_BASE + i`.
fn register(poll: &Poll, listeners: &mut [Listener]) -> Result<(), StartError> {
    for (i, listener) in listeners.iter_mut().enumerate() {
        poll.registry()
            .register(
                listener.socket_mut(),
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            )
            .map_err(|source| StartError::Setup {
                what: "a listener's readiness",
                source,
            })?;
    }
    Ok(())
}

/// How many sockets the whole process may hold (clients, openings,
/// refusals, lingering ones): the open file limit, less what it needs
/// besides one descriptor per socket: the reserve, every listener of every
/// loop, per extra loop its poller, waker and spare, and the metrics
/// endpoint's listener and connections (out of the clients' budget: a
/// scrape must get in while clients hold every place).
fn socket_budget(descriptor_limit: u64, listeners: usize, loops: usize, metrics: bool) -> usize {
    let metrics = if metrics {
        1 + MAX_METRICS_CONNECTIONS as u64
    } else {
        0
    };
    let budget = descriptor_limit
        .saturating_sub(
            RESERVED_DESCRIPTORS + (listeners * loops) as u64 + 3 * (loops as u64 - 1) + metrics,
        )
        .max(1);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// The summary lines' texts, with the limits they name.
fn summaries_for(config: &Config, descriptor_limit: u64) -> Summaries {
    Summaries::new(|kind| match kind {
        Kind::Busy => format!("server busy (--max-connections {})", config.max_connections),
        Kind::TooManyFromAddress => format!(
            "too many from one address (--max-connections-per-ip {})",
            config.max_connections_per_ip
        ),
        Kind::OutOfDescriptors => {
            format!("out of file descriptors (open file limit {descriptor_limit})")
        }
        Kind::LineTooLong => format!("request line too long (--max-line {})", config.max_line),
        Kind::IdleTimeout => format!(
            "idle timeout (--idle-timeout {})",
            show_duration(config.idle_timeout)
        ),
        Kind::WriteTimeout => format!(
            "write timeout: peer took no bytes (--write-timeout {})",
            show_duration(config.write_timeout)
        ),
        Kind::HandshakeTimeout => format!(
            "handshake timeout (--handshake-timeout {})",
            show_duration(config.handshake_timeout)
        ),
        Kind::UntrustedBalancer => {
            let ranges: Vec<String> = config.proxy_from.iter().map(ToString::to_string).collect();
            format!("untrusted balancer (--proxy-from {})", ranges.join(","))
        }
        Kind::ConnectingTooFast => format!(
            "connecting too fast (--max-connection-rate-per-ip {})",
            config.max_connection_rate_per_ip
        ),
        Kind::AuthFailures => format!(
            "too many auth failures from one address (--max-auth-failures-per-ip {})",
            config.max_auth_failures_per_ip
        ),
    })
}

/// What a listener's connections are: by its options.
fn kind_of(from: &ListenAddr) -> ListenerKind {
    ListenerKind::Protocol {
        tls: cfg!(feature = "tls") && from.has(ListenerOption::Tls),
        proxy: from.has(ListenerOption::Proxy),
    }
}

/// What the metrics endpoint renders of the configuration.
fn metrics_settings(config: &Config, listeners: &[Listener]) -> metrics::Settings {
    metrics::Settings {
        max_connections: config.max_connections,
        max_memory: config.max_memory,
        listeners: listeners
            .iter()
            .filter(|l| l.is_protocol())
            .map(|l| l.addr().to_string())
            .collect(),
    }
}

/// The TLS files of the configuration, if any listener (the metrics one
/// included) has the `tls` option (validation made sure both the
/// certificate and key are given).
#[cfg(feature = "tls")]
pub(super) fn tls_files(config: &Config) -> Option<crate::tls::TlsFiles> {
    if !config.serves_tls() {
        return None;
    }
    Some(crate::tls::TlsFiles {
        cert: config.tls_cert.clone()?,
        key: config.tls_key.clone()?,
        client_ca: config.tls_client_ca.clone(),
        ocsp: config.tls_ocsp.clone(),
        min_version: config.tls_min_version,
    })
}

/// Reads a token file (`option` names it: `--auth-file`,
/// `--metrics-token-file`), and warns when others may read it. Never logs
/// the token itself.
pub(super) fn load_token(option: &str, path: &Path) -> Result<AuthToken, TokenFileError> {
    let TokenFile {
        token,
        readable_by_others,
    } = read_token_file(path)?;
    if readable_by_others {
        warn!(
            "{option} {} is readable by other users; make it readable by the server's user only (chmod 600)",
            path.display()
        );
    }
    Ok(token)
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
