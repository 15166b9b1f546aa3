//! Deadlines for every connection, in one min-heap.
//!
//! The event loop sleeps in `Poll::poll` until the nearest deadline here, so
//! timers cost nothing while nothing is due: no thread per timer, no wake-up
//! every N ms, no scan of every connection.
//!
//! Cancellation is lazy. Resetting a timer (a new request resets the idle
//! timer) does not touch the heap: the connection just records its new
//! activity time. When an entry comes due, the loop asks the connection
//! whether it really expired; if not, the entry is pushed again at the real
//! deadline. So each connection has at most one entry per kind in the heap,
//! and a busy connection costs no heap work per request.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Which deadline an entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// `--idle-timeout`: no complete request for too long.
    Idle,
    /// `--write-timeout`: output pending and the peer takes no bytes.
    WriteStall,
    /// The bounded drain of unread input after a connection's last line.
    Linger,
    /// `--handshake-timeout`: a TLS handshake that has not finished.
    Handshake,
}

/// One due time. `conn_id` is the connection's serial number, unique for the
/// life of the server: a slab slot is reused by later connections, so the
/// key alone could hand an old connection's timer to a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    // Field order matters: the derived `Ord` compares `at` first, so the
    // heap is ordered by due time; the other fields only break ties.
    /// When it is due.
    pub at: Instant,
    /// The connection's serial number.
    pub conn_id: u64,
    /// The connection's slab key.
    pub key: usize,
    /// What is due.
    pub kind: TimerKind,
}

/// The deadlines, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    /// An empty set of deadlines.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Adds a deadline.
    pub fn schedule(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    /// The earliest deadline, which bounds how long `poll` may sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(t)| t.at)
    }

    /// Removes and returns one deadline that is due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse(t)) if t.at <= now => self.heap.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }

    /// Keeps only the entries for which `live` says yes: a sweep of stale
    /// entries, for when closed connections have left many behind.
    pub fn retain(&mut self, mut live: impl FnMut(&Timer) -> bool) {
        self.heap.retain(|Reverse(t)| live(t));
    }

    /// How many entries the heap holds (live or stale).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no deadline is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_due_timers_earliest_first_and_keeps_the_rest() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timers = Timers::new();
        for (ms, id) in [(30, 3), (10, 1), (20, 2)] {
            timers.schedule(Timer {
                at: at(ms),
                conn_id: id,
                key: id as usize,
                kind: TimerKind::Idle,
            });
        }
        assert_eq!(timers.next_deadline(), Some(at(10)));
        assert_eq!(timers.pop_due(at(5)), None);
        let due: Vec<u64> = std::iter::from_fn(|| timers.pop_due(at(25)))
            .map(|t| t.conn_id)
            .collect();
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_deadline(), Some(at(30)));
    }
}
