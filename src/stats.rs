//! Server-wide counters, reported by the `STATS` command.
//!
//! Plain integers: the server is one thread, so nothing here needs to be
//! atomic. The event loop updates them; the protocol reads them (and counts
//! failed `AUTH` attempts). Beside them, the breakdown of `connections` by
//! client address, which `--max-connections-per-ip` checks: both change
//! together, in [`Stats::client_opened`] and [`Stats::client_left`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Counters since the server started. Field names are the `key`s of the
/// `STATS` reply.
#[derive(Debug, Clone)]
pub struct Stats {
    /// When the server started; `uptime_s` is measured from here.
    pub started: Instant,
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
    /// `connections` per client address; an address with none has no entry,
    /// so the map never holds more entries than there are clients.
    per_address: HashMap<IpAddr, u64>,
}

impl Stats {
    /// Zeroed counters, with the clock starting at `now`.
    pub fn new(now: Instant) -> Stats {
        Stats {
            started: now,
            connections: 0,
            accepted: 0,
            rejected: 0,
            commands: 0,
            bytes_in: 0,
            bytes_out: 0,
            buffered: 0,
            paused: 0,
            auth_failures: 0,
            per_address: HashMap::new(),
        }
    }

    /// A client connection from `ip` was admitted: it counts as open.
    pub fn client_opened(&mut self, ip: IpAddr) {
        self.connections += 1;
        *self.per_address.entry(same_host(ip)).or_insert(0) += 1;
    }

    /// A client connection from `ip` stopped counting as open (its last
    /// line is out, or it is gone). Called once per `client_opened`.
    pub fn client_left(&mut self, ip: IpAddr) {
        self.connections -= 1;
        let ip = same_host(ip);
        if let Some(count) = self.per_address.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&ip);
            }
        }
    }

    /// Client connections open now from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u64 {
        self.per_address.get(&same_host(ip)).copied().unwrap_or(0)
    }

    /// Addresses with a client connection open now.
    pub fn addresses(&self) -> usize {
        self.per_address.len()
    }
}

/// An IPv4 client reaching an IPv6 socket shows up as `::ffff:a.b.c.d`:
/// count it as the IPv4 address it is.
fn same_host(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_follow_connections_and_forget_empty_addresses() {
        let mut stats = Stats::new(Instant::now());
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        stats.client_opened(v4);
        stats.client_opened(mapped);
        stats.client_opened(v6);
        assert_eq!(stats.connections, 3);
        assert_eq!(stats.connections_from(v4), 2);
        assert_eq!(stats.connections_from(mapped), 2);
        assert_eq!(stats.connections_from(v6), 1);
        stats.client_left(v4);
        stats.client_left(v6);
        assert_eq!(stats.connections_from(mapped), 1);
        assert_eq!(stats.addresses(), 1);
        stats.client_left(mapped);
        assert_eq!(stats.connections, 0);
        assert_eq!(stats.addresses(), 0);
    }
}
