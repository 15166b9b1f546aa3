//! An independent reference model of the loopline protocol, for the tests.
//!
//! Given every byte a client sends, whether it then shuts its writing side,
//! and `--max-line`, [`transcript`] says exactly what the server must send
//! back. It is written from the contract (docs/protocol.md) alone, the
//! obvious and slow way, as a specification: it shares no code with the
//! crate's `framing` or `protocol` modules, so a bug there cannot hide by
//! appearing on both sides of a comparison. Its reply texts are literals
//! copied from the contract, not the crate's constants.
//!
//! `STATS` answers depend on counters the model does not keep: a `STATS`
//! reply is expected loosely, as a line starting with `OK connections=`
//! (see [`Expected::Stats`]). The transcript properties also leave `STATS`
//! out of their generated input; the per-line property exercises it.
#![allow(dead_code)]

use std::fmt;

/// The greeting sent on accept.
pub const READY: &[u8] = b"READY\n";
/// The last line of a connection whose request line passed `--max-line`.
pub const LINE_TOO_LONG: &[u8] = b"ERR line too long\n";
/// The last line of a connection still open at a graceful shutdown.
pub const SHUTTING_DOWN: &[u8] = b"ERR server shutting down\n";
/// How every `STATS` reply begins (its first key is `connections`).
pub const STATS_PREFIX: &[u8] = b"OK connections=";

/// What the client does once it has sent its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// It shuts its writing side: the server sees EOF and answers a last
    /// line that has no LF.
    ShutsWrite,
    /// It keeps the connection open: a last line without LF is not (yet) a
    /// request.
    StaysOpen,
}

/// One line the server must send, LF included.
#[derive(Clone, PartialEq, Eq)]
pub enum Expected {
    /// These bytes exactly.
    Exact(Vec<u8>),
    /// A `STATS` reply: starts with [`STATS_PREFIX`]; the counters are not
    /// compared.
    Stats,
}

impl Expected {
    fn matches(&self, actual: &[u8]) -> bool {
        match self {
            Expected::Exact(want) => actual == want.as_slice(),
            Expected::Stats => actual.starts_with(STATS_PREFIX) && actual.ends_with(b"\n"),
        }
    }
}

impl fmt::Debug for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Exact(line) => write!(f, "b\"{}\"", line.escape_ascii()),
            Expected::Stats => write!(f, "b\"{}...\\n\"", STATS_PREFIX.escape_ascii()),
        }
    }
}

/// Everything the server must send on one connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    pub lines: Vec<Expected>,
    /// The session ended on the server's side (`BYE`, or `ERR line too
    /// long`): that was the last line, and nothing may follow it.
    pub session_over: bool,
}

impl Transcript {
    /// The same transcript without its first line, the greeting: for a
    /// client that has already read `READY`.
    pub fn after_greeting(&self) -> Transcript {
        assert_eq!(self.lines.first(), Some(&Expected::Exact(READY.to_vec())));
        Transcript {
            lines: self.lines[1..].to_vec(),
            session_over: self.session_over,
        }
    }

    /// Compares what the server sent with this transcript; on a mismatch,
    /// says at which line, showing both sides around it.
    pub fn check(&self, actual: &[u8]) -> Result<(), String> {
        let got = lines_of(actual);
        let first_difference =
            (0..self.lines.len().max(got.len())).find(|&i| match (self.lines.get(i), got.get(i)) {
                (Some(want), Some(got)) => !want.matches(got),
                _ => true,
            });
        let Some(at) = first_difference else {
            return Ok(());
        };
        let server: Vec<Expected> = around(&got, at)
            .iter()
            .map(|line| Expected::Exact(line.to_vec()))
            .collect();
        Err(format!(
            "server and model differ at line {at} (model: {} lines, server: {}); from line {}:\n  model:  {:?}\n  server: {server:?}",
            self.lines.len(),
            got.len(),
            at.saturating_sub(2),
            around(&self.lines, at),
        ))
    }
}

