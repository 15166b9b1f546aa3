//! The plug-in point: a line protocol, served by the engine.
//!
//! The engine (sockets, event loops, framing, every limit, timers, TLS,
//! PROXY, backpressure, the careful close, shutdown, metrics, the command
//! line) cuts request lines out of the byte stream and hands each one to a
//! [`Service`], which appends its one response to an output buffer it is
//! lent. The service knows nothing of sockets; the engine knows nothing of
//! commands. loopline's own protocol is one service
//! ([`crate::protocol::Loopline`]); `examples/kv.rs` is another.
//!
//! A service in full, runnable with `nc` once served (see [`crate::serve`]
//! for the one call that gives it the whole command line):
//!
//! ```
//! use loopline::service::{After, Context, Service};
//!
//! /// Counts the lines of each connection: `COUNT` answers how many came
//! /// before it; anything else is `OK`.
//! struct Counter;
//!
//! impl Service for Counter {
//!     type Session = u64;
//!
//!     fn session(&self, _: &Context) -> u64 {
//!         0
//!     }
//!
//!     fn respond(&self, line: &[u8], seen: &mut u64, _: &Context, out: &mut Vec<u8>) -> After {
//!         *seen += 1;
//!         match line {
//!             b"COUNT" => out.extend_from_slice(format!("OK {}\n", *seen - 1).as_bytes()),
//!             b"QUIT" => {
//!                 out.extend_from_slice(b"BYE\n");
//!                 return After::Close;
//!             }
//!             _ => out.extend_from_slice(b"OK\n"),
//!         }
//!         After::KeepOpen
//!     }
//! }
//!
//! // Driven by hand here; a server would call it once per request line.
//! let stats = loopline::stats::Stats::new(std::time::Instant::now());
//! let cx = Context::new(&stats, std::time::Instant::now());
//! let mut session = Counter.session(&cx);
//! let mut out = Vec::new();
//! Counter.respond(b"HELLO", &mut session, &cx, &mut out);
//! Counter.respond(b"COUNT", &mut session, &cx, &mut out);
//! assert_eq!(out, b"OK\nOK 1\n");
//! ```
//!
//! What the engine guarantees a service:
//!
//! * `respond` gets one complete line: the LF and one CR before it
//!   removed, at most `--max-line` bytes, raw bytes (never checked for
//!   UTF-8). It is called once per line, in order, and never after a
//!   response that said [`After::Close`].
//! * The output buffer it is lent has room for
//!   [`Service::longest_response`] bytes; the engine sends what the service
//!   appended, in order, whatever the socket takes at a time, and holds the
//!   connection's reading while too much waits (`--max-output`,
//!   `--max-memory`). No allocation per request is needed: the buffer is
//!   the loop's, lent.
//! * Every connection of every loop (`--threads`) is served by the one
//!   instance: shared state is the service's own, behind the locks or
//!   atomics it chooses (`Send + Sync`). A session is one connection's,
//!   and only ever touched by the loop that holds it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::guard::Guards;
use crate::stats::{Snapshot, Stats};
use crate::token::AuthToken;

