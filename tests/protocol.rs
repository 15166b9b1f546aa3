//! Every row and rule of the protocol (`docs/protocol.md`, section 1), over
//! real sockets: each test runs over plain TCP and inside TLS, the same
//! bytes in and out.

mod util;

use std::time::Duration;
use util::{both_transports, responses_to, Rng, Server, Transport};

both_transports!(
    greets_and_answers_every_command,
    malformed_commands_get_err_and_the_connection_stays,
    crlf_is_stripped_but_other_cr_is_kept,
    echo_is_binary_safe,
    nothing_after_quit_is_executed,
    byte_at_a_time_gives_the_same_responses,
    random_splits_give_the_same_responses,
    ten_thousand_pipelined_commands_in_one_write,
);

fn greets_and_answers_every_command(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    for (request, response) in [
        ("PING\n", "PONG"),
        ("ECHO hello world\n", "OK hello world"),
        ("ECHO \n", "OK "),
        ("HELP\n", "OK commands: PING ECHO QUIT HELP STATS"),
        ("\n", "ERR empty command"),
        ("FLY\n", "ERR unknown command"),
        ("ping\n", "PONG"),
        ("Ping\n", "PONG"),
        ("echo MiXeD\n", "OK MiXeD"),
    ] {
        c.send(request.as_bytes());
        assert_eq!(c.read_line(), response, "request {request:?}");
    }
    c.send(b"QUIT\n");
    c.expect_line("BYE");
    c.expect_eof();
}

fn malformed_commands_get_err_and_the_connection_stays(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    for request in [
        "PING x\n",
        "PING \n",
        "ECHO\n",
        "HELP x\n",
        "STATS now\n",
        "QUIT please\n",
    ] {
        c.send(request.as_bytes());
        let line = c.read_line();
        assert!(line.starts_with("ERR "), "{request:?} got {line:?}");
    }
    c.send(b"PING\n");
    c.expect_line("PONG");
}

fn crlf_is_stripped_but_other_cr_is_kept(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let out = responses_to(&server, b"PING\r\nECHO a\rb\r\nECHO x\r\r\nPING\r\r\n");
    assert_eq!(out, b"PONG\nOK a\rb\nOK x\r\nERR unknown command\n");
}

fn echo_is_binary_safe(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut c = server.client();
    let text: Vec<u8> = (0u8..=255).filter(|&b| b != b'\n').collect();
    let mut request = b"ECHO ".to_vec();
    request.extend_from_slice(&text);
    request.extend_from_slice(b"\x00\xff\n");
    c.send(&request);
    let mut want = b"OK ".to_vec();
    want.extend_from_slice(&text);
    want.extend_from_slice(b"\x00\xff");
    assert_eq!(c.read_line_bytes(), want);
}

fn nothing_after_quit_is_executed(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let out = responses_to(&server, b"PING\nQUIT\nPING\nECHO never\n");
    assert_eq!(out, b"PONG\nBYE\n");
    // And the commands after QUIT were not counted either.
    let stats = server.stats();
    assert_eq!(stats.get("commands"), 3, "PING, QUIT and the STATS itself");
}

/// A request script that exercises every command and rule.
fn script() -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..200 {
        match i % 7 {
            0 => s.extend_from_slice(b"PING\n"),
            1 => {
                s.extend_from_slice(format!("ECHO line {i} ").as_bytes());
                s.extend_from_slice(b"\x00\xff\r mid\r\n");
            }
            2 => s.extend_from_slice(b"\r\n"),
            3 => s.extend_from_slice(b"nope\n"),
            4 => s.extend_from_slice(b"HELP\r\n"),
            5 => s.extend_from_slice(b"ECHO \n"),
            _ => s.extend_from_slice(b"pInG x\n"),
        }
    }
    s.extend_from_slice(b"QUIT\r\nPING\n");
    s
}

fn byte_at_a_time_gives_the_same_responses(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let input = script();
    let whole = responses_to(&server, &input);
    assert!(whole.ends_with(b"BYE\n"));

    let mut c = server.client();
    c.stream.set_nodelay(true).unwrap();
    c.send_byte_by_byte(&input);
    c.shutdown_write();
    assert_eq!(c.read_to_end(), whole);
}

fn random_splits_give_the_same_responses(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let input = script();
    let whole = responses_to(&server, &input);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..20 {
        let mut c = server.client();
        c.stream.set_nodelay(true).unwrap();
        let mut at = 0;
        while at < input.len() {
            let n = 1 + rng.below(40).min(input.len() - at - 1);
            c.send(&input[at..at + n]);
            at += n;
            if rng.below(4) == 0 {
                // Let the server read what it has, so splits really land apart.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        c.shutdown_write();
        assert_eq!(c.read_to_end(), whole);
    }
}

fn ten_thousand_pipelined_commands_in_one_write(transport: Transport) {
    let server = Server::start_over(transport, &[]);
    let mut input = Vec::new();
    let mut want = Vec::new();
    for i in 0..10_000 {
        if i % 2 == 0 {
            input.extend_from_slice(b"PING\n");
            want.extend_from_slice(b"PONG\n");
        } else {
            input.extend_from_slice(format!("ECHO {i}\n").as_bytes());
            want.extend_from_slice(format!("OK {i}\n").as_bytes());
        }
    }
    let mut c = server.client();
    // Write from another thread: the server may answer before we finish.
    // (Over TLS, encrypted here first: the session stays on this thread.)
    let wire = c.wire_bytes(&input);
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &wire));
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.extend_from_slice(&c.read_line_bytes());
        got.push(b'\n');
    }
    sender.join().unwrap().unwrap();
    assert_eq!(got, want);
}

/// Plain TCP only: `bytes_in` and `bytes_out` count what crosses the
/// socket, which over TLS is records and handshake whose sizes are the TLS
/// library's business, not the protocol's.
#[test]
fn stats_counts_connections_commands_and_bytes() {
    let server = Server::start(&[]);
    let mut a = server.client();
    a.send(b"PING\n");
    a.expect_line("PONG");
    let mut b = server.client();
    b.send(b"STATS\n");
    let stats = util::Stats(b.read_line());
    assert!(stats.0.starts_with("OK "));
    assert_eq!(
        stats.get("connections"),
        2,
        "both open, the asking one included"
    );
    assert_eq!(stats.get("accepted"), 2);
    assert_eq!(stats.get("rejected"), 0);
    assert_eq!(stats.get("commands"), 2);
    assert_eq!(stats.get("bytes_in"), 5 + 6);
    assert_eq!(
        stats.get("bytes_out"),
        6 + 5 + 6,
        "two READY and one PONG written before"
    );
    assert!(stats.get("uptime_s") < 3600);
    drop(a);
    drop(b);
    // Once both are gone, only the new asker is open.
    server.wait_for_connections(1);
}
