//! Incremental line framing: cutting request lines out of a byte stream.
//!
//! TCP delivers a stream, not messages: one read may hold half a line, or
//! ten lines and the start of an eleventh. This module only *finds* lines;
//! it never reads a socket and never allocates. The connection keeps the
//! bytes of an unfinished line and offers them again with the next read.
//!
//! Rules (docs/protocol.md): a line ends at LF; one CR directly before the LF
//! is removed; a line longer than `max_line` bytes (CR and LF not counted) is
//! refused as soon as the unfinished line can no longer fit, without waiting
//! for an LF that may never come.

use memchr::memchr;

/// What [`cut_line`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut<'a> {
    /// A complete line, CR stripped. `used` counts the bytes to drop from the
    /// buffer: the line, its CR if any, and its LF.
    Line {
        /// The line's bytes, without CR and LF.
        line: &'a [u8],
        /// Bytes to drop from the buffer's front.
        used: usize,
    },
    /// The buffer starts with a line longer than the limit (finished or not).
    TooLong,
    /// No LF yet, and what is there may still become a valid line: keep the
    /// bytes and wait for more.
    Partial,
}

/// Cuts the first line out of `buf`.
///
/// Inlined into the connection's loop over lines, by force: it runs once
/// per request, and once the service's `respond` is inlined there too the
/// compiler, left to itself, calls it (25 instructions more per pipelined
/// `PING`, by `scripts/instructions.sh`).
#[inline(always)]
pub fn cut_line(buf: &[u8], max_line: usize) -> Cut<'_> {
    match memchr(b'\n', buf) {
        Some(lf) => {
            let line = strip_cr(&buf[..lf]);
            if line.len() > max_line {
                Cut::TooLong
            } else {
                Cut::Line { line, used: lf + 1 }
            }
        }
        None if unfinished_too_long(buf.len(), buf.last().copied(), max_line) => Cut::TooLong,
        None => Cut::Partial,
    }
}

/// Whether an unfinished line of `len` bytes, whose last byte is `last`, can
/// no longer become a line of at most `max_line` bytes.
///
/// `max_line + 1` bytes are still fine when the last one is a CR: it may be
/// the CR of a CRLF, so a line of exactly `max_line` bytes ended by CRLF is
/// accepted however its bytes are split across reads.
pub fn unfinished_too_long(len: usize, last: Option<u8>, max_line: usize) -> bool {
    len > max_line + 1 || (len == max_line + 1 && last != Some(b'\r'))
}

/// How one read continues a line left unfinished by earlier reads (the
/// connection holds its first `held` bytes).
#[derive(Debug, PartialEq, Eq)]
pub enum Continued {
    /// The line ends in this read: its first `used` bytes, up to and
    /// including the LF, complete it. (Whether the whole line is too long
    /// is [`cut_line`]'s to say, once it is put together.)
    Ends {
        /// Bytes of the read that belong to the line, its LF included.
        used: usize,
    },
    /// No LF yet, and the line may still fit: keep all of the read too.
    Unfinished,
    /// No LF yet, and the line can no longer fit.
    TooLong,
}

/// Says how `data`, a new read, continues an unfinished line of `held`
/// bytes: without copying anything, so that the connection copies only
/// what it must keep.
pub fn continue_line(held: usize, data: &[u8], max_line: usize) -> Continued {
    match memchr(b'\n', data) {
        Some(lf) => Continued::Ends { used: lf + 1 },
        None if unfinished_too_long(held + data.len(), data.last().copied(), max_line) => {
            Continued::TooLong
        }
        None => Continued::Unfinished,
    }
}

/// The final line of a stream that ended without an LF (the client shut its
/// writing side): it is answered like any other line. A trailing CR is
/// removed as if the LF had followed it.
pub fn final_line(buf: &[u8]) -> &[u8] {
    strip_cr(buf)
}

#[inline(always)]
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(buf: &[u8], max: usize) -> (&[u8], usize) {
        match cut_line(buf, max) {
            Cut::Line { line, used } => (line, used),
            other => panic!("expected a line, got {other:?}"),
        }
    }

    #[test]
    fn cuts_lf_and_crlf() {
        assert_eq!(line(b"PING\nrest", 10), (&b"PING"[..], 5));
        assert_eq!(line(b"PING\r\n", 10), (&b"PING"[..], 6));
        assert_eq!(line(b"\n", 10), (&b""[..], 1));
    }

    #[test]
    fn strips_only_one_cr_directly_before_lf() {
        assert_eq!(line(b"a\r\r\n", 10).0, b"a\r");
        assert_eq!(line(b"a\rb\n", 10).0, b"a\rb");
    }

    #[test]
    fn waits_for_the_rest_of_a_partial_line() {
        assert_eq!(cut_line(b"PIN", 10), Cut::Partial);
        assert_eq!(cut_line(b"", 10), Cut::Partial);
    }

    #[test]
    fn line_of_exactly_max_with_crlf_is_accepted_at_every_split() {
        let max = 8;
        let full = b"ECHO abc\r\n";
        for split in 0..full.len() {
            // The first part alone must never be refused...
            assert_ne!(cut_line(&full[..split], max), Cut::TooLong, "split {split}");
        }
        // ...and the whole is a line.
        assert_eq!(line(full, max).0, b"ECHO abc");
    }

    #[test]
    fn refuses_as_soon_as_the_line_cannot_fit() {
        let max = 4;
        assert_eq!(cut_line(b"abcd", max), Cut::Partial);
        assert_eq!(cut_line(b"abcd\r", max), Cut::Partial);
        assert_eq!(cut_line(b"abcde", max), Cut::TooLong);
        assert_eq!(cut_line(b"abcd\r\r", max), Cut::TooLong);
        assert_eq!(cut_line(b"abcde\n", max), Cut::TooLong);
        assert_eq!(
            cut_line(b"abcd\r\n", max),
            Cut::Line {
                line: b"abcd",
                used: 6
            }
        );
    }

    #[test]
    fn a_continued_line_ends_at_the_lf_or_is_refused_once_it_cannot_fit() {
        assert_eq!(
            continue_line(3, b"G\nPING\n", 8),
            Continued::Ends { used: 2 }
        );
        assert_eq!(continue_line(3, b"GGG", 8), Continued::Unfinished);
        // 8 bytes and a CR may still be a line of 8 ended by CRLF...
        assert_eq!(continue_line(7, b"G\r", 8), Continued::Unfinished);
        // ...8 and another byte may not.
        assert_eq!(continue_line(7, b"GG", 8), Continued::TooLong);
    }

    #[test]
    fn final_line_drops_a_trailing_cr() {
        assert_eq!(final_line(b"PING\r"), b"PING");
        assert_eq!(final_line(b"PING"), b"PING");
    }
}
