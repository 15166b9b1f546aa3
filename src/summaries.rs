//! Rate-limited log lines for clients turned away or closed by a limit or a
//! timer, so an operator sees refusals at the default level without a flood
//! of lines: at most one line per kind per [`SUMMARY_WINDOW`], with the
//! count and the limit that caused them, e.g.
//!
//! ```text
//! turned away 137 connection(s) in 10 s: server busy (--max-connections 10000)
//! ```
//!
//! The first event of a quiet period is logged at once; the ones that follow
//! within the window are counted and summed in one line when it ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

/// At most one line per kind this often.
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(10);

/// What happened to the clients a line counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Turned away: `--max-connections` were open.
    Busy,
    /// Turned away: `--max-connections-per-ip` were open from its address.
    TooManyFromAddress,
    /// Turned away: the process had no descriptor left.
    OutOfDescriptors,
    /// Closed: a request line passed `--max-line`.
    LineTooLong,
    /// Closed: no complete request for `--idle-timeout`.
    IdleTimeout,
    /// Closed: the peer took no bytes for `--write-timeout`.
    WriteTimeout,
    /// Closed: a TLS handshake not finished in `--handshake-timeout`.
    HandshakeTimeout,
    /// Closed at once: a peer outside `--proxy-from` on a `proxy` listener.
    UntrustedBalancer,
    /// Turned away: `--max-connection-rate-per-ip` from its address.
    ConnectingTooFast,
    /// Turned away: its address failed `AUTH` `--max-auth-failures-per-ip`
    /// times.
    AuthFailures,
}

/// How many kinds there are.
pub const KINDS: usize = 10;

impl Kind {
    /// Every kind, in the order of [`Kind::index`].
    pub const ALL: [Kind; KINDS] = [
        Kind::Busy,
        Kind::TooManyFromAddress,
        Kind::OutOfDescriptors,
        Kind::LineTooLong,
        Kind::IdleTimeout,
        Kind::WriteTimeout,
        Kind::HandshakeTimeout,
        Kind::UntrustedBalancer,
        Kind::ConnectingTooFast,
        Kind::AuthFailures,
    ];

    /// Its place among the kinds, from 0 to `KINDS - 1`.
    pub fn index(self) -> usize {
        self as usize
    }

    fn verb(self) -> &'static str {
        match self {
            Kind::Busy
            | Kind::TooManyFromAddress
            | Kind::OutOfDescriptors
            | Kind::UntrustedBalancer
            | Kind::ConnectingTooFast
            | Kind::AuthFailures => "turned away",
            _ => "closed",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Events not yet logged.
    count: u64,
    /// When the first of them happened.
    since: Option<Instant>,
    /// When this kind's last line was logged.
    last_line: Option<Instant>,
    /// The client of the latest event, when the socket's peer does not
    /// say it: behind a balancer, the address a refusal's PROXY header
    /// carried.
    last_client: Option<SocketAddr>,
}

/// The tallies, one per kind, and what each line says the limit is.
#[derive(Debug)]
pub struct Summaries {
    tallies: [Tally; KINDS],
    /// Per kind: the cause and its limit, e.g. `server busy (--max-connections 10000)`.
    causes: [String; KINDS],
}

impl Summaries {
    /// Tallies for a server whose limits `cause` describes, once at start:
    /// `cause(Kind::Busy)` is `server busy (--max-connections 10000)`.
    pub fn new(cause: impl Fn(Kind) -> String) -> Summaries {
        Summaries {
            tallies: [Tally::default(); KINDS],
            causes: Kind::ALL.map(cause),
        }
    }

    /// [`Summaries::note`], for a client behind a balancer: the line names
    /// the last such client (`; the last from 203.0.113.7, by its PROXY
    /// header`).
    pub fn note_client(&mut self, kind: Kind, client: SocketAddr, now: Instant) {
        self.count(kind, Some(client), now);
    }

    /// Counts one event; logs at once if this kind has been quiet for a window.
    pub fn note(&mut self, kind: Kind, now: Instant) {
        self.count(kind, None, now);
    }