/// The lines around line `at`: up to two before it, and three from it on.
fn around<T>(lines: &[T], at: usize) -> &[T] {
    let start = at.saturating_sub(2).min(lines.len());
    let end = (at + 3).min(lines.len());
    &lines[start..end]
}

/// `bytes` cut after every LF; a last piece without LF is kept as it is (it
/// then matches no expected line, which all end in LF).
fn lines_of(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            lines.push(&bytes[start..=i]);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    lines
}

/// What the server must send to a client that sends `input` (then shuts its
/// writing side or not, as `end` says), with `--max-line` = `max_line`.
pub fn transcript(input: &[u8], end: ClientEnd, max_line: usize) -> Transcript {
    let mut lines = vec![Expected::Exact(READY.to_vec())];
    let mut rest = input;
    // Every complete line, in order.
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        // A request line: everything before the LF, less one CR directly
        // before the LF.
        let line = without_one_trailing_cr(&rest[..lf]);
        if line.len() > max_line {
            lines.push(Expected::Exact(LINE_TOO_LONG.to_vec()));
            return over(lines);
        }
        let (reply, quit) = answer(line);
        lines.push(reply);
        if quit {
            // Bytes after the QUIT line are not executed.
            return over(lines);
        }
        rest = &rest[lf + 1..];
    }
    // `rest` holds no LF: an unfinished line. Its shortest possible future
    // is an LF arriving next, and if `rest` ends with a CR, that CR then is
    // the CR of a CRLF and does not count. Longer than the limit even so,
    // it can no longer fit: refused now, without waiting for an LF.
    let shortest = without_one_trailing_cr(rest);
    if shortest.len() > max_line {
        lines.push(Expected::Exact(LINE_TOO_LONG.to_vec()));
        return over(lines);
    }
    // After EOF a last line without LF is a request too. Where the contract
    // is silent, loopline treats a trailing CR on it as the CR of a CRLF
    // whose LF never came: removed.
    if end == ClientEnd::ShutsWrite && !rest.is_empty() {
        let (reply, quit) = answer(shortest);
        lines.push(reply);
        if quit {
            return over(lines);
        }
    }
    Transcript {
        lines,
        session_over: false,
    }
}

fn over(lines: Vec<Expected>) -> Transcript {
    Transcript {
        lines,
        session_over: true,
    }
}

fn without_one_trailing_cr(bytes: &[u8]) -> &[u8] {
    match bytes.split_last() {
        Some((b'\r', before)) => before,
        _ => bytes,
    }
}

/// The reply to one request line (CR and LF already removed), and whether
/// it was `QUIT`, after which the server sends nothing more.
pub fn answer(line: &[u8]) -> (Expected, bool) {
    let exact = |text: &[u8]| Expected::Exact([text, b"\n"].concat());
    if line.is_empty() {
        return (exact(b"ERR empty command"), false);
    }
    // The name is everything before the first space; the argument, if
    // there is a space, everything after it (possibly nothing).
    let (name, argument) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    // Names match in any case: compare them in capitals.
    let upper_name = name.to_ascii_uppercase();
    match (upper_name.as_slice(), argument) {
        (b"ECHO", Some(text)) => (exact(&[b"OK ", text].concat()), false),
        // Always spelt `ECHO` here, whatever case the client used.
        (b"ECHO", None) => (exact(b"ERR usage: ECHO <text>"), false),
        // Every other command takes no argument; a trailing space is an
        // (empty) argument. This usage line repeats the name as typed.
        (b"PING" | b"QUIT" | b"HELP" | b"STATS", Some(_)) => (
            exact(&[b"ERR usage: ", name, b" takes no argument"].concat()),
            false,
        ),
        (b"PING", None) => (exact(b"PONG"), false),
        (b"QUIT", None) => (exact(b"BYE"), true),
        (b"HELP", None) => (exact(b"OK commands: PING ECHO QUIT HELP STATS"), false),
        (b"STATS", None) => (Expected::Stats, false),
        // The server the model stands for has no `--auth-file`.
        (b"AUTH", _) => (exact(b"ERR auth not enabled"), false),
        _ => (exact(b"ERR unknown command"), false),
    }
}

