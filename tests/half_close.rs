//! Half-close: the client shuts its writing side; the server answers every
//! line it received, including a final one with no LF, then closes.

mod util;

use util::Server;

#[test]
fn final_line_without_lf_is_answered() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send(b"PING\nECHO last");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"PONG\nOK last\n");
}

#[test]
fn final_line_with_lf_then_eof() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send(b"ECHO a\nECHO b\n");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"OK a\nOK b\n");
}

#[test]
fn final_line_with_cr_but_no_lf() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send(b"PING\r");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"PONG\n");
}

#[test]
fn final_quit_without_lf() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send(b"QUIT");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"BYE\n");
}

#[test]
fn eof_right_after_greeting_closes_cleanly() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.shutdown_write();
    c.expect_eof();
    assert_eq!(server.stats().get("connections"), 1);
}

#[test]
fn server_half_close_after_bye_lets_the_client_read_everything() {
    // The client keeps sending after QUIT: the server must still deliver BYE
    // (it shuts its write side and drains, instead of resetting).
    let server = Server::start(&[]);
    let mut c = server.client();
    let mut input = b"PING\nQUIT\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 200_000));
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut writer, &input);
    });
    c.expect_line("PONG");
    c.expect_line("BYE");
    let _ = sender.join();
}
