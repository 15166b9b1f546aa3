//! Tests for the teaching examples in `examples/` (the tutorial ladder,
//! `docs/tutorial.md`).
//!
//! Each test starts a compiled example binary on 127.0.0.1:0 through the
//! shared harness (`tests/util`), which reads the real port from the
//! example's `listening on ADDR` line on stderr; the test then talks to it
//! over loopback. Every connect, read and write has a timeout, and the child
//! process is killed when the test ends, pass or fail.
//!
//! The binaries live in target/<profile>/examples/. A plain `cargo test`
//! builds every example before it runs integration tests; a run restricted
//! to this file (`cargo test --test examples`) may not, so build them first
//! with `cargo build --examples` in that case.

mod util;

use std::io::{self, Write};
use std::net::Shutdown;
use std::process::Command;
use std::thread;
use std::time::Duration;

use util::{example_path, Client, Server};

/// How long we listen for something that must NOT arrive.
const QUIET: Duration = Duration::from_millis(300);

/// Starts example `name` listening on 127.0.0.1:0 (the examples take their
/// address as the first argument), with `extra_args` after it.
fn start_example(name: &str, extra_args: &[&str]) -> Server {
    let mut command = Command::new(example_path(name));
    command.arg("127.0.0.1:0").args(extra_args);
    Server::spawn(command)
}

// ---------------------------------------------------------------------------
// Step 1: blocking, one client at a time
// ---------------------------------------------------------------------------

#[test]
fn step1_echoes_lines_as_is() {
    let server = start_example("step1_blocking", &[]);
    let mut c = server.connect();
    c.expect_line("READY");
    c.send(b"hello\nwith CRLF\r\n");
    c.expect_line("hello");
    c.expect_line("with CRLF\r");
}

#[test]
fn step1_second_client_waits_until_first_leaves() {
    let server = start_example("step1_blocking", &[]);
    let mut first = server.connect();
    first.expect_line("READY");

    // The kernel completes the second handshake (listen backlog), but the
    // server is busy in the first client's read: no greeting.
    let mut second = server.connect();
    second.expect_silence(QUIET);

    // The first client is still served...
    first.send(b"still here\n");
    first.expect_line("still here");
    second.expect_silence(QUIET);

    // ...and only when it leaves does the second get its turn.
    drop(first);
    second.expect_line("READY");
    second.send(b"my turn\n");
    second.expect_line("my turn");
}

// ---------------------------------------------------------------------------
// Step 2: thread per connection
// ---------------------------------------------------------------------------

#[test]
fn step2_serves_two_clients_at_once() {
    let server = start_example("step2_threads", &[]);
    let mut a = server.connect();
    a.expect_line("READY");
    // Greeted while the first is still connected and idle.
    let mut b = server.connect();
    b.expect_line("READY");

    b.send(b"from b\n");
    b.expect_line("from b");
    a.send(b"from a\n");
    a.expect_line("from a");
    b.send(b"b again\n");
    a.send(b"a again\n");
    a.expect_line("a again");
    b.expect_line("b again");
}

// ---------------------------------------------------------------------------
// Step 3: minimal mio echo
// ---------------------------------------------------------------------------

#[test]
fn step3_echoes_for_many_clients() {
    let server = start_example("step3_mio_echo", &[]);
    let mut clients: Vec<Client> = (0..100).map(|_| server.connect()).collect();

    // Everyone talks before anyone listens: the one thread must serve all.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("client {i} says hello\n").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate().rev() {
        c.send(format!("and goodbye from {i}").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let expected = format!("client {i} says hello\nand goodbye from {i}");
        // Raw bytes, no framing: read exactly what was sent.
        assert_eq!(c.read_exact_bytes(expected.len()), expected.as_bytes());
    }
    // A client leaving does not disturb the others.
    clients.truncate(50);
    for c in &mut clients {
        c.send(b"still alive");
        assert_eq!(c.read_exact_bytes(11), b"still alive");
    }
}

// ---------------------------------------------------------------------------
// Step 4: line framing
// ---------------------------------------------------------------------------

#[test]
fn step4_line_sent_one_byte_at_a_time() {
    let server = start_example("step4_framing", &[]);
    let mut c = server.connect();
    // With TCP_NODELAY each byte leaves as its own segment, so the server
    // very likely sees many short reads (the test does not rely on it).
    c.stream.set_nodelay(true).unwrap();
    for byte in b"hello, one byte at a time\r\n" {
        c.send(&[*byte]);
    }
    c.expect_line("OK hello, one byte at a time");
}

