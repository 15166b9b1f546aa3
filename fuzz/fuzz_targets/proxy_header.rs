//! Fuzz target `proxy_header`: the bytes a `proxy` listener receives, in
//! reads of fuzzer-chosen sizes. After each read the connection asks
//! `proxy::parse` about everything received so far (at most
//! `proxy::HEADER_MAX` bytes: all it ever looks at); the first answer that
//! is not "incomplete" must be exactly the answer for the whole input taken
//! at once, so the split can never change the outcome. Also: never a panic,
//! a header never longer than the bytes nor than its version's maximum, and
//! never "incomplete" once `HEADER_MAX` bytes are there (a connection must
//! not wait for bytes it will never look at).
//!
//! Input: byte 0 says how many of the next bytes (0..=15) are read sizes,
//! cycled (0 means 1); the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use loopline::proxy::{parse, Parsed, HEADER_MAX, V1_MAX, V2_MAX};

/// What the connection looks at when `received` bytes have come.
fn seen(stream: &[u8], received: usize) -> &[u8] {
    &stream[..received.min(HEADER_MAX)]
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);

    let whole = parse(seen(stream, stream.len()));
    if let Ok(Parsed::Header { len, .. }) = whole {
        assert!(len <= stream.len(), "a header longer than the bytes");
        let max = if stream[0] == b'P' { V1_MAX } else { V2_MAX };
        assert!(len <= max, "a header of {len} bytes, over {max}");
    }
    if stream.len() >= HEADER_MAX {
        assert_ne!(
            whole,
            Ok(Parsed::Incomplete),
            "waits for bytes it never reads"
        );
    }

    let mut received = 0;
    let mut turn = 0;
    while received < stream.len() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .map_or(1, |&s| usize::from(s).max(1));
        received = (received + size).min(stream.len());
        turn += 1;
        let answer = parse(seen(stream, received));
        if answer != Ok(Parsed::Incomplete) {
            assert_eq!(answer, whole, "after {received} of {} bytes", stream.len());
            return;
        }
    }
    // Every read left it incomplete: so is the whole.
    assert_eq!(whole, Ok(Parsed::Incomplete));
});
