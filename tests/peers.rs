//! Misbehaving peers: resets, half-closes and vanishing clients. Each must
//! cost the server at most that one connection: a bystander connected the
//! whole time keeps being served, a fresh client gets `PONG` afterwards, and
//! `STATS connections` comes back to the count of the well-behaved clients.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use util::{Client, Server, PATIENCE};

/// A raw socket2 client, so it can be closed with a reset.
fn raw_connect(addr: SocketAddr) -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.connect(&addr.into()).expect("connect");
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket.set_write_timeout(Some(PATIENCE)).unwrap();
    socket
}

/// Reads up to and including the first LF (byte by byte: nothing after it is
/// taken from the socket).
fn raw_read_line(socket: &mut Socket) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match socket.read(&mut byte) {
            Ok(0) => panic!("EOF after {:?}", String::from_utf8_lossy(&line)),
            Ok(_) if byte[0] == b'\n' => return String::from_utf8(line).expect("utf-8"),
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// Closes with a reset (RST) instead of a FIN: SO_LINGER with a zero time.
fn reset(socket: Socket) {
    socket.set_linger(Some(Duration::ZERO)).expect("linger 0");
    drop(socket);
}

/// The server is fine: the bystander and a fresh client are answered, the
/// connections settle at `bystanders + 1` (the asking one), and it never
/// panicked.
fn assert_unharmed(server: &Server, bystander: &mut Client, what: &str) {
    bystander.send(b"PING\n");
    assert_eq!(bystander.read_line(), "PONG", "bystander after {what}");
    let mut fresh = server.client();
    fresh.send(b"PING\n");
    assert_eq!(fresh.read_line(), "PONG", "fresh client after {what}");
    drop(fresh);
    server.wait_for_connections(2);
    server.assert_no_panic();
}

#[test]
fn reset_in_the_middle_of_a_request_line() {
    let server = Server::start(&[]);
    let mut bystander = server.client();
    for _ in 0..20 {
        let mut s = raw_connect(server.addr);
        assert_eq!(raw_read_line(&mut s), "READY");
        s.write_all(b"PING\nECHO half a li").unwrap();
        assert_eq!(raw_read_line(&mut s), "PONG");
        reset(s);
    }
    assert_unharmed(&server, &mut bystander, "resets mid-read");
}

#[test]
fn reset_while_the_server_has_output_pending() {
    // A small output cap, so the server pauses and holds output for us.
    let server = Server::start(&["--max-output", "65536"]);
    let mut bystander = server.client();
    let line = format!("ECHO {}\n", "w".repeat(200));
    for round in 0..5 {
        let s = raw_connect(server.addr);
        s.set_nonblocking(true).unwrap();
        // Pipeline without reading until the socket takes no more: the
        // server has filled our receive buffer and paused reading.
        let mut sent = 0usize;
        let deadline = Instant::now() + PATIENCE;
        let mut stalled_since: Option<Instant> = None;
        loop {
            match (&s).write(line.as_bytes()) {
                Ok(n) => {
                    sent += n;
                    stalled_since = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Stalled for a while: the server stopped reading.
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(200) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("round {round}: write failed: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the server read {sent} bytes and never paused"
            );
        }
        assert!(sent > 65536, "round {round}: only {sent} bytes sent");
        reset(s);
        bystander.send(b"PING\n");
        assert_eq!(bystander.read_line(), "PONG", "bystander in round {round}");
    }
    assert_unharmed(&server, &mut bystander, "resets mid-write");
}

#[test]
fn reset_before_the_greeting_is_read() {
    let server = Server::start(&[]);
    let mut bystander = server.client();
    for _ in 0..50 {
        reset(raw_connect(server.addr));
    }
    assert_unharmed(&server, &mut bystander, "connect-then-reset");
}

#[test]
fn client_closes_its_writing_side_and_is_answered() {
    let server = Server::start(&[]);
    let mut bystander = server.client();
    let mut c = server.client();
    c.send(b"PING\nECHO last\nPI");
    c.shutdown_write();
    // Everything sent before the half-close is answered, the final line
    // without LF included; then the server closes.
    assert_eq!(c.read_to_end(), b"PONG\nOK last\nERR unknown command\n");
    assert_unharmed(
        &server,
        &mut bystander,
        "a half-close of the client's write side",
    );
}

#[test]
fn client_that_shuts_its_reading_side_keeps_being_served() {
    let server = Server::start(&["--max-output", "65536"]);
    let mut bystander = server.client();
    let c = server.client();
    c.stream.shutdown(Shutdown::Read).unwrap();
    // Keep sending PINGs we will never read: the answers pile up in our
    // receive buffer, then in the server's output, which pauses reading.
    let mut writer = c.stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0usize;
    for i in 0..2_000 {
        match writer.write(&b"PING\n".repeat(100)) {
            Ok(n) => sent += n,
            // Our send buffer is full because the server paused reading us:
            // backpressure, as it should be.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write {i} failed: {e}"),
        }
        if i % 100 == 0 {
            bystander.send(b"PING\n");
            assert_eq!(
                bystander.read_line(),
                "PONG",
                "bystander while a peer ignores its replies"
            );
        }
    }
    assert!(sent > 0);
    // The connection is still open and counted, the server still answers.
    let stats = server.stats();
    assert_eq!(stats.get("connections"), 3, "{}", stats.0);
    drop(writer);
    drop(c);
    assert_unharmed(
        &server,
        &mut bystander,
        "a client that shut its reading side",
    );
}

#[test]
fn client_that_closes_right_after_connecting() {
    let server = Server::start(&[]);
    let mut bystander = server.client();
    for _ in 0..50 {
        drop(TcpStream::connect(server.addr).expect("connect"));
    }
    // And some that sent a request, then left without reading the answer.
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        s.write_all(b"PING\n").unwrap();
        drop(s);
    }
    assert_unharmed(&server, &mut bystander, "immediate closes");
}

#[test]
fn a_burst_of_resets() {
    let server = Server::start(&[]);
    let mut bystander = server.client();
    // 200 connected clients, each mid-request, all reset at once.
    let mut sockets = Vec::new();
    for _ in 0..200 {
        let mut s = raw_connect(server.addr);
        assert_eq!(raw_read_line(&mut s), "READY");
        s.write_all(b"ECHO never finished").unwrap();
        sockets.push(s);
    }
    let stats = server.stats();
    assert_eq!(stats.get("connections"), 202, "{}", stats.0);
    for s in sockets {
        reset(s);
    }
    assert_unharmed(&server, &mut bystander, "a burst of 200 resets");
    // And 200 that reset before the server even greeted them.
    for _ in 0..200 {
        reset(raw_connect(server.addr));
    }
    assert_unharmed(
        &server,
        &mut bystander,
        "a burst of 200 connect-then-resets",
    );
}
