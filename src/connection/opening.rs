//! From the accept to the first line: the PROXY header of a `proxy`
//! listener, the loop's admission under the client's address, the TLS
//! handshake, then `READY` (or the refusal's line, or for a metrics
//! connection nothing: HTTP clients speak first).
//!
//! Each step has the deadline `Connection::set_deadline` gives its state,
//! and a connection being turned away has its refusal's deadline through
//! all of them.

use std::io::{self, Read};
use std::time::Instant;

use super::{Accepted, CloseReason, Connection, Flags, Held, Lent, Next, Role, State, Totals};
use crate::limits::{longest_response, READ_BUFFER_SIZE};
use crate::proxy::{self, Parsed};
use crate::service::{Context, Service};
use crate::transport::{Handshake, HandshakeError, Wire};

impl<S: Service> Connection<S> {
    /// A newly accepted socket. Over plain TCP it gets its first line now
    /// (`READY`, or its refusal's line); over TLS, once the handshake has
    /// finished, so that the line travels inside the session like every
    /// other; on a `proxy` listener, the PROXY header comes first.
    pub fn start(accepted: Accepted, lent: &mut Lent<S>) -> (Connection<S>, Next) {
        let Accepted {
            stream,
            transport,
            peer,
            role,
            proxied,
            listener,
        } = accepted;
        let now = lent.now;
        let mut conn = Connection {
            stream,
            transport,
            peer,
            via: None,
            listener,
            role,
            state: State::Open,
            reason: None,
            session: lent.service.session(&Context::serving(
                lent.token,
                lent.stats,
                lent.now,
                peer.ip(),
                lent.guards,
            )),
            held: None,
            last_request: now,
            counted_bytes: 0,
            totals: Totals {
                opened: now,
                bytes_in: 0,
                bytes_out: 0,
                commands: 0,
            },
            flags: Flags {
                // The loop counted an admitted client before it got here.
                counted_client: role == Role::Client,
                ..Flags::default()
            },
            link: Default::default(),
        };
        let next = conn.with_held(lent, |conn, held, lent| {
            if proxied {
                // The balancer speaks first: the readable event that brings
                // the header runs `read_proxy_header`.
                conn.state = State::AwaitingHeader;
                conn.set_deadline(held, lent);
                Next::Wait
            } else if conn.transport.is_handshaking() {
                // The client speaks first (its ClientHello); the readable
                // event that brings it drives the handshake on.
                conn.state = State::Handshaking { paused: false };
                conn.set_deadline(held, lent);
                Next::Wait
            } else {
                let next = conn.greet(held, lent);
                conn.flush_and_advance(next, held, lent)
            }
        });
        (conn, next)
    }

    /// The first line, once the transport is ready: `READY` (and the idle
    /// clock starts), or the refusal's line and the careful close that
    /// follows every last line. A metrics connection gets nothing: its
    /// client speaks first.
    fn greet(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        self.state = State::Open;
        self.last_request = lent.now;
        let next = match self.role {
            Role::Refused(refusal) => {
                let line = lent.service.notice(refusal.notice());
                self.close_after(line, refusal.reason(), held, lent)
            }
            Role::Client | Role::Undecided => {
                // Room first, as for any line: the greeting counts in
                // Limits::longest_response.
                held.output
                    .make_room(longest_response(lent.limits), lent.limits);
                held.output.buf().extend_from_slice(lent.service.greeting());
                Next::Wait
            }
            Role::Metrics => Next::Wait,
        };
        if !matches!(self.state, State::Lingering | State::Closed) {
            self.set_deadline(held, lent);
        }
        next
    }

    /// Looks at what the socket holds without taking it (MSG_PEEK): once a
    /// whole header is there, reads exactly its bytes and no more, so what
    /// follows (the first request, or the TLS ClientHello) stays in the
    /// socket for the code that reads it next. Nothing is buffered here: an
    /// unfinished header waits in the kernel, at most `proxy::HEADER_MAX`
    /// bytes of it matter, and each new segment raises a new readable edge.
    pub(super) fn read_proxy_header(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        let window = proxy::HEADER_MAX.min(lent.read_buf.len());
        let seen = loop {
            match self.stream.peek(&mut lent.read_buf[..window]) {
                Ok(0) => return self.fail(CloseReason::PeerClosed),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(CloseReason::Io(e.kind())),
            }
        };
        match proxy::parse(&lent.read_buf[..seen]) {
            // A peer that has sent its EOF (the event said so) can never
            // finish it; others have until the deadline.
            Ok(Parsed::Incomplete) if self.flags.hangup_hinted => {
                self.fail(CloseReason::PeerClosed)
            }
            Ok(Parsed::Incomplete) => Next::Wait,
            Ok(Parsed::Header { len, client }) => {
                // The bytes are in the socket (we just saw them): this read
                // takes them, and only them.
                let mut taken = 0;
                while taken < len {
                    match self.stream.read(&mut lent.read_buf[taken..len]) {
                        Ok(0) => return self.fail(CloseReason::PeerClosed),
                        Ok(n) => taken += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return self.fail(CloseReason::Io(e.kind())),
                    }
                }
                let wire = Wire {
                    read: len as u64,
                    written: 0,
                };
                self.count_wire(wire, held, lent);
                if let Some(client) = client {
                    self.via = Some(Box::new(self.peer));
                    self.peer = client;
                }
                self.state = State::Admitting;
                Next::Wait
            }
            Err(e) => {
                log::debug!("{} sent no valid PROXY header: {e}", self.peer);
                // Take the bytes we looked at: closing with them unread
                // would make the kernel answer with a reset, not an EOF.
                let _ = self.stream.read(&mut lent.read_buf[..seen]);
                self.fail(CloseReason::ProxyHeader(e))
            }
        }
    }

