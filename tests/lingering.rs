//! Lingering closes and the descriptor budget (`docs/pitfalls.md`,
//! pitfalls 4 and 8). After its last line (`BYE`, say) the server shuts its
//! writing side and reads and drops what the peer still sends, for up to
//! 2 s, before it closes: closing with unread input would send a reset that
//! can wipe that last line. A lingering socket is no longer a client, but it
//! still holds a descriptor. These tests check both halves: with room, the
//! drain is polite; without, lingering sockets give way to newcomers instead
//! of exhausting the process's descriptors.
//!
//! The server runs with a low RLIMIT_NOFILE (soft and hard, set between
//! fork and exec), and one test lowers its soft limit while it runs
//! (`prlimit`), so that `accept` itself fails with EMFILE. Linux only: the
//! tests count the server's descriptors in /proc.

#![cfg(target_os = "linux")]

mod util;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use util::{both_transports, Client, Server, Transport, PATIENCE};

both_transports!(a_refusal_still_gets_its_line_after_thousands_of_closes,);

/// The server's open file limit: its socket budget is this less 16 reserved
/// descriptors and one per listener, so 79 sockets.
const NOFILE: libc::rlim_t = 96;
/// Far below the socket budget: lingering sockets must not count as clients.
const MAX_CONNECTIONS: &str = "40";

/// Starts the server with RLIMIT_NOFILE `NOFILE` (soft and hard) and
/// `--max-connections MAX_CONNECTIONS`, logging at debug (each close names
/// its reason).
fn start_with_few_descriptors() -> Server {
    Server::start_with_descriptor_limit(&["--max-connections", MAX_CONNECTIONS], "debug", NOFILE)
}

/// How many lingering sockets the server has closed early so far.
fn lingers_cut_short(server: &Server) -> usize {
    let log = server.log.lock().unwrap();
    log.iter()
        .filter(|l| l.contains("lingering close cut short"))
        .count()
}

/// A client that has sent `QUIT` and read `BYE` and the end of the stream,
/// yet keeps its socket open and sends no EOF: the server lingers on it.
fn quit_and_stay(server: &Server, which: &str) -> Client {
    let mut c = server.connect();
    let greeting = c.read_line();
    assert_eq!(
        greeting, "READY",
        "{which}: lingering sockets crowded out a newcomer"
    );
    c.send(b"QUIT\n");
    assert_eq!(c.read_line(), "BYE", "{which}");
    c.expect_eof();
    c
}

fn ping(c: &mut Client, which: &str) {
    c.send(b"PING\n");
    assert_eq!(c.read_line(), "PONG", "{which}");
}

#[test]
fn quit_churn_below_max_connections_cannot_exhaust_descriptors() {
    // Many more lingering clients than descriptors, all held open at once
    // by this process (whose own limit is far higher).
    const CHURN: usize = 300;
    let server = start_with_few_descriptors();
    let mut established = server.client();
    ping(&mut established, "established client at the start");

    let mut lingering = Vec::with_capacity(CHURN);
    for i in 0..CHURN {
        lingering.push(quit_and_stay(&server, &format!("churn client {i}")));
        if i % 25 == 0 {
            ping(
                &mut established,
                &format!("established client at churn {i}"),
            );
            // The kernel enforces this anyway (a server past its budget
            // would meet EMFILE); it is here to show the budget at work.
            let open = server.open_descriptors();
            assert!(open <= NOFILE as usize, "{open} descriptors open");
        }
    }

    // Lingering sockets have filled the socket budget over and over (unless
    // this machine took their 2 s to make 80 connections): a newcomer is
    // still a client, not `ERR server busy`, nor a hang.
    let mut newcomer = server.connect();
    assert_eq!(newcomer.read_line(), "READY", "newcomer after the churn");
    ping(&mut newcomer, "newcomer after the churn");
    ping(&mut established, "established client after the churn");
    assert_eq!(
        server.stats().get("rejected"),
        0,
        "a client was turned away"
    );
    // Informative only: how many lingering sockets gave way. On a very slow
    // machine their 2 s may run out first, and the test still holds.
    eprintln!(
        "{} lingering socket(s) cut short for newcomers",
        lingers_cut_short(&server)
    );
    drop(lingering);
    server.assert_no_panic();
}

