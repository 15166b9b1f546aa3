//! Half-close: the client ends its writing side (over plain TCP a
//! `shutdown(Write)`, inside TLS a close_notify); the server answers every
//! line it received, including a final one with no LF, then closes (inside
//! TLS, with its own close_notify). Each test runs over both.

mod util;

use std::time::{Duration, Instant};

use util::{both_transports, Server, Transport};

both_transports!(
    final_line_without_lf_is_answered,
    final_line_with_lf_then_eof,
    final_line_with_cr_but_no_lf,
    final_quit_without_lf,
    eof_right_after_greeting_closes_cleanly,
    server_half_close_after_bye_lets_the_client_read_everything,
    the_end_in_the_same_write_as_the_last_line_is_answered_at_once,
    the_end_in_the_same_write_as_a_last_line_without_lf_is_answered_at_once,
    the_end_in_the_same_write_as_two_last_lines_is_answered_at_once,
);

/// How long the answers to lines sent with the end of the stream may take:
/// the contract says at once (well within a second); generous here. The
/// idle timeout is the default 300 s, so a server that waits for a timer
/// fails by far (the client's reads give up after 20 s).
const AT_ONCE: Duration = Duration::from_secs(5);

/// Sends `sent` and the end of the stream in one write; the rest of the
/// conversation must be `want`, then the server's end, at once.
fn answered_at_once(transport: Transport, sent: &[u8], want: &[u8]) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    let started = Instant::now();
    c.send_and_end(sent);
    assert_eq!(c.read_to_end(), want);
    let took = started.elapsed();
    assert!(took < AT_ONCE, "answered and closed after {took:?}");
}

/// Regression: inside TLS, a client that sent its last request and its
/// close_notify in one write got `PONG` but neither close_notify nor the
/// close until the idle timeout: the read that took both was short, and
/// was taken for "the socket is drained", so no event came again.
fn the_end_in_the_same_write_as_the_last_line_is_answered_at_once(transport: Transport) {
    answered_at_once(transport, b"PING\n", b"PONG\n");
}

/// Regression: the same, with a last line that has no LF: it was never
/// answered.
fn the_end_in_the_same_write_as_a_last_line_without_lf_is_answered_at_once(transport: Transport) {
    answered_at_once(transport, b"PING", b"PONG\n");
}

/// Regression: the same, after a complete line: only the first was
/// answered.
fn the_end_in_the_same_write_as_two_last_lines_is_answered_at_once(transport: Transport) {
    answered_at_once(transport, b"PING\nECHO last", b"PONG\nOK last\n");
}

fn final_line_without_lf_is_answered(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    c.send(b"PING\nECHO last");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"PONG\nOK last\n");
}

fn final_line_with_lf_then_eof(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    c.send(b"ECHO a\nECHO b\n");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"OK a\nOK b\n");
}

fn final_line_with_cr_but_no_lf(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    c.send(b"PING\r");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"PONG\n");
}

fn final_quit_without_lf(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    c.send(b"QUIT");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"BYE\n");
}

fn eof_right_after_greeting_closes_cleanly(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    c.shutdown_write();
    c.expect_eof();
    assert_eq!(server.stats().get("connections"), 1);
}

fn server_half_close_after_bye_lets_the_client_read_everything(transport: Transport) {
    // The client keeps sending after QUIT: the server must still deliver BYE
    // (it shuts its write side and drains, instead of resetting).
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    let mut input = b"PING\nQUIT\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 200_000));
    // Over TLS, encrypted here first: the session stays on this thread.
    let wire = c.wire_bytes(&input);
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut writer, &wire);
    });
    c.expect_line("PONG");
    c.expect_line("BYE");
    let _ = sender.join();
}
