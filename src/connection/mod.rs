//! One socket the loop holds, whatever it serves: a client of the line
//! protocol, a connection being turned away, a connection waiting for its
//! PROXY header or TLS handshake, a lingering one, a metrics connection.
//! Every one is a slab entry with a state, a deadline and a cap, served by
//! the same buffers, read budget, write loop and careful close: a new kind
//! of socket reuses these parts and never grows a loop of its own.
//!
//! The event loop ([`crate::server`]) owns every `Connection` in a slab and
//! calls [`Connection::drive`] when the socket is ready, and
//! [`Connection::on_deadline`] when its deadline comes. Each call returns a
//! [`Next`] that tells the loop what to do with it afterwards.
//!
//! The parts, one module each:
//!
//! * `opening`: from the accept to the first line: the PROXY header, the
//!   loop's admission, the TLS handshake, then `READY` or the refusal's
//!   line.
//! * `input`: the read budget, framing and answering (request lines for a
//!   client, request heads for a metrics connection), backpressure.
//! * `output`: the consume-as-you-write output buffer, the loop that writes
//!   it, and the write-stall clock that watches the peer take it.
//! * `closing`: the last line, close_notify, the lingering close.
//!
//! Life of a connection:
//!
//! ```text
//!  accept ──(proxy)──► AwaitingHeader ──(no valid header, deadline)──► Closed
//!    │                       │ header read: the client's address
//!    │                       ▼
//!    │                   Admitting: the loop admits it (Client) or turns it
//!    │                       │ away (Refused) under that address
//!    │                       ▼
//!  accept ──(TLS)──► Handshaking ──(deadline, failure)──► Closed
//!    │                   │ handshake done: READY, or the refusal's line
//!    │ (plain TCP)       ▼
//!    └─────────────────► Open ◄──(output drained, process below 3/4)──┐
//!                         │ ──(output over --max-output, or        Paused
//!                         │     the process over --max-memory)──►    │
//!                         │                                          │ graceful shutdown
//!                         │ QUIT, line too long, idle,               ▼
//!                         │ shutdown, peer EOF, refusal      Draining (held lines
//!                         ▼                                  answered, no reads)
//!                      Closing ◄─────────────────────────────────────┘
//!                         │ all output (and TLS close_notify) written,
//!                         │ write side shut
//!                         ▼
//!                     Lingering ──(peer EOF, deadline, or evicted)──► Closed
//!
//!  Any state ──► Closed at once on a reset or a write stall. Closing goes
//!  straight to Closed once all output is written if the peer had already
//!  sent its EOF (nothing to drain). A connection being turned away is
//!  closed, whatever its state, REFUSAL_DEADLINE after its accept.
//! ```
//!
//! # Memory, and why it cannot grow with history
//!
//! An idle connection owns no buffer. Reads land in the loop's one shared
//! read buffer; responses are written into the loop's spare output buffer,
//! lent to the connection while it runs, and go straight to the socket. A
//! connection keeps bytes of its own only while it holds an unfinished line,
//! lines held back by backpressure, output the socket has not taken, or
//! (TLS) an unfinished handshake.
//!
//! What it holds is bounded by what is pending *now*, never by what it sent
//! over its life:
//! - input: at most `--max-line + 1` bytes of an unfinished line plus one
//!   read ([`input_capacity_bound`]);
//! - output: reading pauses once more than `--max-output` is pending, so at
//!   most `--max-output` plus one response line is pending; the buffer
//!   *consumes what it writes* ([`Output`]) and never grows past
//!   [`output_capacity_bound`].
//!
//! Every byte held is also counted process-wide (`STATS buffered`), and the
//! whole process is capped by `--max-memory` ([`MemoryPressure`]).

