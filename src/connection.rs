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
//!  accept ──► Open ──(QUIT, line too long, idle, shutdown, peer EOF)──► Closing
//!              │                                                         │ all output written,
//!              │ reset, write stall                                      │ write side shut
//!              ▼                                                         ▼
//!            Closed ◄───────────(peer EOF, linger deadline)──────── Lingering
//!
//!  Closing ──► Closed directly on a reset or write stall, or once all output
//!  is written when the peer had already sent its EOF (nothing to drain).
//! ```
//!
//! Memory: an idle connection owns no buffer. Reads land in the loop's one
//! shared read buffer; responses are written into the loop's spare output
//! buffer, lent to the connection while it runs. A connection keeps bytes of
//! its own only while it holds an unfinished line or output the socket has
//! not taken yet, and gives the memory back once they are gone.

use std::fmt;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use memchr::memchr;
use mio::net::TcpStream;

use crate::config::Limits;
use crate::framing::{self, Cut};
use crate::protocol::{self, After};
use crate::stats::Stats;
use crate::timer::{Timer, TimerKind, Timers};

/// Reads a closing connection may make per turn while it drains unread input
/// (a peer that keeps sending cannot keep the loop here).
const LINGER_READS_PER_TURN: usize = 4;

/// What the loop lends a connection while it runs.
pub struct Shared<'a> {
    /// The time of this loop turn (read once per wake-up, not per request).
    pub now: Instant,
    /// The limits from the command line.
    pub limits: &'a Limits,
    /// Server-wide counters.
    pub stats: &'a mut Stats,
    /// Every connection's deadlines.
    pub timers: &'a mut Timers,
    /// The one read buffer of the whole server. Its size is the read budget
    /// of one connection per turn.
    pub read_buf: &'a mut [u8],
    /// The spare output buffer, lent to a connection whose own is empty.
    pub spare_output: &'a mut Vec<u8>,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading requests and answering them.
    Open,
    /// Its last line is queued (close after reply): nothing more is read or
    /// executed; the output is flushed.
    Closing,
    /// All output written and the write side shut; unread input is read and
    /// discarded until the peer closes or the linger deadline passes.
    Lingering,
    /// Finished; the loop removes it after the current batch of events.
    Closed,
}

/// Why a connection closed, for the debug log.
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
    /// The client shut its writing side (EOF) and was answered.
    PeerClosed,
    /// A socket error: reset, broken pipe, ...
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
            CloseReason::PeerClosed => f.write_str("client closed its side"),
            CloseReason::Io(kind) => write!(f, "socket error: {kind}"),
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

/// One client connection.
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Slab key; also its `Token`.
    key: usize,
    /// Serial number, unique for the server's life (slab keys are reused).
    id: u64,
    state: State,
    /// Set once, when the connection starts to close.
    reason: Option<CloseReason>,
    /// Counts in `connections` and `--max-connections` (a busy reject does not).
    is_client: bool,
    /// Input not yet executed: an unfinished line, or lines held back while
    /// reading is paused by backpressure. Empty (no allocation) when idle.
    input: Vec<u8>,
    /// Output not yet taken by the socket is `output[written..]`.
    output: Vec<u8>,
    written: usize,
    /// Backpressure: pending output passed `--max-output`, so reading stopped.
    paused: bool,
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
    /// The last time the peer took bytes, or output became pending.
    last_write: Instant,
    /// A write-stall deadline is in the timer heap.
    write_timer_armed: bool,
    /// On the loop's ready list (to run again before the next poll).
    queued: bool,
}

impl Connection {
    /// A newly accepted client: sends `READY` and arms its idle timer.
    pub fn accept(
        stream: TcpStream,
        peer: SocketAddr,
        key: usize,
        id: u64,
        cx: &mut Shared,
    ) -> (Connection, Next) {
        let mut conn = Connection::new(stream, peer, key, id, true, cx.now);
        if let Some(idle) = cx.limits.idle_timeout {
            conn.schedule(cx, TimerKind::Idle, cx.now + idle);
        }
        let next = conn.with_output(cx, |conn, cx| {
            conn.output.extend_from_slice(protocol::GREETING);
            conn.settle(Next::Wait, cx)
        });
        (conn, next)
    }

