//! The connection plumbing every mode shares: opening non-blocking
//! connections registered with an event loop ([`Connector`]), each a
//! [`Link`] (plain, or TLS with `--tls`), waiting for
//! events ([`poll_events`]), telling from an event whether a connect has
//! finished ([`connect_outcome`]), and closing at the end
//! ([`close_with_reset`]).
//!
//! One loopback source address has about 28,000 ephemeral ports (Linux's
//! default range) per destination. To hold more connections than that,
//! [`SourceAddresses`] spreads them over 127.0.0.2, .3, ... Linux routes the
//! whole of 127.0.0.0/8 to the loopback interface; macOS and FreeBSD answer
//! only on 127.0.0.1 unless aliases are added (`ifconfig lo0 alias
//! 127.0.0.2`), so there the spill-over fails with `EADDRNOTAVAIL` like the
//! exhaustion it tried to escape.

use crate::cli::Workload;
use crate::link::{ClientTls, Link};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Highest number of loopback source addresses used (127.0.0.1 to .250).
const MAX_SOURCE_ADDRESSES: usize = 250;

/// Source addresses for outgoing connections. With an IPv4 loopback target,
/// connections spill over to 127.0.0.2, .3, ... when a source runs out of
/// ephemeral ports (EADDRNOTAVAIL); other targets use the kernel's choice.
struct SourceAddresses {
    enabled: bool,
    /// Index of the first address in use (0 is 127.0.0.1).
    first: usize,
    /// How many addresses, from `first` on, connections rotate over.
    count: usize,
    /// Rotation counter; threads start at different values.
    next: usize,
}

impl SourceAddresses {
    /// `count` addresses from 127.0.0.1 on; `start` offsets the rotation so
    /// that threads do not all begin on the same address.
    fn new(target: SocketAddr, count: usize, start: usize) -> SourceAddresses {
        let enabled = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
        SourceAddresses {
            enabled,
            first: 0,
            count: count.clamp(1, MAX_SOURCE_ADDRESSES),
            next: start,
        }
    }

    /// The source for the next connection; `None` lets the kernel choose.
    fn pick(&mut self) -> Option<Ipv4Addr> {
        if !self.enabled {
            return None;
        }
        let index = self.first + self.next % self.count;
        self.next = self.next.wrapping_add(1);
        if index == 0 && self.count == 1 {
            None // plain connect: the kernel picks 127.0.0.1
        } else {
            // index < MAX_SOURCE_ADDRESSES (250), so 1 + index fits a byte.
            Some(Ipv4Addr::new(127, 0, 0, (1 + index) as u8))
        }
    }

    /// The current first source ran out of ports: move on. False when no
    /// source is left.
    fn move_past_exhausted(&mut self) -> bool {
        if !self.enabled || self.first + self.count >= MAX_SOURCE_ADDRESSES {
            return false;
        }
        self.first += 1;
        eprintln!(
            "loopline-bench: source address ran out of ports; now using 127.0.0.{}..127.0.0.{}",
            self.first + 1,
            self.first + self.count
        );
        true
    }
}

