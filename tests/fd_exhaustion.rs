//! Running out of file descriptors (`docs/pitfalls.md`, pitfall 4): the server is started with
//! RLIMIT_NOFILE 64 (soft and hard, so it cannot raise it) and
//! `--max-connections 1000`, so `accept` fails with EMFILE long before the
//! connection limit. Every connection attempt must still get an answer
//! (`READY` or `ERR server busy`, never a hang), the clients already in must
//! keep being served, the loop must not spin, and once descriptors are free
//! again new clients must be admitted without anyone poking the server.

mod util;

use std::io;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};
use util::{Client, Server, PATIENCE};

/// The server's whole descriptor budget: stdio, epoll, waker, signal pipe,
/// listener and spare take about ten, leaving some fifty for clients.
const NOFILE: libc::rlim_t = 64;
/// Clients that stay connected from start to end.
const HELD: usize = 5;
/// Connection attempts per round, far more than the descriptors.
const ATTEMPTS: usize = 200;

fn start_with_few_descriptors() -> Server {
    let mut command = util::loopline_command(&["--max-connections", "1000"], "debug");
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls setrlimit, which is async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn(command)
}

fn ping_all(clients: &mut [Client], when: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(b"PING\n");
        assert_eq!(c.read_line(), "PONG", "held client {i} {when}");
    }
}

/// Makes `ATTEMPTS` connection attempts, keeping the admitted ones open so
/// the descriptors run out. Returns the admitted clients and the number
/// turned away.
fn exhaust(server: &Server, held: &mut [Client], round: usize) -> (Vec<Client>, usize) {
    let mut admitted = Vec::new();
    let mut busy = 0;
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..ATTEMPTS {
        let t = Instant::now();
        // The kernel completes the handshake from the backlog; the answer is
        // the server's. Client reads time out after PATIENCE: no hang.
        let mut c = server.connect();
        match c.read_line().as_str() {
            "READY" => admitted.push(c),
            "ERR server busy" => {
                c.expect_eof();
                busy += 1;
            }
            other => panic!("attempt {i}: unexpected greeting {other:?}"),
        }
        slowest = slowest.max(t.elapsed());
        if i % 20 == 0 {
            ping_all(held, &format!("during attempt {i} of round {round}"));
        }
    }
    let took = started.elapsed();
    eprintln!("round {round}: {} admitted, {busy} turned away, {took:?} in all, slowest answer {slowest:?}", admitted.len());
    // Turning a client away must not wait for a retry timer: each attempt
    // takes well under a millisecond on loopback, so 200 in 10 s is a margin
    // of more than 100 times, yet it fails if every reject waits out the
    // 100 ms accept back-off.
    assert!(
        took < Duration::from_secs(10),
        "round {round}: {ATTEMPTS} attempts took {took:?}: rejects are paced by a timer"
    );
    (admitted, busy)
}

#[test]
fn out_of_descriptors_every_attempt_is_answered_and_the_server_recovers() {
    let server = start_with_few_descriptors();
    let mut held: Vec<Client> = (0..HELD).map(|_| server.client()).collect();

    for round in 1..=2 {
        let (admitted, busy) = exhaust(&server, &mut held, round);
        assert!(
            busy > 0,
            "round {round}: the descriptor limit was never reached"
        );
        assert!(
            HELD + admitted.len() < NOFILE as usize,
            "round {round}: {} clients admitted under a limit of {NOFILE} descriptors",
            HELD + admitted.len()
        );
        assert!(busy + admitted.len() == ATTEMPTS);

        // Sitting at the limit, with a few more clients knocking: the loop
        // must sleep, not spin on a readable listener.
        let mut knocking: Vec<Client> = (0..5).map(|_| server.connect()).collect();
        let cpu_before = server.cpu_time();
        let wall = Instant::now();
        thread::sleep(Duration::from_secs(1));
        let cpu = server.cpu_time() - cpu_before;
        let wall = wall.elapsed();
        eprintln!("round {round}: server CPU at the limit: {cpu:?} in {wall:?}");
        assert!(
            cpu < wall / 2,
            "round {round}: server used {cpu:?} of CPU in {wall:?} at the descriptor limit"
        );
        for (i, c) in knocking.iter_mut().enumerate() {
            assert_eq!(c.read_line(), "ERR server busy", "knocking client {i}");
        }
        ping_all(&mut held, &format!("at the limit in round {round}"));

        // Free the descriptors: new clients get in by themselves. The first
        // attempts may still be turned away while the server is closing the
        // freed connections (it removes them at the end of a loop turn).
        drop(knocking);
        drop(admitted);
        let deadline = Instant::now() + PATIENCE;
        let mut first = loop {
            let mut c = server.connect();
            if c.read_line() == "READY" {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: never admitted again after descriptors were freed"
            );
            thread::sleep(Duration::from_millis(20));
        };
        loop {
            first.send(b"STATS\n");
            let open = util::Stats(first.read_line()).get("connections");
            if open == HELD as u64 + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {open} connections still open after the release"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // Now every newcomer gets in at the first try.
        let mut newcomers: Vec<Client> = (0..10).map(|_| server.client()).collect();
        ping_all(&mut newcomers, &format!("newcomer after round {round}"));
        drop(newcomers);
        drop(first);
        ping_all(&mut held, &format!("after round {round}"));
    }
    let stats = server.stats();
    assert!(
        stats.get("rejected") >= 2,
        "rejects not counted: {}",
        stats.0
    );
    server.assert_no_panic();
}
