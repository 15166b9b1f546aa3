//! The one output buffer of every connection: what it has not yet sent,
//! the loop that writes it, and the clock that watches the peer take it.
//!
//! * **It consumes what it writes.** `buf[written..]` is what the socket has
//!   not taken. When a reply needs room, the bytes already taken are
//!   dropped from the front before the buffer grows, and it never grows
//!   past [`output_capacity_bound`]: its size follows what is pending now,
//!   never what was sent over the connection's life.
//! * **Partial writes are normal.** [`Output::flush`] writes until all is
//!   sent or the socket says `WouldBlock`; then it waits for the writable
//!   edge ([`Output::writable_again`]) rather than spend a system call to
//!   hear `WouldBlock` again.
//! * **The write-stall clock follows the peer.** While output waits, the
//!   clock asks the kernel how many of the bytes written the peer has
//!   acknowledged: a slow but live reader moves it, a stalled one does not.
//!   It lives out of line, and only while output waits.
//! * **No allocation per reply.** While a connection holds nothing, the
//!   loop's spare [`Held`] (with an output buffer that has capacity) is
//!   lent to it for the length of a call ([`Spare`]); it keeps a buffer of
//!   its own only if the socket left bytes in it, and then one of their
//!   size.
//!
//! [`Held`] is everything a connection holds between calls: its input not
//! yet executed, and this output. Out of line, and only while it holds
//! any: an idle connection keeps one null pointer for all of it.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::CloseReason;
use crate::limits::{output_capacity_bound, Limits, SPARE_OUTPUT_KEEP};
use crate::sys;
use crate::transport::{Transport, Wire};

/// What a connection holds between calls (see the module documentation).
#[derive(Debug, Default)]
pub struct Held {
    /// Input not yet executed: an unfinished line (or request head), or
    /// lines held back while reading is paused.
    pub(super) input: Vec<u8>,
    /// Output not yet taken by the socket.
    pub(super) output: Output,
}

impl Held {
    /// Whether it holds nothing a connection must keep: no input, no
    /// output waiting (nor a write-stall clock watching some).
    fn is_empty(&self) -> bool {
        self.input.is_empty() && self.output.is_idle()
    }

    /// The memory its buffers really hold: (input, output) capacities.
    pub(super) fn capacities(&self) -> (usize, usize) {
        (self.input.capacity(), self.output.capacity())
    }
}

/// What the loop lends a connection for the length of a call: a `Held` to
/// work in if it has none (an empty one, kept for the purpose, so that a
/// call allocates nothing), and its spare output buffer, which already has
/// capacity, whenever the connection has no output waiting. Afterwards the
/// connection keeps only what it must: pending output is moved to a
/// buffer of its size and the large one goes back; output with nothing
/// pending keeps no buffer at all (the larger of the two stays with the
/// loop); a `Held` with nothing in it goes back too.
#[derive(Debug, Default)]
pub struct Spare {
    /// The spare output buffer (empty; its capacity is the point).
    buf: Vec<u8>,
    /// An empty `Held`, for the next connection that has none.
    empty: Option<Box<Held>>,
}

/// What a call was lent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// The spare output buffer is in the connection's `Held`.
    buf: bool,
}

impl Spare {
    /// The capacity of the spare output buffer: what the loop keeps
    /// between calls (at most [`SPARE_OUTPUT_KEEP`] after any call).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Lends what a call needs (see [`Spare`]).
    pub(super) fn lend(&mut self, own: Option<Box<Held>>) -> (Box<Held>, Lease) {
        let mut held = own.unwrap_or_else(|| self.empty.take().unwrap_or_default());
        let buf = held.output.is_idle();
        if buf {
            mem::swap(&mut held.output.buf, &mut self.buf);
        }
        (held, Lease { buf })
    }

    /// Takes back what a call was lent; returns what the connection keeps.
    pub(super) fn give_back(&mut self, mut held: Box<Held>, lease: Lease) -> Option<Box<Held>> {
        if lease.buf && held.is_empty() && held.input.capacity() == 0 && self.empty.is_none() {
            // The common case, after a request answered in full: both go
            // back as they were lent (the `Held`'s own buffer, swapped out
            // by `lend`, has no capacity).
            held.output.written = 0;
            held.output.buf.clear();
            mem::swap(&mut held.output.buf, &mut self.buf);
            if self.buf.capacity() > SPARE_OUTPUT_KEEP {
                self.buf.shrink_to(SPARE_OUTPUT_KEEP);
            }
            self.empty = Some(held);
            return None;
        }
        let output = &mut held.output;
        if output.pending() == 0 {
            // Nothing pending: the connection keeps no output buffer; the
            // larger of its and the spare stays with the loop.
            output.buf.clear();
            output.written = 0;
            if output.buf.capacity() > self.buf.capacity() {
                mem::swap(&mut output.buf, &mut self.buf);
            }
            output.buf = Vec::new();
        } else if lease.buf {
            // The socket took only part of what was written into the
            // lent spare: the connection keeps just the rest, in a buffer
            // of its size, and the large one goes back to the loop.
            let rest = output.buf[output.written..].to_vec();
            self.buf = mem::replace(&mut output.buf, rest);
            self.buf.clear();
            output.written = 0;
        }
        // A burst (a STATS flood, a held backlog at shutdown) may have
        // grown the spare: give that memory back now rather than at exit.
        if self.buf.capacity() > SPARE_OUTPUT_KEEP {
            self.buf.shrink_to(SPARE_OUTPUT_KEEP);
        }
        if !held.is_empty() {
            return Some(held);
        }
        held.input = Vec::new();
        held.output = Output::default();
        self.empty.get_or_insert(held);
        None
    }
}

