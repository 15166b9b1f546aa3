//! Accepting, and what each newcomer is to be. Admission comes before
//! allocation: a newcomer's role is decided (and the caps of its kind
//! checked) before any session or buffer exists for it.
//!
//! | newcomer | cap (per loop, unless said) | past the cap |
//! |---|---|---|
//! | a client | `--max-connections`, `--max-connections-per-ip` (process) | turned away: `ERR server busy`, `ERR too many connections from your address` |
//! | any socket | the socket budget, from the open file limit (process) | the oldest lingering socket is closed to make room, else turned away as busy |
//! | turned away | [`MAX_REFUSING`] at once | closed at once, without a line |
//! | waiting for its PROXY header | [`MAX_AWAITING_HEADER`] at once | the one waiting longest is closed, without a line |
//! | metrics | [`MAX_METRICS_CONNECTIONS`] at once (loop 0) | the idle one active least recently is closed; if none is idle, the newcomer |
//! | any, with no descriptor left | the spare descriptor | accepted on it, told it is busy, closed |
//!
//! A connection turned away is a connection like any other, in the role
//! `Role::Refused`: it goes through its handshake (TLS), gets its line and
//! the careful close, and is closed by its refusal's deadline whatever it
//! is doing.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::event_loop::EventLoop;
use crate::connection::{Accepted, Connection, Refusal, Role};
use crate::guard::Turned;
use crate::limits::{MAX_AWAITING_HEADER, MAX_METRICS_CONNECTIONS, MAX_REFUSING};
use crate::queue::QueueId;
use crate::service::{Notice, Service};
use crate::stats::{Client, Full};
use crate::summaries::Kind;
use crate::sys;
use crate::transport::{TlsFailed, Transport};

/// Connections accepted per listener event (or per `run_accept_again`)
/// before the loop serves the others: a fairness budget, as the read
/// buffer is for reads.
const ACCEPTS_PER_TURN: usize = 64;

/// When the process runs out of descriptors and the spare one cannot help,
/// or an accept fails otherwise, accepting pauses this long (the listener
/// stays readable; retrying at once would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a listener's connections are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// The line protocol, over TLS or not, behind a balancer or not.
    Protocol { tls: bool, proxy: bool },
    /// The metrics endpoint (HTTP/1.1, over TLS or not).
    Metrics { tls: bool },
}

/// One listening socket of a loop.
pub(crate) struct Listener {
    socket: TcpListener,
    addr: std::net::SocketAddr,
    kind: ListenerKind,
    /// It spent its accept budget with clients maybe still queued.
    accept_again: bool,
}

impl Listener {
    pub(super) fn new(socket: TcpListener, addr: SocketAddr, kind: ListenerKind) -> Listener {
        Listener {
            socket,
            addr,
            kind,
            accept_again: false,
        }
    }

    pub(super) fn socket_mut(&mut self) -> &mut TcpListener {
        &mut self.socket
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves the line protocol (not the metrics endpoint).
    pub(super) fn is_protocol(&self) -> bool {
        matches!(self.kind, ListenerKind::Protocol { .. })
    }
}

/// A loop's listeners, and the state of accepting on them.
pub(crate) struct Accepting {
    listeners: Vec<Listener>,
    /// Accepting is paused after descriptor exhaustion until then.
    pub(super) paused_until: Option<std::time::Instant>,
    /// A descriptor kept in reserve for accepting (and turning away) a
    /// connection when the process has no other descriptor left.
    spare_fd: Option<File>,
}

impl Accepting {
    pub(super) fn new(listeners: Vec<Listener>) -> Accepting {
        Accepting {
            listeners,
            paused_until: None,
            spare_fd: File::open("/dev/null").ok(),
        }
    }

    /// The address of listener `index` (tests drive a loop by hand).
    #[cfg(test)]
    pub(super) fn local_addr(&self, index: usize) -> SocketAddr {
        self.listeners[index].addr
    }

    /// Whether a listener has accept budget left to use this turn.
    #[inline]
    pub(super) fn wants_to_run(&self) -> bool {
        self.listeners.iter().any(|l| l.accept_again)
    }