    /// A connection turned away because `--max-connections` are open: it gets
    /// `ERR server busy` and the same careful close as every last line.
    pub fn reject_busy(
        stream: TcpStream,
        peer: SocketAddr,
        key: usize,
        id: u64,
        cx: &mut Shared,
    ) -> (Connection, Next) {
        let mut conn = Connection::new(stream, peer, key, id, false, cx.now);
        let next = conn.with_output(cx, |conn, cx| {
            conn.close_after(protocol::BUSY, CloseReason::Busy, cx)
        });
        (conn, next)
    }

    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        key: usize,
        id: u64,
        is_client: bool,
        now: Instant,
    ) -> Connection {
        Connection {
            stream,
            peer,
            key,
            id,
            state: State::Open,
            reason: None,
            is_client,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            paused: false,
            write_blocked: false,
            peer_eof: false,
            hangup_hinted: false,
            last_request: now,
            last_write: now,
            write_timer_armed: false,
            queued: false,
        }
    }

    /// The socket, to register with or deregister from `Poll`.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
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

    /// Bytes of output the socket has not taken yet.
    pub fn pending_output(&self) -> usize {
        self.output.len() - self.written
    }

    /// Bytes of input held: an unfinished line, or lines held back.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// The event loop saw a writable edge: the socket took bytes, so the
    /// next flush may write again.
    pub fn writable_again(&mut self) {
        self.write_blocked = false;
    }

    /// Marks it as on the loop's ready list; false if it already was.
    pub fn mark_queued(&mut self) -> bool {
        !std::mem::replace(&mut self.queued, true)
    }

    /// Takes it off the ready list (the loop is about to run it).
    pub fn unqueue(&mut self) {
        self.queued = false;
    }

    /// Marks it finished; the loop calls this on the one close path.
    pub fn mark_closed(&mut self) {
        self.state = State::Closed;
    }

    /// The socket is ready (or may be: events can be spurious, so we just
    /// try and see). `readable` says whether to read; `hangup` that the
    /// event carried a closed or error flag (a hint only).
    pub fn drive(&mut self, readable: bool, hangup: bool, cx: &mut Shared) -> Next {
        self.hangup_hinted |= hangup;
        self.with_output(cx, |conn, cx| {
            match conn.state {
                State::Open => {
                    let next = conn.serve(readable, cx);
                    conn.settle(next, cx)
                }
                // Whatever the event, a closing connection only flushes.
                State::Closing => conn.settle(Next::Wait, cx),
                State::Lingering if readable => conn.discard_input(cx),
                State::Lingering | State::Closed => Next::Wait,
            }
        })
    }

    /// One of its deadlines is due (the loop checked the id).
    pub fn on_timer(&mut self, kind: TimerKind, cx: &mut Shared) -> Next {
        match kind {
            TimerKind::Idle => self.on_idle_timer(cx),
            TimerKind::WriteStall => self.on_write_timer(cx),
            // The peer had its time to close; dropping the socket now may
            // send a reset, but every reply was sent well before.
            TimerKind::Linger if self.state == State::Lingering => Next::Close,
            TimerKind::Linger => Next::Wait,
        }
    }

    /// Graceful shutdown: after every response already due, one last line.
    /// Requests already read but held back by backpressure are due too:
    /// they are answered first, past `--max-output` (they are at most one
    /// read's worth). Bytes still in the socket are not read.
    pub fn shut_down(&mut self, cx: &mut Shared) -> Next {
        if self.state != State::Open {
            return Next::Wait;
        }
        self.with_output(cx, |conn, cx| {
            conn.paused = false;
            let unlimited = Limits {
                max_output: usize::MAX,
                ..cx.limits.clone()
            };
            conn.run_held_lines(cx, &unlimited);
            if conn.state != State::Open {
                // A held QUIT (or a line too long) already queued the last
                // line: BYE stays the last thing the client gets.
                return conn.settle(Next::Wait, cx);
            }
            conn.close_after(protocol::SHUTTING_DOWN, CloseReason::Shutdown, cx)
        })
    }

    /// Runs `work` with an output buffer in place. When ours is empty we
    /// borrow the loop's spare one, so responses go straight into a buffer
    /// that already has capacity: no allocation per request. Afterwards the
    /// buffer goes back unless the socket left bytes in it.
    fn with_output<R>(
        &mut self,
        cx: &mut Shared,
        work: impl FnOnce(&mut Self, &mut Shared) -> R,
    ) -> R {
        let was_empty = self.output.is_empty();
        if was_empty {
            mem::swap(&mut self.output, cx.spare_output);
        }
        let result = work(self, cx);
        let pending = self.pending_output();
        if was_empty && pending > 0 && self.written == 0 {
            // Output became pending and the socket took none of it: the
            // write-stall clock starts now, not at some older write.
            self.last_write = cx.now;
        }
        if pending == 0 {
            self.output.clear();
            self.written = 0;
            // Keep the larger of the two buffers as the spare; an idle
            // connection holds no output memory at all.
            if self.output.capacity() > cx.spare_output.capacity() {
                mem::swap(&mut self.output, cx.spare_output);
            }
            self.output = Vec::new();
        } else if was_empty && self.output.capacity() > 2 * pending + 4096 {
            // The socket took only part of what we wrote into the borrowed
            // spare: keep just the rest, in a buffer of its size, and give
            // the large one back to the loop.
            let rest = self.output[self.written..].to_vec();
            let mut big = mem::replace(&mut self.output, rest);
            big.clear();
            self.written = 0;
            if big.capacity() > cx.spare_output.capacity() {
                *cx.spare_output = big;
            }
        }
        result
    }

    /// The work of an open connection: lines held back by backpressure
    /// first, then the socket.
    fn serve(&mut self, mut readable: bool, cx: &mut Shared) -> Next {
        if self.paused {
            // Send first: this event may be the writable edge that lets us resume.
            if let Err(reason) = self.flush(cx) {
                return self.fail(reason);
            }
            if self.pending_output() > resume_below(cx.limits) {
                return Next::Wait;
            }
            // The peer has taken enough of our output: resume. First run the
            // lines that were read but held back...
            self.paused = false;
            let limits = cx.limits;
            self.run_held_lines(cx, limits);
            if self.state != State::Open || self.paused {
                return Next::Wait;
            }
            // ...then read by hand: bytes that arrived while we were paused
            // raised their one edge-triggered event back then, and no new
            // event will come for them.
            readable = true;
        }
        if readable {
            self.read_requests(cx)
        } else {
            Next::Wait
        }
    }

    /// Reads once into the shared buffer and answers the complete lines.
    fn read_requests(&mut self, cx: &mut Shared) -> Next {
        loop {
            let n = match self.stream.read(cx.read_buf) {
                Ok(0) => return self.on_peer_eof(cx),
                Ok(n) => n,
                // Drained: the kernel has nothing more. The next byte to
                // arrive raises a new edge, so we may stop here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                // A signal interrupted the call; nothing was read. Retry.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(CloseReason::Io(e.kind())),
            };
            cx.stats.bytes_in += n as u64;
            let full = n == cx.read_buf.len();
            let Shared {
                read_buf,
                stats,
                limits,
                now,
                ..
            } = cx;
            self.take_input(&read_buf[..n], stats, limits, *now);
            if self.state != State::Open || self.paused {
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

    /// Frames and answers the bytes of one read; keeps what is left over.
    fn take_input(&mut self, mut data: &[u8], stats: &mut Stats, limits: &Limits, now: Instant) {
        if !self.input.is_empty() {
            // An unfinished line from an earlier read: this read continues it.
            match memchr(b'\n', data) {
                None => {
                    let len = self.input.len() + data.len();
                    if framing::unfinished_too_long(len, data.last().copied(), limits.max_line) {
                        self.line_too_long(stats);
                    } else {
                        self.input.extend_from_slice(data);
                    }
                    return;
                }
                Some(lf) => {
                    self.input.extend_from_slice(&data[..=lf]);
                    data = &data[lf + 1..];
                    let mut line = mem::take(&mut self.input);
                    self.run_lines(&line, stats, limits, now);
                    if self.state != State::Open {
                        return;
                    }
                    // Keep the buffer (cleared) for the next unfinished line.
                    line.clear();
                    self.input = line;
                }
            }
        }
        let used = self.run_lines(data, stats, limits, now);
        if self.state != State::Open {
            return;
        }
        // An unfinished line, or lines held back by backpressure.
        self.input.extend_from_slice(&data[used..]);
        if self.input.is_empty() {
            // The read ended on a line boundary: give the memory back, so an
            // idle connection holds no input buffer.
            self.input = Vec::new();
        }
    }

    /// Runs the lines held in `input` (after backpressure lifts).
    fn run_held_lines(&mut self, cx: &mut Shared, limits: &Limits) {
        let mut held = mem::take(&mut self.input);
        let used = self.run_lines(&held, cx.stats, limits, cx.now);
        if self.state == State::Open && used < held.len() {
            held.drain(..used);
            self.input = held;
        }
    }

    /// Answers complete lines at the start of `data` until one stops the
    /// connection (QUIT, too long) or pauses it (backpressure). Returns the
    /// bytes consumed.
    fn run_lines(
        &mut self,
        data: &[u8],
        stats: &mut Stats,
        limits: &Limits,
        now: Instant,
    ) -> usize {
        let mut used = 0;
        while self.state == State::Open && !self.paused {
            match framing::cut_line(&data[used..], limits.max_line) {
                Cut::Partial => break,
                Cut::TooLong => self.line_too_long(stats),
                Cut::Line { line, used: n } => {
                    used += n;
                    self.answer(line, stats, limits, now);
                }
            }
        }
        used
    }

    /// Answers one request line.
    fn answer(&mut self, line: &[u8], stats: &mut Stats, limits: &Limits, now: Instant) {
        stats.commands += 1;
        self.last_request = now;
        if protocol::respond(line, stats, now, &mut self.output) == After::Close {
            self.start_closing(CloseReason::Quit);
        } else if self.pending_output() > limits.max_output {
            // Backpressure: stop reading until the peer takes our output.
            self.paused = true;
        }
    }

    fn line_too_long(&mut self, stats: &mut Stats) {
        stats.commands += 1;
        self.output.extend_from_slice(protocol::LINE_TOO_LONG);
        self.start_closing(CloseReason::LineTooLong);
    }

    /// The client shut its writing side. It may still be reading: answer a
    /// last line that had no LF, flush everything, then close.
    fn on_peer_eof(&mut self, cx: &mut Shared) -> Next {
        self.peer_eof = true;
        if !self.input.is_empty() {
            let last = mem::take(&mut self.input);
            self.answer(framing::final_line(&last), cx.stats, cx.limits, cx.now);
        }
        self.start_closing(CloseReason::PeerClosed);
        Next::Wait
    }

    /// Queues a last line and starts the close that follows it.
    fn close_after(&mut self, line: &[u8], reason: CloseReason, cx: &mut Shared) -> Next {
        self.output.extend_from_slice(line);
        self.start_closing(reason);
        self.settle(Next::Wait, cx)
    }

    /// The one close-after-reply flag: nothing more is read or executed.
    fn start_closing(&mut self, reason: CloseReason) {
        if self.state == State::Open {
            self.state = State::Closing;
            self.reason = Some(reason);
            self.paused = false;
            self.input = Vec::new();
        }
    }

    /// After any work: write what is pending, move a closing connection on,
    /// and arm the write-stall timer while output waits.
    fn settle(&mut self, next: Next, cx: &mut Shared) -> Next {
        if next == Next::Close {
            return next;
        }
        if let Err(reason) = self.flush(cx) {
            return self.fail(reason);
        }
        let pending = self.pending_output();
        if pending > 0 {
            self.arm_write_timer(cx);
        }
        match self.state {
            State::Closing if pending == 0 => self.linger(cx),
            // Paused, yet the socket took enough at once: no writable edge
            // may come to wake us, so come back by ourselves.
            State::Open if self.paused && pending <= resume_below(cx.limits) => Next::Again,
            _ => next,
        }
    }

    /// Every last byte is written. Shut our writing side (the peer reads
    /// EOF after our last line), then read and discard what the peer still
    /// sends, for a bounded time: closing a socket with unread input makes
    /// the kernel answer with a reset, which can wipe our last line from the
    /// peer's receive buffer before it reads it.
    fn linger(&mut self, cx: &mut Shared) -> Next {
        let _ = self.stream.shutdown(Shutdown::Write);
        // From the client's side the connection is over: it no longer
        // counts as open, nor against --max-connections.
        if self.is_client {
            self.is_client = false;
            cx.stats.connections -= 1;
        }
        if self.peer_eof {
            // The peer already closed its side: nothing more can arrive.
            return Next::Close;
        }
        self.state = State::Lingering;
        self.schedule(cx, TimerKind::Linger, cx.now + cx.limits.linger);
        // Input may already be waiting, and its edge came earlier: drain now.
        self.discard_input(cx)
    }

    /// Reads and drops input while lingering, until EOF or WouldBlock.
    fn discard_input(&mut self, cx: &mut Shared) -> Next {
        for _ in 0..LINGER_READS_PER_TURN {
            match self.stream.read(cx.read_buf) {
                Ok(0) => return Next::Close,
                Ok(n) => cx.stats.bytes_in += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Again
    }

    /// Writes pending output until it is all sent or the socket is full.
    fn flush(&mut self, cx: &mut Shared) -> Result<(), CloseReason> {
        // After a WouldBlock, another write would only fail the same way:
        // wait for the writable edge (`writable_again`) instead of spending
        // a system call to hear it again.
        while self.written < self.output.len() && !self.write_blocked {
            match self.stream.write(&self.output[self.written..]) {
                // Zero bytes taken from a non-empty buffer: the socket will
                // never take more. Treat it as an error rather than spin.
                Ok(0) => return Err(CloseReason::Io(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    // A partial write is normal: keep the rest for later.
                    self.written += n;
                    self.last_write = cx.now;
                    cx.stats.bytes_out += n as u64;
                }
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

    fn on_idle_timer(&mut self, cx: &mut Shared) -> Next {
        let Some(idle) = cx.limits.idle_timeout else {
            return Next::Wait;
        };
        if self.state != State::Open {
            // A closing connection is bounded by its write and linger timers.
            return Next::Wait;
        }
        if self.pending_output() > 0 || self.paused {
            // Still being sent output: not idle. The write timer watches it.
            self.schedule(cx, TimerKind::Idle, cx.now + idle);
            return Next::Wait;
        }
        let due = self.last_request + idle;
        if due > cx.now {
            // A request came since this entry was pushed: lazy re-arm.
            self.schedule(cx, TimerKind::Idle, due);
            return Next::Wait;
        }
        self.with_output(cx, |conn, cx| {
            conn.close_after(protocol::IDLE_TIMEOUT, CloseReason::IdleTimeout, cx)
        })
    }

    fn on_write_timer(&mut self, cx: &mut Shared) -> Next {
        self.write_timer_armed = false;
        let Some(limit) = cx.limits.write_timeout else {
            return Next::Wait;
        };
        if self.pending_output() == 0 || self.state == State::Closed {
            return Next::Wait;
        }
        let due = self.last_write + limit;
        if due <= cx.now {
            return self.fail(CloseReason::WriteTimeout);
        }
        self.write_timer_armed = true;
        self.schedule(cx, TimerKind::WriteStall, due);
        Next::Wait
    }

    fn arm_write_timer(&mut self, cx: &mut Shared) {
        if let Some(limit) = cx.limits.write_timeout {
            if !self.write_timer_armed {
                self.write_timer_armed = true;
                // The stall is counted from the moment output became pending.
                self.last_write = cx.now;
                self.schedule(cx, TimerKind::WriteStall, cx.now + limit);
            }
        }
    }

    fn schedule(&self, cx: &mut Shared, kind: TimerKind, at: Instant) {
        cx.timers.schedule(Timer {
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

/// Reading resumes once pending output falls to half of `--max-output`, so a
/// client at the limit is not paused and resumed on every write.
fn resume_below(limits: &Limits) -> usize {
    limits.max_output / 2
}
