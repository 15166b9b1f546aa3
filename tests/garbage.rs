//! Garbage input: random bytes, NULs, CR floods, invalid UTF-8, a megabyte
//! with no LF. The server answers each line as `docs/protocol.md` says (request
//! lines are raw bytes, never UTF-8 checked), refuses a line that is too
//! long and closes, never panics, and does not grow.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use util::{Rng, Server};

const MAX_LINE: usize = 1024;
/// How much the server's memory may grow over a whole test.
const RSS_MARGIN_KIB: u64 = 8 * 1024;

/// What the protocol says one response line must be.
#[derive(Debug)]
enum Want {
    Exact(Vec<u8>),
    /// `ERR ...` with a message the protocol leaves open (usage errors).
    AnyErr,
}

/// The responses the protocol requires for `input` sent and then
/// half-closed, and whether the server closes before reading it all.
/// Written from `docs/protocol.md`, not from `src/`: an oracle built from
/// the code under test would share its bugs.
fn model(input: &[u8]) -> Vec<Want> {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        let (line, last) = match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let line = &rest[..lf];
                rest = &rest[lf + 1..];
                (line, false)
            }
            // A final line without LF is answered at the half-close.
            None if rest.is_empty() => return out,
            None => (rest, true),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            out.push(Want::Exact(b"ERR line too long".to_vec()));
            return out;
        }
        let (name, arg) = match line.iter().position(|&b| b == b' ') {
            Some(sp) => (&line[..sp], Some(&line[sp + 1..])),
            None => (line, None),
        };
        let is = |c: &[u8]| name.eq_ignore_ascii_case(c);
        let want = if line.is_empty() {
            Want::Exact(b"ERR empty command".to_vec())
        } else if is(b"ECHO") {
            match arg {
                Some(text) => Want::Exact([b"OK ", text].concat()),
                None => Want::AnyErr,
            }
        } else if ["PING", "QUIT", "HELP", "STATS"]
            .iter()
            .any(|c| is(c.as_bytes()))
            && arg.is_some()
        {
            Want::AnyErr
        } else if is(b"PING") {
            Want::Exact(b"PONG".to_vec())
        } else if is(b"HELP") {
            Want::Exact(b"OK commands: PING ECHO QUIT HELP STATS".to_vec())
        } else if is(b"QUIT") {
            out.push(Want::Exact(b"BYE".to_vec()));
            return out;
        } else if is(b"STATS") {
            panic!("the generator made a STATS line; pick another seed");
        } else {
            Want::Exact(b"ERR unknown command".to_vec())
        };
        out.push(want);
        if last {
            return out;
        }
    }
}

/// Sends `input` in random pieces from another thread (the server may close
/// early, so write errors are expected then), half-closes, and returns all
/// the server said.
fn exchange(server: &Server, input: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let mut c = server.client();
    let mut writer = c.stream.try_clone().unwrap();
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let n = 1 + rng.below(4096);
        cuts.push(at..(at + n).min(input.len()));
        at += n;
    }
    let sender = thread::spawn(move || {
        for range in cuts {
            if writer.write_all(&input[range]).is_err() {
                return;
            }
        }
        let _ = writer.shutdown(Shutdown::Write);
    });
    let got = c.read_to_end();
    sender.join().unwrap();
    got
}

/// Checks the responses against the model; returns how many there were.
fn check(input: &[u8], got: &[u8], what: &str) -> usize {
    let want = model(input);
    let lines: Vec<&[u8]> = got
        .strip_suffix(b"\n")
        .map_or(vec![], |g| g.split(|&b| b == b'\n').collect());
    assert_eq!(
        lines.len(),
        want.len(),
        "{what}: {} responses, the spec says {}",
        lines.len(),
        want.len()
    );
    for (i, (line, want)) in lines.iter().zip(&want).enumerate() {
        let ok = match want {
            Want::Exact(w) => line == w,
            Want::AnyErr => line.starts_with(b"ERR "),
        };
        assert!(
            ok,
            "{what}: response {i} is {:?}, the spec says {want:?}",
            String::from_utf8_lossy(line)
        );
    }
    want.len()
}

fn assert_healthy(server: &Server, baseline_kib: u64, what: &str) {
    let mut c = server.client();
    c.send(b"PING\n");
    assert_eq!(c.read_line(), "PONG", "after {what}");
    server.assert_no_panic();
    let rss = server.rss_kib();
    eprintln!("{what}: server RSS {baseline_kib} KiB before, {rss} KiB after");
    assert!(
        rss < baseline_kib + RSS_MARGIN_KIB,
        "{what}: RSS grew from {baseline_kib} KiB to {rss} KiB"
    );
}