    /// Graceful shutdown: every listener is closed.
    pub(super) fn close_all(&mut self, registry: &Registry) {
        self.paused_until = None;
        for mut listener in self.listeners.drain(..) {
            let _ = registry.deregister(&mut listener.socket);
        }
    }
}

impl<S: Service> EventLoop<S> {
    /// Accepts the queued connections on listener `index`, at most
    /// `ACCEPTS_PER_TURN`: edge-triggered, the listener reports a burst of
    /// connects once, so if the budget runs out it sets `accept_again`.
    pub(super) fn accept_within_budget(&mut self, index: usize) {
        if self.accepting.paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.accepting.listeners.get(index) else {
                return;
            };
            match listener.socket.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, index),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if sys::is_out_of_descriptors(&e) => {
                    if self.evict_lingering(ACCEPTS_PER_TURN) > 0 {
                        // Lingering sockets give their descriptors back at
                        // the end of this turn; accept on after that.
                        self.accepting.listeners[index].accept_again = true;
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
                    warn!("accept on {} failed: {e}; retrying shortly", listener.addr);
                    self.accepting.paused_until = Some(self.turn.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        // Budget spent: more clients may be queued, and the listener will
        // not report them again. Accept on after the others had their turn.
        self.accepting.listeners[index].accept_again = true;
    }

    /// Listeners whose accept budget ran out earlier accept on. The flag is
    /// taken first: `accept_within_budget` sets it again if the budget runs
    /// out once more, for the next turn.
    pub(super) fn run_accept_again(&mut self) {
        for index in 0..self.accepting.listeners.len() {
            if std::mem::take(&mut self.accepting.listeners[index].accept_again) {
                self.accept_within_budget(index);
            }
        }
    }

    /// After a pause, accept by hand: the queued clients raised their edge
    /// while we were not accepting, and will not raise another.
    pub(super) fn resume_accepting(&mut self) {
        if self
            .accepting
            .paused_until
            .is_some_and(|t| t <= self.turn.now)
        {
            self.accepting.paused_until = None;
            if self.accepting.spare_fd.is_none() {
                self.accepting.spare_fd = File::open("/dev/null").ok();
            }
            for index in 0..self.accepting.listeners.len() {
                self.accept_within_budget(index);
            }
        }
    }

    /// A newcomer on listener `index`: its role is decided first (nothing
    /// is allocated for one closed at once), then it becomes a slab entry,
    /// registered for read and write readiness once for its whole life.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, index: usize) {
        // Responses are small writes; without this, Nagle holds a reply
        // back while an earlier one is unacknowledged (up to 40 ms).
        let _ = stream.set_nodelay(true);
        let kind = self.accepting.listeners[index].kind;
        let client = Client {
            ip: peer.ip(),
            listener: index,
        };
        let role = match self.role_for(client, peer, kind) {
            Admission::As(role) => role,
            Admission::Busy => {
                let line = self.service.notice(Notice::Busy);
                return turn_away_at_once(stream, peer, kind, line);
            }
            // Dropping the stream closes it.
            Admission::Closed => return,
        };
        // The session after the role: a connection that cannot get one is
        // dropped, and what admission counted for it given back.
        let transport = match self.transport_for(kind) {
            Ok(transport) => transport,
            Err(e) => {
                warn!("cannot start a TLS session for {peer}: {}", e.0);
                if role == Role::Client {
                    self.stats.client_left(client);
                }
                return;
            }
        };
        if role == Role::Client {
            set_keepalive(&stream, peer, self.limits.tcp_keepalive);
        }
        let proxied = matches!(kind, ListenerKind::Protocol { proxy: true, .. });
        // The connection needs its key (for its deadline) before it is
        // inserted; `insert` below returns this same key, as nothing is
        // inserted in between.
        let key = self.conns.vacant_key();
        let accepted = Accepted {
            stream,
            transport,
            peer,
            role,
            proxied,
            // Listeners are few (one per --listen address): far below 2^16.
            listener: u16::try_from(index).unwrap_or(u16::MAX),
        };
        let (conns, mut lent) = self.lend(key);
        let (conn, next) = Connection::start(accepted, &mut lent);
        conns.insert(conn);
        self.census.count(role, true);
        if role != Role::Metrics {
            self.process.socket_taken();
        }
        self.log_accepted(peer, role, proxied);
        // Read and write interest, edge-triggered, registered once for the
        // connection's whole life: no request ever costs an epoll_ctl. If
        // bytes are already waiting, epoll reports them right away.
        let registered = self.poll.registry().register(
            self.conns[key].stream_mut(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            Ok(()) => self.settle(key, next),
            Err(e) => {
                warn!("cannot register {peer}: {e}");
                self.close(key);
            }
        }
    }

    /// What a newcomer is to be, within the caps of its kind. `client` is
    /// `peer` as a client of its listener (behind a balancer, a client
    /// comes later, with its header).
    fn role_for(&mut self, client: Client, peer: SocketAddr, kind: ListenerKind) -> Admission {
        let proxy = match kind {
            ListenerKind::Metrics { .. } if self.metrics_place(peer) => {
                return Admission::As(Role::Metrics)
            }
            ListenerKind::Metrics { .. } => return Admission::Closed,
            ListenerKind::Protocol { proxy, .. } => proxy,
        };
        if proxy && !self.trusts_balancer(peer) {
            return Admission::Closed;
        }
        // Sockets count for the whole process; only this loop's own
        // lingering sockets can be cut short to make room. With none to
        // cut, the newcomer cannot be a slab entry: it would hold a
        // descriptor the budget does not have.
        if self.process.out_of_sockets() && self.evict_lingering(1) == 0 {
            self.count_refusal(Refusal::Busy, None);
            return Admission::Busy;
        }
        let role = if proxy {
            // Behind a balancer, `peer` is the balancer: the client's
            // address, and so its count, come with the PROXY header
            // (`admit_proxied`). Until then only a full server turns it away.
            self.make_room_to_wait_for_a_header();
            if self.stats.connections() >= self.config.max_connections {
                Role::Refused(Refusal::Busy)
            } else {
                Role::Undecided
            }
        } else {
            match self.open_client(client) {
                None => Role::Client,
                Some(refusal) => Role::Refused(refusal),
            }
        };
        match role {
            Role::Refused(refusal) if !self.refuse(peer, None, refusal) => Admission::Closed,
            role => Admission::As(role),
        }
    }

    /// On a `proxy` listener, whether `peer` may send a PROXY header: it is
    /// in `--proxy-from`, or the option is not given (every peer is then
    /// trusted; a warning at start said so). An untrusted peer is closed at
    /// once, before anything is allocated for it.
    fn trusts_balancer(&mut self, peer: SocketAddr) -> bool {
        let ranges = &self.config.proxy_from;
        if ranges.is_empty() || ranges.iter().any(|range| range.contains(peer.ip())) {
            return true;
        }
        debug!("turned away {peer}: not a trusted balancer (--proxy-from)");
        self.stats.count_rejected();
        self.stats.count_limit_hit(Kind::UntrustedBalancer);
        self.process
            .summaries
            .note(Kind::UntrustedBalancer, self.turn.now);
        false
    }

    /// A connection waiting for its PROXY header is no client yet; a peer
    /// that opens sockets and sends nothing must not lock the balancer out.
    /// So at most `MAX_AWAITING_HEADER` wait per loop, and past that the one
    /// that has waited longest is closed to make room (the balancer's own
    /// connections send their header at once, and never wait long).
    fn make_room_to_wait_for_a_header(&mut self) {
        if self.census.awaiting_header.len() >= MAX_AWAITING_HEADER {
            self.cut_oldest(QueueId::AwaitingHeader);
        }
    }

    /// A place for a metrics connection: at most `MAX_METRICS_CONNECTIONS`;
    /// past that, the idle keep-alive one active least recently is closed
    /// for the newcomer (a scraper always gets in), or, if every one is
    /// busy with a request, the newcomer is not taken.
    fn metrics_place(&mut self, peer: SocketAddr) -> bool {
        if self.census.metrics < MAX_METRICS_CONNECTIONS {
            return true;
        }
        if self.cut_oldest(QueueId::IdleMetrics) == 1 {
            debug!("metrics: closed an idle connection to make room for {peer}");
            return true;
        }
        debug!(
            "metrics: turned away {peer}: {MAX_METRICS_CONNECTIONS} metrics connections are busy"
        );
        false
    }

    /// A newcomer is turned away: counted in `rejected`, in the metrics by
    /// reason, and in the summary lines. Behind a balancer, `proxied` is
    /// the client its PROXY header named: the summary names it, as the
    /// socket's peer (the balancer) says nothing. It gets its line, unless
    /// `MAX_REFUSING` are being turned away already: then it is closed at
    /// once (returns false).
    fn refuse(&mut self, peer: SocketAddr, proxied: Option<SocketAddr>, refusal: Refusal) -> bool {
        self.count_refusal(refusal, proxied);
        if self.census.refusing >= MAX_REFUSING {
            debug!(
                "turned away {peer}: {} (closed at once: {MAX_REFUSING} connections are being turned away)",
                refusal.reason()
            );
            return false;
        }
        true
    }

    /// Counts a client from `ip` as open, if the per-address rules
    /// (connection rate, `AUTH` failures), `--max-connections` and
    /// `--max-connections-per-ip` allow it; else says which refusal it
    /// gets. The limits count the whole process: the check and the count
    /// are one step, so two loops cannot both take the last place.
    fn open_client(&mut self, client: Client) -> Option<Refusal> {
        match self.process.guards.admits(client.ip, self.turn.now) {
            Ok(()) => {}
            Err(Turned::TooFast) => return Some(Refusal::TooFast),
            Err(Turned::AuthFailures) => return Some(Refusal::AuthFailures),
        }
        let max = (
            self.config.max_connections,
            self.config.max_connections_per_ip,
        );
        match self.stats.try_open_client(client, max.0, max.1) {
            Ok(()) => None,
            Err(Full::Server) => Some(Refusal::Busy),
            Err(Full::Address) => Some(Refusal::TooManyFromAddress),
        }
    }

    /// A connection is turned away: counted in `rejected`, in the metrics
    /// by reason, and in the summary lines.
    fn count_refusal(&mut self, refusal: Refusal, proxied: Option<SocketAddr>) {
        let kind = refusal.kind();
        self.stats.count_rejected();
        self.stats.count_limit_hit(kind);
        match proxied {
            Some(client) => self
                .process
                .summaries
                .note_client(kind, client, self.turn.now),
            None => self.process.summaries.note(kind, self.turn.now),
        }
    }

    /// A connection on a `proxy` listener has read its PROXY header: it is
    /// admitted now, under the client's address. It did not count as a
    /// client while the header was on its way, so `--max-connections` is
    /// checked again here (it was checked at accept too, where a full
    /// server already turned it away, counted then), then
    /// `--max-connections-per-ip`. Admitted, it counts (`accepted`,
    /// `connections`, its address) from here to its last line, with the
    /// same address: `peer` no longer changes.
    pub(super) fn admit_proxied(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let (client, via, role) = (conn.peer(), conn.via(), conn.role());
        let counted = conn.client();
        let role = match role {
            Role::Refused(refusal) => Role::Refused(refusal),
            _ => match self.open_client(counted) {
                None => Role::Client,
                Some(refusal) => {
                    if !self.refuse(client, Some(client), refusal) {
                        self.close(key);
                        return;
                    }
                    self.census.count(Role::Refused(refusal), true);
                    Role::Refused(refusal)
                }
            },
        };
        let turned_away = match role {
            Role::Refused(refusal) => format!(" ({}: turned away)", refusal.describe()),
            _ => String::new(),
        };
        match via {
            Some(balancer) => debug!("proxied {client} via {balancer}{turned_away}"),
            None => debug!("proxied {client} (LOCAL or UNKNOWN: the balancer itself){turned_away}"),
        }
        let (conns, mut lent) = self.lend(key);
        let next = conns[key].admitted(role, &mut lent);
        self.settle(key, next);
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
            let Some(listener) = self.accepting.listeners.get(index) else {
                return;
            };
            if self.accepting.spare_fd.take().is_none() {
                // No spare to use: wait a little, then try again (see
                // resume_accepting).
                warn!("out of file descriptors: accepting paused for {ACCEPT_BACKOFF:?}");
                self.accepting.paused_until = Some(self.turn.now + ACCEPT_BACKOFF);
                return;
            }
            let plain = listener.kind
                == ListenerKind::Protocol {
                    tls: false,
                    proxy: false,
                };
            match listener.socket.accept() {
                Ok((mut stream, peer)) => {
                    self.stats.count_rejected();
                    self.stats.count_limit_hit(Kind::OutOfDescriptors);
                    self.process
                        .summaries
                        .note(Kind::OutOfDescriptors, self.turn.now);
                    // Only a plain client can read a line outside a session
                    // (TLS) and before a header (PROXY): the others see
                    // the close.
                    if plain {
                        let _ = stream.write(self.service.notice(Notice::Busy));
                    }
                    debug!("turned away {peer}: out of file descriptors");
                    // Close it before taking the spare back: its descriptor
                    // is the spare's.
                    drop(stream);
                    self.accepting.spare_fd = File::open("/dev/null").ok();
                }
                Err(e) => {
                    self.accepting.spare_fd = File::open("/dev/null").ok();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.accepting.paused_until = Some(self.turn.now + ACCEPT_BACKOFF);
                    }
                    return;
                }
            }
        }
        // Budget spent: the rest of the queue waits for the next turn.
        self.accepting.listeners[index].accept_again = true;
    }

