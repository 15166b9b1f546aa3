//! Signals, sent with `kill` to the real binary: SIGHUP never stops the
//! server; one SIGINT or SIGTERM shuts it down gracefully (exit 0); a second
//! one during a slow graceful shutdown closes every connection at once and
//! exits with status 1.
//!
//! Every test reads a `READY` before its first signal: the greeting is sent
//! from the running loop, so by then the signal handlers are in place (a
//! signal that came earlier would get its default action).

mod util;

use std::io::{ErrorKind, Read};
use std::time::Instant;
use util::{Client, Server, PATIENCE};

// Each runs with one event loop and with two (`--threads 2`).
util::one_and_two_loops!(
    sighup_never_stops_the_server,
    one_sigterm_with_idle_clients_still_shuts_down_gracefully,
    second_sigterm_during_a_slow_shutdown_stops_at_once,
    sigint_after_sigterm_during_a_slow_shutdown_stops_at_once,
    sigterm_after_sigint_during_a_slow_shutdown_stops_at_once,
    a_reload_that_meets_a_fifo_fails_at_once_and_the_server_goes_on,
);

fn sighup_never_stops_the_server() {
    let mut server = Server::start(&[]);
    let mut existing = server.client();
    existing.send(b"PING\n");
    existing.expect_line("PONG");

    // Several times: a handler that only survives the first would let the
    // default action (terminate) take the second.
    for _ in 0..3 {
        server.signal("HUP");
        server.wait_for_log("reload:");
        existing.send(b"PING\n");
        existing.expect_line("PONG");
    }
    let mut newcomer = server.client();
    newcomer.send(b"PING\n");
    newcomer.expect_line("PONG");

    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "the server exited after SIGHUP"
    );
    assert!(
        !server.logged("shutting down"),
        "SIGHUP started a shutdown: {:#?}",
        server.log.lock().unwrap()
    );
    server.assert_no_panic();
}

fn one_sigterm_with_idle_clients_still_shuts_down_gracefully() {
    let mut server = Server::start(&["--shutdown-timeout", "60s"]);
    let mut clients = [server.client(), server.client()];
    server.signal("TERM");
    for c in &mut clients {
        c.expect_line("ERR server shutting down");
        c.expect_eof();
    }
    assert_eq!(server.wait_exit().code(), Some(0), "exit status");
    server.wait_for_log("shutdown complete");
    assert!(!server.logged("at once"), "a single signal stopped at once");
}

/// A client that keeps output pending for as long as the server lives: it
/// floods requests and never reads, until the server stops reading from it
/// (STATS `paused` reaches `paused_after`).
fn client_that_never_reads(server: &Server, paused_after: u64) -> Client {
    let mut c = server.client();
    c.flood_until_paused(server, paused_after);
    c
}

/// Reads until the server's close shows: EOF or a reset. Panics if the
/// connection is still open after PATIENCE.
fn expect_closed(client: &mut Client) {
    let mut chunk = [0u8; 65536];
    loop {
        match client.stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return
            }
            Err(e) => panic!("connection still open, or failed otherwise: {e}"),
        }
    }
}

/// A graceful shutdown kept slow by clients that never read (it would last
/// the whole 60 s `--shutdown-timeout`), then a second signal: the server
/// must close everything and exit 1 at once.
fn second_signal_stops_at_once(first: &str, second: &str) {
    // --write-timeout 0: nothing but the second signal may end the stuck
    // clients before the 60 s shutdown timeout.
    let mut server = Server::start(&[
        "--shutdown-timeout",
        "60s",
        "--write-timeout",
        "0",
        "--max-output",
        "65536",
    ]);
    let mut stuck = [
        client_that_never_reads(&server, 1),
        client_that_never_reads(&server, 2),
    ];
    let mut idle = server.client();

    server.signal(first);
    server.wait_for_log("shutting down");
    // The graceful part still happens for the clients that can take it.
    idle.expect_line("ERR server shutting down");
    idle.expect_eof();
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "the shutdown was not slow: the stuck clients did not hold it up"
    );

    let second_sent = Instant::now();
    server.signal(second);
    // wait_exit gives up after PATIENCE (20 s), well before the 60 s
    // shutdown timeout would have ended it anyway.
    let status = server.wait_exit();
    assert!(second_sent.elapsed() < PATIENCE);
    assert_eq!(status.code(), Some(1), "exit status after a second signal");
    for c in &mut stuck {
        expect_closed(c);
    }
    server.wait_for_log("stopping at once");
    server.wait_for_log("stopped at once");
    for graceful_end in ["shutdown complete", "shutdown timeout"] {
        assert!(
            !server.logged(graceful_end),
            "ended by {graceful_end:?}, not by the second signal"
        );
    }
    server.assert_no_panic();
}

fn second_sigterm_during_a_slow_shutdown_stops_at_once() {
    second_signal_stops_at_once("TERM", "TERM");
}

fn sigint_after_sigterm_during_a_slow_shutdown_stops_at_once() {
    second_signal_stops_at_once("TERM", "INT");
}

fn sigterm_after_sigint_during_a_slow_shutdown_stops_at_once() {
    second_signal_stops_at_once("INT", "TERM");
}

/// Regression: SIGHUP opened the token file with a blocking `open`;
/// replaced by a FIFO, the loop stopped there (no READY for newcomers,
/// SIGTERM ignored). Files are opened without blocking and read only if
/// regular: the reload fails at once, naming the file, keeps the old
/// token, and the server answers and shuts down as ever. (Certificates
/// share the path: tests/tls.rs.)
fn a_reload_that_meets_a_fifo_fails_at_once_and_the_server_goes_on() {
    let path = std::env::temp_dir().join(format!(
        "loopline-signals-{}-{}-token",
        std::process::id(),
        util::loops()
    ));
    std::fs::write(&path, b"s3cret\n").unwrap();
    let mut server = Server::start(&["--auth-file", path.to_str().unwrap()]);
    util::make_fifo(&path);
    server.signal("HUP");
    let line = server.wait_for_log("reload:");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(path.to_str().unwrap()), "{line}");
    assert!(line.contains("not a regular file (a FIFO)"), "{line}");
    let mut newcomer = server.client();
    newcomer.send(b"AUTH s3cret\n");
    newcomer.expect_line("OK");
    server.signal("TERM");
    assert!(server.wait_exit().success());
    std::fs::remove_file(&path).unwrap();
}