#[test]
fn step4_several_lines_in_one_write() {
    let server = start_example("step4_framing", &[]);
    let mut c = server.connect();
    c.send(b"first\nsecond\r\n\nthird\npart");
    c.expect_line("OK first");
    c.expect_line("OK second");
    c.expect_line("OK ");
    c.expect_line("OK third");
    // "part" is an unfinished line: no reply until its LF arrives.
    c.expect_silence(QUIET);
    c.send(b"ial\n");
    c.expect_line("OK partial");
}

#[test]
fn step4_line_cap() {
    let server = start_example("step4_framing", &[]);
    // Exactly 1024 bytes plus CRLF is fine.
    let mut c = server.connect();
    let longest = "x".repeat(1024);
    c.send(format!("{longest}\r\n").as_bytes());
    c.expect_line(&format!("OK {longest}"));

    // One byte more is refused as soon as it cannot fit: no LF needed.
    let mut c = server.connect();
    c.send(b"before\n");
    c.send("y".repeat(1025).as_bytes());
    c.expect_line("OK before");
    c.expect_line("ERR line too long");
    c.expect_eof_or_reset();
}

#[test]
fn step4_last_line_without_lf_is_answered_at_eof() {
    let server = start_example("step4_framing", &[]);
    let mut c = server.connect();
    c.send(b"one\ntail");
    c.shutdown_write();
    c.expect_line("OK one");
    c.expect_line("OK tail");
    c.expect_eof_or_reset();
}

// ---------------------------------------------------------------------------
// Step 5: partial writes and backpressure
// ---------------------------------------------------------------------------

#[test]
fn step5_framing_still_works() {
    let server = start_example("step5_backpressure", &[]);
    let mut c = server.connect();
    // One segment per byte, as in step 4.
    c.stream.set_nodelay(true).unwrap();
    for byte in b"slow\n" {
        c.send(&[*byte]);
    }
    c.send(b"a\r\nb\n\nlast");
    c.shutdown_write();
    for expected in ["OK slow", "OK a", "OK b", "OK ", "OK last"] {
        c.expect_line(expected);
    }
    c.expect_eof_or_reset();
}

#[test]
fn step5_client_that_does_not_read_loses_nothing() {
    flood_without_reading(&[]);
}

#[test]
fn step5_toggle_mode_behaves_the_same() {
    flood_without_reading(&["--toggle"]);
}

const FLOOD_LINES: usize = 160_000;
const FLOOD_LINE_LEN: usize = 100; // LF included: 16 MB in all

/// Request `i` without its LF: "line 00000042 xxx...x", FLOOD_LINE_LEN - 1
/// bytes.
fn flood_line(i: usize) -> String {
    let head = format!("line {i:08} ");
    format!("{head}{}", "x".repeat(FLOOD_LINE_LEN - head.len() - 1))
}

/// A client sends 16 MB of requests before reading a single reply. The
/// server must stop reading when its output for this client passes the cap
/// (it says so on stderr), keep its memory bounded, and then deliver every
/// reply, complete and in order, once the client reads.
fn flood_without_reading(extra_args: &[&str]) {
    let mut server = start_example("step5_backpressure", extra_args);
    let rss_at_start = server.rss_kib();

    // A small receive buffer on our side keeps the kernel from absorbing
    // most of the replies, so the server's own buffer must fill up.
    let mut conn = Client::connect_with_receive_buffer(server.addr, 16 * 1024);

    // The writer runs on its own thread: once the server pauses, our writes
    // block, and only reading the replies lets them continue.
    let mut writer = conn.stream.try_clone().expect("clone stream");
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut chunk = String::new();
        for i in 0..FLOOD_LINES {
            chunk.push_str(&flood_line(i));
            chunk.push('\n');
            if chunk.len() >= 64 * 1024 {
                writer.write_all(chunk.as_bytes())?;
                chunk.clear();
            }
        }
        writer.write_all(chunk.as_bytes())?;
        // Half-close: "no more requests", replies still welcome.
        writer.shutdown(Shutdown::Write)
    });

    // Not a single byte read so far: the server must have stopped reading.
    server.wait_for_log("pausing reads");
    let rss_paused = server.rss_kib();

    // Now read everything back and check it line by line.
    for i in 0..FLOOD_LINES {
        let line = conn.read_line();
        let expected = format!("OK {}", flood_line(i));
        assert!(
            line == expected,
            "reply {i}: got {line:?}, expected {expected:?}"
        );
    }
    conn.expect_eof_or_reset();
    match sender.join() {
        Ok(result) => result.expect("sending the requests"),
        Err(_) => panic!("sender thread panicked"),
    }
    server.wait_for_log("resuming reads");

    // 16 MB went through; the server's peak memory grew by far less. (An
    // unbounded server would have buffered most of it: the client read
    // nothing until the server had paused.)
    let peak = server.peak_rss_kib();
    eprintln!(
        "server RSS at start {rss_at_start} kB, while paused {rss_paused} kB, peak {peak} kB"
    );
    assert!(
        peak < rss_at_start + 8 * 1024,
        "server peak RSS {peak} kB vs {rss_at_start} kB at start: output not bounded"
    );
}

