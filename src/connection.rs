//! One client connection: its socket, its buffers and its state machine.
//!
//! The event loop ([`crate::server`]) owns every `Connection` in a slab and
//! calls [`Connection::drive`] when the socket is ready, [`Connection::on_timer`]
//! when one of its deadlines is due. The connection reads, cuts lines
//! ([`crate::framing`]), answers them ([`crate::protocol`]) and writes; it
//! returns a [`Next`] that tells the loop what to do with it afterwards.
//!
//! Life of a connection:
//!
//! ```text
//!  accept ──(proxy)──► ProxyHeader ──(timeout, no valid header)──► Closed
//!    │                       │ header read
//!    │                       ▼
//!    │                   Admitting: the loop admits it (or not) under the
//!    │                       │ client's address; then as below, TLS or plain
//!    │                       ▼
//!  accept ──(TLS)──► Handshaking ──(timeout, failure)──► Closed
//!    │                   │ handshake done: READY, or the refusal's line
//!    │ (plain TCP)       ▼
//!    └─────────────────► Open ◄──(output drained, process below 3/4)──┐
//!                         │ ──(output over --max-output, or        Paused
//!                         │     the process over --max-memory)──►    │
//!                         │                                          │ graceful shutdown
//!                         │ QUIT, line too long, idle,               ▼
//!                         │ shutdown, peer EOF               Draining (held lines
//!                         ▼                                  answered, no reads)
//!                      Closing ◄─────────────────────────────────────┘
//!                         │ all output (and TLS close_notify) written,
//!                         │ write side shut
//!                         ▼
//!                     Lingering ──(peer EOF, linger deadline, or evicted)──► Closed
//!
//!  Any state ──► Closed at once on a reset or a write stall. Closing goes
//!  straight to Closed once all output is written if the peer had already
//!  sent its EOF (nothing to drain).
//! ```
//!
//! # Memory, and why it cannot grow with history
//!
//! An idle connection owns no buffer. Reads land in the loop's one shared
//! read buffer; responses are written into the loop's spare output buffer,
//! lent to the connection while it runs, and go straight to the socket. A
//! connection keeps bytes of its own only while it holds an unfinished line,
//! lines held back by backpressure, or output the socket has not taken.
//!
//! What it holds is bounded by what is pending *now*, never by what it sent
//! over its life:
//! - input: at most `--max-line + 1` bytes of an unfinished line plus one
//!   read ([`input_capacity_bound`]);
//! - output: reading pauses once more than `--max-output` is pending, so at
//!   most `--max-output` plus one response line is pending; the buffer
//!   *consumes what it writes*: when it needs room, the bytes the socket
//!   already took are dropped from its front before it grows, and it never
//!   grows past [`output_capacity_bound`].
//!
//! Every byte held is also counted process-wide (`STATS buffered`), and the
//! whole process is capped by `--max-memory` ([`MemoryPressure`]).

use std::fmt;
use std::io::{self, Read};
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memchr;
use mio::net::TcpStream;

use crate::framing::{self, Cut};
use crate::protocol::{self, After, AuthToken, Session};
use crate::proxy::{self, HeaderError, Parsed};
use crate::stats::Stats;
use crate::sys;
use crate::timer::{Timer, TimerKind, Timers};
use crate::transport::{HandshakeError, Transport, Wire};

/// While the process is over `--max-memory`, a connection with nothing
/// pending still reads, but this much at most: if its client turns out not
/// to read its replies, the lines it leaves held are few. (A connection
/// that reads on is simply run again, a small read per turn.)
pub const READ_UNDER_PRESSURE: usize = 1024;

/// Reads a closing connection may make per turn while it drains unread input
/// (a peer that keeps sending cannot keep the loop here).
const LINGER_READS_PER_TURN: usize = 4;

/// The limits a connection enforces, in the types the hot path wants.
/// `Limits::from_config` (in [`crate::config`]) is the one place they are
/// derived from the command line.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-line`, in bytes.
    pub max_line: usize,
    /// `--max-output`: pending output above which reading pauses.
    pub max_output: usize,
    /// `--max-memory`: bytes in all client buffers of the process above
    /// which reading pauses.
    pub max_memory: usize,
    /// `--idle-timeout`, `None` when 0 (off).
    pub idle_timeout: Option<Duration>,
    /// `--write-timeout`, `None` when 0 (off).
    pub write_timeout: Option<Duration>,
    /// `--tcp-keepalive`, `None` when 0 (off).
    pub tcp_keepalive: Option<Duration>,
    /// How long a closing connection may drain unread input after its last
    /// line, before the socket is dropped (see `Connection::linger`).
    pub linger: Duration,
    /// `--handshake-timeout`, `None` when 0 (off).
    pub handshake_timeout: Option<Duration>,
}

/// How long a closing connection reads and discards input after its last line.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// The deadline of an opening that must come before anything else (a
/// PROXY header; a metrics request head) when `--handshake-timeout` is 0.
/// Such an opening holds a socket and counts nowhere else, so it always
/// has a deadline: 0 turns off only the TLS handshake's (a TLS connection
/// counts as a client, under the client limits).
pub const OPENING_TIMEOUT_WHEN_OFF: Duration = Duration::from_secs(10);

impl Limits {
    /// How long an opening may take: `--handshake-timeout`, or
    /// [`OPENING_TIMEOUT_WHEN_OFF`] when that is 0.
    pub fn opening_timeout(&self) -> Duration {
        self.handshake_timeout.unwrap_or(OPENING_TIMEOUT_WHEN_OFF)
    }
}

/// The longest response line, in bytes, for a given `--max-line`: `OK `, an
/// echoed line and its LF, or an `ERR usage: NAME ...` line; STATS and the
/// fixed lines are far shorter than the floor of 512.
pub fn longest_response(limits: &Limits) -> usize {
    limits.max_line.saturating_add(64).max(512)
}

/// The most a connection's input buffer may ever hold, as capacity: an
/// unfinished line that may still fit (`--max-line + 1` bytes, the CR of a
/// CRLF included) plus one read.
pub fn input_capacity_bound(limits: &Limits, read_len: usize) -> usize {
    limits.max_line.saturating_add(1).saturating_add(read_len)
}

/// The most a connection's output buffer may ever hold, as capacity: reading
/// pauses as soon as more than `--max-output` is pending, which can only
/// happen by one response line.
pub fn output_capacity_bound(limits: &Limits) -> usize {
    limits.max_output.saturating_add(longest_response(limits))
}

/// The process-wide cap on client buffer memory (`--max-memory`), with its
/// hysteresis: pressure comes on when `STATS buffered` passes the cap and
/// goes off once it falls below three quarters of it. One for the whole
/// process, shared by every loop: a loop whose clients fill memory must
/// pause the readers of the other loops too.
#[derive(Debug, Default)]
pub struct MemoryCap {
    /// The total is (or was, and has not yet fallen below 3/4 of) the cap:
    /// connections with pending output must not read.
    on: AtomicBool,
    /// How many times pressure went off since start. A loop that sees it
    /// change wakes its paused connections: no socket event will come for
    /// the lines they hold.
    lifts: AtomicU64,
}