/// A line protocol. See the [module documentation](self).
pub trait Service: Send + Sync + 'static {
    /// What the protocol remembers about one connection between its lines.
    /// It lives inside the connection's entry in the loop: every open
    /// connection, idle ones included, holds one, so keep it small (a few
    /// bytes; box what is large and rare).
    type Session: Send + 'static;

    /// The session of a connection just accepted (on a `proxy` listener,
    /// before its header is read; over TLS, before its handshake). Every
    /// socket the loop holds as a connection gets one, those being turned
    /// away and metrics connections included, which never see a
    /// [`Service::respond`]: make it cheap, and count clients elsewhere.
    fn session(&self, cx: &Context) -> Self::Session;

    /// Answers one request line: appends exactly one response, ending in
    /// LF, to `out` (after what is there already: never clear it), and
    /// says whether the connection goes on. At most
    /// [`Service::longest_response`] bytes.
    fn respond(
        &self,
        line: &[u8],
        session: &mut Self::Session,
        cx: &Context,
        out: &mut Vec<u8>,
    ) -> After;

    /// The first line every admitted client gets: `READY` by default.
    fn greeting(&self) -> &[u8] {
        GREETING
    }

    /// The line the engine sends for `notice`, a refusal or a close it
    /// decides on its own: loopline's lines by default ([`Notice::line`]).
    fn notice(&self, notice: Notice) -> &[u8] {
        notice.line()
    }

    /// The most bytes one response may take, with `--max-line` at
    /// `max_line`: the engine makes that much room before each call, and
    /// its memory bounds count on it. The default, `max_line + 64` and at
    /// least 512, covers an answer that echoes its request line.
    fn longest_response(&self, max_line: usize) -> usize {
        crate::limits::echoing_response(max_line)
    }

    /// Why a connection ended after a response that said [`After::Close`],
    /// in a few words for the `debug` close line (`client sent QUIT`),
    /// from what its session says. Asked once, when the connection is
    /// removed; the session is not kept for it (a connection's entry stays
    /// small).
    fn close_reason(&self, session: &Self::Session) -> &'static str {
        let _ = session;
        CLOSED_BY_THE_SERVICE
    }

    /// Whether the protocol authenticates clients with the `--auth-file`
    /// token ([`Context::token`]). A service that does not makes
    /// `--auth-file` a usage error: a token nobody checks would be a false
    /// sense of safety.
    fn authenticates(&self) -> bool {
        false
    }
}

/// What the connection does after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Go on reading requests.
    KeepOpen,
    /// That was the connection's last line: nothing after it is executed;
    /// the engine sends what is pending, then closes carefully. Why, in the
    /// `debug` close line, is [`Service::close_reason`]'s to say.
    Close,
}

/// A refusal or a close the engine decides, and sends a line for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Instead of the greeting: `--max-connections` are open.
    Busy,
    /// Instead of the greeting: `--max-connections-per-ip` are open from
    /// the client's address.
    TooManyFromAddress,
    /// Instead of the greeting: the address opened
    /// `--max-connection-rate-per-ip` connections within the last second.
    ConnectingTooFast,
    /// Instead of the greeting: the address failed authentication
    /// `--max-auth-failures-per-ip` times.
    TooManyAuthFailures,
    /// Before the close: no complete request for `--idle-timeout`.
    IdleTimeout,
    /// Before the close: a request line passed `--max-line`.
    LineTooLong,
    /// Before the close: a graceful shutdown, after every response due.
    ShuttingDown,
}

/// The close reason a service gives by default ([`Service::close_reason`]).
pub const CLOSED_BY_THE_SERVICE: &str = "closed by the protocol after its last line";

/// The greeting, by default.
pub const GREETING: &[u8] = b"READY\n";

impl Notice {
    /// Every notice, for what must hold of them all.
    const ALL: [Notice; 7] = [
        Notice::Busy,
        Notice::TooManyFromAddress,
        Notice::ConnectingTooFast,
        Notice::TooManyAuthFailures,
        Notice::IdleTimeout,
        Notice::LineTooLong,
        Notice::ShuttingDown,
    ];

    /// loopline's line for it, the default of [`Service::notice`].
    pub fn line(self) -> &'static [u8] {
        match self {
            Notice::Busy => b"ERR server busy\n",
            Notice::TooManyFromAddress => b"ERR too many connections from your address\n",
            Notice::ConnectingTooFast => b"ERR connecting too fast\n",
            Notice::TooManyAuthFailures => b"ERR too many auth failures\n",
            Notice::IdleTimeout => b"ERR idle timeout\n",
            Notice::LineTooLong => b"ERR line too long\n",
            Notice::ShuttingDown => b"ERR server shutting down\n",
        }
    }
}

/// What a service may look at, or count, while it answers: the same for
/// every line of a batch (the engine builds it once per read).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    token: Option<&'a AuthToken>,
    stats: &'a Stats,
    now: Instant,
    client: IpAddr,
    guards: &'a Guards,
}

/// The guards of a context outside a server: none.
static NO_GUARDS: Guards = Guards::OFF;