// ---------------------------------------------------------------------------
// Step 6: your own protocol on the engine
// ---------------------------------------------------------------------------

/// The tutorial's session with the tally, as written there: shared counts,
/// a session of its own per connection, and the engine's options (here
/// `--idle-timeout`) for free.
#[test]
fn step6_tally_counts_for_everyone_and_remembers_each_connection() {
    let mut command = Command::new(example_path("step6_tally"));
    command
        .args(["--listen", "127.0.0.1:0", "--idle-timeout", "2s"])
        .env("RUST_LOG", "info");
    let server = Server::spawn(command);
    let mut first = server.client();
    for (request, answer) in [
        ("ADD apple", "OK 1"),
        ("ADD apple", "OK 2"),
        ("ADD pear", "OK 1"),
        ("COUNT apple", "OK 2"),
        ("MINE", "OK 3"),
        ("count kiwi", "OK 0"),
        ("EAT apple", "ERR unknown command"),
    ] {
        first.send(format!("{request}\n").as_bytes());
        first.expect_line(answer);
    }
    // Another connection sees the same counts, and has made no ADD.
    let mut second = server.client();
    second.send(b"ADD apple\nMINE\n");
    second.expect_line("OK 3");
    second.expect_line("OK 1");
    second.send(b"QUIT\n");
    second.expect_line("BYE");
    second.expect_eof();
    // The engine's idle timeout, with the engine's line.
    first.expect_line("ERR idle timeout");
    first.expect_eof();
    server.assert_no_panic();
}

/// The tally keeps at most `--max-words` words (its own option, beside
/// the engine's): a new word past them is refused, known ones still count.
#[test]
fn step6_tally_keeps_at_most_max_words() {
    let mut command = Command::new(example_path("step6_tally"));
    command
        .args(["--listen", "127.0.0.1:0", "--max-words", "2"])
        .env("RUST_LOG", "info");
    let server = Server::spawn(command);
    let mut c = server.client();
    for (request, answer) in [
        ("ADD apple", "OK 1"),
        ("ADD pear", "OK 1"),
        ("ADD kiwi", "ERR tally full"),
        ("ADD apple", "OK 2"),
        ("COUNT kiwi", "OK 0"),
        ("MINE", "OK 3"),
    ] {
        c.send(format!("{request}\n").as_bytes());
        c.expect_line(answer);
    }
    server.assert_no_panic();
    // A bad value is a usage error naming the option.
    let out = Command::new(example_path("step6_tally"))
        .args(["--max-words", "many"])
        .output()
        .expect("run step6_tally");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-words"), "{stderr}");
}

/// The tutorial's step 4 demonstration, as written: a client that writes a
/// 20 MB line before it reads is still writing when step 4 closes with
/// input unread, so its write fails with the reset and it never reads the
/// reply; loopline's lingering close lets the same client read its line.
#[test]
fn step4_a_client_still_sending_loses_the_reply_loopline_keeps_it() {
    let step4 = start_example("step4_framing", &[]);
    let loopline = Server::start(&[]);
    let line = vec![b'x'; 20_000_000];
    let mut lost = Client::connect(step4.addr);
    assert!(
        lost.stream.write_all(&line).is_err(),
        "20 MB went through: step 4 read them all"
    );
    let mut kept = Client::connect(loopline.addr);
    kept.stream
        .write_all(&line)
        .expect("loopline reads (and drops) the rest");
    kept.expect_line("READY");
    kept.expect_line("ERR line too long");
}
