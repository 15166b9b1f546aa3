//! Deadlines: at most one per socket the loop holds, in one min-heap whose
//! earliest entry sets the `Poll` timeout.
//!
//! The event loop sleeps in `Poll::poll` until the nearest deadline here, so
//! timers cost nothing while nothing is due: no thread per timer, no wake-up
//! every N ms, no scan of every connection.
//!
//! Each slab entry has one deadline at most: the next moment at which
//! something about it must be looked at (its idle time, a write stall, the
//! end of its handshake, of its refusal or of its lingering close). The
//! connection works out which, when it comes ([`crate::connection`]). A
//! deadline is removed when its connection closes ([`Timers::cancel`]), so
//! the heap holds exactly one entry per socket with a deadline: it cannot
//! grow with the connections that came and went.
//!
//! Re-arming is lazy where it is hot. A request does not touch the heap:
//! the connection records the time of its last request, and when the idle
//! deadline comes it checks whether it really expired; if not, the entry
//! is moved to the real deadline. So a busy connection costs no heap work
//! per request.
//!
//! Inside, a deadline is nanoseconds since the loop's start (`u64`, half
//! an `Instant`): with the key, an entry is 16 bytes, and every idle
//! connection has one. The loop converts its clock to that unit once per
//! turn ([`Timers::moment`]); asking what is due and how long to sleep is
//! then integer arithmetic.

use std::time::{Duration, Instant};

/// A time in the heap's unit: nanoseconds since the loop's start (the
/// default: the start itself).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(u64);

/// One deadline: when, and for which slab key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Nanoseconds after `Timers::epoch`.
    due: u64,
    key: usize,
}

/// The deadlines of one loop's slab entries, earliest first.
#[derive(Debug)]
pub struct Timers {
    /// What `Entry::due` counts from.
    epoch: Instant,
    /// A binary min-heap on `due`: `heap[i]` is due no later than
    /// `heap[2i + 1]` and `heap[2i + 2]`.
    heap: Vec<Entry>,
    /// For each slab key, its entry's index in `heap` plus one; 0 when it
    /// has no deadline. It grows to the largest key used, like the slab.
    place: Vec<u32>,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers::new(Instant::now())
    }
}

impl Timers {
    /// No deadlines; times are counted from `epoch` (the loop's start).
    pub fn new(epoch: Instant) -> Timers {
        Timers {
            epoch,
            heap: Vec::new(),
            place: Vec::new(),
        }
    }

    /// Sets the deadline of `key` to `at`, replacing the one it had.
    pub fn set(&mut self, key: usize, at: Instant) {
        let due = self.nanos(at);
        match self.index_of(key) {
            Some(i) => {
                let was = self.heap[i].due;
                self.heap[i].due = due;
                if due < was {
                    self.sift_up(i);
                } else {
                    self.sift_down(i);
                }
            }
            None => {
                if self.place.len() <= key {
                    self.place.resize(key + 1, 0);
                }
                self.heap.push(Entry { due, key });
                let i = self.heap.len() - 1;
                self.place_at(i);
                self.sift_up(i);
            }
        }
    }

    /// Sets the deadline of `key` to `at` if it has none, or a later one.
    pub fn set_earlier(&mut self, key: usize, at: Instant) {
        match self.deadline(key) {
            Some(current) if current <= at => {}
            _ => self.set(key, at),
        }
    }

    /// Removes the deadline of `key`, if it has one.
    pub fn cancel(&mut self, key: usize) {
        let Some(i) = self.index_of(key) else {
            return;
        };
        self.place[key] = 0;
        let last = self.heap.len() - 1;
        if i != last {
            self.heap.swap(i, last);
            self.heap.pop();
            self.place_at(i);
            // The entry moved into `i` may belong above or below it.
            self.sift_up(i);
            self.sift_down(i);
        } else {
            self.heap.pop();
        }
    }

    /// The deadline of `key`, if it has one.
    pub fn deadline(&self, key: usize) -> Option<Instant> {
        self.index_of(key).map(|i| self.instant(self.heap[i].due))
    }

