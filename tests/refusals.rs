//! A connection turned away (busy, too many from its address) is a
//! connection like any other until it is gone, with a deadline and a cap
//! of its own: whatever the options say, it is closed within 10 s of its
//! accept, and at most 1,024 per loop are being turned away at once (past
//! that, a newcomer is closed at once, without a line). A TLS client that
//! never sends its ClientHello cannot keep a refused socket open.

#![cfg(feature = "tls")]

mod util;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::tls::Pki;
#[cfg(target_os = "linux")]
use util::PATIENCE;
use util::{wait_closed, Client, Server};

/// Every refusal is closed this long after its accept at the latest.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

/// At most this many connections per loop are being turned away at once.
const MAX_REFUSING: usize = 1024;

fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let mut args = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_raw(&args, "debug")
}

/// Regression: a refused TLS socket stayed open through its handshake, and
/// with `--handshake-timeout 0` it had no deadline at all: 300 silent
/// connects from one address under `--max-connections-per-ip 1` held 300
/// descriptors for good. Each is now closed by its refusal's deadline, and
/// the server's descriptors come back to where they were.
#[test]
fn silent_turned_away_tls_connections_are_closed_on_time_with_no_handshake_timeout() {
    const SILENT: usize = 300;
    let pki = Pki::new();
    let server = tls_server(
        &pki,
        &["--handshake-timeout", "0", "--max-connections-per-ip", "1"],
    );
    let mut holder = Client::connect_tls(server.addr, pki.client_config(None)).unwrap();
    holder.expect_line("READY");
    #[cfg(target_os = "linux")]
    let base = server.open_descriptors();
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    for s in &mut silent {
        let said = wait_closed(s);
        assert!(said.is_empty(), "a refusal without a session said {said:?}");
    }
    let took = started.elapsed();
    eprintln!("{SILENT} silent refused TLS connections: all closed after {took:?}");
    assert!(
        took < REFUSAL_DEADLINE + Duration::from_secs(5),
        "closed only after {took:?}"
    );
    // The descriptors come back (counted in /proc: Linux only).
    #[cfg(target_os = "linux")]
    {
        let deadline = Instant::now() + PATIENCE;
        while server.open_descriptors() > base {
            assert!(
                Instant::now() < deadline,
                "the server holds {} descriptors, {base} before the refusals",
                server.open_descriptors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The one admitted client is untouched, and the server serves on.
    holder.send(b"PING\n");
    holder.expect_line("PONG");
    server.assert_no_panic();
}

/// A refusal's line travels inside the session, so a TLS client that does
/// finish its handshake in time reads why it was turned away.
#[test]
fn a_turned_away_tls_client_that_finishes_its_handshake_reads_why() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--max-connections", "1"]);
    let mut holder = Client::connect_tls(server.addr, pki.client_config(None)).unwrap();
    holder.expect_line("READY");
    let mut refused = Client::connect_tls(server.addr, pki.client_config(None)).unwrap();
    refused.expect_line("ERR server busy");
    refused.expect_eof();
}

/// At most `MAX_REFUSING` connections per loop are being turned away at
/// once: past that, a newcomer that would be refused is closed at once,
/// without a line, long before any deadline.
#[test]
fn past_the_cap_of_refusals_a_newcomer_is_closed_at_once() {
    let pki = Pki::new();
    let server = tls_server(
        &pki,
        &["--max-connections", "1", "--handshake-timeout", "0"],
    );
    let mut holder = Client::connect_tls(server.addr, pki.client_config(None)).unwrap();
    holder.expect_line("READY");
    let waiting: Vec<TcpStream> = (0..MAX_REFUSING)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    let started = Instant::now();
    let mut past = TcpStream::connect(server.addr).expect("connect");
    let said = wait_closed(&mut past);
    let took = started.elapsed();
    assert!(said.is_empty(), "closed at once, yet it said {said:?}");
    assert!(
        took < Duration::from_secs(5),
        "the refusal past the cap was closed only after {took:?}"
    );
    holder.send(b"STATS\n");
    let stats = util::Stats(holder.read_line());
    assert_eq!(
        stats.get("rejected"),
        MAX_REFUSING as u64 + 1,
        "{}",
        stats.0
    );
    drop(waiting);
}
