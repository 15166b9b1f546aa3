//! Process-wide counters, reported by the `STATS` command.
//!
//! With `--threads N` the process runs N event loops, and `STATS` on any of
//! them reports the whole process. The counters live in one [`Counters`],
//! shared by the loops; each loop holds a [`Stats`], its handle onto them.
//! There are two kinds, kept two ways, and neither takes a lock on the
//! request path:
//!
//! * **Per-loop counters** (commands, bytes, buffered, paused, ...): each
//!   loop has its own set, on a cache line of its own, written only by that
//!   loop. One writer needs no read-modify-write: an update is a plain load
//!   and store of an atomic (`Relaxed`), as cheap as a plain integer, and
//!   two loops never write the same cache line. A reader sums the loops.
//! * **Admission counts** (`connections`, and its breakdown by client
//!   address for `--max-connections-per-ip`): a limit must hold across
//!   loops, so the check and the count are one step: a compare-and-swap
//!   for `--max-connections` ([`Stats::try_open_client`]), and a mutex over
//!   the per-address map. They change only when a client is admitted or
//!   leaves, never per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::guard::Grouping;
use crate::summaries::{Kind, KINDS};

/// The counters at one moment, summed over the loops. Field names are the
/// `key`s of the `STATS` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Client connections open now (admitted and not yet fully closed).
    pub connections: u64,
    /// Client connections admitted since start (`READY` was sent).
    pub accepted: u64,
    /// Connections turned away: `ERR server busy`, or too many from one
    /// address.
    pub rejected: u64,
    /// Request lines answered.
    pub commands: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Bytes held now in client buffers: unfinished input, held lines,
    /// pending output (`--max-memory` caps it).
    pub buffered: u64,
    /// Connections whose reading is paused now (backpressure).
    pub paused: u64,
    /// Failed `AUTH` attempts.
    pub auth_failures: u64,
}

/// One loop's counters, written by that loop only. Aligned to 128 bytes so
/// that two loops' counters never share a cache line (or the adjacent
/// line that x86 prefetches with it): a write by one loop does not slow
/// the other down.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LoopCounters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    commands: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    buffered: AtomicU64,
    paused: AtomicU64,
    auth_failures: AtomicU64,
    /// Clients turned away or closed by a limit, by [`Kind`].
    limit_hits: [AtomicU64; KINDS],
    tls_handshakes: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

/// Adds to a counter that only this thread writes: a load and a store, no
/// atomic read-modify-write (which would cost a locked instruction). Other
/// threads may read it at any time and see the old or the new value.
#[inline(always)]
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Subtracts from a counter that only this thread writes (see [`add`]).
#[inline(always)]
fn sub(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_sub(n), Relaxed);
}

/// What became of connections, beyond `STATS`: for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcomes {
    /// Clients turned away or closed by a limit or a timer, indexed by
    /// [`Kind::index`]: the events the summary log lines count.
    pub limit_hits: [u64; KINDS],
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (an error, or the peer left during it;
    /// a timeout counts as a `HandshakeTimeout` limit hit instead).
    pub tls_handshake_failures: u64,
}

impl Outcomes {
    /// The limit hits of `kind`.
    pub fn limit_hits(&self, kind: Kind) -> u64 {
        self.limit_hits[kind.index()]
    }
}

/// Every counter of the process: one set per loop, and the admission counts.
#[derive(Debug)]
pub struct Counters {
    /// When the server started; `uptime_s` is measured from here.
    started: Instant,
    loops: Box<[LoopCounters]>,
    /// Client connections open now, in every loop.
    connections: AtomicU64,
    /// `connections` per client address (IPv6 grouped by `grouping`); an
    /// address with none has no entry, so the map never holds more entries
    /// than there are clients.
    per_address: Mutex<HashMap<IpAddr, u64>>,
    /// Which address a client counts as (`--ipv6-prefix`).
    grouping: Grouping,
    /// `connections` per listener, by the listener's index in every loop.
    per_listener: Box<[AtomicU64]>,
}

/// A client as the admission counts know it: its address (behind a
/// balancer, the one its PROXY header carried), and the listener that
/// accepted it (its index, the same in every loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Its address, whole (the counts group IPv6 ones by prefix).
    pub ip: IpAddr,
    /// The index of the listener that accepted it.
    pub listener: usize,
}

impl Counters {
    /// Zeroed counters for `loops` event loops, the clock starting at `now`.
    pub fn new(now: Instant, loops: usize) -> Arc<Counters> {
        Counters::for_server(now, loops, Grouping::default(), 1)
    }