mod closing;
mod input;
mod opening;
mod output;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::guard::Guards;
pub use crate::limits::{
    input_capacity_bound, longest_response, output_capacity_bound, Limits, MemoryPressure,
    SPARE_OUTPUT_KEEP,
};
use crate::limits::{METRICS_KEEP_ALIVE, REFUSAL_DEADLINE};
use crate::metrics::Page;
use crate::proxy::HeaderError;
use crate::queue::{Link, Linked};
use crate::service::{Notice, Service};
use crate::stats::{Client, Stats};
use crate::summaries::Kind;
use crate::timer::Timers;
use crate::token::AuthToken;
use crate::transport::{Transport, Wire};
pub use output::{Held, Output, Spare};

/// What the loop lends a connection for one call: this turn's time, the
/// limits, the counters, the deadlines and the loop's buffers. Built anew
/// for each call (`EventLoop::lend`); nothing in it is the connection's own.
pub struct Lent<'a, S: Service> {
    /// The protocol the connection speaks, shared by every loop.
    pub service: &'a S,
    /// The time of this loop turn (read once per wake-up, not per request).
    pub now: Instant,
    /// The connection's slab key: where its deadline is kept.
    pub key: usize,
    /// The limits from the command line.
    pub limits: &'a Limits,
    /// Server-wide counters.
    pub stats: &'a Stats,
    /// The `--auth-file` token as it is now (SIGHUP may replace it), `None`
    /// when authentication is off.
    pub token: Option<&'a AuthToken>,
    /// The per-address rules of the process.
    pub guards: &'a Guards,
    /// Every socket's deadline.
    pub timers: &'a mut Timers,
    /// The loop's one read buffer. Its size is the read budget of one
    /// connection per call.
    pub read_buf: &'a mut [u8],
    /// The loop's spare buffers, lent to a connection that holds nothing.
    pub spare: &'a mut Spare,
    /// The process-wide memory cap.
    pub memory: &'a mut MemoryPressure,
    /// What the metrics endpoint renders (loop 0 only; `None` elsewhere).
    pub metrics: Option<&'a mut Page>,
}

/// What a socket is to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted on a `proxy` listener: it counts as nothing until its
    /// PROXY header names the client and the loop admits it or not.
    Undecided,
    /// A client of the line protocol.
    Client,
    /// Being turned away: it gets its refusal's line instead of `READY`,
    /// then the careful close, all within [`REFUSAL_DEADLINE`] of its
    /// accept; it never counts as a client.
    Refused(Refusal),
    /// A connection to the metrics endpoint (HTTP/1.1); never a client.
    Metrics,
}

/// Where a connection is in its life.
// An explicit tag: `state == Open`, asked before every request line, is
// one byte compared. Left to the compiler, the tag would hide in the
// spare values of `paused` and cost a few instructions more per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// A `proxy` listener waits for the PROXY header, before anything else
    /// (the TLS handshake included). The header stays in the socket until
    /// it is whole, and only its own bytes are then read.
    AwaitingHeader,
    /// Its PROXY header is read and `peer` is the client's address: the
    /// loop decides at once, before its next event, whether to admit it
    /// under that address ([`Connection::admitted`]).
    Admitting,
    /// A TLS handshake is going on: nothing is read as requests yet. When
    /// it finishes, the connection gets its first line. `paused`: the
    /// process is over `--max-memory`, and it reads nothing more of the
    /// handshake until the total falls.
    Handshaking {
        /// Over `--max-memory`: the handshake waits.
        paused: bool,
    },
    /// Reading requests and answering them.
    Open,
    /// Open, but not reading: its pending output passed `--max-output`, or
    /// the process is over `--max-memory` and this connection has output
    /// pending (a metrics connection: its answer is not yet all written).
    /// Lines already read wait in its input ("held lines").
    Paused,
    /// Graceful shutdown reached it while paused: its held lines are still
    /// due, and are answered as its output drains; nothing more is read.
    /// Then comes the last line.
    Draining,
    /// Its last line is queued (close after reply): nothing more is read or
    /// executed; the output is flushed.
    Closing,
    /// All output written and the write side shut; unread input is read and
    /// discarded until the peer closes or the deadline passes.
    Lingering,
    /// Finished; the loop removes it after the current batch of events.
    Closed,
}