/// Output not yet taken by the socket (see the module documentation).
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    /// `buf[..written]` is sent; the rest is pending.
    written: usize,
    /// The last write hit WouldBlock: writing again is useless until the
    /// writable edge says the peer took bytes.
    blocked: bool,
    /// While output waits: the write-stall clock.
    stall: Option<StallClock>,
}

/// Since when the peer has taken nothing.
#[derive(Debug)]
struct StallClock {
    /// The last time the peer was seen to take bytes (or output began to wait).
    progress_at: Instant,
    /// Bytes the peer had acknowledged at the last look (bytes written
    /// less the kernel's unsent count).
    acknowledged: u64,
}

impl Output {
    /// Whether nothing waits: nothing pending, no write-stall clock.
    fn is_idle(&self) -> bool {
        self.pending() == 0 && self.stall.is_none()
    }

    /// Bytes the socket has not taken yet.
    #[inline]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// The memory the buffer really holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The buffer replies are appended to (after [`Output::make_room`]).
    #[inline]
    pub(super) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Makes sure one more reply of up to `longest` bytes fits without the
    /// buffer growing on its own. Almost always a single comparison.
    #[inline(always)]
    pub(super) fn make_room(&mut self, longest: usize, limits: &Limits) {
        if self.buf.capacity() - self.buf.len() < longest {
            self.grow(longest, limits);
        }
    }

    /// Room is short: the bytes the socket already took are dropped from
    /// the front first (the buffer consumes what it writes), and only then
    /// does it grow, never past [`output_capacity_bound`].
    #[cold]
    #[inline(never)]
    fn grow(&mut self, longest: usize, limits: &Limits) {
        if self.written > 0 {
            // Moves the pending bytes to the front: at most what is
            // pending, which reading keeps below --max-output.
            self.buf.drain(..self.written);
            self.written = 0;
        }
        reserve_within(&mut self.buf, longest, output_capacity_bound(limits));
    }

    /// The writable edge came: the next flush may write again.
    pub fn writable_again(&mut self) {
        self.blocked = false;
    }