    /// [`Counters::new`], for a server whose clients count per address as
    /// `grouping` says, on `listeners` listeners.
    pub fn for_server(
        now: Instant,
        loops: usize,
        grouping: Grouping,
        listeners: usize,
    ) -> Arc<Counters> {
        Arc::new(Counters {
            started: now,
            loops: (0..loops.max(1)).map(|_| LoopCounters::default()).collect(),
            connections: AtomicU64::new(0),
            per_address: Mutex::new(HashMap::new()),
            grouping,
            per_listener: (0..listeners).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The handle of loop `index` (below the `loops` given to `new`).
    pub fn for_loop(self: &Arc<Counters>, index: usize) -> Stats {
        assert!(index < self.loops.len(), "no loop {index}");
        Stats {
            all: self.clone(),
            index,
        }
    }

    /// The counters now, summed over the loops. Each loop's counters are
    /// read one by one while the loops run: the sum is exact for a
    /// quiet process, and off by what changes while it is read otherwise.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            connections: self.connections.load(Relaxed),
            ..Snapshot::default()
        };
        for l in self.loops.iter() {
            s.accepted += l.accepted.load(Relaxed);
            s.rejected += l.rejected.load(Relaxed);
            s.commands += l.commands.load(Relaxed);
            s.bytes_in += l.bytes_in.load(Relaxed);
            s.bytes_out += l.bytes_out.load(Relaxed);
            s.buffered += l.buffered.load(Relaxed);
            s.paused += l.paused.load(Relaxed);
            s.auth_failures += l.auth_failures.load(Relaxed);
        }
        s
    }

    /// What became of connections, summed over the loops.
    pub fn outcomes(&self) -> Outcomes {
        let mut o = Outcomes::default();
        for l in self.loops.iter() {
            for (sum, hits) in o.limit_hits.iter_mut().zip(&l.limit_hits) {
                *sum += hits.load(Relaxed);
            }
            o.tls_handshakes += l.tls_handshakes.load(Relaxed);
            o.tls_handshake_failures += l.tls_handshake_failures.load(Relaxed);
        }
        o
    }

    /// When the server started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Bytes held in client buffers in the whole process now: what
    /// `--max-memory` caps. Asked after every call into a connection.
    #[inline]
    pub fn buffered(&self) -> u64 {
        self.loops.iter().map(|l| l.buffered.load(Relaxed)).sum()
    }

    /// The per-address map, even if a loop panicked while holding it (the
    /// map is updated in one step, so it is never left half-changed).
    fn per_address(&self) -> MutexGuard<'_, HashMap<IpAddr, u64>> {
        self.per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why [`Stats::try_open_client`] turned a client away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `--max-connections` clients are open.
    Server,
    /// `--max-connections-per-ip` clients are open from its address.
    Address,
}

/// One loop's handle onto the process's [`Counters`]: it writes that
/// loop's own counters, and reads the whole process's.
#[derive(Debug, Clone)]
pub struct Stats {
    all: Arc<Counters>,
    index: usize,
}

impl Stats {
    /// Zeroed counters for a process of one loop, the clock starting at
    /// `now` (tests and fuzz targets drive a connection with one).
    pub fn new(now: Instant) -> Stats {
        Counters::new(now, 1).for_loop(0)
    }

    /// Counters of a one-loop process holding these values (for tests of
    /// what is reported).
    pub fn holding(now: Instant, values: Snapshot) -> Stats {
        let stats = Stats::new(now);
        let mine = stats.mine();
        stats.all.connections.store(values.connections, Relaxed);
        mine.accepted.store(values.accepted, Relaxed);
        mine.rejected.store(values.rejected, Relaxed);
        mine.commands.store(values.commands, Relaxed);
        mine.bytes_in.store(values.bytes_in, Relaxed);
        mine.bytes_out.store(values.bytes_out, Relaxed);
        mine.buffered.store(values.buffered, Relaxed);
        mine.paused.store(values.paused, Relaxed);
        mine.auth_failures.store(values.auth_failures, Relaxed);
        stats
    }

    #[inline(always)]
    fn mine(&self) -> &LoopCounters {
        &self.all.loops[self.index]
    }

    /// The whole process's counters (every loop's).
    pub fn process(&self) -> &Arc<Counters> {
        &self.all
    }

    /// The whole process's counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.all.snapshot()
    }

    /// When the server started.
    pub fn started(&self) -> Instant {
        self.all.started
    }

