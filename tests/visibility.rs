//! What an operator sees in the log. At the default level `info`: clients
//! turned away or closed by a limit or a timer are summed in at most one
//! line per kind per 10 s window, with the count and the limit; the first
//! of a quiet period is logged at once. At `debug`: one line per close with
//! the peer, the reason, how long it was open, its bytes and its commands.

mod util;

use std::time::{Duration, Instant};
use util::{Client, Server};

/// The summary window: at most one line per kind this often.
const WINDOW: Duration = Duration::from_secs(10);

/// The server at the default level, `info`, on a free loopback port.
fn start_at_info(args: &[&str]) -> Server {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Server::start_raw(&all, "info")
}

/// Waits for the next log line containing `needle` and checks that it ends
/// with `want` (the part after the timestamp and level).
fn expect_log_line(server: &mut Server, needle: &str, want: &str) {
    let line = server.wait_for_log(needle);
    assert!(
        line.ends_with(want),
        "got {line:?}, want it to end {want:?}"
    );
}

#[test]
fn busy_rejects_first_logged_at_once_then_summed_per_window() {
    let mut server = start_at_info(&["--max-connections", "1"]);
    let _holder = server.client();

    // Five clients turned away, each confirmed by its line: the server has
    // counted it before it wrote the line.
    let first_reject = Instant::now();
    for _ in 0..5 {
        let mut c = server.connect();
        c.expect_line("ERR server busy");
        c.expect_eof();
    }
    // All five fall in one window, so the split below is exact. (Five
    // loopback connects taking ten seconds would be a broken machine.)
    assert!(
        first_reject.elapsed() < WINDOW,
        "the rejects spanned a window"
    );

    // The first was logged at once, alone: had it waited for the window, it
    // would count all five.
    expect_log_line(
        &mut server,
        "turned away",
        "turned away 1 connection(s) in 1 s: server busy (--max-connections 1)",
    );
    // The other four in one line when the window ends (wait_for_log allows
    // PATIENCE, 20 s: the window plus a margin).
    let line = server.wait_for_log("turned away");
    let want_prefix = "turned away 4 connection(s) in ";
    let want_suffix = " s: server busy (--max-connections 1)";
    let at = line
        .find(want_prefix)
        .unwrap_or_else(|| panic!("second line {line:?} does not count 4"));
    let seconds = line[at + want_prefix.len()..]
        .strip_suffix(want_suffix)
        .unwrap_or_else(|| panic!("second line {line:?} does not name the limit"));
    let seconds: u64 = seconds.parse().expect("whole seconds");
    // It covers the window since the first line, so at least the window.
    assert!(seconds >= WINDOW.as_secs(), "{line:?}");

    let lines = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("turned away"))
        .count();
    assert_eq!(lines, 2, "{:#?}", server.log.lock().unwrap());
    // At info, no per-connection close lines.
    assert!(!server.logged("bytes in"));
}

#[test]
fn idle_timeout_close_is_logged_at_info() {
    let mut server = start_at_info(&["--idle-timeout", "1s"]);
    let mut c = server.client();
    c.expect_line("ERR idle timeout");
    c.expect_eof();
    expect_log_line(
        &mut server,
        "idle timeout",
        "closed 1 connection(s) in 1 s: idle timeout (--idle-timeout 1s)",
    );
}

#[test]
fn line_too_long_close_is_logged_at_info() {
    let mut server = start_at_info(&["--max-line", "16"]);
    let mut c = server.client();
    c.send(&[b'x'; 40]);
    c.expect_line("ERR line too long");
    c.expect_eof();
    expect_log_line(
        &mut server,
        "line too long",
        "closed 1 connection(s) in 1 s: request line too long (--max-line 16)",
    );
}

#[test]
fn write_timeout_close_is_logged_at_info() {
    let mut server = start_at_info(&["--write-timeout", "1s", "--max-output", "65536"]);
    let mut c = server.client();
    c.flood_until_blocked();
    expect_log_line(
        &mut server,
        "write timeout",
        "closed 1 connection(s) in 1 s: write timeout: peer took no bytes (--write-timeout 1s)",
    );
}

/// Waits for the debug close line of the connection from `client`, and
/// returns what follows `closed PEER: `.
fn close_line_of(server: &mut Server, client: &Client) -> String {
    let peer = client.stream.local_addr().unwrap();
    let needle = format!("closed {peer}: ");
    let line = server.wait_for_log(&needle);
    let at = line.find(&needle).unwrap() + needle.len();
    line[at..].to_string()
}

/// Splits `REASON; open S s, REST` and checks S is a number of seconds.
fn reason_and_counts(close: &str) -> (&str, &str) {
    let (reason, rest) = close
        .split_once("; open ")
        .unwrap_or_else(|| panic!("no duration in {close:?}"));
    let (seconds, counts) = rest
        .split_once(" s, ")
        .unwrap_or_else(|| panic!("no duration in {close:?}"));
    let seconds: f64 = seconds.parse().expect("seconds");
    assert!(seconds >= 0.0);
    (reason, counts)
}

#[test]
fn debug_close_line_counts_bytes_and_commands() {
    let mut server = Server::start(&[]);
    let mut c = server.client();
    c.send(b"PING\n");
    c.expect_line("PONG");
    c.send(b"QUIT\n");
    c.expect_line("BYE");
    c.expect_eof();
    let close = close_line_of(&mut server, &c);
    let (reason, counts) = reason_and_counts(&close);
    assert_eq!(reason, "client sent QUIT");
    // In: "PING\n" and "QUIT\n". Out: "READY\nPONG\nBYE\n".
    let bytes_out = "READY\nPONG\nBYE\n".len();
    assert_eq!(
        counts,
        format!("10 bytes in, {bytes_out} bytes out, 2 command(s)")
    );
}

#[test]
fn debug_close_line_names_the_limit_that_closed_it() {
    let mut server = Server::start(&["--idle-timeout", "1s"]);
    let mut c = server.client();
    c.expect_line("ERR idle timeout");
    c.expect_eof();
    let close = close_line_of(&mut server, &c);
    let (reason, counts) = reason_and_counts(&close);
    assert_eq!(reason, "idle timeout");
    let bytes_out = "READY\nERR idle timeout\n".len();
    assert_eq!(
        counts,
        format!("0 bytes in, {bytes_out} bytes out, 0 command(s)")
    );
}
