//! `--threads N`: several event loops in one process. The protocol, limits,
//! timers, signals and shutdown suites run with two loops as well (their
//! `two_loops` cases); this file checks what only several loops have:
//! connections spread over the loops, counters and limits that count the
//! whole process, and a shutdown of every loop at once.

mod util;

use std::time::{Duration, Instant};

use util::{Client, Server, PATIENCE};

/// Connections from the test, each on its own source port: the kernel's
/// hash spreads them over the loops' listeners (where it balances; where
/// the loops share one socket, whichever loop wakes first takes each).
const CLIENTS: usize = 32;

fn clients(server: &Server, n: usize) -> Vec<Client> {
    (0..n).map(|_| server.client()).collect()
}

/// Regression guard for a process that runs N loops but serves from one:
/// the debug line of each accept names its loop, and both loops accept.
/// With 32 connections the chance that a fair hash gives all to one loop is
/// 2 in 2^32.
#[test]
fn connections_spread_over_both_loops() {
    let server = Server::start(&["--threads", "2"]);
    assert!(server.logged("2 event loops"), "no line about the loops");
    let mut clients = clients(&server, CLIENTS);
    for c in &mut clients {
        c.send(b"PING\n");
        c.expect_line("PONG");
    }
    let on_loop = |index: usize| {
        let needle = format!(" on loop {index}");
        let deadline = Instant::now() + PATIENCE;
        while !server.logged(&needle) {
            assert!(Instant::now() < deadline, "no connection on loop {index}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    on_loop(0);
    on_loop(1);
    server.assert_no_panic();
}

/// STATS on any connection, whichever loop serves it, reports the whole
/// process: every loop's connections and commands.
#[test]
fn stats_counts_every_loop() {
    let server = Server::start(&["--threads", "2"]);
    let mut clients = clients(&server, CLIENTS);
    for c in &mut clients {
        c.send(b"PING\n");
        c.expect_line("PONG");
    }
    // Every reply was written, so every count was stored before it: the
    // sums are exact. Each STATS counts itself.
    for (asked, c) in clients.iter_mut().enumerate() {
        c.send(b"STATS\n");
        let stats = util::Stats(c.read_line());
        assert_eq!(stats.get("connections"), CLIENTS as u64, "{}", stats.0);
        assert_eq!(stats.get("accepted"), CLIENTS as u64, "{}", stats.0);
        assert_eq!(
            stats.get("commands"),
            (CLIENTS + asked + 1) as u64,
            "{}",
            stats.0
        );
    }
}

/// `--max-connections` holds for the process, not per loop: with two
/// loops and a limit of 10, the 11th client is turned away whichever loop
/// takes it, and a place freed on one loop admits a newcomer on either.
#[test]
fn max_connections_counts_the_whole_process() {
    let server = Server::start(&["--threads", "2", "--max-connections", "10"]);
    let mut admitted = clients(&server, 10);
    for _ in 0..CLIENTS {
        let mut extra = server.connect();
        extra.expect_line("ERR server busy");
        extra.expect_eof_or_reset();
    }
    let mut leaving = admitted.pop().unwrap();
    leaving.send(b"QUIT\n");
    leaving.expect_line("BYE");
    // Asked on a client already admitted: a fresh one would take the place.
    let deadline = Instant::now() + PATIENCE;
    loop {
        admitted[0].send(b"STATS\n");
        if util::Stats(admitted[0].read_line()).get("connections") == 9 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut newcomer = server.client();
    newcomer.send(b"PING\n");
    newcomer.expect_line("PONG");
    newcomer.send(b"STATS\n");
    assert_eq!(
        util::Stats(newcomer.read_line()).get("rejected"),
        CLIENTS as u64
    );
}

/// Regression guard for a shutdown that stops one loop's connections
/// short: every client has requests the server has already read and not
/// yet answered (it pipelines without reading) when SIGTERM comes; each
/// gets every answer, then the shutdown line, then a clean end, whichever
/// loop it is on.
#[test]
fn shutdown_under_load_with_two_loops_loses_no_response_already_due() {
    const REQUESTS: usize = 1000;
    let mut server = Server::start(&["--threads", "2"]);
    let mut clients = clients(&server, 16);
    let requests = b"PING\n".repeat(REQUESTS);
    for c in &mut clients {
        c.send(&requests);
    }
    // Wait until the server has read and answered every request (the
    // replies wait in the sockets, unread by the clients).
    let expected = (clients.len() * REQUESTS) as u64;
    let deadline = Instant::now() + PATIENCE;
    let mut probe = server.client();
    let mut asked = 0;
    loop {
        probe.send(b"STATS\n");
        asked += 1;
        let stats = util::Stats(probe.read_line());
        if stats.get("commands") >= expected + asked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests never read: {}",
            stats.0
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.signal("TERM");
    let mut want = b"PONG\n".repeat(REQUESTS);
    want.extend_from_slice(b"ERR server shutting down\n");
    for c in &mut clients {
        assert!(c.read_to_end() == want, "a client lost responses");
    }
    assert_eq!(server.wait_exit().code(), Some(0));
    server.wait_for_log("shutdown complete");
}

/// Bad values of `--threads` are usage errors naming the option.
#[test]
fn threads_out_of_range_is_a_usage_error() {
    for bad in ["0", "1025", "two"] {
        let run = util::run_loopline(&["--threads", bad], "info");
        assert_eq!(run.status.code(), Some(2), "--threads {bad}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("--threads"), "--threads {bad}: {stderr}");
    }
}

/// Regression guard: with two loops, loop 0 (which holds the signal
/// handlers) left as soon as its own connections were gone, while loop 1
/// still drained; a second SIGTERM was then caught and ignored, and the
/// server waited out the whole `--shutdown-timeout`. Here only loop 1 holds
/// a connection (a client that does not read), and the second signal must
/// stop the server at once, with status 1.
#[test]
fn a_second_signal_is_heard_while_only_another_loop_drains() {
    let mut server = Server::start(&["--threads", "2", "--shutdown-timeout", "60s"]);
    // Clients until one lands on loop 1; the others leave.
    let deadline = Instant::now() + PATIENCE;
    let mut on_loop_1 = loop {
        let c = server.client();
        let port = c.stream.local_addr().unwrap().port();
        let accepted = server.wait_for_log(&format!("accepted 127.0.0.1:{port} on loop"));
        if accepted.contains("on loop 1") {
            break c;
        }
        drop(c);
        assert!(Instant::now() < deadline, "no connection landed on loop 1");
    };
    on_loop_1.flood_until_blocked();
    server.wait_for_connections(2);
    server.signal("TERM");
    server.wait_for_log("shutting down");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(1), "not stopped at once");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited out the shutdown timeout"
    );
}

/// With several loops every listener socket has `SO_REUSEPORT`, which would
/// let a second server of the same user bind the same port and take half
/// the connections. It must fail as it does with one loop: exit 1 naming
/// the address.
#[test]
fn a_second_server_on_the_same_port_fails_with_several_loops_too() {
    let server = Server::start(&["--threads", "2"]);
    let addr = server.addr.to_string();
    let run = util::run_loopline(&["--listen", &addr, "--threads", "2"], "info");
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    let mut c = server.client();
    c.send(b"PING\n");
    c.expect_line("PONG");
}