    /// `n` request lines were answered.
    #[inline(always)]
    pub fn add_commands(&self, n: u64) {
        add(&self.mine().commands, n);
    }

    /// `n` bytes were read from a client.
    #[inline(always)]
    pub fn add_bytes_in(&self, n: u64) {
        add(&self.mine().bytes_in, n);
    }

    /// `n` bytes were written to a client.
    #[inline(always)]
    pub fn add_bytes_out(&self, n: u64) {
        add(&self.mine().bytes_out, n);
    }

    /// A connection of this loop held `before` bytes and holds `after` now.
    #[inline]
    pub fn buffered_changed(&self, before: u64, after: u64) {
        let buffered = &self.mine().buffered;
        buffered.store(
            buffered
                .load(Relaxed)
                .wrapping_sub(before)
                .wrapping_add(after),
            Relaxed,
        );
    }

    /// Bytes held in client buffers in the whole process now.
    #[inline]
    pub fn buffered(&self) -> u64 {
        self.all.buffered()
    }

    /// A connection of this loop paused its reading (`true`) or resumed it.
    pub fn paused_changed(&self, paused: bool) {
        if paused {
            add(&self.mine().paused, 1);
        } else {
            sub(&self.mine().paused, 1);
        }
    }

    /// A failed `AUTH`.
    pub fn count_auth_failure(&self) {
        add(&self.mine().auth_failures, 1);
    }

    /// A connection was turned away.
    pub fn count_rejected(&self) {
        add(&self.mine().rejected, 1);
    }

    /// A client was turned away or closed by a limit: counts it under its
    /// reason. Called wherever the loop notes the same event for the
    /// summary log lines.
    pub fn count_limit_hit(&self, kind: Kind) {
        add(&self.mine().limit_hits[kind.index()], 1);
    }

    /// A TLS handshake completed (`true`) or failed.
    pub fn count_tls_handshake(&self, completed: bool) {
        let counter = if completed {
            &self.mine().tls_handshakes
        } else {
            &self.mine().tls_handshake_failures
        };
        add(counter, 1);
    }

    /// What became of connections in the whole process.
    pub fn outcomes(&self) -> Outcomes {
        self.all.outcomes()
    }

    /// Admits `client` if both limits allow it (0 turns the per-address
    /// one off), and counts it as open, against its address and its
    /// listener; or says which limit is reached. Check and count are one
    /// step, so two loops admitting at once cannot both take the last place.
    pub fn try_open_client(
        &self,
        client: Client,
        max_connections: u64,
        max_per_address: u64,
    ) -> Result<(), Full> {
        // The process-wide count first: one compare-and-swap, no lock.
        let took_a_place = self.all.connections.fetch_update(Relaxed, Relaxed, |open| {
            (open < max_connections).then_some(open + 1)
        });
        if took_a_place.is_err() {
            return Err(Full::Server);
        }
        let key = self.all.grouping.key(client.ip);
        let mut per_address = self.all.per_address();
        let count = per_address.entry(key).or_insert(0);
        if max_per_address > 0 && *count >= max_per_address {
            if *count == 0 {
                per_address.remove(&key);
            }
            drop(per_address);
            self.all.connections.fetch_sub(1, Relaxed);
            return Err(Full::Address);
        }
        *count += 1;
        drop(per_address);
        self.count_on_listener(client, true);
        add(&self.mine().accepted, 1);
        Ok(())
    }

    /// `client` was admitted without the checks of
    /// [`Stats::try_open_client`]: it counts as open.
    pub fn client_opened(&self, client: Client) {
        self.all.connections.fetch_add(1, Relaxed);
        *self
            .all
            .per_address()
            .entry(self.all.grouping.key(client.ip))
            .or_insert(0) += 1;
        self.count_on_listener(client, true);
        add(&self.mine().accepted, 1);
    }

