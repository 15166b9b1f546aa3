//! Fuzz target `protocol`: a random request line through
//! `protocol::respond`, which must append exactly one line ending in
//! exactly one LF, close exactly on QUIT, and echo ECHO's bytes verbatim.
//!
//! Input: up to 8 bytes seed the counters `STATS` reports; the rest, LFs
//! taken out (framing never hands over an LF), is the line.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use loopline::protocol::{Loopline, Session};
use loopline::service::{After, Context, Service};
use loopline::stats::Stats;

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(8));
    let line: Vec<u8> = rest.iter().copied().filter(|&b| b != b'\n').collect();

    let mut seed = [0u8; 8];
    seed[..head.len()].copy_from_slice(head);
    let c = u64::from_le_bytes(seed);
    let started = Instant::now();
    let stats = Stats::holding(
        started,
        loopline::stats::Snapshot {
            connections: c,
            accepted: c.rotate_left(8),
            rejected: c.rotate_left(16),
            commands: c.rotate_left(24),
            bytes_in: c.rotate_left(32),
            bytes_out: !c,
            ..Default::default()
        },
    );
    let now = started + Duration::from_secs(c >> 40);

    let mut out = b"earlier\n".to_vec();
    // Authentication off: the protocol every connection gets by default.
    let after = Loopline.respond(
        &line,
        &mut Session::new(false),
        &Context::new(&stats, now),
        &mut out,
    );
    assert!(
        out.starts_with(b"earlier\n"),
        "respond touched what was there"
    );
    let reply = &out[8..];
    assert_eq!(reply.last(), Some(&b'\n'));
    assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(after == After::Close, line.eq_ignore_ascii_case(b"QUIT"));
    if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"ECHO ") {
        assert_eq!(reply, [&b"OK "[..], &line[5..], b"\n"].concat());
    } else {
        let known = [&b"OK "[..], b"ERR ", b"PONG\n", b"BYE\n"];
        assert!(
            known.iter().any(|k| reply.starts_with(k)),
            "reply {:?}",
            reply.escape_ascii().to_string()
        );
    }
});
