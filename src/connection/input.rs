//! Reading and answering: one read budget per call for every kind of
//! connection, then the requests in what was read. A client's requests are
//! lines ([`crate::framing`], answered by [`crate::protocol`]); a metrics
//! connection's are HTTP request heads ([`crate::metrics`]). Backpressure
//! holds what was read but cannot be answered yet.
//!
//! The budget is the loop's read buffer (64 KiB): a read that fills it
//! returns `Next::Again`, and the connection runs again before the next
//! `poll` (no edge will come for the bytes left in the socket), after every
//! other ready connection has had its turn.

use std::io;
use std::mem;

use super::output::reserve_within;
use super::{CloseReason, Connection, Held, Lent, Next, Role, State};
use crate::framing::{self, Continued, Cut};
use crate::limits::{input_capacity_bound, longest_response, MAX_HTTP_HEAD, READ_UNDER_PRESSURE};
use crate::metrics::{self, HeadAnswer};
use crate::service::{After, Context, Notice, Service};
use crate::transport::Wire;

/// What answering a batch of lines may use before it must stop and look
/// (see `Connection::reply_budget`).
struct ReplyBudget<'a> {
    /// Free capacity one reply needs: [`longest_response`].
    reply_room: usize,
    /// Pending output past which a cap is passed: `--max-output`, or less
    /// when the process is near `--max-memory`.
    pause_above: usize,
    /// What the service answers with besides the line: the same for the
    /// whole batch.
    context: Context<'a>,
}

impl<S: Service> Connection<S> {
    /// The work of a live connection: what is held first, then the socket.
    pub(super) fn serve(&mut self, readable: bool, held: &mut Held, lent: &mut Lent<S>) -> Next {
        if self.role == Role::Metrics {
            return self.serve_http(readable, held, lent);
        }
        if matches!(self.state, State::Paused | State::Draining) {
            return self.resume(held, lent);
        }
        if self.state == State::Open && readable {
            self.read_requests(held, lent)
        } else {
            Next::Wait
        }
    }

    /// A paused (or draining) client: send first, since this event may be
    /// the writable edge that lets it go on; then the lines it holds; then
    /// the socket, read by hand.
    fn resume(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        if let Err(reason) = self.flush(held, lent) {
            return self.fail(reason);
        }
        if !self.may_resume(held, lent) {
            return Next::Wait;
        }
        if self.state == State::Paused {
            self.state = State::Open;
        }
        let all_answered = self.run_held_lines(held, lent);
        if self.state == State::Draining {
            if !all_answered {
                // Paused again by its output: the next writable edge
                // brings us back here.
                return Next::Wait;
            }
            // Every line that was due is answered: the last line.
            let line = lent.service.notice(Notice::ShuttingDown);
            return self.close_after(line, CloseReason::Shutdown, held, lent);
        }
        if self.state != State::Open {
            return Next::Wait;
        }
        // Bytes that arrived while we were paused raised their one
        // edge-triggered event back then, and no new event will come.
        self.read_requests(held, lent)
    }

    /// Whether a paused (or draining) connection may answer and read
    /// again. A client: its own output has fallen to half of
    /// `--max-output` (so a client at the limit is not paused and resumed
    /// on every write), and either the process is below its memory cap or
    /// this connection has nothing pending (one that holds no output is
    /// always served). A metrics connection: its answer is all written.
    pub(super) fn may_resume(&self, held: &Held, lent: &Lent<S>) -> bool {
        let pending = held.output.pending();
        if self.role == Role::Metrics {
            return pending == 0;
        }
        pending <= lent.limits.max_output / 2 && (pending == 0 || !self.memory_over(held, lent))
    }