/// Why a connection closed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The service said the line it answered was the last (`QUIT`, or an
    /// `AUTH` failure too many); why, in its words, is
    /// `Service::close_reason` of the connection's session.
    Service,
    /// A request line passed `--max-line`.
    LineTooLong,
    /// No complete request for `--idle-timeout` (a metrics connection: no
    /// request for its keep-alive time).
    IdleTimeout,
    /// The peer took no bytes for `--write-timeout` while output was pending.
    WriteTimeout,
    /// Graceful shutdown.
    Shutdown,
    /// Turned away: `--max-connections` were open.
    Busy,
    /// Turned away: `--max-connections-per-ip` were open from its address.
    TooManyFromAddress,
    /// Turned away: its address opened `--max-connection-rate-per-ip`
    /// connections within the last second.
    ConnectingTooFast,
    /// Turned away, and still there when its refusal's time was up.
    RefusalDeadline,
    /// Its last `AUTH` attempt was one failure too many (or its address
    /// is refused for its failures).
    TooManyAuthFailures,
    /// The client shut its writing side (EOF) and was answered.
    PeerClosed,
    /// Lingering after its last line, it was closed early: the server
    /// needed its descriptor, or too many connections were lingering.
    LingerCutShort,
    /// Waiting for its PROXY header, it was closed to make room for a
    /// newcomer: it had waited longest while the loop held its cap of them.
    WaitCutShort,
    /// A metrics connection idle between requests, closed to make room for
    /// a newcomer while the endpoint held its cap of connections.
    IdleCutShort,
    /// The TLS handshake (or PROXY header) did not finish within
    /// `--handshake-timeout`.
    HandshakeTimeout,
    /// A metrics request head did not finish in time.
    RequestTimeout,
    /// The TLS session failed: garbage instead of a ClientHello, a failed
    /// handshake, bad records.
    TlsFailed,
    /// A `proxy` listener got no valid PROXY header.
    ProxyHeader(HeaderError),
    /// A metrics request that ends the connection: malformed, too large,
    /// or with a body.
    BadRequest,
    /// A socket error: reset, broken pipe, keepalive timeout...
    Io(io::ErrorKind),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Service => f.write_str(crate::service::CLOSED_BY_THE_SERVICE),
            CloseReason::LineTooLong => f.write_str("request line too long"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::WriteTimeout => f.write_str("write timeout: peer took no bytes"),
            CloseReason::Shutdown => f.write_str("server shutting down"),
            CloseReason::Busy => f.write_str("server busy"),
            CloseReason::TooManyFromAddress => f.write_str("too many connections from its address"),
            CloseReason::ConnectingTooFast => f.write_str("connecting too fast"),
            CloseReason::RefusalDeadline => f.write_str("turned away, and its time was up"),
            CloseReason::TooManyAuthFailures => f.write_str("too many auth failures"),
            CloseReason::PeerClosed => f.write_str("client closed its side"),
            CloseReason::LingerCutShort => f.write_str("lingering close cut short"),
            CloseReason::WaitCutShort => {
                f.write_str("closed while waiting for its PROXY header, to make room")
            }
            CloseReason::IdleCutShort => f.write_str("idle, closed to make room"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseReason::RequestTimeout => f.write_str("request head not finished in time"),
            CloseReason::TlsFailed => f.write_str("TLS failed"),
            CloseReason::ProxyHeader(e) => write!(f, "{e}"),
            CloseReason::BadRequest => f.write_str("bad request"),
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
    /// Its address opened `--max-connection-rate-per-ip` connections
    /// within the last second.
    TooFast,
    /// Its address failed `AUTH` `--max-auth-failures-per-ip` times.
    AuthFailures,
}

impl Refusal {
    /// What it is told instead of the greeting (the service says in which
    /// words: [`Service::notice`]).
    pub fn notice(self) -> Notice {
        match self {
            Refusal::Busy => Notice::Busy,
            Refusal::TooManyFromAddress => Notice::TooManyFromAddress,
            Refusal::TooFast => Notice::ConnectingTooFast,
            Refusal::AuthFailures => Notice::TooManyAuthFailures,
        }
    }

    /// Why it closed, for the log.
    pub fn reason(self) -> CloseReason {
        match self {
            Refusal::Busy => CloseReason::Busy,
            Refusal::TooManyFromAddress => CloseReason::TooManyFromAddress,
            Refusal::TooFast => CloseReason::ConnectingTooFast,
            Refusal::AuthFailures => CloseReason::TooManyAuthFailures,
        }
    }

    /// In a few words, for the debug lines: `accepted PEER (busy: turned
    /// away)`.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::TooManyFromAddress => "too many from its address",
            Refusal::TooFast => "connecting too fast",
            Refusal::AuthFailures => "too many auth failures from its address",
        }
    }

    /// The summary lines' kind it counts in.
    pub fn kind(self) -> Kind {
        match self {
            Refusal::Busy => Kind::Busy,
            Refusal::TooManyFromAddress => Kind::TooManyFromAddress,
            Refusal::TooFast => Kind::ConnectingTooFast,
            Refusal::AuthFailures => Kind::AuthFailures,
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
    /// Requests answered.
    pub commands: u64,
}

/// A socket the loop has just accepted, and what it is to be.
pub struct Accepted {
    /// The socket, non-blocking, not yet registered.
    pub stream: TcpStream,
    /// Plain TCP, or a TLS session not yet shaken hands.
    pub transport: Transport,
    /// The socket's peer (on a `proxy` listener, the balancer).
    pub peer: SocketAddr,
    /// What admission made of it: a client, or one to turn away.
    pub role: Role,
    /// It came on a `proxy` listener: a PROXY header comes first.
    pub proxied: bool,
    /// The index of the listener that accepted it (the same in every loop).
    pub listener: u16,
}

/// Yes-or-no facts about a connection that change as it runs.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    /// The peer shut its writing side (a read returned 0, or close_notify).
    peer_eof: bool,
    /// An event said the peer closed or failed (a hint, to be confirmed by
    /// a read): a short read no longer means "drained", read on to the EOF.
    hangup_hinted: bool,
    /// On the loop's ready list (to run again before the next poll).
    queued: bool,
    /// It counts in `STATS paused` now.
    counted_paused: bool,
    /// It counts in `connections`, `--max-connections` and its address's
    /// count (an admitted client, until its last line is queued).
    counted_client: bool,
}

