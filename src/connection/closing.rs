//! The careful close, the same for every kind of connection: the last line
//! queued behind every earlier response, everything written (over TLS,
//! close_notify too), our writing side shut, then a bounded drain of what
//! the peer still sends (the lingering close) before the socket is dropped.
//!
//! Why linger: closing a socket with unread input makes the kernel answer
//! with a reset, and a reset can wipe our last line from the peer's receive
//! buffer before it reads it.

use std::io::{self, Read};
use std::net::Shutdown;

use super::{CloseReason, Connection, Held, Lent, Next, Role, State};
use crate::limits::LINGER_READS_PER_TURN;
use crate::service::Service;
use crate::transport::Wire;

impl<S: Service> Connection<S> {
    /// Queues a last line and starts the close that follows it.
    pub(super) fn close_after(
        &mut self,
        line: &[u8],
        reason: CloseReason,
        held: &mut Held,
        lent: &mut Lent<S>,
    ) -> Next {
        held.output
            .make_room(crate::limits::longest_response(lent.limits), lent.limits);
        held.output.buf().extend_from_slice(line);
        self.start_closing(held, reason);
        self.flush_and_advance(Next::Wait, held, lent)
    }

    /// The one close-after-reply step: nothing more is read or executed,
    /// and input not yet executed is dropped.
    pub(super) fn start_closing(&mut self, held: &mut Held, reason: CloseReason) {
        if matches!(self.state, State::Open | State::Paused | State::Draining) {
            self.state = State::Closing;
            self.reason = Some(reason);
            held.input = Vec::new();
        }
    }

    /// The client's last line is queued: from its side the connection is
    /// over, so it no longer counts as open, nor against --max-connections
    /// or its address. Done before that line is written: a client that
    /// reads it and connects again at once must find its place free, even
    /// when another loop (`--threads`) takes the new connection.
    fn stop_counting_as_client(&mut self, lent: &mut Lent<S>) {
        if std::mem::take(&mut self.flags.counted_client) {
            lent.stats.client_left(self.client());
        }
    }

    /// Writes what is pending, through the transport, and counts it.
    pub(super) fn flush(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Result<(), CloseReason> {
        let mut wire = Wire::default();
        let result = held
            .output
            .flush(&mut self.transport, &mut self.stream, &mut wire);
        self.count_wire(wire, held, lent);
        result
    }

    /// After any work: write what is pending, keep the write-stall clock
    /// running while output waits, and move a closing connection on.
    pub(super) fn flush_and_advance(
        &mut self,
        next: Next,
        held: &mut Held,
        lent: &mut Lent<S>,
    ) -> Next {
        if next == Next::Close {
            return next;
        }
        // A closing connection's last line is queued: it stops counting as
        // a client before the write below can deliver that line.
        if self.state == State::Closing {
            self.stop_counting_as_client(lent);
        }
        if let Err(reason) = self.flush(held, lent) {
            return self.fail(reason);
        }
        self.watch_stall(held, lent);
        match self.state {
            State::Closing if held.output.pending() == 0 => {
                // Over TLS the session ends with close_notify, written like
                // any output before the write side is shut.
                self.transport.queue_close();
                if let Err(reason) = self.flush(held, lent) {
                    return self.fail(reason);
                }
                if self.transport.has_unsent() {
                    // The writable edge brings us back here.
                    self.watch_stall(held, lent);
                    return Next::Wait;
                }
                self.linger(held, lent)
            }
            // A metrics answer not all written: the next request waits for
            // it, and the writable edge resumes the connection.
            State::Open if self.role == Role::Metrics && held.output.pending() > 0 => {
                self.state = State::Paused;
                Next::Wait
            }
            // Paused, yet the socket took enough at once: no writable edge
            // may come to wake us, so come back by ourselves.
            State::Paused | State::Draining if self.may_resume(held, lent) => Next::Again,
            _ => next,
        }
    }

    /// While output waits for the socket, the write-stall clock runs and
    /// the deadline is no later than its next look; once nothing waits, the
    /// clock stops (the deadline it set is looked at, and moved, lazily).
    fn watch_stall(&mut self, held: &mut Held, lent: &mut Lent<S>) {
        if self.output_waiting(held) {
            held.output
                .start_stall_clock(&self.stream, self.totals.bytes_out, lent.now);
            if let Some(at) = held.output.stall_check(lent.now, self.stall_limit(lent)) {
                lent.timers.set_earlier(lent.key, at);
            }
        } else {
            held.output.stop_stall_clock();
        }
    }

    /// Every last byte is written. Shut our writing side (the peer reads
    /// EOF after our last line), then read and discard what the peer still
    /// sends, for a bounded time (`--linger`, and never past a refusal's
    /// deadline). The loop also bounds how many sockets linger at once.
    fn linger(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        let _ = self.stream.shutdown(Shutdown::Write);
        if self.flags.peer_eof {
            // The peer already closed its side: nothing more can arrive.
            return Next::Close;
        }
        self.state = State::Lingering;
        let mut until = lent.now + lent.limits.linger;
        if matches!(self.role, Role::Refused(_)) {
            until = until.min(self.refusal_deadline());
        }
        lent.timers.set(lent.key, until);
        // Nothing more is sent: the clock that watched the output stops.
        held.output.stop_stall_clock();
        // Input may already be waiting, and its edge came earlier: drain now.
        self.discard_input(lent)
    }

    /// Reads and drops input while lingering, until EOF or WouldBlock, at
    /// most [`LINGER_READS_PER_TURN`] reads per call.
    pub(super) fn discard_input(&mut self, lent: &mut Lent<S>) -> Next {
        for _ in 0..LINGER_READS_PER_TURN {
            match self.stream.read(lent.read_buf) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    self.totals.bytes_in += n as u64;
                    if self.is_client_traffic() {
                        lent.stats.add_bytes_in(n as u64);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Again
    }

    /// Graceful shutdown of a metrics connection: an answer being written
    /// is finished (it is small), then the connection closes; the others
    /// close now (HTTP has no line to say why).
    pub(super) fn shut_down_metrics(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        match self.state {
            State::Open | State::Paused if self.output_waiting(held) => {
                self.start_closing(held, CloseReason::Shutdown);
                self.flush_and_advance(Next::Wait, held, lent)
            }
            State::Closing | State::Lingering | State::Closed => Next::Wait,
            _ => self.fail(CloseReason::Shutdown),
        }
    }
}
