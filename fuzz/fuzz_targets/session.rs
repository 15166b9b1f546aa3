//! Fuzz target `session`: a client's byte stream, split into reads at
//! fuzzer-chosen points, through an incremental framing + protocol pipeline
//! (the way a connection uses them), must give exactly the responses of the
//! same stream taken in one read, with the pending bytes bounded by the line
//! limit throughout. Purely in memory: no socket.
//!
//! Input: byte 0 sets max_line (1..=64); byte 1 says how many of the next
//! bytes (0..=15) are read sizes, cycled (0 means 1); the rest is the stream,
//! which ends with the client shutting its side.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use loopline::framing::{cut_line, final_line, unfinished_too_long, Cut};
use loopline::protocol::{Loopline, Session};
use loopline::service::{After, Context, Service};
use loopline::stats::Stats;

/// The one-read reference: everything at once, then EOF.
fn one_read(stream: &[u8], max_line: usize, stats: &mut Stats, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    let mut session = Session::new(false);
    let mut rest = stream;
    loop {
        match cut_line(rest, max_line) {
            Cut::Line { line, used } => {
                rest = &rest[used..];
                if Loopline.respond(line, &mut session, &Context::new(&stats, now), &mut out)
                    == After::Close
                {
                    return out;
                }
            }
            Cut::TooLong => {
                out.extend_from_slice(loopline::service::Notice::LineTooLong.line());
                return out;
            }
            Cut::Partial => {
                if !rest.is_empty() {
                    Loopline.respond(
                        final_line(rest),
                        &mut session,
                        &Context::new(&stats, now),
                        &mut out,
                    );
                }
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_line = usize::from(data[0] % 64) + 1;
    let n_sizes = usize::from(data[1] % 16).min(data.len() - 2);
    let sizes: Vec<usize> = data[2..2 + n_sizes]
        .iter()
        .map(|&s| usize::from(s).max(1))
        .collect();
    let stream = &data[2 + n_sizes..];
    // STATS is answered from the same counters on both sides: the point is
    // the framing, not the numbers.
    let now = Instant::now();
    let mut stats = Stats::new(now);

    let want = one_read(stream, max_line, &mut stats, now);
    let mut session = Session::new(false);

    let mut out = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    let mut done = false;
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() && !done {
        let size = if sizes.is_empty() {
            stream.len()
        } else {
            sizes[i % sizes.len()]
        };
        i += 1;
        let chunk = &stream[at..stream.len().min(at + size)];
        at += chunk.len();
        // The connection's shortcut for a read without LF that continues an
        // unfinished line: decide from the lengths and the last byte alone.
        // It must agree with cutting the whole.
        if !held.is_empty() && !chunk.contains(&b'\n') {
            let shortcut =
                unfinished_too_long(held.len() + chunk.len(), chunk.last().copied(), max_line);
            let mut joined = held.clone();
            joined.extend_from_slice(chunk);
            assert_eq!(shortcut, cut_line(&joined, max_line) == Cut::TooLong);
        }
        held.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            match cut_line(&held[start..], max_line) {
                Cut::Line { line, used } => {
                    start += used;
                    if Loopline.respond(line, &mut session, &Context::new(&stats, now), &mut out)
                        == After::Close
                    {
                        done = true;
                        break;
                    }
                }
                Cut::TooLong => {
                    out.extend_from_slice(loopline::service::Notice::LineTooLong.line());
                    done = true;
                    break;
                }
                Cut::Partial => break,
            }
        }
        held.drain(..start);
        // What waits between reads is one unfinished line, never more.
        assert!(
            done || held.len() <= max_line + 1,
            "held {} bytes, max_line {max_line}",
            held.len()
        );
    }
    if !done && !held.is_empty() {
        Loopline.respond(
            final_line(&held),
            &mut session,
            &Context::new(&stats, now),
            &mut out,
        );
    }
    assert_eq!(out, want, "split reads {sizes:?} vs one read");
});