/// One socket the loop holds (see the module documentation), speaking the
/// line protocol `S`.
pub struct Connection<S: Service> {
    stream: TcpStream,
    /// Plain TCP, or a TLS session around the same socket.
    transport: Transport,
    /// The peer's address: the client's, as its PROXY header gave it on a
    /// `proxy` listener.
    peer: SocketAddr,
    /// Behind a balancer: the socket's own peer (the balancer), once the
    /// PROXY header has named another client. Out of line: most
    /// connections have none.
    via: Option<Box<SocketAddr>>,
    /// The index of the listener that accepted it.
    listener: u16,
    role: Role,
    state: State,
    /// Set once, when the connection starts to close.
    reason: Option<CloseReason>,
    /// What the protocol remembers of it between lines.
    session: S::Session,
    /// What it holds between calls (input not yet executed, output not yet
    /// sent), out of line; `None` when it holds nothing, as an idle
    /// connection does.
    held: Option<Box<Held>>,
    /// The last complete request (the idle clock counts from here; on a
    /// metrics connection, the start of the current wait).
    last_request: Instant,
    /// What this connection last added to `STATS buffered`.
    counted_bytes: u64,
    totals: Totals,
    flags: Flags,
    /// Its place in the loop's queue of its kind, if any.
    link: Link,
}

impl<S: Service> Linked for Connection<S> {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }
}

