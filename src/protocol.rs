//! The loopline protocol, one [`Service`] among others: one request line
//! in, one response line out.
//!
//! This module knows nothing of sockets, buffers or timers: the engine hands
//! [`Loopline::respond`] a complete request line (LF and CR already removed
//! by [`crate::framing`]) and it appends exactly one response line, ending
//! in LF, to `out`. The exact bytes are the contract of docs/protocol.md.
//!
//! Authentication is part of the protocol: what a connection may do depends
//! on its [`Session`] (has it sent the right `AUTH` yet?) and on the
//! server's token, if `--auth-file` gave one ([`Context::token`]). The
//! engine counts failures per address ([`Context::auth_failed`]).

use std::io::Write as _;

use crate::service::{After, Context, Notice, Service};

/// Every command, as `HELP` lists them when authentication is off.
pub const HELP_REPLY: &[u8] = b"OK commands: PING ECHO QUIT HELP STATS\n";
/// The same, with `--auth-file`: `AUTH` is a command too.
pub const HELP_REPLY_WITH_AUTH: &[u8] = b"OK commands: PING ECHO QUIT HELP STATS AUTH\n";

/// Why a connection ended after its `QUIT`, for the close line.
pub const QUIT: &str = "client sent QUIT";
/// Why a connection ended after an `AUTH` too many.
pub const TOO_MANY_AUTH_FAILURES: &str = "too many auth failures";

/// Failed `AUTH` attempts a connection may make; the last of them is
/// answered with `ERR too many auth failures` and closes it.
pub const MAX_AUTH_FAILURES: u8 = 3;

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
    /// A new connection's session: cleared at once if no token is
    /// required (`authenticating` false).
    pub fn new(authenticating: bool) -> Session {
        Session {
            cleared: !authenticating,
            auth_failures: 0,
        }
    }

    /// Whether its last `AUTH` failure closed it.
    pub fn failed_too_often(&self) -> bool {
        self.auth_failures >= MAX_AUTH_FAILURES
    }
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
    /// is compared as one integer instead of byte by byte. Inlined: it
    /// runs once per request.
    #[inline(always)]
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

/// The `loopline` program's command line: its name, version and about,
/// and its examples; every option is the engine's ([`crate::config::Config`]).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "loopline",
    version,
    about = "A TCP line-protocol server (PING, ECHO, QUIT, HELP, STATS, AUTH) on a hand-rolled mio event loop, one per thread with --threads",
    after_help = LOOPLINE_AFTER_HELP
)]
pub struct LooplineCommand {}

/// What `loopline --help` says after the engine's notes.
const LOOPLINE_AFTER_HELP: &str = "\
With --auth-file, a client must send 'AUTH <token>' before PING, ECHO or \
STATS.

Examples:
  loopline --listen 127.0.0.1:9000
  loopline --listen localhost:9000 --idle-timeout 5m
  LOOPLINE_LISTEN='127.0.0.1:9000 [::1]:9000' loopline";

/// loopline's protocol: `PING`, `ECHO`, `QUIT`, `HELP`, `STATS` and `AUTH`
/// (docs/protocol.md). It keeps no state of its own: the counters `STATS`
/// reports are the engine's, and the token is the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loopline;

// The greeting (`READY`), the notices (loopline's lines are the trait's
// defaults) and the longest response (`--max-line` + 64: `ECHO` echoes the
// line, `STATS` is about 200 bytes) are the trait's defaults.
impl Service for Loopline {
    type Session = Session;

    fn session(&self, cx: &Context) -> Session {
        Session::new(cx.token().is_some())
    }

    /// Answers one request line. Appends exactly one line ending in `\n`
    /// to `out`.
    ///
    /// Inlined into the connection's loop over lines, by force: with its
    /// arguments, a call passes some on the stack, and the compiler, left
    /// to the `#[inline]` hint, has called it: 23 instructions more per
    /// pipelined `PING` (217 against 240, by `scripts/instructions.sh`).
    #[inline(always)]
    fn respond(
        &self,
        line: &[u8],
        session: &mut Session,
        cx: &Context,
        out: &mut Vec<u8>,
    ) -> After {
        respond(line, session, cx, out)
    }

    /// Its last line was `BYE`, or the answer to an `AUTH` too many.
    fn close_reason(&self, session: &Session) -> &'static str {
        if session.failed_too_often() {
            TOO_MANY_AUTH_FAILURES
        } else {
            QUIT
        }
    }

    fn authenticates(&self) -> bool {
        true
    }
}

/// The protocol's answer to `line` (see [`Loopline`]).
#[inline(always)]
fn respond(line: &[u8], session: &mut Session, context: &Context, out: &mut Vec<u8>) -> After {
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
        (Command::Help, None) => out.extend_from_slice(match context.token() {
            Some(_) => HELP_REPLY_WITH_AUTH,
            None => HELP_REPLY,
        }),
        (Command::Stats, None) => write_stats(context, out),
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
    let Some(token) = context.token() else {
        out.extend_from_slice(b"ERR auth not enabled\n");
        return After::KeepOpen;
    };
    // Its address failed too often (on any connection): not even a right
    // token is looked at until the period is over.
    if context.auth_refused() {
        session.auth_failures = MAX_AUTH_FAILURES;
        out.extend_from_slice(Notice::TooManyAuthFailures.line());
        return After::Close;
    }
    if given.is_some_and(|given| token.matches(given)) {
        session.cleared = true;
        out.extend_from_slice(b"OK\n");
        return After::KeepOpen;
    }
    context.auth_failed();
    session.auth_failures = session.auth_failures.saturating_add(1);
    if session.failed_too_often() {
        out.extend_from_slice(Notice::TooManyAuthFailures.line());
        return After::Close;
    }
    out.extend_from_slice(b"ERR invalid token\n");
    After::KeepOpen
}

fn write_stats(context: &Context, out: &mut Vec<u8>) {
    let uptime = context.uptime().as_secs();
    // The whole process's counters, every loop's summed.
    let stats = context.counters();
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
    use crate::stats::Stats;
    use crate::token::AuthToken;
    use std::time::Instant;

    fn reply(line: &[u8]) -> (Vec<u8>, After) {
        let now = Instant::now();
        let stats = Stats::new(now);
        let mut session = Session::new(false);
        let mut out = Vec::new();
        let after = respond(line, &mut session, &Context::new(&stats, now), &mut out);
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
                session: Session::new(true),
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
            &mut Session::new(false),
            &Context::new(&stats, now),
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