impl MemoryCap {
    /// Times pressure went off since start.
    pub fn lifts(&self) -> u64 {
        self.lifts.load(Ordering::Relaxed)
    }
}

/// One loop's view of the [`MemoryCap`].
#[derive(Debug, Default)]
pub struct MemoryPressure {
    cap: Arc<MemoryCap>,
    /// This loop turned pressure off during this turn: the loop wakes its
    /// own paused connections and tells the other loops (see
    /// [`MemoryCap::lifts`]).
    pub lifted: bool,
}

impl MemoryPressure {
    /// A loop's view of the process's cap.
    pub fn new(cap: Arc<MemoryCap>) -> MemoryPressure {
        MemoryPressure { cap, lifted: false }
    }

    /// Whether pressure is on: connections with pending output must not read.
    #[inline]
    pub fn on(&self) -> bool {
        self.cap.on.load(Ordering::Relaxed)
    }

    /// Updates the state for a new process-wide total.
    pub fn update(&mut self, buffered: u64, max_memory: usize) {
        let max = max_memory as u64;
        if buffered > max {
            if !self.on() {
                self.cap.on.store(true, Ordering::Relaxed);
            }
        } else if self.on() && buffered < max / 4 * 3 {
            // Two loops may both see the total fall: only the one that
            // turns pressure off counts the lift.
            let turned_off =
                self.cap
                    .on
                    .compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed);
            if turned_off.is_ok() {
                self.cap.lifts.fetch_add(1, Ordering::Relaxed);
                self.lifted = true;
            }
        }
    }
}

/// What the loop lends a connection while it runs.
pub struct Shared<'a> {
    /// The time of this loop turn (read once per wake-up, not per request).
    pub now: Instant,
    /// The limits from the command line.
    pub limits: &'a Limits,
    /// Server-wide counters.
    pub stats: &'a Stats,
    /// The `--auth-file` token as it is now (SIGHUP may replace it), `None`
    /// when authentication is off.
    pub token: Option<&'a AuthToken>,
    /// Every connection's deadlines.
    pub timers: &'a mut Timers,
    /// The one read buffer of the whole server. Its size is the read budget
    /// of one connection per turn.
    pub read_buf: &'a mut [u8],
    /// The spare output buffer, lent to a connection whose own is empty.
    pub spare_output: &'a mut Vec<u8>,
    /// The process-wide memory cap.
    pub memory: &'a mut MemoryPressure,
    /// Connections that started lingering (slab key, id), oldest first: the
    /// loop bounds how many linger, and evicts the oldest when it needs
    /// their descriptors.
    pub lingering: &'a mut std::collections::VecDeque<(usize, u64)>,
}

/// The capacity the spare output buffer keeps between turns. A burst may
/// grow it (up to [`output_capacity_bound`]); it is shrunk back afterwards,
/// so one burst does not hold memory until exit.
pub const SPARE_OUTPUT_KEEP: usize = 128 * 1024;

/// What answering a batch of lines may use before it must stop and look
/// (see `Connection::reply_budget`).
struct ReplyBudget {
    /// Free capacity one reply needs: [`longest_response`].
    reply_room: usize,
    /// Pending output past which a cap is passed: `--max-output`, or less
    /// when the process is near `--max-memory`.
    pause_above: usize,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A `proxy` listener waits for the PROXY header, before anything else
    /// (the TLS handshake included). The header stays in the socket until
    /// it is whole, and only its own bytes are then read: what follows is
    /// read as ever. `FirstLine` is `Refused(Busy)` when the server was
    /// busy at accept, else `Ready` until the loop decides under the
    /// client's address.
    ProxyHeader(FirstLine),
    /// Its PROXY header is read and `peer` is the client's address: the
    /// loop decides at once, before its next event, whether to admit it
    /// under that address, and tells it with [`Connection::proxy_admitted`].
    Admitting(FirstLine),
    /// A TLS handshake is going on: nothing is read as requests yet. When it
    /// finishes, the connection gets its first line (`READY`, or the
    /// busy line for a connection turned away) and goes on from there.
    Handshaking(FirstLine),
    /// Reading requests and answering them.
    Open,
    /// Open, but not reading: its pending output passed `--max-output`, or
    /// the process is over `--max-memory` and this connection has output
    /// pending. Lines already read wait in its input ("held lines").
    Paused,
    /// Graceful shutdown reached it while paused: its held lines are still
    /// due, and are answered as its output drains; nothing more is read.
    /// Then comes the last line.
    Draining,
    /// Its last line is queued (close after reply): nothing more is read or
    /// executed; the output is flushed.
    Closing,
    /// All output written and the write side shut; unread input is read and
    /// discarded until the peer closes or the linger deadline passes.
    Lingering,
    /// Finished; the loop removes it after the current batch of events.
    Closed,
}

/// What a connection gets first, once its transport is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLine {
    /// `READY`: admitted.
    Ready,
    /// The refusal's line (`ERR server busy`, ...): turned away.
    Refused(Refusal),
}

/// Why a connection closed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `QUIT`.
    Quit,
    /// A request line passed `--max-line`.
    LineTooLong,
    /// No complete request for `--idle-timeout`.
    IdleTimeout,
    /// The peer took no bytes for `--write-timeout` while output was pending.
    WriteTimeout,
    /// Graceful shutdown.
    Shutdown,
    /// Turned away: `--max-connections` were open.
    Busy,
    /// Turned away: `--max-connections-per-ip` were open from its address.
    TooManyFromAddress,
    /// Its last `AUTH` attempt was one failure too many.
    TooManyAuthFailures,
    /// The client shut its writing side (EOF) and was answered.
    PeerClosed,
    /// Lingering after its last line, it was closed early: the server
    /// needed its descriptor, or too many connections were lingering.
    LingerCutShort,
    /// The TLS handshake did not finish within `--handshake-timeout`.
    HandshakeTimeout,
    /// The TLS session failed: garbage instead of a ClientHello, a failed
    /// handshake, bad records.
    TlsFailed,
    /// A `proxy` listener got no valid PROXY header.
    ProxyHeader(HeaderError),
    /// A socket error: reset, broken pipe, keepalive timeout...
    Io(io::ErrorKind),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Quit => f.write_str("client sent QUIT"),
            CloseReason::LineTooLong => f.write_str("request line too long"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::WriteTimeout => f.write_str("write timeout: peer took no bytes"),
            CloseReason::Shutdown => f.write_str("server shutting down"),
            CloseReason::Busy => f.write_str("server busy"),
            CloseReason::TooManyFromAddress => f.write_str("too many connections from its address"),
            CloseReason::TooManyAuthFailures => f.write_str("too many auth failures"),
            CloseReason::PeerClosed => f.write_str("client closed its side"),
            CloseReason::LingerCutShort => f.write_str("lingering close cut short"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseReason::TlsFailed => f.write_str("TLS failed"),
            CloseReason::ProxyHeader(e) => write!(f, "{e}"),
            CloseReason::Io(kind) => write!(f, "socket error: {kind}"),
        }
    }
}

/// Why a newcomer is turned away instead of greeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` are open (or the process is out of sockets).
    Busy,
    /// `--max-connections-per-ip` are open from its address.
    TooManyFromAddress,
}