// ---------------------------------------------------------------------------
// The model against the contract's own examples.

#[cfg(test)]
mod examples {
    use super::*;

    /// The transcript as one byte string (it must hold no `STATS`).
    fn bytes(input: &[u8], end: ClientEnd, max_line: usize) -> Vec<u8> {
        let t = transcript(input, end, max_line);
        t.lines
            .iter()
            .flat_map(|line| match line {
                Expected::Exact(b) => b.clone(),
                Expected::Stats => panic!("a STATS reply has no exact bytes"),
            })
            .collect()
    }

    fn answers(input: &[u8]) -> Vec<u8> {
        bytes(input, ClientEnd::ShutsWrite, 1024)
    }

    fn reply(line: &[u8]) -> Vec<u8> {
        match answer(line).0 {
            Expected::Exact(b) => b,
            Expected::Stats => panic!("STATS"),
        }
    }

    #[test]
    fn every_row_of_the_command_table() {
        assert_eq!(reply(b"PING"), b"PONG\n");
        assert_eq!(reply(b"ECHO hello, world"), b"OK hello, world\n");
        assert_eq!(reply(b"ECHO "), b"OK \n");
        assert_eq!(answer(b"QUIT"), (Expected::Exact(b"BYE\n".to_vec()), true));
        assert_eq!(reply(b"HELP"), b"OK commands: PING ECHO QUIT HELP STATS\n");
        assert_eq!(answer(b"STATS"), (Expected::Stats, false));
        assert_eq!(reply(b""), b"ERR empty command\n");
        assert_eq!(reply(b"FLY"), b"ERR unknown command\n");
        assert_eq!(reply(b"AUTH"), b"ERR auth not enabled\n");
        assert_eq!(reply(b"auth x y"), b"ERR auth not enabled\n");
    }

    #[test]
    fn names_in_any_case_and_usage_errors() {
        for name in [&b"ping"[..], b"Ping", b"PING", b"pInG"] {
            assert_eq!(reply(name), b"PONG\n");
        }
        assert!(answer(b"quit").1, "quit ends the session");
        assert_eq!(reply(b"ECHO"), b"ERR usage: ECHO <text>\n");
        assert_eq!(reply(b"PING x"), b"ERR usage: PING takes no argument\n");
        assert_eq!(reply(b"PING "), b"ERR usage: PING takes no argument\n");
        assert_eq!(reply(b"ping now"), b"ERR usage: ping takes no argument\n");
        assert_eq!(reply(b"HELP x"), b"ERR usage: HELP takes no argument\n");
        assert_eq!(reply(b"STATS x"), b"ERR usage: STATS takes no argument\n");
        assert_eq!(
            answer(b"QUIT x"),
            (
                Expected::Exact(b"ERR usage: QUIT takes no argument\n".to_vec()),
                false
            ),
            "QUIT with an argument is an error and ends nothing"
        );
        // A leading space makes the name empty, hence unknown.
        assert_eq!(reply(b" PING"), b"ERR unknown command\n");
        assert_eq!(reply(b"PINGX"), b"ERR unknown command\n");
    }

    #[test]
    fn echo_text_is_raw_bytes() {
        assert_eq!(reply(b"ECHO \x00\xff\r mid  "), b"OK \x00\xff\r mid  \n");
        assert_eq!(reply(b"echo a b"), b"OK a b\n");
    }

    #[test]
    fn greeting_then_one_reply_per_line_in_order() {
        assert_eq!(answers(b""), b"READY\n");
        assert_eq!(
            answers(b"PING\nECHO hello, world\nQUIT\n"),
            b"READY\nPONG\nOK hello, world\nBYE\n"
        );
    }

