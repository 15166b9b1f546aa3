//! Fuzz target `framing`: random bytes and a random `--max-line`, cut line
//! by line with `framing::cut_line`; every answer is checked against the
//! contract (docs/protocol.md).
//!
//! Input: byte 0 sets max_line (1..=256), the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use loopline::framing::{cut_line, final_line, unfinished_too_long, Cut};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, mut buf)) = data.split_first() else {
        return;
    };
    let max_line = usize::from(limit) + 1;
    loop {
        let lf = buf.iter().position(|&b| b == b'\n');
        match cut_line(buf, max_line) {
            Cut::Line { line, used } => {
                // Exactly the bytes before the first LF, one CR removed.
                let lf = lf.expect("a Line without an LF in the buffer");
                assert_eq!(used, lf + 1);
                let raw = &buf[..lf];
                assert_eq!(line, raw.strip_suffix(b"\r").unwrap_or(raw));
                assert!(line.len() <= max_line);
                // No prefix of a valid line is refused. All of them for short
                // lines; around the limit and the CR for long ones.
                let whole = &buf[..used];
                let probes: Vec<usize> = if used <= 64 {
                    (0..used).collect()
                } else {
                    vec![0, used / 2, max_line.min(used - 1), used - 2, used - 1]
                };
                for n in probes {
                    assert_eq!(
                        cut_line(&whole[..n], max_line),
                        Cut::Partial,
                        "prefix of {n}"
                    );
                }
                buf = &buf[used..];
            }
            Cut::TooLong => {
                match lf {
                    // A finished line longer than the limit.
                    Some(lf) => assert!(final_line(&buf[..lf]).len() > max_line),
                    // An unfinished one that can no longer fit: even the
                    // shortest ending (a bare LF) leaves it too long.
                    None => {
                        assert!(final_line(buf).len() > max_line);
                        assert!(unfinished_too_long(
                            buf.len(),
                            buf.last().copied(),
                            max_line
                        ));
                    }
                }
                return;
            }
            Cut::Partial => {
                // No LF, and an LF now would still make a valid line.
                assert!(lf.is_none());
                assert!(final_line(buf).len() <= max_line);
                assert!(!unfinished_too_long(
                    buf.len(),
                    buf.last().copied(),
                    max_line
                ));
                // Held bytes are bounded by the limit (+1 for a CR).
                assert!(buf.len() <= max_line + 1);
                return;
            }
        }
    }
});
