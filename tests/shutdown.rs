//! Graceful shutdown on SIGTERM and SIGINT, by signal to the real binary.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};
use util::{Server, PATIENCE};

fn shuts_down_on(signal: &str) {
    let mut server = Server::start(&[]);
    let mut idle = server.client();
    let mut talking = server.client();
    talking.send(b"PING\n");
    talking.expect_line("PONG");
    // Responses already due go out before the shutdown line: pipeline two
    // requests we do not read yet, and wait until the server counted them.
    let mut pipelined = server.client();
    pipelined.send(b"PING\nECHO due\n");
    let deadline = Instant::now() + PATIENCE;
    while server.stats().get("commands") < 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }

    server.signal(signal);
    for c in [&mut idle, &mut talking] {
        c.expect_line("ERR server shutting down");
        c.expect_eof();
    }
    assert_eq!(
        pipelined.read_to_end(),
        b"PONG\nOK due\nERR server shutting down\n"
    );
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "exit status");
    server.wait_for_log("shutdown complete");
}

#[test]
fn sigterm_shuts_down_gracefully() {
    shuts_down_on("TERM");
}

#[test]
fn sigint_shuts_down_gracefully() {
    shuts_down_on("INT");
}

#[test]
fn shutdown_timeout_closes_clients_that_do_not_read() {
    let mut server = Server::start(&["--shutdown-timeout", "500ms", "--max-output", "65536"]);
    let mut c = server.client();
    c.flood_until_blocked();

    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "did not wait for the shutdown timeout"
    );
    server.wait_for_log("shutdown timeout");
}

#[test]
fn no_new_connections_after_shutdown() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    let _open = server.client();
    let mut open = server.client();
    server.signal("TERM");
    open.expect_line("ERR server shutting down");
    // The listener is closed: a new connection is refused (or, if it raced
    // in before, told that the server is shutting down).
    if let Ok(mut s) = std::net::TcpStream::connect(addr) {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        assert!(!buf.starts_with(b"READY\nPONG"), "{buf:?}");
        let _ = s.write_all(b"PING\n");
    }
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// Regression: a QUIT held back by backpressure and answered at shutdown
/// must stay the last line; no `ERR server shutting down` after `BYE`.
#[test]
fn held_quit_answered_at_shutdown_keeps_bye_last() {
    let mut server = Server::start(&["--max-line", "30000000"]);
    let mut c = server.client();
    let mut request = b"ECHO ".to_vec();
    request.extend(std::iter::repeat_n(b'x', 20_000_000));
    request.extend_from_slice(b"\nPING\nQUIT\n");
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&request));
    // Wait until the ECHO has run: its 20 MB reply cannot all fit in the
    // socket buffers, so PING and QUIT are held back by backpressure.
    let deadline = Instant::now() + PATIENCE;
    // Each STATS counts itself too: wait for one command more than asked.
    let mut asked = 0;
    loop {
        asked += 1;
        if server.stats().get("commands") > asked {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal("TERM");
    let all = c.read_to_end();
    sender.join().unwrap().unwrap();
    assert!(
        all.ends_with(b"x\nPONG\nBYE\n"),
        "ends with {:?}",
        String::from_utf8_lossy(&all[all.len().saturating_sub(40)..])
    );
    assert_eq!(all.len(), 3 + 20_000_000 + 1 + 5 + 4);
    assert_eq!(server.wait_exit().code(), Some(0));
}
