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

use crate::summaries::Kind;

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
    /// Turned away because `--max-connections` were open (or the server
    /// held its whole budget of sockets). Like the six below, one reason
    /// of the metrics' limit hits; `rejected` sums the first three.
    pub turned_away_busy: u64,
    /// Turned away by `--max-connections-per-ip`.
    pub turned_away_per_address: u64,
    /// Turned away because the process had no descriptor left.
    pub turned_away_out_of_descriptors: u64,
    /// Closed: a request line passed `--max-line`.
    pub closed_line_too_long: u64,
    /// Closed: `--idle-timeout`.
    pub closed_idle_timeout: u64,
    /// Closed: `--write-timeout`.
    pub closed_write_timeout: u64,
    /// Closed: `--handshake-timeout`.
    pub closed_handshake_timeout: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (an error, or the peer left during it;
    /// a timeout counts in `closed_handshake_timeout` instead).
    pub tls_handshake_failures: u64,
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
            turned_away_busy: 0,
            turned_away_per_address: 0,
            turned_away_out_of_descriptors: 0,
            closed_line_too_long: 0,
            closed_idle_timeout: 0,
            closed_write_timeout: 0,
            closed_handshake_timeout: 0,
            tls_handshakes: 0,
            tls_handshake_failures: 0,
        }
    }

    /// A client was turned away or closed by a limit: counts it under its
    /// reason. Called wherever the loop notes the same event for the log
    /// summaries.
    pub fn count_limit_hit(&mut self, kind: Kind) {
        let counter = match kind {
            Kind::Busy => &mut self.turned_away_busy,
            Kind::TooManyFromAddress => &mut self.turned_away_per_address,
            Kind::OutOfDescriptors => &mut self.turned_away_out_of_descriptors,
            Kind::LineTooLong => &mut self.closed_line_too_long,
            Kind::IdleTimeout => &mut self.closed_idle_timeout,
            Kind::WriteTimeout => &mut self.closed_write_timeout,
            Kind::HandshakeTimeout => &mut self.closed_handshake_timeout,
        };
        *counter += 1;
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