    /// `client` stopped counting as open (its last line is out, or it is
    /// gone). Called once per admitted client.
    pub fn client_left(&self, client: Client) {
        self.all.connections.fetch_sub(1, Relaxed);
        let key = self.all.grouping.key(client.ip);
        let mut per_address = self.all.per_address();
        if let Some(count) = per_address.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&key);
            }
        }
        drop(per_address);
        self.count_on_listener(client, false);
    }

    /// Its listener's count, shared by the loops: a read-modify-write,
    /// once per client admitted and once per client gone.
    fn count_on_listener(&self, client: Client, opened: bool) {
        if let Some(count) = self.all.per_listener.get(client.listener) {
            if opened {
                count.fetch_add(1, Relaxed);
            } else {
                count.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Client connections open now, by listener (in the listeners' order).
    pub fn per_listener(&self) -> Vec<u64> {
        self.all
            .per_listener
            .iter()
            .map(|count| count.load(Relaxed))
            .collect()
    }

    /// Client connections open now in the whole process.
    pub fn connections(&self) -> u64 {
        self.all.connections.load(Relaxed)
    }

    /// Client connections open now from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u64 {
        self.all
            .per_address()
            .get(&self.all.grouping.key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Addresses with a client connection open now.
    pub fn addresses(&self) -> usize {
        self.all.per_address().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of listener 0.
    fn client(ip: IpAddr) -> Client {
        Client { ip, listener: 0 }
    }

    #[test]
    fn per_address_counts_follow_connections_and_forget_empty_addresses() {
        let stats = Stats::new(Instant::now());
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        stats.client_opened(client(v4));
        stats.client_opened(client(mapped));
        stats.client_opened(client(v6));
        assert_eq!(stats.connections(), 3);
        assert_eq!(stats.connections_from(v4), 2);
        assert_eq!(stats.connections_from(mapped), 2);
        assert_eq!(stats.connections_from(v6), 1);
        stats.client_left(client(v4));
        stats.client_left(client(v6));
        assert_eq!(stats.connections_from(mapped), 1);
        assert_eq!(stats.addresses(), 1);
        stats.client_left(client(mapped));
        assert_eq!(stats.connections(), 0);
        assert_eq!(stats.addresses(), 0);
    }

    #[test]
    fn admission_holds_both_limits_and_leaves_no_trace_when_it_refuses() {
        let stats = Stats::new(Instant::now());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(stats.try_open_client(client(a), 3, 2), Ok(()));
        assert_eq!(stats.try_open_client(client(a), 3, 2), Ok(()));
        assert_eq!(stats.try_open_client(client(a), 3, 2), Err(Full::Address));
        assert_eq!(stats.connections(), 2, "a refusal counts nothing");
        assert_eq!(stats.try_open_client(client(b), 3, 2), Ok(()));
        assert_eq!(stats.try_open_client(client(b), 3, 2), Err(Full::Server));
        assert_eq!(stats.connections_from(b), 1);
        // 0 turns the per-address limit off.
        stats.client_left(client(b));
        assert_eq!(stats.try_open_client(client(a), 4, 0), Ok(()));
        assert_eq!(stats.connections_from(a), 3);
        assert_eq!(stats.snapshot().accepted, 4);
    }

    #[test]
    fn ipv6_clients_count_by_prefix_and_listeners_count_apart() {
        let counters = Counters::for_server(Instant::now(), 1, Grouping::default(), 2);
        let stats = counters.for_loop(0);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(stats.try_open_client(client(one), 10, 1), Ok(()));
        let second = Client {
            ip: same_64,
            listener: 1,
        };
        assert_eq!(stats.try_open_client(second, 10, 1), Err(Full::Address));
        assert_eq!(
            stats.try_open_client(
                Client {
                    ip: other_64,
                    listener: 1
                },
                10,
                1
            ),
            Ok(())
        );
        assert_eq!(stats.per_listener(), vec![1, 1]);
        stats.client_left(client(one));
        assert_eq!(stats.per_listener(), vec![0, 1]);
        assert_eq!(stats.try_open_client(second, 10, 1), Ok(()));
        assert_eq!(stats.per_listener(), vec![0, 2]);
    }

    /// Regression guard for the per-loop counters: STATS on any loop sums
    /// every loop's, and two loops racing for the last place under
    /// `--max-connections` never both get it.
    #[test]
    fn loops_share_limits_and_snapshots_sum_every_loop() {
        let counters = Counters::new(Instant::now(), 2);
        let (first, second) = (counters.for_loop(0), counters.for_loop(1));
        first.add_commands(3);
        second.add_commands(4);
        first.buffered_changed(0, 100);
        second.buffered_changed(0, 50);
        assert_eq!(counters.snapshot().commands, 7);
        assert_eq!(first.buffered(), 150);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let admitted: usize = std::thread::scope(|scope| {
            let racers: Vec<_> = [first.clone(), second.clone()]
                .into_iter()
                .map(|stats| {
                    scope.spawn(move || {
                        (0..10_000)
                            .filter(|_| stats.try_open_client(client(ip), 1_000, 0).is_ok())
                            .count()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1_000);
        assert_eq!(first.connections_from(ip), 1_000);
    }
}