    /// `at` in the heap's unit.
    #[inline]
    pub fn moment(&self, at: Instant) -> Moment {
        Moment(self.nanos(at))
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|e| self.instant(e.due))
    }

    /// How long from `now` until the earliest deadline (zero if it has
    /// passed), which bounds how long `poll` may sleep.
    pub fn time_to_next(&self, now: Moment) -> Option<Duration> {
        let first = self.heap.first()?;
        Some(Duration::from_nanos(first.due.saturating_sub(now.0)))
    }

    /// Removes the earliest deadline if it is due at `now`, and returns its
    /// key: earliest first.
    #[inline]
    pub fn pop_due(&mut self, now: Moment) -> Option<usize> {
        let first = *self.heap.first()?;
        if first.due > now.0 {
            return None;
        }
        self.cancel(first.key);
        Some(first.key)
    }

    /// How many deadlines are set: one per slab entry at most.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn nanos(&self, at: Instant) -> u64 {
        // 584 years of nanoseconds fit in a u64; deadlines are bounded by
        // the options' 10-year maximum.
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, due: u64) -> Instant {
        self.epoch + Duration::from_nanos(due)
    }

    fn index_of(&self, key: usize) -> Option<usize> {
        match self.place.get(key) {
            Some(&p) if p > 0 => Some(p as usize - 1),
            _ => None,
        }
    }

    /// Records that the entry at `i` lives there.
    fn place_at(&mut self, i: usize) {
        let key = self.heap[i].key;
        // The heap holds one entry per slab entry, far fewer than 2^32.
        self.place[key] = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].due <= self.heap[i].due {
                break;
            }
            self.heap.swap(parent, i);
            self.place_at(i);
            self.place_at(parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if left < self.heap.len() && self.heap[left].due < self.heap[smallest].due {
                smallest = left;
            }
            if right < self.heap.len() && self.heap[right].due < self.heap[smallest].due {
                smallest = right;
            }
            if smallest == i {
                break;
            }
            self.heap.swap(i, smallest);
            self.place_at(i);
            self.place_at(smallest);
            i = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pops_due_deadlines_earliest_first_and_keeps_the_rest() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timers = Timers::new(t0);
        for (ms, key) in [(30, 3), (10, 1), (20, 2)] {
            timers.set(key, at(ms));
        }
        assert_eq!(timers.next_deadline(), Some(at(10)));
        assert_eq!(timers.pop_due(timers.moment(at(5))), None);
        assert_eq!(
            timers.time_to_next(timers.moment(at(4))),
            Some(Duration::from_millis(6))
        );
        let now = timers.moment(at(25));
        let due: Vec<usize> = std::iter::from_fn(|| timers.pop_due(now)).collect();
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_deadline(), Some(at(30)));
        assert_eq!(timers.time_to_next(now), Some(Duration::from_millis(5)));
        assert_eq!(
            timers.time_to_next(timers.moment(at(31))),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn one_deadline_per_key_moved_and_cancelled_in_place() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timers = Timers::new(t0);
        timers.set(7, at(50));
        timers.set(7, at(40));
        timers.set_earlier(7, at(45));
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.deadline(7), Some(at(40)));
        timers.set_earlier(7, at(5));
        assert_eq!(timers.deadline(7), Some(at(5)));
        timers.cancel(7);
        timers.cancel(7);
        assert!(timers.is_empty());
        assert_eq!(timers.deadline(7), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(usize, u64),
        Earlier(usize, u64),
        Cancel(usize),
        Pop(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..32usize, 0..1000u64).prop_map(|(k, t)| Op::Set(k, t)),
            (0..32usize, 0..1000u64).prop_map(|(k, t)| Op::Earlier(k, t)),
            (0..32usize).prop_map(Op::Cancel),
            (0..1000u64).prop_map(Op::Pop),
        ]
    }

    proptest! {
        /// Against a model (a map from key to deadline): whatever is set,
        /// moved and cancelled, the heap holds one entry per key with a
        /// deadline, and pops them earliest first.
        #[test]
        fn the_heap_agrees_with_a_map_of_deadlines(ops in proptest::collection::vec(op(), 0..200)) {
            let t0 = Instant::now();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let mut timers = Timers::new(t0);
            let mut model = std::collections::BTreeMap::<usize, u64>::new();
            for op in ops {
                match op {
                    Op::Set(k, t) => { timers.set(k, at(t)); model.insert(k, t); }
                    Op::Earlier(k, t) => {
                        timers.set_earlier(k, at(t));
                        let e = model.entry(k).or_insert(t);
                        *e = (*e).min(t);
                    }
                    Op::Cancel(k) => { timers.cancel(k); model.remove(&k); }
                    Op::Pop(t) => {
                        let earliest = model.iter().map(|(&k, &d)| (d, k)).min();
                        match timers.pop_due(timers.moment(at(t))) {
                            Some(k) => {
                                let (d, _) = earliest.expect("popped from an empty model");
                                prop_assert!(d <= t);
                                prop_assert_eq!(model[&k], d, "popped a deadline that was not the earliest");
                                model.remove(&k);
                            }
                            None => prop_assert!(earliest.is_none_or(|(d, _)| d > t)),
                        }
                    }
                }
                prop_assert_eq!(timers.len(), model.len());
                for (&k, &d) in &model {
                    prop_assert_eq!(timers.deadline(k), Some(at(d)));
                }
            }
        }
    }
}