    /// Counts one event, whose client is `client` if the socket's peer does
    /// not say it: a later event from a direct client forgets the last
    /// balancer's client, or the line would name one that was not the last.
    fn count(&mut self, kind: Kind, client: Option<SocketAddr>, now: Instant) {
        let tally = &mut self.tallies[kind.index()];
        tally.last_client = client;
        tally.count += 1;
        tally.since.get_or_insert(now);
        self.log_due(now);
    }

    /// Whether some count waits for its window to pass.
    pub fn waiting(&self) -> bool {
        self.tallies.iter().any(|t| t.count > 0)
    }

    /// When the next line is due, for the loop's `poll` timeout.
    pub fn next_due(&self) -> Option<Instant> {
        self.tallies
            .iter()
            .filter(|t| t.count > 0)
            .filter_map(|t| t.last_line.map(|at| at + SUMMARY_WINDOW))
            .min()
    }

    /// Logs every kind whose count is waiting and whose window has passed.
    pub fn log_due(&mut self, now: Instant) {
        self.log(now, false);
    }

    /// Logs every count still waiting, window or not: the server is
    /// stopping, and a count that waited for its window would be lost.
    pub fn log_all(&mut self, now: Instant) {
        self.log(now, true);
    }

    fn log(&mut self, now: Instant, whatever_the_window: bool) {
        for (index, tally) in self.tallies.iter_mut().enumerate() {
            let window_open = tally.last_line.is_some_and(|at| now < at + SUMMARY_WINDOW);
            if tally.count == 0 || (window_open && !whatever_the_window) {
                continue;
            }
            let from = tally.last_line.or(tally.since).unwrap_or(now);
            // Whole seconds, rounded up: "in 0 s" would read as nothing.
            let secs = now
                .saturating_duration_since(from)
                .as_secs_f64()
                .ceil()
                .max(1.0);
            let last = match tally.last_client {
                Some(client) => format!("; the last from {}, by its PROXY header", client.ip()),
                None => String::new(),
            };
            info!(
                "{} {} connection(s) in {secs} s: {}{last}",
                Kind::ALL[index].verb(),
                tally.count,
                self.causes[index]
            );
            *tally = Tally {
                last_line: Some(now),
                ..Tally::default()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summaries() -> Summaries {
        Summaries::new(|kind| format!("{kind:?}"))
    }

    #[test]
    fn first_event_logs_at_once_then_one_line_per_window() {
        let t0 = Instant::now();
        let mut s = summaries();
        s.note(Kind::Busy, t0);
        assert_eq!(s.tallies[0].count, 0, "logged at once");
        assert_eq!(s.next_due(), None);
        for i in 0..5 {
            s.note(Kind::Busy, t0 + Duration::from_secs(i + 1));
        }
        assert_eq!(s.tallies[0].count, 5, "held for the window");
        assert_eq!(s.next_due(), Some(t0 + SUMMARY_WINDOW));
        s.log_due(t0 + SUMMARY_WINDOW);
        assert_eq!(s.tallies[0].count, 0);
        assert_eq!(s.next_due(), None);
        // A count still waiting when the server stops is logged anyway.
        s.note(Kind::Busy, t0 + SUMMARY_WINDOW + Duration::from_secs(1));
        assert_eq!(s.tallies[0].count, 1);
        s.log_all(t0 + SUMMARY_WINDOW + Duration::from_secs(2));
        assert_eq!(s.tallies[0].count, 0);
    }

    #[test]
    fn kinds_are_counted_apart_and_in_order() {
        for (i, kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        let t0 = Instant::now();
        let mut s = summaries();
        s.note(Kind::IdleTimeout, t0);
        s.note(Kind::IdleTimeout, t0);
        s.note(Kind::WriteTimeout, t0);
        assert_eq!(s.tallies[Kind::IdleTimeout.index()].count, 1);
        assert_eq!(s.tallies[Kind::WriteTimeout.index()].count, 0);
    }

    /// Caught in review: a direct client after one behind a balancer left
    /// the balancer's client named as "the last".
    #[test]
    fn the_last_client_named_is_the_last_events() {
        let t0 = Instant::now();
        let mut s = summaries();
        s.note(Kind::Busy, t0); // logged at once: the window opens
        let behind: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        s.note_client(Kind::Busy, behind, t0);
        assert_eq!(s.tallies[0].last_client, Some(behind));
        s.note(Kind::Busy, t0);
        assert_eq!(s.tallies[0].last_client, None);
    }
}