/// Starts a non-blocking connect from `source` (or the kernel's choice).
/// The connection is not established yet: wait for an event, then ask
/// [`connect_outcome`].
fn connect_from(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    nodelay: bool,
) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // Separately from `Socket::new`, because socket2 offers the one-call
    // `Type::nonblocking()` only where the kernel takes SOCK_NONBLOCK
    // (Linux, FreeBSD), not on macOS.
    socket.set_nonblocking(true)?;
    if nodelay {
        socket.set_nodelay(true)?;
    }
    if let Some(ip) = source {
        defer_port_choice(&socket);
        socket.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

/// Linux: `IP_BIND_ADDRESS_NO_PORT` makes the coming `bind` keep the address
/// only and choose the port at connect time, per destination, so one source
/// address serves a full port range for each server.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our own descriptor with a c_int option value.
    // A failure only costs ports, so it is ignored.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Elsewhere there is no such option: `bind` picks the port at once, from
/// one range shared by every destination. Still correct, it only runs out of
/// ports sooner, and the spill-over to the next source address takes over.
#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &Socket) {}

/// Opens the connections of one event loop: non-blocking, spread over the
/// source addresses, and registered with the loop.
pub struct Connector {
    target: SocketAddr,
    sources: SourceAddresses,
    /// TCP_NODELAY on each connection, for modes that send requests.
    nodelay: bool,
    /// Whether a connect that fails outright is still to be reported: only
    /// the first is, so a target that refuses does not flood stderr.
    report_next_failure: bool,
    /// With `--tls`: every connection starts a TLS session with these.
    tls: Option<ClientTls>,
}

impl Connector {
    /// The connector of thread `thread_index` (which offsets its rotation
    /// over the source addresses), with TCP_NODELAY, reporting its first
    /// failed connect.
    pub fn new(workload: &Workload, thread_index: usize) -> Connector {
        Connector {
            target: workload.target,
            sources: SourceAddresses::new(workload.target, workload.source_ips, thread_index),
            nodelay: true,
            report_next_failure: true,
            tls: workload.tls.clone(),
        }
    }

    /// Leaves Nagle's algorithm on, for connections that send nothing.
    pub fn without_nodelay(mut self) -> Connector {
        self.nodelay = false;
        self
    }

    /// Whether this connector reports its first failed connect at all.
    pub fn reporting_failures(mut self, report: bool) -> Connector {
        self.report_next_failure = report;
        self
    }

    /// Starts a connection and registers it under `token` for reading and
    /// writing, once for its whole life: no re-registration per request.
    /// `None` when it could not be started or registered; the caller counts
    /// that as a failure. Wait for an event, then ask [`connect_outcome`];
    /// once connected, [`Link::send_pending`] sends a TLS ClientHello.
    pub fn open(&mut self, registry: &Registry, token: Token) -> Option<Link> {
        let started = self
            .start_connect()
            .and_then(|stream| Link::new(stream, self.tls.as_ref()));
        self.register(registry, token, started)
    }

    /// [`Connector::open`] with TLS settings of the caller's own instead of
    /// the run's (a churn slot's, holding its session cache with
    /// `--tls-resume`).
    pub fn open_with(
        &mut self,
        registry: &Registry,
        token: Token,
        tls: Option<&ClientTls>,
    ) -> Option<Link> {
        let started = self
            .start_connect()
            .and_then(|stream| Link::new(stream, tls));
        self.register(registry, token, started)
    }

    /// Registers a started link (see [`Connector::open`]); reports the
    /// first failure to start one.
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        started: io::Result<Link>,
    ) -> Option<Link> {
        let mut link = match started {
            Ok(link) => link,
            Err(e) => {
                if self.report_next_failure {
                    eprintln!("loopline-bench: connect to {}: {e}", self.target);
                    self.report_next_failure = false;
                }
                return None;
            }
        };
        registry
            .register(
                link.tcp_mut(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        Some(link)
    }

    /// Starts a non-blocking connect, moving to the next source address on
    /// port exhaustion.
    fn start_connect(&mut self) -> io::Result<TcpStream> {
        loop {
            let source = self.sources.pick();
            match connect_from(self.target, source, self.nodelay) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE)
                    ) && self.sources.move_past_exhausted() => {}
                result => return result,
            }
        }
    }
}

/// Waits up to `timeout` for events on `poll`. An interrupted wait (EINTR)
/// is no failure: it returns with no events. False when polling failed for
/// good, which is said on stderr.
pub fn poll_events(poll: &mut Poll, events: &mut Events, timeout: Duration) -> bool {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::Interrupted => true,
        Err(e) => {
            eprintln!("loopline-bench: poll: {e}");
            false
        }
    }
}

/// The event says the peer closed or the socket failed: read on to the end.
pub fn peer_closing(event: &Event) -> bool {
    event.is_read_closed() || event.is_error()
}

/// After an event on a connecting socket: `None` while still connecting.
/// Once connected, a TLS link's ClientHello goes out.
pub fn connect_outcome(link: &mut Link, event: &Event) -> Option<io::Result<()>> {
    let outcome = tcp_connect_outcome(link.tcp(), event);
    match outcome {
        Some(Ok(())) => Some(link.send_pending()),
        other => other,
    }
}

/// [`connect_outcome`] for the socket alone.
fn tcp_connect_outcome(stream: &TcpStream, event: &Event) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        Ok(None) => {}
    }
    // A connected socket has a peer; a connecting one answers NotConnected.
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == ErrorKind::NotConnected => {
            if event.is_error() || event.is_write_closed() {
                Some(Err(io::Error::new(
                    ErrorKind::ConnectionRefused,
                    "connect failed",
                )))
            } else {
                None
            }
        }
        Err(e) => Some(Err(e)),
    }
}

/// With `reset` set, makes the coming close of each stream send an RST
/// (SO_LINGER 0) instead of a FIN, so no client-side TIME_WAIT sockets are
/// left behind for the next run.
pub fn close_with_reset<'s>(reset: bool, links: impl Iterator<Item = &'s Link>) {
    if reset {
        for link in links {
            socket2::SockRef::from(link.tcp())
                .set_linger(Some(Duration::ZERO))
                .ok();
        }
    }
}
