//! The loopline protocol: one request line in, one response line out.
//!
//! This module knows nothing of sockets, buffers or timers. It is handed a
//! complete request line (LF and CR already removed by [`crate::framing`])
//! and appends exactly one response line, ending in LF, to `out`. The exact
//! bytes are the contract of docs/protocol.md.
//!
//! Authentication is part of the protocol: what a connection may do depends
//! on its [`Session`] (has it sent the right `AUTH` yet?) and on the server's
//! [`AuthToken`], if `--auth-file` gave one. Both are handed in by the caller.

use std::fmt;
use std::hint::black_box;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use crate::guard::Guards;
use crate::stats::Stats;

/// Every command, as `HELP` lists them when authentication is off.
pub const HELP_REPLY: &[u8] = b"OK commands: PING ECHO QUIT HELP STATS\n";
/// The same, with `--auth-file`: `AUTH` is a command too.
pub const HELP_REPLY_WITH_AUTH: &[u8] = b"OK commands: PING ECHO QUIT HELP STATS AUTH\n";

/// The greeting sent on accept.
pub const GREETING: &[u8] = b"READY\n";
/// Sent instead of the greeting when `--max-connections` are open; then close.
pub const BUSY: &[u8] = b"ERR server busy\n";
/// Sent when a request line passes `--max-line`; then close.
pub const LINE_TOO_LONG: &[u8] = b"ERR line too long\n";
/// Sent after `--idle-timeout` without a complete request; then close.
pub const IDLE_TIMEOUT: &[u8] = b"ERR idle timeout\n";
/// Sent on graceful shutdown after every response already due; then close.
pub const SHUTTING_DOWN: &[u8] = b"ERR server shutting down\n";
/// Sent instead of the greeting when the client's address already has
/// `--max-connections-per-ip` connections open; then close.
pub const TOO_MANY_FROM_ADDRESS: &[u8] = b"ERR too many connections from your address\n";
/// Sent instead of the greeting when the client's address opened
/// `--max-connection-rate-per-ip` connections within the last second.
pub const CONNECTING_TOO_FAST: &[u8] = b"ERR connecting too fast\n";
/// The answer to the `AUTH` that is one failure too many (for the
/// connection, or for its address), and the line a new connection from an
/// address refused for its failures gets instead of the greeting; then
/// close.
pub const TOO_MANY_AUTH_FAILURES: &[u8] = b"ERR too many auth failures\n";

/// Failed `AUTH` attempts a connection may make; the last of them is
/// answered with `ERR too many auth failures` and closes it.
pub const MAX_AUTH_FAILURES: u8 = 3;

/// The shared secret of `--auth-file`: never empty, never logged (its
/// `Debug` shows no byte of it).
/// No `PartialEq`: the only comparison is [`AuthToken::matches`].
#[derive(Clone)]
pub struct AuthToken(Box<[u8]>);

impl AuthToken {
    /// A token of these bytes; `None` if there are none.
    pub fn new(bytes: &[u8]) -> Option<AuthToken> {
        (!bytes.is_empty()).then(|| AuthToken(bytes.into()))
    }

    /// Whether `given` is the token, in time that does not depend on where
    /// the two first differ: every byte of the token is compared, and the
    /// differences are OR-ed together, with no early exit. `black_box`
    /// keeps the compiler from turning the loop back into one that stops
    /// at the first difference. The time depends only on the token's
    /// length (the server's own, fixed) and on whether `given` is shorter
    /// (a branch on its length, never on its content).
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut difference = u8::from(self.0.len() != given.len());
        for (i, &expected) in self.0.iter().enumerate() {
            let byte = given.get(i).copied().unwrap_or(0);
            difference = black_box(difference | (expected ^ byte));
        }
        difference == 0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<hidden>)")
    }
}

/// What the protocol remembers about one connection between its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// `PING`, `ECHO` and `STATS` may run: authentication is off, or this
    /// connection sent the right token. Set from the start when it is off,
    /// so that the check costs one branch per request either way.
    pub cleared: bool,
    /// Failed `AUTH` attempts so far; set to [`MAX_AUTH_FAILURES`] when an
    /// `AUTH` is refused for its address's failures, which ends the
    /// connection the same way.
    pub auth_failures: u8,
}