impl Refusal {
    /// The line it gets instead of `READY`.
    pub fn line(self) -> &'static [u8] {
        match self {
            Refusal::Busy => protocol::BUSY,
            Refusal::TooManyFromAddress => protocol::TOO_MANY_FROM_ADDRESS,
        }
    }

    /// Why it closed, for the log.
    pub fn reason(self) -> CloseReason {
        match self {
            Refusal::Busy => CloseReason::Busy,
            Refusal::TooManyFromAddress => CloseReason::TooManyFromAddress,
        }
    }
}

/// What the loop does with a connection after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing until its next readiness event or deadline.
    Wait,
    /// It has work left (its read budget ran out, its linger drain budget
    /// ran out, or it may resume after backpressure): run it again before
    /// sleeping in `poll`, because edge-triggered readiness will not report
    /// those bytes a second time.
    Again,
    /// It is finished: remove it after the current batch of events.
    Close,
}

/// A connection's own counters, for the debug line logged when it closes.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// When it was accepted.
    pub opened: Instant,
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes the socket took from us.
    pub bytes_out: u64,
    /// Request lines answered.
    pub commands: u64,
}

/// One client connection.
pub struct Connection {
    stream: TcpStream,
    /// Plain TCP, or a TLS session around the same socket.
    transport: Transport,
    peer: SocketAddr,
    /// Behind a balancer: the socket's own peer (the balancer), once the
    /// PROXY header has named the client, which is then `peer`.
    via: Option<SocketAddr>,
    /// Slab key; also its `Token`.
    key: usize,
    /// Serial number, unique for the server's life (slab keys are reused).
    id: u64,
    state: State,
    /// Set once, when the connection starts to close.
    reason: Option<CloseReason>,
    /// Counts in `connections`, `--max-connections` and
    /// `--max-connections-per-ip` (a reject does not).
    is_client: bool,
    /// Where it stands with authentication.
    session: Session,
    /// Input not yet executed: an unfinished line, or lines held back while
    /// reading is paused. Empty (no allocation) when idle.
    input: Vec<u8>,
    /// Output not yet taken by the socket is `output[written..]`.
    output: Vec<u8>,
    written: usize,
    /// The last write hit WouldBlock: writing again is useless until the
    /// writable edge says the peer took bytes.
    write_blocked: bool,
    /// The peer shut its writing side (a read returned 0).
    peer_eof: bool,
    /// An event said the peer closed or failed (a hint, to be confirmed by a
    /// read): a short read no longer means "drained", read on to the EOF.
    hangup_hinted: bool,
    /// The last complete request (the idle timer counts from here).
    last_request: Instant,
    /// The last time we saw the peer take bytes (or output became pending):
    /// the write-stall clock counts from here.
    last_progress: Instant,
    /// Bytes the peer had acknowledged at the last write-stall check
    /// (`totals.bytes_out` minus the kernel's unsent count).
    acknowledged: u64,
    /// A write-stall deadline is in the timer heap.
    write_timer_armed: bool,
    /// On the loop's ready list (to run again before the next poll).
    queued: bool,
    /// What this connection last added to `STATS buffered` and `paused`.
    counted_bytes: usize,
    counted_paused: bool,
    totals: Totals,
}

