//! --idle-timeout, --write-timeout: short configured timeouts, generous
//! margins. No assertion depends on how fast the machine is, only on the
//! server never firing early and always firing eventually. Each test runs
//! over plain TCP and inside TLS (where a close is a close_notify).

mod util;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};
use util::{engine_rule, Server, Transport};

// The engine's rules: over both transports, with one loop and two, and
// against the key-value example too.
engine_rule!(
    idle_client_gets_the_idle_line_then_close,
    complete_requests_reset_the_idle_timer,
    stray_bytes_do_not_reset_the_idle_timer,
    idle_timeout_zero_turns_it_off,
    peer_that_takes_no_bytes_is_closed_by_the_write_timeout,
);

fn idle_client_gets_the_idle_line_then_close(transport: Transport) {
    let server = Server::start_over(transport, &["--idle-timeout", "500ms"]);
    let started = Instant::now();
    let mut c = server.client();
    c.expect_line("ERR idle timeout");
    c.expect_eof();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "fired early"
    );
}

fn complete_requests_reset_the_idle_timer(transport: Transport) {
    let server = Server::start_over(transport, &["--idle-timeout", "3s"]);
    let mut c = server.client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        c.probe();
        thread::sleep(Duration::from_millis(100));
    }
}

fn stray_bytes_do_not_reset_the_idle_timer(transport: Transport) {
    let server = Server::start_over(transport, &["--idle-timeout", "1s"]);
    let mut c = server.client();
    // Trickle bytes of a line that never ends, for much longer than the
    // timeout: each a write of its own (over TLS, a record of its own,
    // encrypted here first: the session stays on this thread).
    let bytes: Vec<Vec<u8>> = (0..100).map(|_| c.wire_bytes(b"x")).collect();
    let mut writer = c.stream.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for byte in &bytes {
            if writer.write_all(byte).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    c.expect_line("ERR idle timeout");
    c.expect_eof();
    let _ = trickle.join();
}

fn idle_timeout_zero_turns_it_off(transport: Transport) {
    let server = Server::start_over(transport, &["--idle-timeout", "0"]);
    let mut c = server.client();
    c.expect_silence(Duration::from_millis(1500));
    c.probe();
}

fn peer_that_takes_no_bytes_is_closed_by_the_write_timeout(transport: Transport) {
    let mut server = Server::start_over(
        transport,
        &["--write-timeout", "1s", "--max-output", "65536"],
    );
    let mut c = server.client();
    c.flood_until_blocked();
    server.wait_for_log("write timeout");
    // The connection is gone from the count (loopline's STATS says so).
    if util::protocol() == util::Protocol::Loopline {
        assert_eq!(server.stats().get("connections"), 1);
    }
    drop(c.stream);
}
