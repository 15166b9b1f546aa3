//! The loopline protocol: one request line in, one response line out.
//!
//! This module knows nothing of sockets, buffers or timers. It is handed a
//! complete request line (LF and CR already removed by [`crate::framing`])
//! and appends exactly one response line, ending in LF, to `out`. The exact
//! bytes are the contract of docs/protocol.md.

use std::io::Write as _;
use std::time::Instant;

use crate::stats::Stats;

/// Every command, as `HELP` lists them.
pub const HELP_REPLY: &[u8] = b"OK commands: PING ECHO QUIT HELP STATS\n";

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
                _ => None,
            };
        }
        name.eq_ignore_ascii_case(b"STATS")
            .then_some(Command::Stats)
    }
}

/// Answers one request line. Appends exactly one line ending in `\n` to `out`.
///
/// `stats` and `now` are only read, for `STATS`.
pub fn respond(line: &[u8], stats: &Stats, now: Instant, out: &mut Vec<u8>) -> After {
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
        (Command::Help, None) => out.extend_from_slice(HELP_REPLY),
        (Command::Stats, None) => write_stats(stats, now, out),
    }
    After::KeepOpen
}

fn write_stats(stats: &Stats, now: Instant, out: &mut Vec<u8>) {
    let uptime = now.saturating_duration_since(stats.started).as_secs();
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
        let mut out = Vec::new();
        let after = respond(line, &stats, now, &mut out);
        (out, after)
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
        for name in [&b"sTaTs"[..], b"STATS", b"hElP", b"QUIT", b"Echo"] {
            assert!(Command::from_name(name).is_some(), "{name:?}");
        }
        // Every case variant of every 4-letter name.
        for word in [b"ping", b"echo", b"quit", b"help"] {
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
        let mut stats = Stats::new(now);
        stats.connections = 3;
        stats.rejected = 2;
        let mut out = Vec::new();
        respond(b"STATS", &stats, now, &mut out);
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