    /// Reads once into the shared buffer and answers the complete lines.
    pub(super) fn read_requests(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        loop {
            let mut budget = lent.read_buf.len();
            if self.memory_over(held, lent) {
                if held.output.pending() > 0 {
                    // The process is over --max-memory and we have output
                    // waiting: read nothing more until the total falls.
                    self.state = State::Paused;
                    return Next::Wait;
                }
                budget = budget.min(READ_UNDER_PRESSURE);
            }
            let n = match self.read_some(budget, held, lent) {
                Ok(0) => return self.on_peer_eof(held, lent),
                Ok(n) => n,
                // Drained: the kernel has nothing more. The next byte to
                // arrive raises a new edge, so we may stop here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) => return self.fail(CloseReason::Io(e.kind())),
            };
            let full = n == budget;
            // Lend the read bytes out of `lent` for the framing, so the
            // rest of `lent` stays usable meanwhile; put them back after.
            let read_buf = mem::take(&mut lent.read_buf);
            self.take_input(&read_buf[..n], read_buf.len(), held, lent);
            lent.read_buf = read_buf;
            if self.state != State::Open {
                return Next::Wait;
            }
            if full {
                // The buffer filled: more may be waiting, but this was our
                // fair share of the turn. Come back before the next poll.
                return Next::Again;
            }
            if !self.flags.hangup_hinted && !self.transport.peer_has_closed() {
                // A read shorter than the buffer emptied the socket: new
                // bytes would raise a new edge, so there is no need to read
                // on to WouldBlock and spend a syscall to hear it.
                return Next::Wait;
            }
            // But an end of stream that came with those bytes raises no
            // edge of its own: the event hinted at a hang-up, or the TLS
            // session consumed the peer's close_notify in this very read.
            // Read on until we see it.
        }
    }