impl Connection {
    /// A newly accepted connection. Over plain TCP it gets its first line
    /// now (`READY`, or the busy line for one turned away); over TLS, once
    /// the handshake has finished, so that the line travels inside the
    /// session like every other.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        stream: TcpStream,
        transport: Transport,
        peer: SocketAddr,
        key: usize,
        id: u64,
        first: FirstLine,
        shared: &mut Shared,
    ) -> (Connection, Next) {
        let is_client = first == FirstLine::Ready;
        let mut conn = Connection::new(stream, transport, peer, key, id, is_client, shared);
        if conn.transport.is_handshaking() {
            // The client speaks first (its ClientHello); the readable event
            // that brings it drives the handshake on. A client that never
            // finishes it is closed by the handshake timer.
            conn.state = State::Handshaking(first);
            if let Some(limit) = shared.limits.handshake_timeout {
                conn.schedule(shared, TimerKind::Handshake, shared.now + limit);
            }
            return (conn, Next::Wait);
        }
        let next = conn.with_reply_buffer(shared, |conn, shared| {
            let next = conn.greet(first, shared);
            conn.flush_and_advance(next, shared)
        });
        (conn, next)
    }

    /// A newly accepted plain-TCP client: sends `READY` and arms its idle
    /// timer.
    pub fn accept(
        stream: TcpStream,
        peer: SocketAddr,
        key: usize,
        id: u64,
        shared: &mut Shared,
    ) -> (Connection, Next) {
        Connection::start(
            stream,
            Transport::Plain,
            peer,
            key,
            id,
            FirstLine::Ready,
            shared,
        )
    }

    /// The first line: `READY` (and the idle clock starts), or the busy
    /// line of its refusal and the careful close that follows every last
    /// line.
    fn greet(&mut self, first: FirstLine, shared: &mut Shared) -> Next {
        self.state = State::Open;
        match first {
            FirstLine::Ready => {
                if let Some(idle) = shared.limits.idle_timeout {
                    self.schedule(shared, TimerKind::Idle, shared.now + idle);
                }
                self.last_request = shared.now;
                self.output.extend_from_slice(protocol::GREETING);
                Next::Wait
            }
            FirstLine::Refused(refusal) => {
                self.close_after(refusal.line(), refusal.reason(), shared)
            }
        }
    }

    /// Moves a TLS handshake on; once it is done, the first line, then any
    /// request that came in the same flight (rustls holds it already: no
    /// socket event will come for it).
    fn advance_handshake(&mut self, shared: &mut Shared) -> Next {
        let State::Handshaking(first) = self.state else {
            return Next::Wait;
        };
        let mut wire = Wire::default();
        let done = self
            .transport
            .advance_handshake(&mut self.stream, &mut wire);
        self.count_wire(wire, shared);
        if done.is_err() {
            shared.stats.count_tls_handshake(false);
        }
        match done {
            // The session may have records to send (its ServerHello...):
            // flush_and_advance writes them.
            Ok(false) => Next::Wait,
            Ok(true) => {
                shared.stats.count_tls_handshake(true);
                let next = self.greet(first, shared);
                if self.state == State::Open {
                    self.read_requests(shared)
                } else {
                    next
                }
            }
            Err(HandshakeError::Closed) => self.fail(CloseReason::PeerClosed),
            Err(HandshakeError::Io(e)) => self.fail(CloseReason::Io(e.kind())),
            Err(HandshakeError::Tls(e)) => {
                log::debug!("TLS handshake with {} failed: {}", self.peer, e.0);
                // Send the alert rustls queued, if the socket takes it now.
                let _ = self.flush(shared);
                self.fail(CloseReason::TlsFailed)
            }
        }
    }

    /// A newly accepted connection on a `proxy` listener: it reads nothing
    /// but its PROXY header, within `--handshake-timeout` (the same
    /// deadline then bounds a TLS handshake after it). It does not count as
    /// a client until the loop admits it under the header's address.
    /// `first` is `Refused(Busy)` if the server was busy at accept.
    pub fn start_proxied(
        stream: TcpStream,
        transport: Transport,
        balancer: SocketAddr,
        key: usize,
        id: u64,
        first: FirstLine,
        shared: &mut Shared,
    ) -> (Connection, Next) {
        let mut conn = Connection::new(stream, transport, balancer, key, id, false, shared);
        conn.state = State::ProxyHeader(first);
        // The header always has a deadline (see `Limits::opening_timeout`).
        let limit = shared.limits.opening_timeout();
        conn.schedule(shared, TimerKind::Handshake, shared.now + limit);
        // The balancer speaks first: the readable event that brings the
        // header runs `read_proxy_header`.
        (conn, Next::Wait)
    }

    /// Looks at what the socket holds without taking it (MSG_PEEK): once a
    /// whole header is there, reads exactly its bytes and no more, so what
    /// follows (the first request, or the TLS ClientHello) stays in the
    /// socket for the code that reads it next. Nothing is buffered here: an
    /// unfinished header waits in the kernel, at most `proxy::HEADER_MAX`
    /// bytes of it matter, and each new segment raises a new readable edge.
    fn read_proxy_header(&mut self, shared: &mut Shared) -> Next {
        let window = proxy::HEADER_MAX.min(shared.read_buf.len());
        let seen = loop {
            match self.stream.peek(&mut shared.read_buf[..window]) {
                Ok(0) => return self.fail(CloseReason::PeerClosed),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(CloseReason::Io(e.kind())),
            }
        };
        match proxy::parse(&shared.read_buf[..seen]) {
            // A peer that has sent its EOF (the event said so) can never
            // finish it; others have until the handshake deadline.
            Ok(Parsed::Incomplete) if self.hangup_hinted => self.fail(CloseReason::PeerClosed),
            Ok(Parsed::Incomplete) => Next::Wait,
            Ok(Parsed::Header { len, client }) => {
                // The bytes are in the socket (we just saw them): this read
                // takes them, and only them.
                let mut taken = 0;
                while taken < len {
                    match self.stream.read(&mut shared.read_buf[taken..len]) {
                        Ok(0) => return self.fail(CloseReason::PeerClosed),
                        Ok(n) => taken += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return self.fail(CloseReason::Io(e.kind())),
                    }
                }
                self.count_wire(
                    Wire {
                        read: len as u64,
                        written: 0,
                    },
                    shared,
                );
                if let Some(client) = client {
                    self.via = Some(self.peer);
                    self.peer = client;
                }
                if let State::ProxyHeader(first) = self.state {
                    self.state = State::Admitting(first);
                }
                Next::Wait
            }
            Err(e) => {
                log::debug!("{} sent no valid PROXY header: {e}", self.peer);
                // Take the bytes we looked at: closing with them unread
                // would make the kernel answer with a reset, not an EOF.
                let _ = self.stream.read(&mut shared.read_buf[..seen]);
                self.fail(CloseReason::ProxyHeader(e))
            }
        }
    }

    /// The loop has decided, under the client's address: `Ready` (it now
    /// counts as a client) or a refusal. Goes on as a fresh connection of
    /// its transport would; the readable edge that brought the header may
    /// have brought what follows too, so that is read now, not on an event.
    pub fn proxy_admitted(&mut self, first: FirstLine, shared: &mut Shared) -> Next {
        if !matches!(self.state, State::Admitting(_)) {
            return Next::Wait;
        }
        self.is_client = first == FirstLine::Ready;
        self.with_reply_buffer(shared, |conn, shared| {
            let next = if conn.transport.is_handshaking() {
                // Its deadline is the one set at accept.
                conn.state = State::Handshaking(first);
                conn.advance_handshake(shared)
            } else {
                let next = conn.greet(first, shared);
                if conn.state == State::Open {
                    conn.read_requests(shared)
                } else {
                    next
                }
            };
            conn.flush_and_advance(next, shared)
        })
    }

    /// Adds what crossed the socket to the server's and the connection's
    /// counters; bytes written are the peer's progress.
    fn count_wire(&mut self, wire: Wire, shared: &mut Shared) {
        shared.stats.add_bytes_in(wire.read);
        self.totals.bytes_in += wire.read;
        if wire.written > 0 {
            shared.stats.add_bytes_out(wire.written);
            self.totals.bytes_out += wire.written;
            self.last_progress = shared.now;
        }
    }

    fn new(
        stream: TcpStream,
        transport: Transport,
        peer: SocketAddr,
        key: usize,
        id: u64,
        is_client: bool,
        shared: &Shared,
    ) -> Connection {
        let now = shared.now;
        Connection {
            stream,
            transport,
            peer,
            via: None,
            key,
            id,
            state: State::Open,
            reason: None,
            is_client,
            session: Session::new(shared.token),
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            write_blocked: false,
            peer_eof: false,
            hangup_hinted: false,
            last_request: now,
            last_progress: now,
            acknowledged: 0,
            write_timer_armed: false,
            queued: false,
            counted_bytes: 0,
            counted_paused: false,
            totals: Totals {
                opened: now,
                bytes_in: 0,
                bytes_out: 0,
                commands: 0,
            },
        }
    }

    /// The socket, to register with or deregister from `Poll`.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The peer's address: the client's, as its PROXY header gave it on a
    /// `proxy` listener.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The balancer's address, when a PROXY header named another client.
    pub fn via(&self) -> Option<SocketAddr> {
        self.via
    }

    /// The serial number, unique for the life of the server.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where it is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why it closed (or is closing), if it is.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// Whether it counts as an open client connection.
    pub fn is_client(&self) -> bool {
        self.is_client
    }

    /// Its own counters.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Bytes of output the socket has not taken yet.
    pub fn pending_output(&self) -> usize {
        self.output.len() - self.written
    }

    /// Bytes of input held: an unfinished line, or lines held back.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// The memory its buffers really hold: (input capacity, output
    /// capacity), in bytes. See [`input_capacity_bound`] and
    /// [`output_capacity_bound`].
    pub fn buffer_capacities(&self) -> (usize, usize) {
        (self.input.capacity(), self.output.capacity())
    }

    /// The event loop saw a writable edge: the socket took bytes, so the
    /// next flush may write again.
    pub fn writable_again(&mut self) {
        self.write_blocked = false;
    }

    /// Marks it as on the loop's ready list; false if it already was.
    pub fn mark_queued(&mut self) -> bool {
        !mem::replace(&mut self.queued, true)
    }

    /// Takes it off the ready list (the loop is about to run it).
    pub fn unqueue(&mut self) {
        self.queued = false;
    }

    /// Marks it finished; the loop calls this on the one close path. Its
    /// bytes stop counting in `STATS buffered` now: they are freed when the
    /// loop drops it at the end of the batch.
    pub fn mark_closed(&mut self, stats: &Stats) {
        self.state = State::Closed;
        stats.buffered_changed(self.counted_bytes as u64, 0);
        if self.counted_paused {
            stats.paused_changed(false);
        }
        self.counted_bytes = 0;
        self.counted_paused = false;
    }

    /// Lingering after its last line, it is closed early (the loop needs
    /// the descriptor, or too many connections linger). Every reply was
    /// written long before; only the courtesy drain is cut short.
    pub fn cut_linger_short(&mut self) -> Next {
        if self.state != State::Lingering {
            return Next::Wait;
        }
        self.reason = Some(CloseReason::LingerCutShort);
        Next::Close
    }

    /// The socket is ready (or may be: events can be spurious, so we just
    /// try and see). `readable` says whether to read; `hangup` that the
    /// event carried a closed or error flag (a hint only).
    pub fn drive(&mut self, readable: bool, hangup: bool, shared: &mut Shared) -> Next {
        self.hangup_hinted |= hangup;
        self.with_reply_buffer(shared, |conn, shared| match conn.state {
            State::ProxyHeader(_) => conn.read_proxy_header(shared),
            State::Handshaking(_) => {
                let next = conn.advance_handshake(shared);
                conn.flush_and_advance(next, shared)
            }
            State::Open | State::Paused | State::Draining => {
                let next = conn.serve(readable, shared);
                conn.flush_and_advance(next, shared)
            }
            // Whatever the event, a closing connection only flushes.
            State::Closing => conn.flush_and_advance(Next::Wait, shared),
            State::Lingering if readable => conn.discard_input(shared),
            // Admitted by the loop before any further event.
            State::Lingering | State::Closed | State::Admitting(_) => Next::Wait,
        })
    }

    /// One of its deadlines is due (the loop checked the id).
    pub fn on_timer(&mut self, kind: TimerKind, shared: &mut Shared) -> Next {
        match kind {
            TimerKind::Idle => self.on_idle_timer(shared),
            TimerKind::WriteStall => self.on_write_timer(shared),
            // The peer had its time to close; dropping the socket now may
            // send a reset, but every reply was sent well before.
            TimerKind::Linger if self.state == State::Lingering => Next::Close,
            TimerKind::Linger => Next::Wait,
            // A handshake not finished in time: closed without a line (there
            // is no session to carry one).
            TimerKind::Handshake
                if matches!(
                    self.state,
                    State::Handshaking(_) | State::ProxyHeader(_) | State::Admitting(_)
                ) =>
            {
                self.fail(CloseReason::HandshakeTimeout)
            }
            TimerKind::Handshake => Next::Wait,
        }
    }

    /// Graceful shutdown: after every response already due, one last line.
    /// An open connection holds at most an unfinished line (not due), so it
    /// gets the line now. A paused one holds lines already read: they are
    /// due, and are answered as its output drains, within the same limits
    /// as ever (`Draining`). Bytes still in the socket are not read.
    pub fn shut_down(&mut self, shared: &mut Shared) -> Next {
        match self.state {
            // No session yet to carry a line: just close.
            State::Handshaking(_) | State::ProxyHeader(_) | State::Admitting(_) => {
                self.fail(CloseReason::Shutdown)
            }
            State::Open => self.with_reply_buffer(shared, |conn, shared| {
                conn.close_after(protocol::SHUTTING_DOWN, CloseReason::Shutdown, shared)
            }),
            State::Paused => {
                self.state = State::Draining;
                self.with_reply_buffer(shared, |conn, shared| {
                    let next = conn.serve(false, shared);
                    conn.flush_and_advance(next, shared)
                })
            }
            _ => Next::Wait,
        }
    }

    /// Runs `work` with an output buffer in place, then brings the
    /// process-wide accounting up to date.
    ///
    /// When our own buffer is empty we borrow the loop's spare one, so
    /// responses go straight into a buffer that already has capacity: no
    /// allocation per request. Afterwards the buffer goes back unless the
    /// socket left bytes in it.
    fn with_reply_buffer<R>(
        &mut self,
        shared: &mut Shared,
        work: impl FnOnce(&mut Self, &mut Shared) -> R,
    ) -> R {
        let was_empty = self.output.is_empty();
        if was_empty {
            mem::swap(&mut self.output, shared.spare_output);
        }
        let result = work(self, shared);
        let pending = self.pending_output();
        if was_empty && pending > 0 && self.written == 0 {
            // Output became pending and the socket took none of it: the
            // write-stall clock starts now, not at some older write.
            self.last_progress = shared.now;
        }
        if pending == 0 {
            self.output.clear();
            self.written = 0;
            // Keep the larger of the two buffers as the spare; an idle
            // connection holds no output memory at all.
            if self.output.capacity() > shared.spare_output.capacity() {
                mem::swap(&mut self.output, shared.spare_output);
            }
            self.output = Vec::new();
        } else if was_empty {
            // The socket took only part of what we wrote into the borrowed
            // spare: keep just the rest, in a buffer of its size, and give
            // the large one back to the loop.
            let rest = self.output[self.written..].to_vec();
            let mut spare = mem::replace(&mut self.output, rest);
            spare.clear();
            self.written = 0;
            if spare.capacity() > shared.spare_output.capacity() {
                *shared.spare_output = spare;
            }
        }
        // A burst (a STATS flood, a held backlog at shutdown) may have
        // grown the spare: give that memory back now rather than at exit.
        if shared.spare_output.capacity() > SPARE_OUTPUT_KEEP {
            shared.spare_output.shrink_to(SPARE_OUTPUT_KEEP);
        }
        self.update_accounting(shared);
        result
    }

    /// Brings `STATS buffered` and `paused` up to date with what this
    /// connection holds now, and the process-wide memory pressure with them.
    fn update_accounting(&mut self, shared: &mut Shared) {
        if self.state == State::Closed {
            return;
        }
        let held = self.input.len() + self.pending_output();
        shared
            .stats
            .buffered_changed(self.counted_bytes as u64, held as u64);
        self.counted_bytes = held;
        let paused = matches!(self.state, State::Paused | State::Draining);
        if paused != self.counted_paused {
            shared.stats.paused_changed(paused);
            self.counted_paused = paused;
        }
        shared
            .memory
            .update(shared.stats.buffered(), shared.limits.max_memory);
    }

    /// Whether the process is over `--max-memory`, counting what this
    /// connection holds right now (the shared total is brought up to date
    /// only after each call, and one read can cross the cap).
    fn memory_over(&self, shared: &Shared) -> bool {
        if shared.memory.on() {
            return true;
        }
        let held = (self.input.len() + self.pending_output()) as u64;
        self.buffered_by_others(shared) + held > shared.limits.max_memory as u64
    }

    /// What every other connection holds (`STATS buffered` less this one's
    /// last count): the rest of the process's total while this one works.
    fn buffered_by_others(&self, shared: &Shared) -> u64 {
        shared.stats.buffered() - self.counted_bytes as u64
    }

    /// Whether a paused (or draining) connection may answer and read again:
    /// its own output has fallen to half of `--max-output` (so a client at
    /// the limit is not paused and resumed on every write), and either the
    /// process is below its memory cap or this connection has nothing
    /// pending (one that holds no output is always served).
    fn may_resume(&self, shared: &Shared) -> bool {
        let pending = self.pending_output();
        pending <= shared.limits.max_output / 2 && (pending == 0 || !self.memory_over(shared))
    }

    /// The work of a live connection: lines held back first, then the socket.
    fn serve(&mut self, readable: bool, shared: &mut Shared) -> Next {
        if matches!(self.state, State::Paused | State::Draining) {
            // Send first: this event may be the writable edge that lets us
            // go on.
            if let Err(reason) = self.flush(shared) {
                return self.fail(reason);
            }
            if !self.may_resume(shared) {
                return Next::Wait;
            }
            if self.state == State::Paused {
                self.state = State::Open;
            }
            // Run the lines that were read but held back...
            let all_answered = self.run_held_lines(shared);
            if self.state == State::Draining {
                if !all_answered {
                    // Paused again by its output: the next writable edge
                    // brings us back here.
                    return Next::Wait;
                }
                // Every line that was due is answered: the last line.
                return self.close_after(protocol::SHUTTING_DOWN, CloseReason::Shutdown, shared);
            }
            if self.state != State::Open {
                return Next::Wait;
            }
            // ...then read by hand: bytes that arrived while we were paused
            // raised their one edge-triggered event back then, and no new
            // event will come for them.
            return self.read_requests(shared);
        }
        if self.state == State::Open && readable {
            self.read_requests(shared)
        } else {
            Next::Wait
        }
    }

    /// Reads once into the shared buffer and answers the complete lines.
    fn read_requests(&mut self, shared: &mut Shared) -> Next {
        loop {
            let mut budget = shared.read_buf.len();
            if self.memory_over(shared) {
                if self.pending_output() > 0 {
                    // The process is over --max-memory and we have output
                    // waiting: read nothing more until the total falls.
                    self.state = State::Paused;
                    return Next::Wait;
                }
                budget = budget.min(READ_UNDER_PRESSURE);
            }
            // Plaintext: straight from the socket, or out of the TLS
            // session (which reads records until the socket is drained).
            let mut wire = Wire::default();
            let read =
                self.transport
                    .read(&mut self.stream, &mut shared.read_buf[..budget], &mut wire);
            self.count_wire(wire, shared);
            let n = match read {
                Ok(0) => return self.on_peer_eof(shared),
                Ok(n) => n,
                // Drained: the kernel has nothing more. The next byte to
                // arrive raises a new edge, so we may stop here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                // A signal interrupted the call; nothing was read. Retry.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(CloseReason::Io(e.kind())),
            };
            let full = n == budget;
            // Lend the read bytes out of `shared` for the framing, so the
            // rest of `shared` stays usable meanwhile; put them back after.
            let read_buf = mem::take(&mut shared.read_buf);
            self.take_input(&read_buf[..n], read_buf.len(), shared);
            shared.read_buf = read_buf;
            if self.state != State::Open {
                return Next::Wait;
            }
            if full {
                // The buffer filled: more may be waiting, but this was our
                // fair share of the turn. Come back before the next poll.
                return Next::Again;
            }
            if !self.hangup_hinted {
                // A read shorter than the buffer emptied the socket: new
                // bytes would raise a new edge, so there is no need to read
                // on to WouldBlock and spend a syscall to hear it.
                return Next::Wait;
            }
            // But an EOF that came with those bytes raises no edge of its
            // own: the event hinted at it, so read on until we see it.
        }
    }

    /// Frames and answers the bytes of one read (into a buffer of
    /// `read_len` bytes); keeps what is left over.
    fn take_input(&mut self, mut data: &[u8], read_len: usize, shared: &mut Shared) {
        let input_limit = input_capacity_bound(shared.limits, read_len);
        if !self.input.is_empty() {
            // An unfinished line from an earlier read: this read continues it.
            match memchr(b'\n', data) {
                None => {
                    let len = self.input.len() + data.len();
                    if framing::unfinished_too_long(
                        len,
                        data.last().copied(),
                        shared.limits.max_line,
                    ) {
                        self.line_too_long(shared);
                    } else {
                        reserve_within(&mut self.input, data.len(), input_limit);
                        self.input.extend_from_slice(data);
                    }
                    return;
                }
                Some(lf) => {
                    reserve_within(&mut self.input, lf + 1, input_limit);
                    self.input.extend_from_slice(&data[..=lf]);
                    data = &data[lf + 1..];
                    let mut line = mem::take(&mut self.input);
                    let (used, _) = self.run_lines(&line, shared);
                    if self.state != State::Open {
                        // Paused on this very line: the rest of the read
                        // is held, after what is left of `line` (nothing,
                        // unless it was too long, which closes anyway).
                        line.drain(..used);
                        reserve_within(&mut line, data.len(), input_limit);
                        line.extend_from_slice(data);
                        if self.state == State::Paused {
                            self.input = line;
                        }
                        return;
                    }
                    // Keep the buffer (cleared) for the next unfinished line.
                    line.clear();
                    self.input = line;
                }
            }
        }
        let (used, _) = self.run_lines(data, shared);
        if !matches!(self.state, State::Open | State::Paused) {
            return;
        }
        // An unfinished line, or lines held back by backpressure.
        reserve_within(&mut self.input, data.len() - used, input_limit);
        self.input.extend_from_slice(&data[used..]);
        if self.input.is_empty() {
            // The read ended on a line boundary: give the memory back, so an
            // idle connection holds no input buffer.
            self.input = Vec::new();
        }
    }

    /// Runs the lines held in `input` (after backpressure lifts). Returns
    /// whether every complete line in it was answered.
    fn run_held_lines(&mut self, shared: &mut Shared) -> bool {
        let mut held = mem::take(&mut self.input);
        let (used, all_answered) = self.run_lines(&held, shared);
        if matches!(self.state, State::Open | State::Paused | State::Draining) {
            held.drain(..used);
            if !held.is_empty() {
                self.input = held;
            }
        }
        all_answered
    }

    /// Answers complete lines at the start of `data` until one stops the
    /// connection (QUIT, too long) or pauses it (backpressure). Returns the
    /// bytes consumed, and whether it stopped because no complete line was
    /// left.
    fn run_lines(&mut self, data: &[u8], shared: &mut Shared) -> (usize, bool) {
        // Worked out once per batch of lines, not per line: the hot path
        // then pays one comparison per reply for both caps.
        let budget = self.reply_budget(shared);
        let mut used = 0;
        while self.may_answer(shared) {
            match framing::cut_line(&data[used..], shared.limits.max_line) {
                Cut::Partial => return (used, true),
                Cut::TooLong => self.line_too_long(shared),
                Cut::Line { line, used: n } => {
                    used += n;
                    self.answer(line, &budget, shared);
                }
            }
        }
        (used, false)
    }

    /// What answering may use before it must stop and look: room for one
    /// reply, and the pending output past which either cap is passed.
    fn reply_budget(&self, shared: &Shared) -> ReplyBudget {
        // Pending output at which the process's total would pass
        // --max-memory (everything else this connection holds stays put
        // while lines are answered); none at all while pressure is on.
        let memory_threshold = if shared.memory.on() {
            0
        } else {
            let held_input = self.input.len() as u64;
            (shared.limits.max_memory as u64)
                .saturating_sub(self.buffered_by_others(shared) + held_input)
        };
        ReplyBudget {
            reply_room: longest_response(shared.limits),
            pause_above: usize::try_from(memory_threshold)
                .unwrap_or(usize::MAX)
                .min(shared.limits.max_output),
        }
    }

    /// Whether the next held or read line may be answered now.
    fn may_answer(&self, shared: &Shared) -> bool {
        match self.state {
            State::Open => true,
            // Draining answers held lines under the same backpressure.
            State::Draining => self.pending_output() <= shared.limits.max_output,
            _ => false,
        }
    }

    /// Answers one request line.
    // Inlined into the line loop by force: left to itself the compiler
    // sometimes calls it, which costs ~30 instructions per request
    // (scripts/instructions.sh shows it).
    #[inline(always)]
    fn answer(&mut self, line: &[u8], budget: &ReplyBudget, shared: &mut Shared) {
        shared.stats.add_commands(1);
        self.totals.commands += 1;
        self.last_request = shared.now;
        self.make_room_for_reply(budget.reply_room, shared.limits);
        let after = protocol::respond(
            line,
            &mut self.session,
            shared.token,
            shared.stats,
            shared.now,
            &mut self.output,
        );
        if after == After::Close {
            self.answered_last_line();
            return;
        }
        // The hot path ends here: one comparison covers both caps.
        if self.pending_output() > budget.pause_above {
            self.over_reply_budget(shared);
        }
    }

    /// That reply was the connection's last line: `BYE`, or the answer to
    /// one `AUTH` failure too many.
    #[cold]
    #[inline(never)]
    fn answered_last_line(&mut self) {
        self.start_closing(if self.session.failed_too_often() {
            CloseReason::TooManyAuthFailures
        } else {
            CloseReason::Quit
        });
    }

    /// Pending output passed `--max-output`, or the process is at
    /// `--max-memory`: decide whether to stop answering.
    #[cold]
    #[inline(never)]
    fn over_reply_budget(&mut self, shared: &mut Shared) {
        if self.pending_output() > shared.limits.max_output {
            // Backpressure: stop reading until the peer takes our output.
            self.pause();
        } else if self.flush(shared).is_err() || self.pending_output() > 0 {
            // The process is over --max-memory: go on only while the
            // socket takes each reply at once. (Rare path: one write per
            // line while the process is over its cap.)
            self.pause();
        }
    }

    fn pause(&mut self) {
        if self.state == State::Open {
            self.state = State::Paused;
        }
    }

    /// Makes sure one more response line fits without the buffer growing on
    /// its own. Almost always a single comparison. When room is short, the
    /// bytes the socket already took are dropped from the front first (the
    /// buffer consumes what it writes, so it cannot grow with history), and
    /// only then does it grow, never past [`output_capacity_bound`].
    #[inline(always)]
    fn make_room_for_reply(&mut self, longest: usize, limits: &Limits) {
        if self.output.capacity() - self.output.len() < longest {
            self.grow_for_reply(longest, limits);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow_for_reply(&mut self, longest: usize, limits: &Limits) {
        if self.written > 0 {
            // Moves the pending bytes to the front: at most what is
            // pending, which reading keeps below --max-output.
            self.output.drain(..self.written);
            self.written = 0;
        }
        reserve_within(&mut self.output, longest, output_capacity_bound(limits));
    }

    fn line_too_long(&mut self, shared: &mut Shared) {
        shared.stats.add_commands(1);
        self.totals.commands += 1;
        self.make_room_for_reply(longest_response(shared.limits), shared.limits);
        self.output.extend_from_slice(protocol::LINE_TOO_LONG);
        self.start_closing(CloseReason::LineTooLong);
    }

    /// The client shut its writing side. It may still be reading: answer a
    /// last line that had no LF, flush everything, then close.
    fn on_peer_eof(&mut self, shared: &mut Shared) -> Next {
        self.peer_eof = true;
        if !self.input.is_empty() {
            let last = mem::take(&mut self.input);
            let budget = self.reply_budget(shared);
            self.answer(framing::final_line(&last), &budget, shared);
        }
        self.start_closing(CloseReason::PeerClosed);
        Next::Wait
    }

    /// Queues a last line and starts the close that follows it.
    fn close_after(&mut self, line: &[u8], reason: CloseReason, shared: &mut Shared) -> Next {
        self.make_room_for_reply(longest_response(shared.limits), shared.limits);
        self.output.extend_from_slice(line);
        self.start_closing(reason);
        self.flush_and_advance(Next::Wait, shared)
    }

    /// The client's last line is answered: from its side the connection is
    /// over, so it no longer counts as open, nor against --max-connections
    /// or its address. Done before that line is written: a client that
    /// reads it and connects again at once must find its place free, even
    /// when another loop (`--threads`) takes the new connection.
    fn stop_counting_as_client(&mut self, shared: &mut Shared) {
        if self.is_client {
            self.is_client = false;
            shared.stats.client_left(self.peer.ip());
        }
    }

    /// The one close-after-reply flag: nothing more is read or executed.
    fn start_closing(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Open | State::Paused | State::Draining) {
            self.state = State::Closing;
            self.reason = Some(reason);
            self.input = Vec::new();
        }
    }

    /// After any work: write what is pending, move a closing connection on,
    /// and arm the write-stall timer while output waits.
    fn flush_and_advance(&mut self, next: Next, shared: &mut Shared) -> Next {
        if next == Next::Close {
            return next;
        }
        // A closing connection's last line is queued: it stops counting as
        // a client before the write below can deliver that line.
        if self.state == State::Closing {
            self.stop_counting_as_client(shared);
        }
        if let Err(reason) = self.flush(shared) {
            return self.fail(reason);
        }
        let pending = self.pending_output();
        if self.output_waiting() {
            self.arm_write_timer(shared);
        }
        match self.state {
            State::Closing if pending == 0 => {
                // Over TLS the session ends with close_notify, written like
                // any output before the write side is shut.
                self.transport.queue_close();
                if let Err(reason) = self.flush(shared) {
                    return self.fail(reason);
                }
                if self.transport.has_unsent() {
                    // The writable edge brings us back here.
                    self.arm_write_timer(shared);
                    return Next::Wait;
                }
                self.linger(shared)
            }
            // Paused, yet the socket took enough at once: no writable edge
            // may come to wake us, so come back by ourselves.
            State::Paused | State::Draining if self.may_resume(shared) => Next::Again,
            _ => next,
        }
    }

    /// Every last byte is written. Shut our writing side (the peer reads
    /// EOF after our last line), then read and discard what the peer still
    /// sends, for a bounded time: closing a socket with unread input makes
    /// the kernel answer with a reset, which can wipe our last line from the
    /// peer's receive buffer before it reads it.
    fn linger(&mut self, shared: &mut Shared) -> Next {
        // It stopped counting as a client before its last line was written
        // (`flush_and_advance`). Its descriptor still counts against the
        // process's budget: the loop keeps the number of lingering sockets
        // bounded through `shared.lingering`.
        let _ = self.stream.shutdown(Shutdown::Write);
        if self.peer_eof {
            // The peer already closed its side: nothing more can arrive.
            return Next::Close;
        }
        self.state = State::Lingering;
        shared.lingering.push_back((self.key, self.id));
        self.schedule(shared, TimerKind::Linger, shared.now + shared.limits.linger);
        // Input may already be waiting, and its edge came earlier: drain now.
        self.discard_input(shared)
    }

    /// Reads and drops input while lingering, until EOF or WouldBlock.
    fn discard_input(&mut self, shared: &mut Shared) -> Next {
        for _ in 0..LINGER_READS_PER_TURN {
            match self.stream.read(shared.read_buf) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    shared.stats.add_bytes_in(n as u64);
                    self.totals.bytes_in += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Again
    }

    /// Writes pending output until it is all sent or the socket is full.
    /// Over TLS, "all sent" includes the records the session holds
    /// (handshake, alerts, close_notify).
    fn flush(&mut self, shared: &mut Shared) -> Result<(), CloseReason> {
        // After a WouldBlock, another write would only fail the same way:
        // wait for the writable edge (`writable_again`) instead of spending
        // a system call to hear it again.
        while (self.written < self.output.len() || self.transport.has_unsent())
            && !self.write_blocked
        {
            let mut wire = Wire::default();
            let written =
                self.transport
                    .write(&mut self.stream, &self.output[self.written..], &mut wire);
            self.count_wire(wire, shared);
            match written {
                // Zero bytes taken from a non-empty buffer: the socket will
                // never take more. Treat it as an error rather than spin.
                Ok(0) if self.written < self.output.len() => {
                    return Err(CloseReason::Io(io::ErrorKind::WriteZero))
                }
                // A partial write is normal: keep the rest for later.
                Ok(n) => self.written += n,
                // The socket's send buffer is full. The rest waits for the
                // writable edge that comes when the peer has taken bytes
                // (interest registered once, at accept: no epoll_ctl here).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CloseReason::Io(e.kind())),
            }
        }
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// Output the socket has not taken yet: pending plaintext, or TLS
    /// records the session holds.
    fn output_waiting(&self) -> bool {
        self.pending_output() > 0 || self.transport.has_unsent()
    }

    fn on_idle_timer(&mut self, shared: &mut Shared) -> Next {
        let Some(idle) = shared.limits.idle_timeout else {
            return Next::Wait;
        };
        if !matches!(self.state, State::Open | State::Paused) {
            // A closing connection is bounded by its write and linger timers.
            return Next::Wait;
        }
        if self.pending_output() > 0 || self.state == State::Paused {
            // Still being sent output: not idle. The write timer watches it.
            self.schedule(shared, TimerKind::Idle, shared.now + idle);
            return Next::Wait;
        }
        let due = self.last_request + idle;
        if due > shared.now {
            // A request came since this entry was pushed: lazy re-arm.
            self.schedule(shared, TimerKind::Idle, due);
            return Next::Wait;
        }
        self.with_reply_buffer(shared, |conn, shared| {
            conn.close_after(protocol::IDLE_TIMEOUT, CloseReason::IdleTimeout, shared)
        })
    }

    /// The write-stall check. `--write-timeout` means the peer took no
    /// bytes, so the clock must follow the peer, not our own writes: after
    /// a WouldBlock the writable edge comes only once the kernel's send
    /// buffer (megabytes, on loopback) has drained by a large share, and a
    /// slow but live reader may take longer than the timeout to get there.
    /// So each check asks the kernel how many of the bytes we wrote are
    /// still unacknowledged; if that count has moved, the peer is alive.
    fn on_write_timer(&mut self, shared: &mut Shared) -> Next {
        self.write_timer_armed = false;
        let Some(limit) = shared.limits.write_timeout else {
            return Next::Wait;
        };
        if !self.output_waiting() || self.state == State::Closed {
            return Next::Wait;
        }
        if let Ok(unsent) = sys::unsent_bytes(self.stream.as_raw_fd()) {
            let acknowledged = self.totals.bytes_out.saturating_sub(unsent as u64);
            if acknowledged > self.acknowledged {
                self.acknowledged = acknowledged;
                self.last_progress = shared.now;
            }
        }
        let due = self.last_progress + limit;
        if due <= shared.now {
            return self.fail(CloseReason::WriteTimeout);
        }
        // Check again a quarter of the timeout from now (or at the
        // deadline, if sooner): a peer that stops is then closed between
        // one and one and a quarter timeouts after the last byte it took.
        let next_check = shared.now + stall_check_interval(limit);
        self.write_timer_armed = true;
        self.schedule(shared, TimerKind::WriteStall, due.min(next_check));
        Next::Wait
    }

    fn arm_write_timer(&mut self, shared: &mut Shared) {
        if let Some(limit) = shared.limits.write_timeout {
            if !self.write_timer_armed {
                self.write_timer_armed = true;
                // What the peer has acknowledged so far is the baseline:
                // only bytes taken from now on count as progress.
                if let Ok(unsent) = sys::unsent_bytes(self.stream.as_raw_fd()) {
                    self.acknowledged = self.totals.bytes_out.saturating_sub(unsent as u64);
                }
                let at = (self.last_progress + limit).min(shared.now + stall_check_interval(limit));
                self.schedule(shared, TimerKind::WriteStall, at.max(shared.now));
            }
        }
    }

    fn schedule(&self, shared: &mut Shared, kind: TimerKind, at: Instant) {
        shared.timers.schedule(Timer {
            at,
            conn_id: self.id,
            key: self.key,
            kind,
        });
    }

    /// Records why it must close now, without a further line.
    fn fail(&mut self, reason: CloseReason) -> Next {
        self.reason.get_or_insert(reason);
        Next::Close
    }
}

/// How often a connection with output pending asks the kernel whether the
/// peer took bytes: a quarter of `--write-timeout`, at least 10 ms.
fn stall_check_interval(limit: Duration) -> Duration {
    (limit / 4).max(Duration::from_millis(10))
}

/// Makes room for `additional` more bytes in `buf`, growing by doubling as
/// `Vec` does, but never past `limit` unless the bytes themselves need more.
fn reserve_within(buf: &mut Vec<u8>, additional: usize, limit: usize) {
    let needed = buf.len() + additional;
    if needed > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).min(limit).max(needed);
        buf.reserve_exact(target - buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_within_doubles_up_to_the_limit_only() {
        let mut buf = Vec::with_capacity(100);
        buf.extend_from_slice(&[0; 100]);
        reserve_within(&mut buf, 1, 150);
        assert_eq!(buf.capacity(), 150);
        buf.extend_from_slice(&[0; 50]);
        // Past the limit only by what is really needed.
        reserve_within(&mut buf, 10, 150);
        assert_eq!(buf.capacity(), 160);
    }

    #[test]
    fn memory_pressure_has_hysteresis() {
        let cap = Arc::new(MemoryCap::default());
        let mut p = MemoryPressure::new(cap.clone());
        p.update(1000, 1000);
        assert!(!p.on());
        p.update(1001, 1000);
        assert!(p.on());
        // Another loop sees the same pressure.
        let other = MemoryPressure::new(cap.clone());
        assert!(other.on());
        p.update(800, 1000);
        assert!(p.on(), "stays on until below three quarters");
        p.update(749, 1000);
        assert!(!p.on() && !other.on());
        assert!(p.lifted);
        assert_eq!(cap.lifts(), 1);
    }
}