    /// The loop has decided, under the client's address its header gave:
    /// `role` is `Client` (counted as one now) or `Refused`. Goes on as a
    /// fresh connection of its transport would. The readable edge that
    /// brought the header may have brought what follows too, so that is
    /// read now, not on an event.
    pub fn admitted(&mut self, role: Role, lent: &mut Lent<S>) -> Next {
        if self.state != State::Admitting {
            return Next::Wait;
        }
        self.role = role;
        self.flags.counted_client = role == Role::Client;
        self.with_held(lent, |conn, held, lent| {
            let next = if conn.transport.is_handshaking() {
                conn.state = State::Handshaking { paused: false };
                // The header and the handshake share --handshake-timeout
                // from the accept; with 0, the handshake has no deadline
                // (the header had its own).
                conn.set_deadline(held, lent);
                conn.advance_handshake(held, lent)
            } else {
                conn.greet_and_read(held, lent)
            };
            conn.flush_and_advance(next, held, lent)
        })
    }

    /// Greets, then reads at once what may already be waiting: bytes that
    /// came with the PROXY header or the client's last handshake flight
    /// raised their edge already (or are held inside the TLS session).
    fn greet_and_read(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        let next = self.greet(held, lent);
        if self.state == State::Open {
            self.serve(true, held, lent)
        } else {
            next
        }
    }

    /// Moves a TLS handshake on. While the process is over `--max-memory`
    /// it reads nothing: what a client sends of its handshake is held by
    /// the session, and counts like any input (`Transport::held_by_session`).
    /// Once done, the first line, then any request that came in the same
    /// flight (rustls holds it already: no socket event will come for it).
    pub(super) fn advance_handshake(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        if !matches!(self.state, State::Handshaking { .. }) {
            return Next::Wait;
        }
        let budget = self.handshake_budget(held, lent);
        if budget == 0 {
            // Woken by the loop when memory pressure lifts.
            self.state = State::Handshaking { paused: true };
            return Next::Wait;
        }
        self.state = State::Handshaking { paused: false };
        let mut wire = Wire::default();
        let done = self
            .transport
            .advance_handshake(&mut self.stream, budget, &mut wire);
        self.count_wire(wire, held, lent);
        if done.is_err() && self.is_client_traffic() {
            lent.stats.count_tls_handshake(false);
        }
        match done {
            // The session may have records to send (its ServerHello...):
            // flush_and_advance writes them.
            Ok(Handshake::Waiting) => Next::Wait,
            // Bytes may wait in the socket with no edge to come: run again.
            Ok(Handshake::BudgetSpent) => Next::Again,
            Ok(Handshake::Done) => {
                if self.is_client_traffic() {
                    lent.stats.count_tls_handshake(true);
                }
                self.greet_and_read(held, lent)
            }
            Err(HandshakeError::Closed) => self.fail(CloseReason::PeerClosed),
            Err(HandshakeError::Io(e)) => self.fail(CloseReason::Io(e.kind())),
            Err(HandshakeError::Tls(e)) => {
                log::debug!("TLS handshake with {} failed: {}", self.peer, e.0);
                // Send the alert rustls queued, if the socket takes it now.
                let _ = self.flush(held, lent);
                self.fail(CloseReason::TlsFailed)
            }
        }
    }

    /// How much of its handshake a connection may read now: one read
    /// buffer's worth (the read budget every connection has per call), and
    /// no more than the room left under `--max-memory`; none while memory
    /// pressure is on.
    fn handshake_budget(&self, held: &Held, lent: &Lent<S>) -> usize {
        if lent.memory.on() {
            return 0;
        }
        let total = self.buffered_by_others(lent) + self.holding(held);
        let room = (lent.limits.max_memory as u64).saturating_sub(total);
        usize::try_from(lent.limits.memory_share(room))
            .unwrap_or(usize::MAX)
            .min(READ_BUFFER_SIZE)
    }

    /// When it was accepted.
    pub fn opened(&self) -> Instant {
        self.totals.opened
    }
}
