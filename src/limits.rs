//! Every bound the engine enforces, in one place: the limits a connection
//! enforces ([`Limits`], derived from the command line by
//! `Limits::from_config` in [`crate::config`]), the caps on each kind of
//! socket a loop holds, the capacity bounds of a connection's buffers, and
//! the process-wide cap on buffer memory ([`MemoryCap`]).
//!
//! Each bound says what a peer sees when it is hit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The limits a connection enforces, in the types the hot path wants.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-line`, in bytes. A longer request line gets `ERR line too
    /// long`, then the close.
    pub max_line: usize,
    /// `--max-output`: pending output above which reading pauses (the
    /// client loses nothing; TCP flow control stops it).
    pub max_output: usize,
    /// `--max-memory`: bytes in all client buffers of the process above
    /// which reading pauses for connections with pending output.
    pub max_memory: usize,
    /// `--idle-timeout`, `None` when 0 (off): `ERR idle timeout`, then the
    /// close.
    pub idle_timeout: Option<Duration>,
    /// `--write-timeout`, `None` when 0 (off): closed without a line.
    pub write_timeout: Option<Duration>,
    /// `--tcp-keepalive`, `None` when 0 (off).
    pub tcp_keepalive: Option<Duration>,
    /// How long a closing connection may drain unread input after its last
    /// line, before the socket is dropped.
    pub linger: Duration,
    /// `--handshake-timeout`, `None` when 0 (off): closed without a line.
    pub handshake_timeout: Option<Duration>,
    /// `--threads`: the loops that fill client buffers at the same time.
    /// Each sees the others' held bytes as of their last call, so one call
    /// may fill only its share of the room left under `--max-memory`
    /// ([`Limits::memory_share`]).
    pub loops: usize,
    /// The most bytes one line the engine writes may take: the service's
    /// longest response (`Service::longest_response`) for `max_line`, or
    /// its greeting or a notice if longer. Room for it is made before each
    /// such line, and the output buffer's bound counts it.
    pub longest_response: usize,
}

impl Limits {
    /// The part of `room` (bytes left under `--max-memory`) one call may
    /// fill: all of it with one loop; with N loops, 1/N of it, so that N
    /// loops filling at once, each blind to what the others add in the
    /// same moment, stay under the cap together.
    #[inline]
    pub fn memory_share(&self, room: u64) -> u64 {
        if self.loops <= 1 {
            room
        } else {
            room / self.loops as u64
        }
    }

    /// How long a connection may take over what must come first (a PROXY
    /// header; a metrics request head): `--handshake-timeout`, or
    /// [`OPENING_TIMEOUT_WHEN_OFF`] when that is 0.
    pub fn opening_timeout(&self) -> Duration {
        self.handshake_timeout.unwrap_or(OPENING_TIMEOUT_WHEN_OFF)
    }
}

/// How long a closing connection reads and discards input after its last
/// line (the lingering close).
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// The deadline of an opening that must come before anything else (a PROXY
/// header; a metrics request head) when `--handshake-timeout` is 0. Such an
/// opening holds a socket and counts as no client, so it always has a
/// deadline: 0 turns off only the TLS handshake's.
pub const OPENING_TIMEOUT_WHEN_OFF: Duration = Duration::from_secs(10);

/// A connection being turned away (busy, too many from its address) is
/// closed this long after its accept at the latest, whatever it is doing
/// then (a TLS handshake, its refusal line, the lingering close), and
/// whatever `--handshake-timeout` says: a refusal must not hold a
/// descriptor for long.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

/// Connections of one loop being turned away at once. Past that, a
/// newcomer that would be refused is closed at once, without a line.
pub const MAX_REFUSING: usize = 1024;

/// Connections of one loop that may linger after their last line. Past
/// that, the one lingering longest is closed (its replies were all
/// written; only the courtesy drain is cut short).
pub const MAX_LINGERING: usize = 1024;

/// Connections of one loop waiting for their PROXY header. Past that, the
/// one that has waited longest is closed without a line to make room: a
/// peer that opens sockets and says nothing cannot lock the balancer out.
pub const MAX_AWAITING_HEADER: usize = 1024;

/// Metrics connections open at once. Past that, a newcomer takes the place
/// of the idle keep-alive connection that was active least recently, or is
/// closed at once if every one is busy with a request.
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// A metrics connection with no request under way is closed after this.
/// Prometheus scrapes every 15 s to 1 min and reconnects when it must.
pub const METRICS_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// The longest request head (request line and headers) a metrics
/// connection may send; a longer one answers `431`.
pub const MAX_HTTP_HEAD: usize = 8 * 1024;

/// The size of a loop's one shared read buffer, and so the most one
/// connection reads per event (or per run from the ready list) before the
/// others get theirs: the read budget every kind of connection shares.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;

/// While the process is over `--max-memory`, a connection with nothing
/// pending still reads, but this much at most: if its client turns out not
/// to read its replies, the lines it leaves held are few.
pub const READ_UNDER_PRESSURE: usize = 1024;

/// Reads a lingering connection may make per turn while it drains unread
/// input (a peer that keeps sending cannot keep the loop there).
pub const LINGER_READS_PER_TURN: usize = 4;

/// The capacity the spare output buffer keeps between turns. A burst may
/// grow it (up to [`output_capacity_bound`]); it is shrunk back afterwards,
/// so one burst does not hold memory until exit.
pub const SPARE_OUTPUT_KEEP: usize = 128 * 1024;

/// The longest response line, in bytes, with these limits: the service's
/// own bound ([`Limits::longest_response`]).
pub fn longest_response(limits: &Limits) -> usize {
    limits.longest_response
}

/// The longest response of a service that echoes its request line, for a
/// given `--max-line`: `OK `, the line and its LF, or an `ERR usage: NAME
/// ...` line; fixed lines are far shorter than the floor of 512. The
/// default of `Service::longest_response`.
pub fn echoing_response(max_line: usize) -> usize {
    max_line.saturating_add(64).max(512)
}

/// The most a connection's input buffer may ever hold, as capacity: an
/// unfinished line that may still fit (`--max-line + 1` bytes, the CR of a
/// CRLF included) plus one read.
pub fn input_capacity_bound(limits: &Limits, read_len: usize) -> usize {
    limits.max_line.saturating_add(1).saturating_add(read_len)
}

/// The most a connection's output buffer may ever hold, as capacity:
/// reading pauses as soon as more than `--max-output` is pending, which can
/// only happen by one response line.
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
    #[inline]
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

#[cfg(test)]
mod tests {
    use super::*;

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
