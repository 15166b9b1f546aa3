//! Server-wide counters, reported by the `STATS` command.
//!
//! Plain integers: the server is one thread, so nothing here needs to be
//! atomic. The event loop updates them; the protocol only reads them.

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
    /// Connections turned away with `ERR server busy`.
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
    /// Failed `AUTH` attempts (authentication is not configurable yet, so
    /// this stays 0; the key is part of the reply already).
    pub auth_failures: u64,
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
        }
    }
}