impl Session {
    /// A new connection's session: cleared at once if no token is required.
    pub fn new(token: Option<&AuthToken>) -> Session {
        Session {
            cleared: token.is_none(),
            auth_failures: 0,
        }
    }

    /// Whether its last `AUTH` failure closed it.
    pub fn failed_too_often(&self) -> bool {
        self.auth_failures >= MAX_AUTH_FAILURES
    }
}

/// What answering a line may look at besides the line and the session:
/// the same for every line of a batch, so the connection builds it once.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The `--auth-file` token as it is now, `None` when authentication is
    /// off.
    pub token: Option<&'a AuthToken>,
    /// Server-wide counters: read for `STATS`; a failed `AUTH` counts in
    /// `auth_failures`.
    pub stats: &'a Stats,
    /// The time of this loop turn, for `STATS`'s uptime and the guards.
    pub now: Instant,
    /// The client's address (behind a balancer: the one its PROXY header
    /// carried), for the per-address `AUTH` failure count.
    pub client: IpAddr,
    /// The per-address rules (`--max-auth-failures-per-ip`).
    pub guards: &'a Guards,
}

impl<'a> Context<'a> {
    /// A context with authentication off: no token, and no per-address
    /// rule (benchmarks, fuzzing, tests).
    pub fn without_auth(stats: &'a Stats, now: Instant) -> Context<'a> {
        Context::with_token(None, stats, now)
    }

    /// A context with this token and no per-address rule, for a client on
    /// the unspecified address.
    pub fn with_token(token: Option<&'a AuthToken>, stats: &'a Stats, now: Instant) -> Context<'a> {
        Context {
            token,
            stats,
            now,
            client: IpAddr::from([0, 0, 0, 0]),
            guards: &NO_GUARDS,
        }
    }
}

/// The guards of a context that has none.
static NO_GUARDS: Guards = Guards::OFF;

/// What the connection does after the response has been queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Go on reading requests.
    KeepOpen,
    /// That was the last line (`BYE`): execute nothing more, flush, close.
    Close,
}

/// The commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Ping,
    Echo,
    Quit,
    Help,
    Stats,
    Auth,
}

impl Command {
    /// Recognises a command name in any case (`ping`, `Ping`, `PING`).
    ///
    /// An ASCII letter and its capital differ only in bit 0x20, and no other
    /// byte with that bit set equals a lowercase letter; so OR-ing 0x20 into
    /// every byte of an all-letter name folds its case exactly, and the name
    /// is compared as one integer instead of byte by byte.
    fn from_name(name: &[u8]) -> Option<Command> {
        const FOLD4: u32 = 0x2020_2020;
        if let Ok(four) = <[u8; 4]>::try_from(name) {
            return match u32::from_le_bytes(four) | FOLD4 {
                w if w == u32::from_le_bytes(*b"ping") => Some(Command::Ping),
                w if w == u32::from_le_bytes(*b"echo") => Some(Command::Echo),
                w if w == u32::from_le_bytes(*b"quit") => Some(Command::Quit),
                w if w == u32::from_le_bytes(*b"help") => Some(Command::Help),
                w if w == u32::from_le_bytes(*b"auth") => Some(Command::Auth),
                _ => None,
            };
        }
        name.eq_ignore_ascii_case(b"STATS")
            .then_some(Command::Stats)
    }
}