    #[test]
    fn one_cr_directly_before_lf_is_removed_and_nothing_else() {
        assert_eq!(answers(b"PING\r\n"), b"READY\nPONG\n");
        assert_eq!(answers(b"ECHO a\r\r\n"), b"READY\nOK a\r\n");
        assert_eq!(answers(b"ECHO a\rb\n"), b"READY\nOK a\rb\n");
        assert_eq!(
            answers(b"PING \n"),
            b"READY\nERR usage: PING takes no argument\n"
        );
        assert_eq!(answers(b"\r\n"), b"READY\nERR empty command\n");
    }

    #[test]
    fn nothing_after_quit() {
        assert_eq!(answers(b"QUIT\nPING\nPING"), b"READY\nBYE\n");
        assert!(transcript(b"quit\r\nPING\n", ClientEnd::StaysOpen, 64).session_over);
    }

    #[test]
    fn a_last_line_without_lf_is_answered_only_after_eof() {
        assert_eq!(answers(b"PING\nECHO x"), b"READY\nPONG\nOK x\n");
        assert_eq!(
            bytes(b"PING\nECHO x", ClientEnd::StaysOpen, 1024),
            b"READY\nPONG\n"
        );
        // A CR at its end is the CR of a CRLF whose LF never came.
        assert_eq!(answers(b"PING\r"), b"READY\nPONG\n");
        assert_eq!(answers(b"QUIT"), b"READY\nBYE\n");
    }

    #[test]
    fn line_limit() {
        let max = 8;
        // Exactly max_line bytes, with LF or CRLF: accepted.
        assert_eq!(
            bytes(b"ECHO abc\r\n", ClientEnd::StaysOpen, max),
            b"READY\nOK abc\n"
        );
        assert_eq!(
            bytes(b"ECHO abc\n", ClientEnd::StaysOpen, max),
            b"READY\nOK abc\n"
        );
        // One more: refused after the replies before it, nothing after it.
        let t = bytes(b"PING\nECHO abcd\nPING\n", ClientEnd::StaysOpen, max);
        assert_eq!(t, b"READY\nPONG\nERR line too long\n");
        // Refused without an LF once it can no longer fit...
        assert_eq!(
            bytes(b"PING\nECHO abcd", ClientEnd::StaysOpen, max),
            b"READY\nPONG\nERR line too long\n"
        );
        // ...but max_line bytes and a CR may still be a line and its CRLF.
        assert_eq!(bytes(b"ECHO abc\r", ClientEnd::StaysOpen, max), b"READY\n");
        assert!(!transcript(b"ECHO abc\r", ClientEnd::StaysOpen, max).session_over);
        assert_eq!(
            bytes(b"ECHO abc\r\r", ClientEnd::StaysOpen, max),
            b"READY\nERR line too long\n"
        );
        // Only one CR is taken off: a CR in the middle counts.
        assert_eq!(
            bytes(b"ECHO ab\r\r\n", ClientEnd::StaysOpen, max),
            b"READY\nOK ab\r\n"
        );
        assert_eq!(
            bytes(b"ECHO abc\r\r\n", ClientEnd::StaysOpen, max),
            b"READY\nERR line too long\n"
        );
    }

    #[test]
    fn check_compares_exactly_and_stats_loosely() {
        let t = transcript(b"STATS\nPING\n", ClientEnd::StaysOpen, 64);
        let ok = b"READY\nOK connections=1 accepted=1 uptime_s=0\nPONG\n";
        assert_eq!(t.check(ok), Ok(()));
        assert!(
            t.check(b"READY\nOK connections=1\n").is_err(),
            "a line missing"
        );
        assert!(t.check(b"READY\nOK connections=1\nPONG\nPONG\n").is_err());
        assert!(t.check(b"READY\nOK stats\nPONG\n").is_err());
        assert!(t.check(b"READY\nOK connections=1\nPONG").is_err(), "no LF");
        assert_eq!(t.after_greeting().check(&ok[6..]), Ok(()));
    }
}
