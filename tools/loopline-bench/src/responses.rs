//! Reading responses: they are counted, never kept. Lines are found with
//! memchr, and each line's first bytes are checked against the error
//! prefixes, across read boundaries, without allocating. The server's
//! greeting lines come first on every connection; [`Greeting`] sets them
//! apart from the responses.

use crate::cli::ERROR_PREFIX_MAX;
use crate::link::Link;
use std::io::ErrorKind;

/// Counts response lines and error lines in a byte stream that arrives in
/// pieces. Holds only the first bytes of the line in progress.
#[derive(Clone, Default)]
pub struct ResponseScanner {
    /// The first bytes of the unfinished line, up to [`ERROR_PREFIX_MAX`].
    line_start: [u8; ERROR_PREFIX_MAX],
    line_start_len: usize,
}

impl ResponseScanner {
    /// Keeps the bytes of `segment` that still belong to the line's start.
    #[inline]
    fn remember_start(&mut self, segment: &[u8]) {
        if self.line_start_len < ERROR_PREFIX_MAX {
            let n = (ERROR_PREFIX_MAX - self.line_start_len).min(segment.len());
            self.line_start[self.line_start_len..self.line_start_len + n]
                .copy_from_slice(&segment[..n]);
            self.line_start_len += n;
        }
    }

    /// Returns (complete lines, lines that start with an error prefix).
    #[inline]
    pub fn scan(&mut self, data: &[u8], error_prefixes: &[Vec<u8>]) -> (usize, usize) {
        if error_prefixes.is_empty() {
            return (memchr::memchr_iter(b'\n', data).count(), 0);
        }
        let (mut lines, mut errors, mut start) = (0, 0, 0);
        for newline in memchr::memchr_iter(b'\n', data) {
            self.remember_start(&data[start..newline]);
            let line_start = &self.line_start[..self.line_start_len];
            if error_prefixes.iter().any(|p| line_start.starts_with(p)) {
                errors += 1;
            }
            self.line_start_len = 0;
            lines += 1;
            start = newline + 1;
        }
        self.remember_start(&data[start..]);
        (lines, errors)
    }
}

/// The greeting lines a connection has still to read before any response
/// (`--skip-greeting`: 1 for loopline's READY, 0 for Redis).
pub struct Greeting {
    lines_left: usize,
}

impl Greeting {
    pub fn new(lines: usize) -> Greeting {
        Greeting { lines_left: lines }
    }

    pub fn is_done(&self) -> bool {
        self.lines_left == 0
    }

    /// Takes the greeting's share of `lines` just read, and returns the
    /// lines that follow it.
    pub fn consume(&mut self, lines: usize) -> usize {
        let greeting = lines.min(self.lines_left);
        self.lines_left -= greeting;
        lines - greeting
    }
}

/// How a connection stands after [`read_responses`].
pub enum ReadOutcome {
    /// Drained for now; more may come.
    Open,
    /// The server closed its side.
    Eof,
    /// The read failed (a reset, say).
    Failed,
}

/// What one [`read_responses`] call found.
pub struct ReadResult {
    pub lines: usize,
    pub error_lines: usize,
    pub outcome: ReadOutcome,
}

/// Reads until the socket is drained: a short read or WouldBlock both mean
/// the receive queue is empty, which is enough for edge-triggered readiness
/// on a stream socket, except that a FIN that came with the same edge would
/// be missed: `to_end` (the event said read-closed or error) reads on to
/// the end of the stream. Over TLS, [`Link::read`] keeps the same meaning
/// of a short read.
pub fn read_responses(
    stream: &mut Link,
    buf: &mut [u8],
    scanner: &mut ResponseScanner,
    error_prefixes: &[Vec<u8>],
    to_end: bool,
) -> ReadResult {
    let mut result = ReadResult {
        lines: 0,
        error_lines: 0,
        outcome: ReadOutcome::Open,
    };
    loop {
        match stream.read(buf) {
            Ok(0) => {
                result.outcome = ReadOutcome::Eof;
                return result;
            }
            Ok(n) => {
                let (lines, errors) = scanner.scan(&buf[..n], error_prefixes);
                result.lines += lines;
                result.error_lines += errors;
                if n < buf.len() && !to_end {
                    return result;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return result,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                result.outcome = ReadOutcome::Failed;
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_error_prefixes_are_found_across_reads() {
        let prefixes = vec![b"ERR".to_vec(), b"-ERR".to_vec()];
        let mut scanner = ResponseScanner::default();
        assert_eq!(scanner.scan(b"PONG\nE", &prefixes), (1, 0));
        assert_eq!(scanner.scan(b"R", &prefixes), (0, 0));
        assert_eq!(scanner.scan(b"R x\n-ERR y\r\n+PONG\r\n", &prefixes), (3, 2));
        assert_eq!(scanner.scan(b"\n", &prefixes), (1, 0));
    }

    #[test]
    fn the_greeting_takes_its_lines_first() {
        let mut greeting = Greeting::new(2);
        assert_eq!(greeting.consume(1), 0);
        assert!(!greeting.is_done());
        assert_eq!(greeting.consume(3), 2);
        assert!(greeting.is_done());
        assert_eq!(greeting.consume(4), 4);
        assert!(Greeting::new(0).is_done());
    }

    #[test]
    fn without_prefixes_only_lines_are_counted() {
        let mut scanner = ResponseScanner::default();
        assert_eq!(scanner.scan(b"ERR a\nERR b\n", &[]), (2, 0));
    }
}