    /// The transport for a connection of a listener of `kind`.
    fn transport_for(&self, kind: ListenerKind) -> Result<Transport, TlsFailed> {
        #[cfg(feature = "tls")]
        if let ListenerKind::Protocol { tls: true, .. } | ListenerKind::Metrics { tls: true } = kind
        {
            if let Some(config) = &self.current.tls_config {
                return Transport::tls(config.clone());
            }
        }
        let _ = kind;
        Ok(Transport::Plain)
    }

    /// The debug line of a newcomer.
    fn log_accepted(&self, peer: SocketAddr, role: Role, proxied: bool) {
        let on = self.which_loop();
        match role {
            Role::Undecided if proxied => {
                debug!("accepted {peer}{on} (proxy listener: waiting for its PROXY header)")
            }
            Role::Client | Role::Undecided => debug!("accepted {peer}{on}"),
            Role::Refused(refusal) => {
                debug!("accepted {peer}{on} ({}: turned away)", refusal.describe())
            }
            Role::Metrics => debug!("metrics: accepted {peer}"),
        }
    }
}

/// What admission makes of a newcomer.
enum Admission {
    /// A slab entry in this role.
    As(Role),
    /// Out of sockets: told it is busy at once (on a plain listener: a
    /// TLS client could not read a line outside a session, nor may
    /// anything come before a PROXY header), and closed.
    Busy,
    /// Closed at once without a line: a cap of its kind is reached.
    Closed,
}

/// The process holds its whole budget of sockets: a short write on a
/// fresh socket cannot block, then the close.
fn turn_away_at_once(mut stream: TcpStream, peer: SocketAddr, kind: ListenerKind, line: &[u8]) {
    if kind
        == (ListenerKind::Protocol {
            tls: false,
            proxy: false,
        })
    {
        let _ = stream.write(line);
    }
    debug!("turned away {peer}: server busy (out of sockets: closed at once)");
}

/// Dead peers: let the kernel probe an idle client, so one that vanished
/// (power loss, cable) ends as a reset would.
fn set_keepalive(stream: &TcpStream, peer: SocketAddr, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return;
    };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle.min(Duration::from_secs(75)));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!("cannot set TCP keepalive for {peer}: {e}");
    }
}
