//! Half-close: the client ends its writing side (over plain TCP a
//! `shutdown(Write)`, inside TLS a close_notify); the server answers every
//! line it received, including a final one with no LF, then closes (inside
//! TLS, with its own close_notify). Each test runs over both.

mod util;

use util::{both_transports, Server, Transport};

both_transports!(
    final_line_without_lf_is_answered,
    final_line_with_lf_then_eof,
    final_line_with_cr_but_no_lf,
    final_quit_without_lf,
    eof_right_after_greeting_closes_cleanly,
    server_half_close_after_bye_lets_the_client_read_everything,
);

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