    /// Reads up to `budget` bytes of plaintext into the shared buffer:
    /// straight from the socket, or out of the TLS session (which reads
    /// records until the socket is drained). Retries an interrupted read.
    fn read_some(
        &mut self,
        budget: usize,
        held: &mut Held,
        lent: &mut Lent<S>,
    ) -> io::Result<usize> {
        loop {
            let mut wire = Wire::default();
            let read =
                self.transport
                    .read(&mut self.stream, &mut lent.read_buf[..budget], &mut wire);
            self.count_wire(wire, held, lent);
            match read {
                // A signal interrupted the call; nothing was read. Retry.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Frames and answers the bytes of one read (into a buffer of
    /// `read_len` bytes); keeps what is left over.
    fn take_input(
        &mut self,
        mut data: &[u8],
        read_len: usize,
        held: &mut Held,
        lent: &mut Lent<S>,
    ) {
        let input_limit = input_capacity_bound(lent.limits, read_len);
        if !held.input.is_empty() {
            // An unfinished line from an earlier read: this read continues it.
            match framing::continue_line(held.input.len(), data, lent.limits.max_line) {
                Continued::TooLong => return self.line_too_long(held, lent),
                Continued::Unfinished => {
                    reserve_within(&mut held.input, data.len(), input_limit);
                    held.input.extend_from_slice(data);
                    return;
                }
                Continued::Ends { used } => {
                    reserve_within(&mut held.input, used, input_limit);
                    held.input.extend_from_slice(&data[..used]);
                    data = &data[used..];
                    let mut line = mem::take(&mut held.input);
                    let (consumed, _) = self.run_lines(&line, held, lent);
                    if self.state != State::Open {
                        // Paused on this very line: the rest of the read
                        // is held, after what is left of `line` (nothing,
                        // unless it was too long, which closes anyway).
                        line.drain(..consumed);
                        reserve_within(&mut line, data.len(), input_limit);
                        line.extend_from_slice(data);
                        if self.state == State::Paused {
                            held.input = line;
                        }
                        return;
                    }
                    // Keep the buffer (cleared) for the next unfinished line.
                    line.clear();
                    held.input = line;
                }
            }
        }
        let (used, _) = self.run_lines(data, held, lent);
        if !matches!(self.state, State::Open | State::Paused) {
            return;
        }
        // An unfinished line, or lines held back by backpressure.
        reserve_within(&mut held.input, data.len() - used, input_limit);
        held.input.extend_from_slice(&data[used..]);
        if held.input.is_empty() {
            // The read ended on a line boundary: give the memory back, so an
            // idle connection holds no input buffer.
            held.input = Vec::new();
        }
    }

    /// Runs the lines held in `input` (after backpressure lifts). Returns
    /// whether every complete line in it was answered.
    fn run_held_lines(&mut self, held: &mut Held, lent: &mut Lent<S>) -> bool {
        let mut lines = mem::take(&mut held.input);
        let (used, all_answered) = self.run_lines(&lines, held, lent);
        if matches!(self.state, State::Open | State::Paused | State::Draining) {
            lines.drain(..used);
            if !lines.is_empty() {
                held.input = lines;
            }
        }
        all_answered
    }

    /// Answers complete lines at the start of `data` until one stops the
    /// connection (QUIT, too long) or pauses it (backpressure). Returns the
    /// bytes consumed, and whether it stopped because no complete line was
    /// left.
    fn run_lines(&mut self, data: &[u8], held: &mut Held, lent: &mut Lent<S>) -> (usize, bool) {
        // Worked out once per batch of lines, not per line: the hot path
        // then pays one comparison per reply for both caps.
        let budget = self.reply_budget(held, lent);
        // The cap is checked after each reply; what was pending before the
        // first (a greeting queued with no flush yet, after a handshake or
        // a PROXY header) is checked here, once per batch.
        if held.output.pending() > budget.pause_above {
            self.over_reply_budget(held, lent);
        }
        let mut used = 0;
        while self.may_answer(held, lent) {
            match framing::cut_line(&data[used..], lent.limits.max_line) {
                Cut::Partial => return (used, true),
                Cut::TooLong => self.line_too_long(held, lent),
                Cut::Line { line, used: n } => {
                    used += n;
                    self.answer(line, &budget, held, lent);
                }
            }
        }
        (used, false)
    }

    /// What answering may use before it must stop and look: room for one
    /// reply, and the pending output past which either cap is passed.
    fn reply_budget<'a>(&self, held: &Held, lent: &Lent<'a, S>) -> ReplyBudget<'a> {
        // Pending output at which the process's total would pass
        // --max-memory (everything else this connection holds stays put
        // while lines are answered); none at all while pressure is on.
        let memory_threshold = if lent.memory.on() {
            0
        } else {
            let pending = held.output.pending() as u64;
            let room = (lent.limits.max_memory as u64)
                .saturating_sub(self.buffered_by_others(lent) + held.input.len() as u64 + pending);
            pending + lent.limits.memory_share(room)
        };
        ReplyBudget {
            reply_room: longest_response(lent.limits),
            pause_above: usize::try_from(memory_threshold)
                .unwrap_or(usize::MAX)
                .min(lent.limits.max_output),
            context: Context::serving(
                lent.token,
                lent.stats,
                lent.now,
                self.peer.ip(),
                lent.guards,
            ),
        }
    }

    /// Whether the next held or read line may be answered now.
    fn may_answer(&self, held: &Held, lent: &Lent<S>) -> bool {
        match self.state {
            State::Open => true,
            // Draining answers held lines under the same backpressure.
            State::Draining => held.output.pending() <= lent.limits.max_output,
            _ => false,
        }
    }

    /// Answers one request line.
    // Inlined into the line loop by force: left to itself the compiler
    // sometimes calls it, which costs ~30 instructions per request
    // (scripts/instructions.sh shows it).
    #[inline(always)]
    fn answer(&mut self, line: &[u8], budget: &ReplyBudget, held: &mut Held, lent: &mut Lent<S>) {
        lent.stats.add_commands(1);
        self.totals.commands += 1;
        self.last_request = lent.now;
        held.output.make_room(budget.reply_room, lent.limits);
        let after =
            lent.service
                .respond(line, &mut self.session, &budget.context, held.output.buf());
        if after == After::Close {
            self.start_closing(held, CloseReason::Service);
            return;
        }
        // The hot path ends here: one comparison covers both caps.
        if held.output.pending() > budget.pause_above {
            self.over_reply_budget(held, lent);
        }
    }

    /// Pending output passed `--max-output`, or the process is at
    /// `--max-memory`: decide whether to stop answering.
    #[cold]
    #[inline(never)]
    fn over_reply_budget(&mut self, held: &mut Held, lent: &mut Lent<S>) {
        if held.output.pending() > lent.limits.max_output {
            // Backpressure: stop reading until the peer takes our output.
            self.pause();
        } else if self.flush(held, lent).is_err() || held.output.pending() > 0 {
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

    fn line_too_long(&mut self, held: &mut Held, lent: &mut Lent<S>) {
        lent.stats.add_commands(1);
        self.totals.commands += 1;
        held.output
            .make_room(longest_response(lent.limits), lent.limits);
        held.output
            .buf()
            .extend_from_slice(lent.service.notice(Notice::LineTooLong));
        self.start_closing(held, CloseReason::LineTooLong);
    }

    /// The client shut its writing side. It may still be reading: answer a
    /// last line that had no LF, flush everything, then close.
    fn on_peer_eof(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Next {
        self.flags.peer_eof = true;
        if !held.input.is_empty() {
            let last = mem::take(&mut held.input);
            let budget = self.reply_budget(held, lent);
            self.answer(framing::final_line(&last), &budget, held, lent);
        }
        self.start_closing(held, CloseReason::PeerClosed);
        Next::Wait
    }

    /// A metrics connection: at most one request head answered per call.
    /// A peer that pipelines requests gets one answer per loop turn, and
    /// every other connection its turn in between; the next head is parsed
    /// only once the previous answer is written (`Paused` until then), so a
    /// peer that sends without reading holds one answer and one head.
    fn serve_http(&mut self, readable: bool, held: &mut Held, lent: &mut Lent<S>) -> Next {
        // Resumed (its answer is written, or this is the first call after
        // the handshake): the socket may hold bytes whose edge has passed.
        let mut may_read = readable || self.state == State::Paused;
        if self.state == State::Paused {
            if let Err(reason) = self.flush(held, lent) {
                return self.fail(reason);
            }
            if !self.may_resume(held, lent) {
                return Next::Wait;
            }
            self.state = State::Open;
        }
        if self.state != State::Open {
            return Next::Wait;
        }
        loop {
            if self.answer_head(held, lent) {
                // More may be held, or wait in the socket: come back
                // before the next poll, after the others' turn.
                let more = !held.input.is_empty() || may_read;
                return if more && self.state == State::Open {
                    Next::Again
                } else {
                    Next::Wait
                };
            }
            if !may_read || self.state != State::Open {
                return Next::Wait;
            }
            match self.read_head_bytes(held, lent) {
                Ok(drained) => may_read = !drained,
                Err(next) => return next,
            }
        }
    }

    /// Reads what the socket has of a request head, up to one byte past
    /// the longest one taken (a longer head is answered `431`). Returns
    /// whether the socket is drained.
    fn read_head_bytes(&mut self, held: &mut Held, lent: &mut Lent<S>) -> Result<bool, Next> {
        let room = (MAX_HTTP_HEAD + 1)
            .saturating_sub(held.input.len())
            .clamp(1, lent.read_buf.len());
        match self.read_some(room, held, lent) {
            Ok(0) => {
                // The peer closed its side: complete heads were answered;
                // half a head never will be.
                self.flags.peer_eof = true;
                self.start_closing(held, CloseReason::PeerClosed);
                Err(Next::Wait)
            }
            Ok(n) => {
                if held.input.is_empty() {
                    // A head begins: it has the opening timeout to finish.
                    self.last_request = lent.now;
                }
                held.input.extend_from_slice(&lent.read_buf[..n]);
                Ok(n < room && !self.flags.hangup_hinted && !self.transport.peer_has_closed())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(self.fail(CloseReason::Io(e.kind()))),
        }
    }

    /// Answers the request head at the front of the input, if it is whole
    /// (or can never be: too long, malformed). Returns whether it did.
    fn answer_head(&mut self, held: &mut Held, lent: &mut Lent<S>) -> bool {
        if held.input.is_empty() {
            return false;
        }
        let Some(page) = lent.metrics.as_deref_mut() else {
            // Only the loop that serves the endpoint holds its page.
            return false;
        };
        match metrics::answer(&held.input, page, lent.stats, held.output.buf()) {
            HeadAnswer::Incomplete => false,
            HeadAnswer::Answered {
                used,
                keep_alive,
                bad,
            } => {
                self.totals.commands += 1;
                self.last_request = lent.now;
                if keep_alive {
                    held.input.drain(..used);
                    if held.input.is_empty() {
                        held.input = Vec::new();
                    }
                } else {
                    // Nothing after this head is read as a request.
                    self.start_closing(
                        held,
                        if bad {
                            CloseReason::BadRequest
                        } else {
                            CloseReason::PeerClosed
                        },
                    );
                }
                true
            }
        }
    }
}