#[test]
fn lingering_socket_is_drained_politely_when_there_is_room() {
    // At most this much (and 3 chunks more) is sent after QUIT: the server
    // drains it within its 2 s linger with a margin of hundreds of times.
    const CHUNK: usize = 16 * 1024;
    const MOST_CHUNKS: usize = 32;
    let server = Server::start(&[]);
    let mut client = server.client();
    let mut writer_stream = client.stream.try_clone().expect("clone");
    let peer_saw_eof = Arc::new(AtomicBool::new(false));

    // The writer sends QUIT and then pipelined PINGs (never executed: bytes
    // after QUIT are not) until the reader has seen the server's EOF, then
    // a few chunks more: those reach a socket that is lingering, not
    // closed, so none may fail with a reset.
    let writer = {
        let peer_saw_eof = peer_saw_eof.clone();
        thread::spawn(move || -> io::Result<usize> {
            let chunk = b"PING\n".repeat(CHUNK / 5);
            writer_stream.write_all(b"QUIT\n")?;
            let mut sent = 0;
            while sent < MOST_CHUNKS && !peer_saw_eof.load(Ordering::SeqCst) {
                writer_stream.write_all(&chunk)?;
                sent += 1;
            }
            let deadline = Instant::now() + PATIENCE;
            while !peer_saw_eof.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            for _ in 0..3 {
                // Time for a reset, had there been one, to come back: the
                // write after it fails.
                thread::sleep(Duration::from_millis(20));
                writer_stream.write_all(&chunk)?;
                sent += 1;
            }
            Ok(sent)
        })
    };

    assert_eq!(client.read_line(), "BYE");
    // A clean end of stream, no PONG, and no reset (which `read_to_end`
    // would report as an error, and which could have wiped BYE).
    client.expect_eof();
    peer_saw_eof.store(true, Ordering::SeqCst);
    let sent = writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("sending after QUIT failed: {e}: the server did not linger"));
    eprintln!("sent {sent} chunk(s) of {CHUNK} bytes after QUIT");
    drop(client);
    server.assert_no_panic();
}

#[test]
fn out_of_descriptors_at_accept_lingering_sockets_give_way() {
    // Lingering sockets, fewer than the socket budget, so `admit` has no
    // reason to evict them; then the soft limit drops to the next free
    // descriptor, so the next `accept` fails with EMFILE.
    // The server must free lingering descriptors and admit the newcomer,
    // not turn it away with the spare descriptor.
    const LINGERING: usize = 30;
    let mut server = start_with_few_descriptors();
    let mut established = server.client();
    ping(&mut established, "established client at the start");
    let idle_descriptors = server.open_descriptors();
    // The linger lasts 2 s: if this machine is so slow that the sockets
    // stop lingering by themselves before the newcomer comes, the round
    // proves nothing, and is tried again.
    for round in 1..=3 {
        let lingering: Vec<Client> = (0..LINGERING)
            .map(|i| quit_and_stay(&server, &format!("round {round}, lingering client {i}")))
            .collect();
        server.set_soft_descriptor_limit(server.next_descriptor() as libc::rlim_t);

        let mut newcomer = server.connect();
        assert_eq!(
            newcomer.read_line(),
            "READY",
            "round {round}: newcomer at EMFILE with {LINGERING} sockets lingering"
        );
        ping(&mut newcomer, &format!("round {round}: newcomer"));
        ping(
            &mut established,
            &format!("round {round}: established client"),
        );
        // The server logs the evictions in the turn whose accept failed,
        // before the turn that accepts the newcomer: once its `accepted`
        // line is in, so are they.
        let newcomer_addr = newcomer.stream.local_addr().expect("local address");
        server.wait_for_log(&format!("accepted {newcomer_addr}"));
        let evicted = lingers_cut_short(&server);

        server.set_soft_descriptor_limit(NOFILE);
        drop(newcomer);
        drop(lingering);
        if evicted > 0 {
            eprintln!("round {round}: {evicted} lingering socket(s) gave way");
            assert_eq!(server.stats().get("rejected"), 0, "round {round}");
            server.assert_no_panic();
            return;
        }
        eprintln!("round {round}: the sockets stopped lingering before EMFILE; again");
        let deadline = Instant::now() + PATIENCE;
        while server.open_descriptors() > idle_descriptors {
            assert!(
                Instant::now() < deadline,
                "round {round}: sockets never closed"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("accept never ran out of descriptors while sockets lingered");
}

/// Regression: each lingering close added an entry to a side list that was
/// swept only once it passed 1,024, and admission counted the stale
/// entries: after 1,024 QUIT cycles on a fresh server, the list stood at its
/// cap, and a client turned away got a reset (over TLS, not even its
/// handshake) instead of its refusal's line. Lingering sockets are counted
/// where their state changes now: after any number of closes, a refusal is
/// what it is on a fresh server.
fn a_refusal_still_gets_its_line_after_thousands_of_closes(transport: Transport) {
    /// Closes that brought the old side list exactly to its cap.
    const CYCLES: usize = 1_024;
    let holder_address = std::net::Ipv4Addr::new(127, 0, 0, 3);
    let server = Server::start_over(transport, &["--max-connections-per-ip", "1"]);
    let mut holder = server.connect_from(holder_address);
    holder.expect_line("READY");
    for round in 1..=2 {
        for i in 0..CYCLES {
            let mut c = server.client();
            c.send(b"QUIT\n");
            assert_eq!(c.read_line(), "BYE", "round {round}, cycle {i}");
            c.expect_eof();
        }
        let mut refused = server.connect_from(holder_address);
        assert_eq!(
            refused.read_line(),
            "ERR too many connections from your address",
            "refusal after {} closes",
            round * CYCLES
        );
        refused.expect_eof();
    }
    holder.send(b"PING\n");
    holder.expect_line("PONG");
    server.assert_no_panic();
}
