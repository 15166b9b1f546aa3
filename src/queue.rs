//! Slab entries in order of age, threaded through the entries themselves.
//!
//! A loop caps how many of its sockets may be in some states at once
//! (lingering, waiting for a PROXY header, idle on the metrics endpoint),
//! and when a cap is reached it closes the oldest of them. A side list of
//! keys would need sweeping (an entry closed for another reason stays in
//! it, and later decisions count it): here each entry carries its own
//! [`Link`] to the previous and next one of its queue, so it leaves its
//! queue in O(1) the moment its state changes, and a queue's length is
//! exactly the number of entries in that state.
//!
//! An entry is in at most one queue at a time; which one is the loop's to
//! say (see `EventLoop::requeue`).

use std::num::NonZeroU32;

use slab::Slab;

/// Which queue an entry is in, and its neighbours there: 12 bytes in
/// every entry (a neighbour is its key plus one, so that "none" costs no
/// extra byte).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// The queue, or `None` when it is in none.
    queue: Option<QueueId>,
    /// The next older entry.
    older: Option<Place>,
    /// The next newer entry.
    newer: Option<Place>,
}

/// A slab key, stored as key + 1.
type Place = NonZeroU32;

fn place(key: usize) -> Option<Place> {
    u32::try_from(key)
        .ok()?
        .checked_add(1)
        .and_then(NonZeroU32::new)
}

fn key(place: Place) -> usize {
    place.get() as usize - 1
}

impl Link {
    /// The queue the entry is in, if any.
    pub fn queue(&self) -> Option<QueueId> {
        self.queue
    }
}

/// The queues a loop keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueId {
    /// Connections waiting for their PROXY header.
    AwaitingHeader,
    /// Connections lingering after their last line.
    Lingering,
    /// Metrics connections idle between requests.
    IdleMetrics,
}

/// What a slab entry must give a queue: its link.
pub trait Linked {
    /// The entry's place in whichever queue holds it.
    fn link(&mut self) -> &mut Link;
}

/// One queue: the keys of its entries, oldest first.
#[derive(Debug)]
pub struct Queue {
    id: QueueId,
    oldest: Option<Place>,
    newest: Option<Place>,
    len: usize,
}

impl Queue {
    /// An empty queue.
    pub fn new(id: QueueId) -> Queue {
        Queue {
            id,
            oldest: None,
            newest: None,
            len: 0,
        }
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key of its oldest entry.
    pub fn oldest(&self) -> Option<usize> {
        self.oldest.map(key)
    }

    /// Adds the entry at `key` as the newest (it must be in no queue).
    pub fn push<T: Linked>(&mut self, slab: &mut Slab<T>, at: usize) {
        // Slab keys stay far below 2^32: one per socket the process holds.
        let Some(k) = place(at) else {
            return;
        };
        let Some(entry) = slab.get_mut(at) else {
            return;
        };
        debug_assert!(entry.link().queue.is_none(), "already queued");
        *entry.link() = Link {
            queue: Some(self.id),
            older: self.newest,
            newer: None,
        };
        if let Some(newest) = self.newest {
            if let Some(prev) = slab.get_mut(key(newest)) {
                prev.link().newer = Some(k);
            }
        } else {
            self.oldest = Some(k);
        }
        self.newest = Some(k);
        self.len += 1;
    }

    /// Takes the entry at `key` out, if it is in this queue.
    pub fn remove<T: Linked>(&mut self, slab: &mut Slab<T>, at: usize) {
        let Some(entry) = slab.get_mut(at) else {
            return;
        };
        let link = *entry.link();
        if link.queue != Some(self.id) {
            return;
        }
        *entry.link() = Link::default();
        match link.older {
            Some(older) => {
                if let Some(e) = slab.get_mut(key(older)) {
                    e.link().newer = link.newer;
                }
            }
            None => self.oldest = link.newer,
        }
        match link.newer {
            Some(newer) => {
                if let Some(e) = slab.get_mut(key(newer)) {
                    e.link().older = link.older;
                }
            }
            None => self.newest = link.older,
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Entry(Link);

    impl Linked for Entry {
        fn link(&mut self) -> &mut Link {
            &mut self.0
        }
    }

    fn keys(queue: &Queue, slab: &mut Slab<Entry>) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = queue.oldest();
        while let Some(k) = at {
            out.push(k);
            at = slab[k].link().newer.map(super::key);
        }
        out
    }

    #[test]
    fn entries_leave_from_anywhere_and_the_oldest_comes_first() {
        let mut slab = Slab::new();
        let k: Vec<usize> = (0..5).map(|_| slab.insert(Entry::default())).collect();
        let mut queue = Queue::new(QueueId::Lingering);
        for &key in &k {
            queue.push(&mut slab, key);
        }
        assert_eq!(keys(&queue, &mut slab), k);
        queue.remove(&mut slab, k[2]);
        queue.remove(&mut slab, k[0]);
        queue.remove(&mut slab, k[4]);
        assert_eq!(keys(&queue, &mut slab), vec![k[1], k[3]]);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.oldest(), Some(k[1]));
        // Removing what is not there changes nothing.
        queue.remove(&mut slab, k[2]);
        let mut other = Queue::new(QueueId::IdleMetrics);
        other.remove(&mut slab, k[1]);
        assert_eq!(queue.len(), 2);
        queue.push(&mut slab, k[0]);
        assert_eq!(keys(&queue, &mut slab), vec![k[1], k[3], k[0]]);
    }
}