impl<S: Service> Connection<S> {
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
        self.via.as_deref().copied()
    }

    /// What it is to the server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where it is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why it closed (or is closing), if it is.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    /// What the protocol remembers of it.
    pub fn session(&self) -> &S::Session {
        &self.session
    }

    /// The loop's queue it is in, if any.
    pub fn queue(&self) -> Option<crate::queue::QueueId> {
        self.link.queue()
    }

    /// Whether it counts as an open client connection.
    pub fn counts_as_client(&self) -> bool {
        self.flags.counted_client
    }

    /// Its own counters.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Bytes of output the socket has not taken yet.
    pub fn pending_output(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.output.pending())
    }

    /// Bytes of input held: an unfinished line, or lines held back.
    pub fn buffered_input(&self) -> usize {
        self.held.as_ref().map_or(0, |held| held.input.len())
    }

    /// The memory its buffers really hold: (input capacity, output
    /// capacity), in bytes. See [`input_capacity_bound`] and
    /// [`output_capacity_bound`].
    pub fn buffer_capacities(&self) -> (usize, usize) {
        self.held.as_ref().map_or((0, 0), |held| held.capacities())
    }

    /// Whether it is not reading now: paused by backpressure or by the
    /// process's memory cap. The loop wakes such connections when memory
    /// pressure lifts: no socket event will come for what they hold.
    pub fn is_paused(&self) -> bool {
        matches!(
            self.state,
            State::Paused | State::Draining | State::Handshaking { paused: true }
        )
    }

    /// A metrics connection between requests: nothing held, nothing to
    /// write. The endpoint may close it to make room.
    pub fn is_idle_metrics(&self) -> bool {
        self.role == Role::Metrics
            && self.state == State::Open
            && self.held.is_none()
            && !self.transport.has_unsent()
    }

    /// The event loop saw a writable edge: the socket took bytes, so the
    /// next flush may write again.
    pub fn writable_again(&mut self) {
        if let Some(held) = self.held.as_mut() {
            held.output.writable_again();
        }
    }

    /// Marks it as on the loop's ready list; false if it already was.
    pub fn mark_queued(&mut self) -> bool {
        !std::mem::replace(&mut self.flags.queued, true)
    }

    /// Takes it off the ready list (the loop is about to run it); false if
    /// it was not on it (the list may name a slot that was reused since).
    pub fn unqueue(&mut self) -> bool {
        std::mem::replace(&mut self.flags.queued, false)
    }

    /// The socket is ready (or may be: events can be spurious, so we just
    /// try and see). `readable` says whether to read; `hangup` that the
    /// event carried a closed or error flag (a hint only).
    pub fn drive(&mut self, readable: bool, hangup: bool, lent: &mut Lent<S>) -> Next {
        self.flags.hangup_hinted |= hangup;
        self.with_held(lent, |conn, held, lent| match conn.state {
            State::AwaitingHeader => conn.read_proxy_header(held, lent),
            State::Handshaking { .. } => {
                let next = conn.advance_handshake(held, lent);
                conn.flush_and_advance(next, held, lent)
            }
            State::Open | State::Paused | State::Draining => {
                let next = conn.serve(readable, held, lent);
                conn.flush_and_advance(next, held, lent)
            }
            // Whatever the event, a closing connection only flushes.
            State::Closing => conn.flush_and_advance(Next::Wait, held, lent),
            State::Lingering if readable => conn.discard_input(lent),
            // Admitted by the loop before any further event.
            State::Lingering | State::Closed | State::Admitting => Next::Wait,
        })
    }

    /// Its deadline came (the loop took it off the heap): whatever is due
    /// is done, and the next deadline set.
    pub fn on_deadline(&mut self, lent: &mut Lent<S>) -> Next {
        if matches!(self.role, Role::Refused(_)) && lent.now >= self.refusal_deadline() {
            return self.fail(CloseReason::RefusalDeadline);
        }
        match self.state {
            State::AwaitingHeader | State::Admitting | State::Handshaking { .. } => {
                if self
                    .opening_deadline(lent.limits)
                    .is_some_and(|at| at <= lent.now)
                {
                    // Closed without a line: there is no session to carry one.
                    return self.fail(CloseReason::HandshakeTimeout);
                }
                self.with_held(lent, |conn, held, lent| conn.set_deadline(held, lent));
                Next::Wait
            }
            State::Open | State::Paused | State::Draining | State::Closing => {
                self.with_held(lent, |conn, held, lent| {
                    let next = conn.check_clocks(held, lent);
                    if next != Next::Close
                        && !matches!(conn.state, State::Lingering | State::Closed)
                    {
                        conn.set_deadline(held, lent);
                    }
                    next
                })
            }
            // Its one deadline, set when it began to linger: the peer had
            // its time to close. Dropping the socket now may send a reset,
            // but every reply was sent well before.
            State::Lingering => Next::Close,
            State::Closed => Next::Wait,
        }
    }

    /// Graceful shutdown: after every response already due, one last line.
    /// An open connection holds at most an unfinished line (not due), so it
    /// gets the line now. A paused one holds lines already read: they are
    /// due, and are answered as its output drains, within the same limits
    /// as ever (`Draining`). Bytes still in the socket are not read.
    pub fn shut_down(&mut self, lent: &mut Lent<S>) -> Next {
        if self.role == Role::Metrics {
            return self.with_held(lent, |conn, held, lent| conn.shut_down_metrics(held, lent));
        }
        match self.state {
            // No session yet to carry a line: just close.
            State::Handshaking { .. } | State::AwaitingHeader | State::Admitting => {
                self.fail(CloseReason::Shutdown)
            }
            State::Open => self.with_held(lent, |conn, held, lent| {
                let line = lent.service.notice(Notice::ShuttingDown);
                conn.close_after(line, CloseReason::Shutdown, held, lent)
            }),
            State::Paused => {
                self.state = State::Draining;
                self.with_held(lent, |conn, held, lent| {
                    let next = conn.serve(false, held, lent);
                    conn.flush_and_advance(next, held, lent)
                })
            }
            _ => Next::Wait,
        }
    }

    /// Closed early by the loop, which needs room: a lingering connection
    /// (its replies were all written long before; only the courtesy drain
    /// is cut short), one waiting for its PROXY header, or an idle metrics
    /// connection. Anything else is left alone.
    pub fn cut_short(&mut self) -> Next {
        let reason = match self.state {
            State::Lingering => CloseReason::LingerCutShort,
            State::AwaitingHeader => CloseReason::WaitCutShort,
            _ if self.is_idle_metrics() => CloseReason::IdleCutShort,
            _ => return Next::Wait,
        };
        self.reason = Some(reason);
        Next::Close
    }

    /// Marks it finished; the loop calls this on its one close path. Its
    /// bytes stop counting in `STATS buffered` now (they are freed when the
    /// loop drops it at the end of the batch), and its deadline is gone.
    pub fn mark_closed(&mut self, lent: &mut Lent<S>) {
        self.state = State::Closed;
        lent.timers.cancel(lent.key);
        lent.stats.buffered_changed(self.counted_bytes, 0);
        self.counted_bytes = 0;
        if self.flags.counted_paused {
            lent.stats.paused_changed(false);
            self.flags.counted_paused = false;
        }
    }

    /// The client as the admission counts know it: its address (behind a
    /// balancer, the one its header carried) and its listener.
    pub fn client(&self) -> Client {
        Client {
            ip: self.peer.ip(),
            listener: usize::from(self.listener),
        }
    }

    /// Runs `work` with what the connection holds in hand: its own `Held`,
    /// or, if it holds nothing, the loop's spare, lent for the call (see
    /// [`Spare`]). Afterwards the process-wide accounting is brought up to
    /// date, and the connection keeps only what it must.
    fn with_held<R>(
        &mut self,
        lent: &mut Lent<S>,
        work: impl FnOnce(&mut Self, &mut Held, &mut Lent<S>) -> R,
    ) -> R {
        let (mut held, lease) = lent.spare.lend(self.held.take());
        let result = work(self, &mut held, lent);
        self.update_accounting(&held, lent);
        self.held = lent.spare.give_back(held, lease);
        result
    }

    /// Brings `STATS buffered` and `paused` up to date with what this
    /// connection holds now, and the process-wide memory pressure with them.
    fn update_accounting(&mut self, held: &Held, lent: &mut Lent<S>) {
        if self.state == State::Closed {
            return;
        }
        let holding = self.holding(held);
        lent.stats.buffered_changed(self.counted_bytes, holding);
        self.counted_bytes = holding;
        let paused = self.is_paused();
        if paused != self.flags.counted_paused {
            lent.stats.paused_changed(paused);
            self.flags.counted_paused = paused;
        }
        lent.memory
            .update(lent.stats.buffered(), lent.limits.max_memory);
    }

    /// Everything it holds now: input, pending output, and what its TLS
    /// session keeps of an unfinished handshake.
    fn holding(&self, held: &Held) -> u64 {
        (held.input.len() + held.output.pending()) as u64 + self.transport.held_by_session()
    }

    /// Whether the process is over `--max-memory`, counting what this
    /// connection holds right now (the shared total is brought up to date
    /// only after each call, and one read can cross the cap).
    fn memory_over(&self, held: &Held, lent: &Lent<S>) -> bool {
        lent.memory.on()
            || self.buffered_by_others(lent) + self.holding(held) > lent.limits.max_memory as u64
    }

    /// What every other connection holds (`STATS buffered` less this one's
    /// last count): the rest of the process's total while this one works.
    fn buffered_by_others(&self, lent: &Lent<S>) -> u64 {
        lent.stats.buffered() - self.counted_bytes
    }

    /// Adds what crossed the socket to the server's and the connection's
    /// counters; bytes written are the peer's progress.
    fn count_wire(&mut self, wire: Wire, held: &mut Held, lent: &mut Lent<S>) {
        self.totals.bytes_in += wire.read;
        self.totals.bytes_out += wire.written;
        if self.is_client_traffic() {
            lent.stats.add_bytes_in(wire.read);
            lent.stats.add_bytes_out(wire.written);
        }
        if wire.written > 0 {
            held.output.progress(lent.now);
        }
    }

    /// Whether its bytes count in `STATS bytes_in` and `bytes_out` (bytes
    /// read from and written to clients): a metrics connection's do not.
    fn is_client_traffic(&self) -> bool {
        self.role != Role::Metrics
    }

    /// Output the socket has not taken yet: pending plaintext, or TLS
    /// records the session holds.
    fn output_waiting(&self, held: &Held) -> bool {
        held.output.pending() > 0 || self.transport.has_unsent()
    }

    /// When a connection being turned away is closed at the latest.
    fn refusal_deadline(&self) -> Instant {
        self.totals.opened + REFUSAL_DEADLINE
    }

    /// When its opening must be over: the PROXY header always has a limit
    /// ([`Limits::opening_timeout`]); a TLS handshake has
    /// `--handshake-timeout`, counted from the accept (after a header too:
    /// they share it), or none when that is 0. A metrics connection's
    /// handshake has the opening timeout, like its request heads.
    fn opening_deadline(&self, limits: &Limits) -> Option<Instant> {
        let limit = match self.state {
            State::AwaitingHeader | State::Admitting => Some(limits.opening_timeout()),
            State::Handshaking { .. } if self.role == Role::Metrics => {
                Some(limits.opening_timeout())
            }
            State::Handshaking { .. } => limits.handshake_timeout,
            _ => None,
        };
        limit.map(|limit| self.totals.opened + limit)
    }

    /// Sets its one deadline for the state it is in now: the end of its
    /// opening, or the next look at its idle and write-stall clocks, and
    /// for a connection being turned away never later than its refusal's
    /// end. (Lingering sets its own, in `linger`.)
    fn set_deadline(&mut self, held: &Held, lent: &mut Lent<S>) {
        let own = match self.state {
            State::AwaitingHeader | State::Admitting | State::Handshaking { .. } => {
                self.opening_deadline(lent.limits)
            }
            State::Open | State::Paused | State::Draining | State::Closing => earliest(
                self.idle_check(held, lent),
                held.output.stall_check(lent.now, self.stall_limit(lent)),
            ),
            State::Lingering | State::Closed => return,
        };
        let refusal = matches!(self.role, Role::Refused(_)).then(|| self.refusal_deadline());
        match earliest(own, refusal) {
            Some(at) => lent.timers.set(lent.key, at),
            None => lent.timers.cancel(lent.key),
        }
    }

    /// When its idle clock must next be looked at: a client with no request
    /// for `--idle-timeout`; a metrics connection with no request for its
    /// keep-alive time, or a request head unfinished for the opening
    /// timeout. While output is being sent it is not idle: the clock waits.
    fn idle_check(&self, held: &Held, lent: &Lent<S>) -> Option<Instant> {
        let limit = self.idle_limit(held, lent.limits)?;
        if self.state == State::Open && !self.output_waiting(held) {
            Some(self.last_request + limit)
        } else if matches!(self.state, State::Open | State::Paused) {
            Some(lent.now + limit)
        } else {
            None
        }
    }

    fn idle_limit(&self, held: &Held, limits: &Limits) -> Option<Duration> {
        match self.role {
            Role::Metrics if self.between_requests(held) => Some(METRICS_KEEP_ALIVE),
            Role::Metrics => Some(limits.opening_timeout()),
            _ => limits.idle_timeout,
        }
    }

    /// A metrics connection that has answered a request and holds nothing
    /// of the next: it waits for the next scrape (the first request, and a
    /// head begun, have the opening timeout instead).
    fn between_requests(&self, held: &Held) -> bool {
        held.input.is_empty() && self.totals.commands > 0
    }

    /// How long the peer may take no bytes while output waits: a client's
    /// `--write-timeout` (none when 0); a metrics connection always has a
    /// limit, its keep-alive time when that option is 0.
    fn stall_limit(&self, lent: &Lent<S>) -> Option<Duration> {
        match self.role {
            Role::Metrics => Some(lent.limits.write_timeout.unwrap_or(METRICS_KEEP_ALIVE)),
            _ => lent.limits.write_timeout,
        }
    }

    /// The deadline came while serving or closing: an idle connection is
    /// closed with its line, a stalled one without.
    fn check_clocks(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        if self.output_waiting(held) {
            if let Some(limit) = self.stall_limit(lent) {
                let bytes_out = self.totals.bytes_out;
                if held
                    .output
                    .stalled(&self.stream, bytes_out, lent.now, limit)
                {
                    return self.fail(CloseReason::WriteTimeout);
                }
            }
        }
        let Some(limit) = self.idle_limit(held, lent.limits) else {
            return Next::Wait;
        };
        let idle = self.state == State::Open
            && !self.output_waiting(held)
            && self.last_request + limit <= lent.now;
        if !idle {
            return Next::Wait;
        }
        match self.role {
            Role::Metrics if self.between_requests(held) => self.fail(CloseReason::IdleTimeout),
            Role::Metrics => self.fail(CloseReason::RequestTimeout),
            _ => {
                let line = lent.service.notice(Notice::IdleTimeout);
                self.close_after(line, CloseReason::IdleTimeout, held, lent)
            }
        }
    }

    /// Records why it must close now, without a further line.
    fn fail(&mut self, reason: CloseReason) -> Next {
        self.reason.get_or_insert(reason);
        Next::Close
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs is mostly this struct: keep it small
    /// (what only some connections need, a TLS session, a balancer's
    /// address, a write-stall clock, lives out of line).
    #[test]
    fn a_connection_entry_stays_small() {
        let size = std::mem::size_of::<Connection<crate::protocol::Loopline>>();
        eprintln!("Connection is {size} bytes");
        assert!(size <= 168, "Connection is {size} bytes");
    }
}