    /// Writes pending output until it is all sent or the socket is full.
    /// Over TLS, "all sent" includes the records the session holds
    /// (handshake, alerts, close_notify).
    pub(super) fn flush(
        &mut self,
        transport: &mut Transport,
        stream: &mut TcpStream,
        wire: &mut Wire,
    ) -> Result<(), CloseReason> {
        // After a WouldBlock, another write would only fail the same way:
        // wait for the writable edge instead.
        while (self.written < self.buf.len() || transport.has_unsent()) && !self.blocked {
            match transport.write(stream, &self.buf[self.written..], wire) {
                // Zero bytes taken from a non-empty buffer: the socket will
                // never take more. Treat it as an error rather than spin.
                Ok(0) if self.written < self.buf.len() => {
                    return Err(CloseReason::Io(io::ErrorKind::WriteZero))
                }
                // A partial write is normal: keep the rest for later.
                Ok(n) => self.written += n,
                // The socket's send buffer is full. The rest waits for the
                // writable edge that comes when the peer has taken bytes
                // (interest registered once, at accept: no epoll_ctl here).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CloseReason::Io(e.kind())),
            }
        }
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// The peer took bytes: the write-stall clock starts over.
    #[inline]
    pub(super) fn progress(&mut self, now: Instant) {
        if let Some(clock) = self.stall.as_mut() {
            clock.progress_at = now;
        }
    }

    /// Output waits for the socket: start the write-stall clock, if it is
    /// not running. What the peer has acknowledged so far is the baseline:
    /// only bytes it takes from now on count as progress.
    pub(super) fn start_stall_clock(&mut self, stream: &TcpStream, bytes_out: u64, now: Instant) {
        if self.stall.is_none() {
            let acknowledged = sys::unsent_bytes(stream.as_raw_fd())
                .map_or(0, |unsent| bytes_out.saturating_sub(unsent as u64));
            self.stall = Some(StallClock {
                progress_at: now,
                acknowledged,
            });
        }
    }

    /// Nothing waits any more: the clock stops.
    pub(super) fn stop_stall_clock(&mut self) {
        self.stall = None;
    }

    /// When the write-stall clock must next be looked at, if it runs and
    /// has a `limit`: a quarter of the limit from now, or at its end if
    /// sooner. A peer that stops is then closed between one and one and a
    /// quarter limits after the last byte it took.
    pub(super) fn stall_check(&self, now: Instant, limit: Option<Duration>) -> Option<Instant> {
        let clock = self.stall.as_ref()?;
        let limit = limit?;
        Some((clock.progress_at + limit).min(now + stall_check_interval(limit)))
    }

    /// Whether the peer has taken no bytes for `limit`. `--write-timeout`
    /// means the peer took no bytes, so the clock must follow the peer, not
    /// our own writes: after a WouldBlock the writable edge comes only once
    /// the kernel's send buffer (megabytes, on loopback) has drained by a
    /// large share, and a slow but live reader may take longer than the
    /// limit to get there. So each look asks the kernel how many of the
    /// bytes written are still unacknowledged; if that count moved, the
    /// peer is alive.
    pub(super) fn stalled(
        &mut self,
        stream: &TcpStream,
        bytes_out: u64,
        now: Instant,
        limit: Duration,
    ) -> bool {
        let Some(clock) = self.stall.as_mut() else {
            return false;
        };
        if let Ok(unsent) = sys::unsent_bytes(stream.as_raw_fd()) {
            let acknowledged = bytes_out.saturating_sub(unsent as u64);
            if acknowledged > clock.acknowledged {
                clock.acknowledged = acknowledged;
                clock.progress_at = now;
            }
        }
        clock.progress_at + limit <= now
    }
}

/// How often a connection with output waiting asks the kernel whether the
/// peer took bytes: a quarter of the limit, at least 10 ms.
fn stall_check_interval(limit: Duration) -> Duration {
    (limit / 4).max(Duration::from_millis(10))
}

/// Makes room for `additional` more bytes in `buf`, growing by doubling as
/// `Vec` does, but never past `limit` unless the bytes themselves need more.
#[inline]
pub(super) fn reserve_within(buf: &mut Vec<u8>, additional: usize, limit: usize) {
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

    fn limits(max_output: usize) -> Limits {
        Limits {
            max_line: 16,
            max_output,
            max_memory: usize::MAX,
            idle_timeout: None,
            write_timeout: None,
            tcp_keepalive: None,
            linger: Duration::from_secs(1),
            handshake_timeout: None,
            loops: 1,
            longest_response: crate::limits::echoing_response(16),
        }
    }

    /// The buffer consumes what it writes: with 1,000 bytes taken by the
    /// socket and 10 pending, room for a reply is made by dropping the
    /// 1,000 first, not by growing.
    #[test]
    fn room_comes_from_what_was_sent_before_the_buffer_grows() {
        let limits = limits(2048);
        let mut out = Output::default();
        out.buf.reserve_exact(1024);
        out.buf.extend_from_slice(&[b'x'; 1010]);
        out.written = 1000;
        let capacity = out.capacity();
        out.make_room(512, &limits);
        assert_eq!(out.pending(), 10);
        assert_eq!(out.capacity(), capacity, "grew instead of consuming");
    }

    #[test]
    fn a_lent_spare_goes_back_and_only_the_rest_is_kept() {
        let mut spare = Spare::default();
        spare.buf.reserve(4096);
        let (mut held, lease) = spare.lend(None);
        assert!(
            held.output.capacity() >= 4096,
            "the spare buffer was not lent"
        );
        held.output.buf.extend_from_slice(b"PONG\nPONG\n");
        held.output.written = 5;
        let kept = spare.give_back(held, lease).expect("the rest is kept");
        assert_eq!(kept.output.pending(), 5);
        assert_eq!(kept.output.capacity(), 5, "kept the large buffer");
        assert!(spare.capacity() >= 4096, "the spare did not come back");
        // Once written, nothing is kept, and the spare stays the larger.
        let (mut held, lease) = spare.lend(Some(kept));
        held.output.written = 5;
        assert!(spare.give_back(held, lease).is_none());
        assert!(spare.capacity() >= 4096);
    }

    /// Regression: a connection holding input (lines held by backpressure)
    /// but no pending output kept a large output buffer of its own. Its
    /// output is lent the spare like anyone's, and nothing is kept of it.
    #[test]
    fn held_input_does_not_keep_an_output_buffer() {
        let mut spare = Spare::default();
        spare.buf.reserve(64 * 1024);
        let own = Box::new(Held {
            input: b"PING\n".to_vec(),
            output: Output::default(),
        });
        let (mut held, lease) = spare.lend(Some(own));
        assert!(held.output.capacity() >= 64 * 1024, "no spare lent");
        held.output.buf.extend_from_slice(&[b'x'; 60 * 1024]);
        held.output.written = 60 * 1024;
        let kept = spare.give_back(held, lease).expect("its input is kept");
        assert_eq!(kept.capacities(), (5, 0));
    }
}