/// Answers one request line. Appends exactly one line ending in `\n` to `out`.
///
/// `session` is the connection's, `token` the server's (`None` when
/// authentication is off). `stats` is read for `STATS`, and counts a
/// failed `AUTH` in `auth_failures`; `now` is read for `STATS`.
///
/// Inlined into the connection's loop over lines, by force: with its eight
/// machine words of arguments, a call passes two on the stack, and the
/// compiler, left to the `#[inline]` hint, has called it: 23 instructions
/// more per pipelined `PING` (217 against 240, by `scripts/instructions.sh`).
#[inline(always)]
pub fn respond(line: &[u8], session: &mut Session, context: &Context, out: &mut Vec<u8>) -> After {
    // When authentication is off, `cleared` is always set: this is the one
    // branch it costs per request.
    if !session.cleared && waits_for_auth(line) {
        out.extend_from_slice(b"ERR auth required\n");
        return After::KeepOpen;
    }
    if line.is_empty() {
        out.extend_from_slice(b"ERR empty command\n");
        return After::KeepOpen;
    }
    // Split at the first space: the name, and (if there was a space) the rest.
    // `rest` is raw bytes, passed through verbatim: never UTF-8 checked.
    let (name, rest) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], Some(&line[sp + 1..])),
        None => (line, None),
    };
    let Some(command) = Command::from_name(name) else {
        out.extend_from_slice(b"ERR unknown command\n");
        return After::KeepOpen;
    };
    match (command, rest) {
        (Command::Echo, Some(text)) => {
            out.reserve(text.len() + 4);
            out.extend_from_slice(b"OK ");
            out.extend_from_slice(text);
            out.push(b'\n');
        }
        (Command::Echo, None) => out.extend_from_slice(b"ERR usage: ECHO <text>\n"),
        // `AUTH` takes everything after the first space, or nothing.
        (Command::Auth, given) => return authenticate(given, session, context, out),
        // The others take no argument. A trailing space counts as one
        // (`PING ` is not `PING`), just as `ECHO ` differs from `ECHO`.
        (_, Some(_)) => {
            out.extend_from_slice(b"ERR usage: ");
            out.extend_from_slice(name);
            out.extend_from_slice(b" takes no argument\n");
        }
        (Command::Ping, None) => out.extend_from_slice(b"PONG\n"),
        (Command::Quit, None) => {
            out.extend_from_slice(b"BYE\n");
            return After::Close;
        }
        (Command::Help, None) => out.extend_from_slice(match context.token {
            Some(_) => HELP_REPLY_WITH_AUTH,
            None => HELP_REPLY,
        }),
        (Command::Stats, None) => write_stats(context.stats, context.now, out),
    }
    After::KeepOpen
}

/// Whether `line` is a command that must wait for authentication: `PING`,
/// `ECHO` or `STATS`, whatever their arguments. Only asked on a connection
/// that has not authenticated, so it does not slow the others down.
#[cold]
#[inline(never)]
fn waits_for_auth(line: &[u8]) -> bool {
    let name = line.split(|&b| b == b' ').next().unwrap_or(line);
    matches!(
        Command::from_name(name),
        Some(Command::Ping | Command::Echo | Command::Stats)
    )
}

/// `AUTH`, with `given` the text after its space (`None`: no space at all).
/// A match clears the session; anything else, a missing token included, is
/// a failure, and the [`MAX_AUTH_FAILURES`]th closes the connection. A
/// failure after a success counts the same, but does not undo the success.
#[cold]
#[inline(never)]
fn authenticate(
    given: Option<&[u8]>,
    session: &mut Session,
    context: &Context,
    out: &mut Vec<u8>,
) -> After {
    let Some(token) = context.token else {
        out.extend_from_slice(b"ERR auth not enabled\n");
        return After::KeepOpen;
    };
    // Its address failed too often (on any connection): not even a right
    // token is looked at until the period is over.
    if context.guards.auth_refused(context.client, context.now) {
        session.auth_failures = MAX_AUTH_FAILURES;
        out.extend_from_slice(TOO_MANY_AUTH_FAILURES);
        return After::Close;
    }
    if given.is_some_and(|given| token.matches(given)) {
        session.cleared = true;
        out.extend_from_slice(b"OK\n");
        return After::KeepOpen;
    }
    context.stats.count_auth_failure();
    context.guards.auth_failed(context.client, context.now);
    session.auth_failures = session.auth_failures.saturating_add(1);
    if session.failed_too_often() {
        out.extend_from_slice(TOO_MANY_AUTH_FAILURES);
        return After::Close;
    }
    out.extend_from_slice(b"ERR invalid token\n");
    After::KeepOpen
}

