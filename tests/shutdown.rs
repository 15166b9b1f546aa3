//! Graceful shutdown on SIGTERM and SIGINT, by signal to the real binary,
//! over plain TCP and inside TLS: there, every session the server ends
//! ends with its close_notify, not a bare TCP close.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};
use util::{both_transports, Server, Transport, PATIENCE};

both_transports!(
    sigterm_shuts_down_gracefully,
    sigint_shuts_down_gracefully,
    held_quit_answered_at_shutdown_keeps_bye_last,
);

// The engine's rules: against the key-value example too.
util::engine_rule!(
    shutdown_timeout_closes_clients_that_do_not_read,
    no_new_connections_after_shutdown,
    an_idle_client_gets_the_shutdown_line_whatever_the_protocol,
);

fn shuts_down_on(transport: Transport, signal: &str) {
    let mut server = Server::start_over(transport, &[]);
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

fn sigterm_shuts_down_gracefully(transport: Transport) {
    shuts_down_on(transport, "TERM");
}

fn sigint_shuts_down_gracefully(transport: Transport) {
    shuts_down_on(transport, "INT");
}

fn shutdown_timeout_closes_clients_that_do_not_read(transport: Transport) {
    let mut server = Server::start_over(
        transport,
        &["--shutdown-timeout", "500ms", "--max-output", "65536"],
    );
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

fn no_new_connections_after_shutdown(transport: Transport) {
    let mut server = Server::start_over(transport, &[]);
    let _open = server.client();
    let mut open = server.client();
    server.signal("TERM");
    open.expect_line("ERR server shutting down");
    // The listener is closed: a new connection is refused (or, over TLS,
    // its handshake fails; or, if it raced in before, it is told that the
    // server is shutting down). Whatever it is, it is never served.
    if let Ok(mut late) = server.try_connect() {
        // A write or read that fails is one more way of not being served.
        let (probe, answer) = util::protocol().probe();
        let _ = late.try_send(probe);
        let mut said = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = late.read_some(&mut chunk) {
            said.extend_from_slice(&chunk[..n]);
        }
        let said = String::from_utf8_lossy(&said);
        assert!(!said.contains(answer), "served after shutdown: {said:?}");
    }
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// Regression: a QUIT held back by backpressure and answered at shutdown
/// must stay the last line; no `ERR server shutting down` after `BYE`.
fn held_quit_answered_at_shutdown_keeps_bye_last(transport: Transport) {
    let mut server = Server::start_over(transport, &["--max-line", "30000000"]);
    let mut c = server.client();
    let mut request = b"ECHO ".to_vec();
    request.extend(std::iter::repeat_n(b'x', 20_000_000));
    request.extend_from_slice(b"\nPING\nQUIT\n");
    // Over TLS, encrypted here first: the session stays on this thread.
    let request = c.wire_bytes(&request);
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

/// A graceful shutdown, seen by a client that is idle and one that has
/// just been answered: the engine's last line, then the careful close.
fn an_idle_client_gets_the_shutdown_line_whatever_the_protocol(transport: Transport) {
    let mut server = Server::start_over(transport, &[]);
    let mut idle = server.client();
    let mut answered = server.client();
    answered.probe();
    server.signal("TERM");
    for c in [&mut idle, &mut answered] {
        c.expect_line("ERR server shutting down");
        c.expect_eof();
    }
    assert_eq!(server.wait_exit().code(), Some(0));
    server.wait_for_log("shutdown complete");
}