/// Garbage made of what trips parsers: random bytes, and random lines of
/// command names in odd cases, spaces, CRs, NULs and invalid UTF-8.
fn garbage(rng: &mut Rng, len: usize) -> Vec<u8> {
    const PIECES: [&[u8]; 16] = [
        b"PING",
        b"ping",
        b"EcHo",
        b"ECHO ",
        b"help",
        b" ",
        b"  ",
        b"\r",
        b"\r\n",
        b"\n",
        b"\0",
        b"\xff\xfe",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf0\x90\x80",
        b"x",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        if rng.below(2) == 0 {
            // A run of uniformly random bytes.
            for _ in 0..rng.below(64) {
                out.push(rng.next() as u8);
            }
        } else {
            out.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
    }
    out
}

#[test]
fn seeded_random_garbage_gets_the_responses_the_spec_says() {
    let server = Server::start(&["--max-line", &MAX_LINE.to_string()]);
    let baseline = server.rss_kib();
    let mut responses = 0;
    for seed in 1..=24u64 {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        // Uniform random bytes for some seeds, biased garbage for others.
        let input = if seed % 3 == 0 {
            (0..65536).map(|_| rng.next() as u8).collect()
        } else {
            garbage(&mut rng, 65536)
        };
        let got = exchange(&server, input.clone(), &mut rng);
        responses += check(&input, &got, &format!("seed {seed}"));
    }
    eprintln!("24 connections of 64 KiB of garbage: {responses} responses, each as the spec says");
    assert_healthy(&server, baseline, "random garbage");
}

#[test]
fn nul_only_lines_are_unknown_commands() {
    let server = Server::start(&["--max-line", &MAX_LINE.to_string()]);
    let mut c = server.client();
    c.send(b"\0\n\0\0\0\0\r\n");
    c.send(&[&[0u8; MAX_LINE][..], b"\n"].concat());
    c.send(b"PING\n");
    for _ in 0..3 {
        assert_eq!(c.read_line(), "ERR unknown command");
    }
    c.expect_line("PONG");
    // One NUL too many for the line limit.
    c.send(&[&[0u8; MAX_LINE + 1][..], b"\n"].concat());
    c.expect_line("ERR line too long");
    c.expect_eof();
    assert_healthy(&server, server.rss_kib(), "NUL lines");
}

#[test]
fn a_megabyte_without_lf_is_refused_and_closed() {
    let server = Server::start(&["--max-line", &MAX_LINE.to_string()]);
    let baseline = server.rss_kib();
    let mut rng = Rng(7);
    for round in 0..4 {
        // Random bytes, none of them an LF.
        let input: Vec<u8> = (0..1 << 20)
            .map(|_| (rng.next() as u8).max(b'\n' + 1))
            .collect();
        let got = exchange(&server, input, &mut rng);
        assert_eq!(
            String::from_utf8_lossy(&got),
            "ERR line too long\n",
            "round {round}"
        );
    }
    assert_healthy(&server, baseline, "megabytes without LF");
}

#[test]
fn cr_floods() {
    let server = Server::start(&["--max-line", &MAX_LINE.to_string()]);
    let baseline = server.rss_kib();
    let mut rng = Rng(11);
    // A megabyte of CRs and no LF: one unfinished line, refused.
    let got = exchange(&server, vec![b'\r'; 1 << 20], &mut rng);
    assert_eq!(got, b"ERR line too long\n");
    // CRs directly before the LF: only one is removed.
    let mut c = server.client();
    c.send(b"PING\r\r\n\rPING\n\r\n\r\r\n");
    c.expect_line("ERR unknown command");
    c.expect_line("ERR unknown command");
    c.expect_line("ERR empty command");
    c.expect_line("ERR unknown command");
    // Exactly MAX_LINE CRs, then CRLF: a line of MAX_LINE bytes, accepted.
    c.send(&[&vec![b'\r'; MAX_LINE][..], b"\r\n"].concat());
    c.expect_line("ERR unknown command");
    // Ten thousand empty CRLF lines, each answered.
    let input = b"\r\n".repeat(10_000);
    let got = exchange(&server, input.clone(), &mut rng);
    assert_eq!(check(&input, &got, "CRLF flood"), 10_000);
    assert_healthy(&server, baseline, "CR floods");
}

#[test]
fn invalid_utf8_is_passed_through_not_checked() {
    let server = Server::start(&["--max-line", &MAX_LINE.to_string()]);
    let mut c = server.client();
    let cases: [(&[u8], &[u8]); 9] = [
        (b"\xff\xfe\n", b"ERR unknown command"),
        (b"PI\xc3NG\n", b"ERR unknown command"),
        (b"\xc0\x80\n", b"ERR unknown command"),
        (b"ECHO \xff\x00\xc3\x28\n", b"OK \xff\x00\xc3\x28"),
        (
            b"ECHO \xed\xa0\x80 \xf0\x90\x80\n",
            b"OK \xed\xa0\x80 \xf0\x90\x80",
        ),
        (b"echo \xef\xbb\xbfBOM\r\n", b"OK \xef\xbb\xbfBOM"),
        (b"ECHO \xc3\r\n", b"OK \xc3"),
        (b"\xef\xbb\xbfPING\n", b"ERR unknown command"),
        (b"PING\n", b"PONG"),
    ];
    for (request, response) in cases {
        c.send(request);
        assert_eq!(
            c.read_line_bytes(),
            response,
            "request {:?}",
            String::from_utf8_lossy(request)
        );
    }
    // An argument of invalid UTF-8 to a command that takes none.
    c.send(b"PING \xff\n");
    assert!(c.read_line_bytes().starts_with(b"ERR "));
    assert_healthy(&server, server.rss_kib(), "invalid UTF-8");
}

/// A client that sends garbage and resets must not disturb one that behaves.
#[test]
fn garbage_on_one_connection_does_not_touch_another() {
    let server = Server::start(&["--max-line", &MAX_LINE.to_string()]);
    let mut good = server.client();
    let mut rng = Rng(99);
    for round in 0..20 {
        let mut bad = server.client();
        let junk = garbage(&mut rng, 8192);
        match bad.stream.write_all(&junk) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
        // Half of them vanish without reading anything.
        if round % 2 == 0 {
            let mut sink = Vec::new();
            let _ = bad.stream.shutdown(Shutdown::Write);
            let _ = bad.stream.read_to_end(&mut sink);
        }
        drop(bad);
        good.send(b"ECHO still here\n");
        assert_eq!(good.read_line(), "OK still here", "round {round}");
    }
    server.wait_for_connections(2);
    assert_healthy(&server, server.rss_kib(), "garbage next door");
    drop(good);
}