fn write_stats(stats: &Stats, now: Instant, out: &mut Vec<u8>) {
    let uptime = now.saturating_duration_since(stats.started()).as_secs();
    // The whole process's counters, every loop's summed.
    let stats = stats.snapshot();
    // Writing into a Vec cannot fail.
    let _ = writeln!(
        out,
        "OK connections={} accepted={} rejected={} commands={} bytes_in={} bytes_out={} uptime_s={} \
         buffered={} paused={} auth_failures={}",
        stats.connections,
        stats.accepted,
        stats.rejected,
        stats.commands,
        stats.bytes_in,
        stats.bytes_out,
        uptime,
        stats.buffered,
        stats.paused,
        stats.auth_failures
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &[u8]) -> (Vec<u8>, After) {
        let now = Instant::now();
        let stats = Stats::new(now);
        let mut session = Session::new(None);
        let mut out = Vec::new();
        let after = respond(
            line,
            &mut session,
            &Context::without_auth(&stats, now),
            &mut out,
        );
        (out, after)
    }

    /// A connection to a server with a token: each line's reply, in order.
    struct Authed {
        token: AuthToken,
        session: Session,
        stats: Stats,
    }

    impl Authed {
        fn new() -> Authed {
            let token = AuthToken::new(b"s3cret").unwrap();
            Authed {
                session: Session::new(Some(&token)),
                token,
                stats: Stats::new(Instant::now()),
            }
        }

        fn send(&mut self, line: &[u8]) -> (Vec<u8>, After) {
            let mut out = Vec::new();
            let now = Instant::now();
            let context = Context::with_token(Some(&self.token), &self.stats, now);
            let after = respond(line, &mut self.session, &context, &mut out);
            (out, after)
        }

        fn text(&mut self, line: &[u8]) -> Vec<u8> {
            self.send(line).0
        }
    }

    #[test]
    fn before_auth_only_auth_help_quit_empty_and_unknown_are_served() {
        let mut c = Authed::new();
        for line in [
            &b"PING"[..],
            b"PING x",
            b"ECHO hi",
            b"ECHO",
            b"STATS",
            b"stats x",
        ] {
            assert_eq!(c.text(line), b"ERR auth required\n", "{line:?}");
        }
        assert_eq!(c.text(b"HELP"), HELP_REPLY_WITH_AUTH);
        assert_eq!(c.text(b"HELP x"), b"ERR usage: HELP takes no argument\n");
        assert_eq!(c.text(b""), b"ERR empty command\n");
        assert_eq!(c.text(b"FLY"), b"ERR unknown command\n");
        assert_eq!(c.stats.snapshot().auth_failures, 0);
        assert_eq!(c.send(b"QUIT"), (b"BYE\n".to_vec(), After::Close));
    }

    #[test]
    fn the_right_token_clears_the_session() {
        let mut c = Authed::new();
        assert_eq!(c.text(b"auth s3cret"), b"OK\n");
        assert!(c.session.cleared);
        assert_eq!(c.text(b"PING"), b"PONG\n");
        assert_eq!(c.text(b"ECHO hi"), b"OK hi\n");
        // After a success: the right token is OK again; a wrong one is a
        // failure, but the session stays cleared.
        assert_eq!(c.text(b"AUTH s3cret"), b"OK\n");
        assert_eq!(c.text(b"AUTH nope"), b"ERR invalid token\n");
        assert_eq!(c.text(b"PING"), b"PONG\n");
        assert_eq!(c.stats.snapshot().auth_failures, 1);
    }

    #[test]
    fn the_third_failure_closes() {
        let mut c = Authed::new();
        // No space, an empty token, a prefix, the token plus a byte.
        assert_eq!(
            c.send(b"AUTH"),
            (b"ERR invalid token\n".to_vec(), After::KeepOpen)
        );
        assert_eq!(
            c.send(b"AUTH "),
            (b"ERR invalid token\n".to_vec(), After::KeepOpen)
        );
        assert_eq!(
            c.send(b"AUTH s3cre"),
            (b"ERR too many auth failures\n".to_vec(), After::Close)
        );
        assert!(c.session.failed_too_often());
        assert_eq!(c.stats.snapshot().auth_failures, 3);
    }

    #[test]
    fn without_a_token_auth_is_not_enabled() {
        for line in [&b"AUTH"[..], b"AUTH x", b"auth ", b"Auth s3cret"] {
            assert_eq!(
                reply(line),
                (b"ERR auth not enabled\n".to_vec(), After::KeepOpen)
            );
        }
    }

    #[test]
    fn tokens_match_only_themselves() {
        let token = AuthToken::new(b"abc").unwrap();
        assert!(token.matches(b"abc"));
        for other in [&b""[..], b"ab", b"abd", b"abc\0", b"abc\r", b"ABC", b"xbc"] {
            assert!(!token.matches(other), "{other:?}");
        }
        assert!(AuthToken::new(b"").is_none());
        assert!(!format!("{token:?}").contains("abc"));
    }

    fn text(line: &[u8]) -> Vec<u8> {
        reply(line).0
    }

    #[test]
    fn every_row_of_the_spec_table() {
        assert_eq!(text(b"PING"), b"PONG\n");
        assert_eq!(text(b"ECHO hello world"), b"OK hello world\n");
        assert_eq!(text(b"ECHO "), b"OK \n");
        assert_eq!(reply(b"QUIT"), (b"BYE\n".to_vec(), After::Close));
        assert_eq!(text(b"HELP"), b"OK commands: PING ECHO QUIT HELP STATS\n");
        assert_eq!(text(b""), b"ERR empty command\n");
        assert_eq!(text(b"FLY"), b"ERR unknown command\n");
    }

    #[test]
    fn names_match_case_insensitively() {
        for name in [&b"ping"[..], b"Ping", b"pInG"] {
            assert_eq!(text(name), b"PONG\n");
        }
        assert_eq!(text(b"echo x"), b"OK x\n");
        assert_eq!(reply(b"quit").1, After::Close);
    }

    #[test]
    fn malformed_commands_get_an_err_line_and_keep_the_connection() {
        for line in [&b"PING x"[..], b"PING ", b"ECHO", b"HELP me", b"STATS x"] {
            let (out, after) = reply(line);
            assert!(
                out.starts_with(b"ERR "),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(after, After::KeepOpen);
        }
        assert_eq!(reply(b"QUIT now").1, After::KeepOpen);
    }

    #[test]
    fn echo_is_binary_safe() {
        let line = b"ECHO \x00\xff\r mid-CR  two spaces ";
        let mut want = b"OK ".to_vec();
        want.extend_from_slice(&line[5..]);
        want.push(b'\n');
        assert_eq!(text(line), want);
    }

    #[test]
    fn case_folding_accepts_only_the_letters_of_the_name() {
        // Bytes that differ from a letter in bit 0x20 but are not its
        // capital must not match: '\x10' | 0x20 == '0', '@' | 0x20 == '`'.
        for name in [
            &b"PIN\x07"[..],
            b"\x10ING",
            b"PI\x0eG",
            b"P NG",
            b"PINGS",
            b"PIN",
            b"STATs!",
            b"stat\x13",
        ] {
            assert_eq!(Command::from_name(name), None, "{name:?}");
        }
        for name in [&b"sTaTs"[..], b"STATS", b"hElP", b"QUIT", b"Echo", b"aUtH"] {
            assert!(Command::from_name(name).is_some(), "{name:?}");
        }
        // Every case variant of every 4-letter name.
        for word in [b"ping", b"echo", b"quit", b"help", b"auth"] {
            for mask in 0..16u8 {
                let mut name = *word;
                for (i, b) in name.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        *b = b.to_ascii_uppercase();
                    }
                }
                assert!(Command::from_name(&name).is_some(), "{name:?}");
            }
        }
    }

    #[test]
    fn a_leading_space_is_an_empty_name() {
        assert_eq!(text(b" PING"), b"ERR unknown command\n");
    }

    #[test]
    fn stats_reports_every_required_key() {
        let now = Instant::now();
        let stats = Stats::holding(
            now,
            crate::stats::Snapshot {
                connections: 3,
                rejected: 2,
                ..Default::default()
            },
        );
        let mut out = Vec::new();
        respond(
            b"STATS",
            &mut Session::new(None),
            &Context::without_auth(&stats, now),
            &mut out,
        );
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("OK ") && line.ends_with('\n'));
        for key in [
            "connections=3",
            "accepted=0",
            "rejected=2",
            "commands=0",
            "bytes_in=0",
            "bytes_out=0",
            "uptime_s=0",
        ] {
            assert!(
                line.split_whitespace().any(|kv| kv == key),
                "{key} in {line}"
            );
        }
    }
}