impl<'a> Context<'a> {
    /// A context outside a server, for tests and benchmarks of a service:
    /// no token, the unspecified client address, no per-address rule.
    pub fn new(stats: &'a Stats, now: Instant) -> Context<'a> {
        Context::with_token(None, stats, now)
    }

    /// [`Context::new`], with the server's token.
    pub fn with_token(token: Option<&'a AuthToken>, stats: &'a Stats, now: Instant) -> Context<'a> {
        Context {
            token,
            stats,
            now,
            client: IpAddr::from([0, 0, 0, 0]),
            guards: &NO_GUARDS,
        }
    }

    /// The engine's: a context for a client of a running server.
    pub(crate) fn serving(
        token: Option<&'a AuthToken>,
        stats: &'a Stats,
        now: Instant,
        client: IpAddr,
        guards: &'a Guards,
    ) -> Context<'a> {
        Context {
            token,
            stats,
            now,
            client,
            guards,
        }
    }

    /// The time of this turn of the loop (read once per turn, after
    /// `poll`): cheap to ask, and the same for every line of a batch.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The client's address. In [`Service::respond`], behind a balancer,
    /// the one its PROXY header carried; in [`Service::session`] on a
    /// `proxy` listener, the balancer's (the header is not read yet).
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The `--auth-file` token as it is now (SIGHUP may replace it), `None`
    /// when authentication is off. Compare with [`AuthToken::matches`],
    /// which takes constant time.
    pub fn token(&self) -> Option<&'a AuthToken> {
        self.token
    }

    /// The whole process's counters (every loop's, summed), as `STATS`
    /// reports them.
    pub fn counters(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// How long the server has run.
    pub fn uptime(&self) -> Duration {
        self.now.saturating_duration_since(self.stats.started())
    }

    /// Whether the client's address is refused for its failed
    /// authentications (`--max-auth-failures-per-ip`): if so, answer the
    /// attempt with [`Notice::TooManyAuthFailures`]'s line and close, and do
    /// not look at the token. The first refusal of a period logs the warn
    /// line fail2ban reads.
    pub fn auth_refused(&self) -> bool {
        self.guards.auth_refused(self.client, self.now)
    }

    /// The client failed an authentication: counts in STATS
    /// `auth_failures`, and for its address (`--max-auth-failures-per-ip`).
    pub fn auth_failed(&self) {
        self.stats.count_auth_failure();
        self.guards.auth_failed(self.client, self.now);
    }
}

/// The longest line the engine may write for `service` in one go, with
/// `--max-line` at `max_line`: its longest response, its greeting or one of
/// its notices, whichever is longest. Room for it is made before each, and
/// the output buffer's bound counts it, so that a long greeting cannot grow
/// the buffer past that bound.
pub(crate) fn longest_line<S: Service>(service: &S, max_line: usize) -> usize {
    Notice::ALL
        .iter()
        .map(|&notice| service.notice(notice).len())
        .chain([service.longest_response(max_line), service.greeting().len()])
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service whose greeting is longer than any of its responses.
    struct Banner;

    impl Service for Banner {
        type Session = ();
        fn session(&self, _: &Context) {}
        fn respond(&self, _: &[u8], _: &mut (), _: &Context, out: &mut Vec<u8>) -> After {
            out.extend_from_slice(b"OK\n");
            After::KeepOpen
        }
        fn greeting(&self) -> &[u8] {
            &[b'*'; 300]
        }
        fn longest_response(&self, _: usize) -> usize {
            3
        }
    }

    /// Caught in review: the greeting was written without room made for
    /// it, so a long one grew the output buffer past its bound.
    #[test]
    fn the_longest_line_counts_the_greeting_and_the_notices() {
        assert_eq!(longest_line(&Banner, 16), 300);
        let lines = crate::protocol::Loopline;
        assert_eq!(
            longest_line(&lines, 1024),
            crate::limits::echoing_response(1024)
        );
        // With a tiny --max-line, the longest notice is longer than a response.
        let longest_notice = Notice::ALL.iter().map(|n| n.line().len()).max().unwrap();
        assert!(longest_line(&lines, 1) >= longest_notice);
    }
}
