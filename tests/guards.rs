//! The per-address rules, on the real binary: the connection rate
//! (`--max-connection-rate-per-ip`), guessing the token
//! (`--max-auth-failures-per-ip`, and the warn line fail2ban matches, run
//! through the real `fail2ban-regex`), IPv6 clients grouped by
//! `--ipv6-prefix` (their addresses carried by PROXY headers, as a balancer
//! sends them), and the rate table's bound over 100,000 source addresses
//! (all of 127.0.0.0/8 is loopback: each client binds its own).

mod util;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::{Client, Server, Stats, TempFile, Transport};

// Each runs over plain TCP and TLS, with one event loop and with two.
util::both_transports!(
    a_client_connecting_too_fast_is_turned_away_until_its_second_has_passed,
    an_address_that_failed_auth_too_often_is_refused_on_every_connection,
);

const TOKEN: &str = "s3cret";

/// STATS, asked by a client from `from` that authenticates first if
/// `token` says so.
fn stats_from(server: &Server, from: Ipv4Addr, token: Option<&str>) -> Stats {
    let mut c = server.connect_from(from);
    c.expect_line("READY");
    if let Some(token) = token {
        c.send(format!("AUTH {token}\n").as_bytes());
        c.expect_line("OK");
    }
    c.send(b"STATS\n");
    Stats(c.read_line())
}

fn a_client_connecting_too_fast_is_turned_away_until_its_second_has_passed(transport: Transport) {
    let mut server = Server::start_over(transport, &["--max-connection-rate-per-ip", "2"]);
    let fast = Ipv4Addr::new(127, 0, 0, 21);
    let started = Instant::now();
    let mut admitted: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = server.connect_from(fast);
            c.expect_line("READY");
            c
        })
        .collect();
    let mut third = server.connect_from(fast);
    // The rule is about one second: the three connects must fit in it for
    // the third to be too fast (a handshake takes milliseconds).
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "three connects took {:?}: too slow to test a rate per second",
        started.elapsed()
    );
    third.expect_line("ERR connecting too fast");
    third.expect_eof();
    let line = server.wait_for_log("turned away 1 connection(s)");
    assert!(
        line.ends_with("connecting too fast (--max-connection-rate-per-ip 2)"),
        "{line}"
    );
    // The admitted ones are served, and another address is not concerned.
    for c in &mut admitted {
        c.send(b"PING\n");
        c.expect_line("PONG");
    }
    let stats = stats_from(&server, Ipv4Addr::new(127, 0, 0, 22), None);
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    // Refused attempts count too: one more now is refused as well...
    let mut fourth = server.connect_from(fast);
    fourth.expect_line("ERR connecting too fast");
    fourth.expect_eof();
    // ...and a second (and a bucket of 50 ms) after the last attempt, the
    // address may connect again.
    std::thread::sleep(Duration::from_millis(1300));
    let mut later = server.connect_from(fast);
    later.expect_line("READY");
    later.send(b"PING\n");
    later.expect_line("PONG");
    server.assert_no_panic();
}

fn an_address_that_failed_auth_too_often_is_refused_on_every_connection(transport: Transport) {
    let file = TempFile::new("guards-refused", format!("{TOKEN}\n").as_bytes());
    let mut server = Server::start_over(
        transport,
        &[
            "--auth-file",
            file.path(),
            "--max-auth-failures-per-ip",
            "4",
        ],
    );
    let guesser = Ipv4Addr::new(127, 0, 0, 31);
    // A connection that authenticated before the guessing keeps its rights:
    // the rule refuses AUTH, not the requests of a cleared session.
    let mut before = server.connect_from(guesser);
    before.expect_line("READY");
    before.send(format!("AUTH {TOKEN}\n").as_bytes());
    before.expect_line("OK");

    // Three guesses on one connection: its own limit closes it.
    let mut first = server.connect_from(guesser);
    first.expect_line("READY");
    first.send(b"AUTH one\nAUTH two\nAUTH three\n");
    first.expect_line("ERR invalid token");
    first.expect_line("ERR invalid token");
    first.expect_line("ERR too many auth failures");
    first.expect_eof();
    // The fourth from the address, on a new connection, is answered as any
    // wrong token; the next AUTH, even with the right token, is refused.
    let mut second = server.connect_from(guesser);
    second.expect_line("READY");
    second.send(b"AUTH four\n");
    second.expect_line("ERR invalid token");
    second.send(format!("AUTH {TOKEN}\n").as_bytes());
    second.expect_line("ERR too many auth failures");
    second.expect_eof();
    // A new connection from the address gets the line instead of READY.
    let mut third = server.connect_from(guesser);
    third.expect_line("ERR too many auth failures");
    third.expect_eof();

    let warn = server.wait_for_log("auth: too many failures from");
    assert!(
        warn.contains("WARN") && warn.ends_with("auth: too many failures from 127.0.0.31"),
        "{warn}"
    );
    let summary = server.wait_for_log("turned away 1 connection(s)");
    assert!(
        summary.ends_with("too many auth failures from one address (--max-auth-failures-per-ip 4)"),
        "{summary}"
    );
    // Another address is not concerned; the cleared connection is served.
    let stats = stats_from(&server, Ipv4Addr::new(127, 0, 0, 32), Some(TOKEN));
    assert_eq!(stats.get("auth_failures"), 4, "{}", stats.0);
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    before.send(b"PING\n");
    before.expect_line("PONG");
    // One warn line per address per period, however many refusals.
    let mut again = server.connect_from(guesser);
    again.expect_line("ERR too many auth failures");
    again.expect_eof();
    let warns = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("auth: too many failures from"))
        .count();
    assert_eq!(warns, 1);
    server.assert_no_panic();
}

/// The period is 60 s: this test waits it out once (the rest of the file
/// runs meanwhile).
#[test]
fn a_refused_address_may_try_again_a_period_after_its_last_failure() {
    let file = TempFile::new("guards-period", format!("{TOKEN}\n").as_bytes());
    let mut server = Server::start(&[
        "--auth-file",
        file.path(),
        "--max-auth-failures-per-ip",
        "1",
    ]);
    let from = Ipv4Addr::new(127, 0, 0, 35);
    let mut c = server.connect_from(from);
    c.expect_line("READY");
    c.send(b"AUTH wrong\n");
    c.expect_line("ERR invalid token");
    let failed_at = Instant::now();
    // Refusals during the period do not extend it.
    for _ in 0..5 {
        let mut refused = server.connect_from(from);
        refused.expect_line("ERR too many auth failures");
        refused.expect_eof();
        std::thread::sleep(Duration::from_secs(10));
    }
    let period = Duration::from_secs(60);
    std::thread::sleep((period + Duration::from_secs(2)).saturating_sub(failed_at.elapsed()));
    let mut back = server.connect_from(from);
    back.expect_line("READY");
    back.send(format!("AUTH {TOKEN}\nPING\n").as_bytes());
    back.expect_line("OK");
    back.expect_line("PONG");
    // A new period: a new failure refuses it again, with a warn line again.
    back.send(b"AUTH wrong\n");
    back.expect_line("ERR invalid token");
    let mut refused = server.connect_from(from);
    refused.expect_line("ERR too many auth failures");
    server.wait_for_log("auth: too many failures from 127.0.0.35");
    server.wait_for_log("auth: too many failures from 127.0.0.35");
    server.assert_no_panic();
}

/// The filter docs/deploy.md shows (contrib/fail2ban/loopline.conf), run by
/// fail2ban's own tester against the server's real log line.
#[test]
fn fail2bans_filter_matches_the_warn_line() {
    let file = TempFile::new("guards-fail2ban", format!("{TOKEN}\n").as_bytes());
    let mut server = Server::start_raw(
        &[
            "--listen",
            "127.0.0.1:0",
            "--auth-file",
            file.path(),
            "--max-auth-failures-per-ip",
            "1",
        ],
        "info",
    );
    let from = Ipv4Addr::new(127, 0, 0, 41);
    let mut c = server.connect_from(from);
    c.expect_line("READY");
    c.send(b"AUTH wrong\n");
    c.expect_line("ERR invalid token");
    let mut refused = server.connect_from(from);
    refused.expect_line("ERR too many auth failures");
    server.wait_for_log("auth: too many failures from");
    let log_file =
        std::env::temp_dir().join(format!("loopline-fail2ban-{}.log", std::process::id()));
    let lines = server.log.lock().unwrap().join("\n");
    std::fs::write(&log_file, format!("{lines}\n")).unwrap();
    let filter = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/fail2ban/loopline.conf"
    );
    let out = std::process::Command::new("fail2ban-regex")
        .args(["--print-all-matched", log_file.to_str().unwrap(), filter])
        .output()
        .expect("fail2ban-regex (Debian package fail2ban)");
    let _ = std::fs::remove_file(&log_file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Exactly the warn line matches, and fail2ban reads the address from it.
    let total = lines.lines().count();
    assert!(
        text.contains(&format!("Lines: {total} lines, 0 ignored, 1 matched")),
        "{text}"
    );
    assert!(text.contains("127.0.0.41"), "{text}");
    server.assert_no_panic();
}

/// A v1 PROXY header naming an IPv6 client.
fn v1_tcp6(client: &str) -> Vec<u8> {
    format!("PROXY TCP6 {client} ::1 40000 9000\r\n").into_bytes()
}

/// A connection to a `proxy` listener whose header names `client`; the
/// first line it gets back.
fn first_line_behind_header(server: &Server, client: &str) -> (Client, String) {
    let mut c = Client::connect(server.addr);
    c.send(&v1_tcp6(client));
    let line = c.read_line();
    (c, line)
}

#[test]
fn ipv6_clients_behind_a_balancer_count_by_their_prefix() {
    let args = |prefix: &'static str| {
        vec![
            "--listen",
            "127.0.0.1:0,proxy",
            "--max-connections-per-ip",
            "1",
            "--ipv6-prefix",
            prefix,
        ]
    };
    let by64 = Server::start_raw(&args("64"), "debug");
    let (_first, line) = first_line_behind_header(&by64, "2001:db8:1:2::1");
    assert_eq!(line, "READY");
    // Another address of the same /64 is the same client.
    let (mut same, line) = first_line_behind_header(&by64, "2001:db8:1:2:ffff::99");
    assert_eq!(line, "ERR too many connections from your address");
    same.expect_eof();
    let (_other, line) = first_line_behind_header(&by64, "2001:db8:1:3::1");
    assert_eq!(line, "READY");
    by64.assert_no_panic();

    // With 128, exact addresses.
    let exact = Server::start_raw(&args("128"), "debug");
    let (_first, line) = first_line_behind_header(&exact, "2001:db8:1:2::1");
    assert_eq!(line, "READY");
    let (_second, line) = first_line_behind_header(&exact, "2001:db8:1:2:ffff::99");
    assert_eq!(line, "READY");
    exact.assert_no_panic();
}

/// 100,000 clients, each from an address of its own (127.1.0.0 and up,
/// used nowhere else), four threads each serving a quarter of them one
/// at a time, each client doing `visit`; returns the server's RSS growth
/// in KiB.
fn rss_growth_over_100000_addresses(server: &Server, visit: fn(Ipv4Addr, SocketAddr)) -> u64 {
    const ADDRESSES: u32 = 100_000;
    const THREADS: u32 = 4;
    let before = server.rss_kib();
    let addr = server.addr;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                for i in (t..ADDRESSES).step_by(THREADS as usize) {
                    visit(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i),
                        addr,
                    );
                }
            });
        }
    });
    let after = server.rss_kib();
    eprintln!("RSS {before} KiB -> {after} KiB after {ADDRESSES} addresses");
    after.saturating_sub(before)
}

/// The rate table forgets an address a second after its last connection,
/// and never holds more than two generations of 8,192: with 100,000
/// addresses coming and going, the server's memory must not follow their
/// number (a table that kept them all would hold about 9 MiB).
#[test]
fn the_rate_table_stays_bounded_over_100000_source_addresses() {
    let server = Server::start(&["--max-connection-rate-per-ip", "1"]);
    let growth = rss_growth_over_100000_addresses(&server, |from, addr| {
        greeted_from(from, addr);
    });
    assert!(growth < 5 * 1024, "RSS grew by {growth} KiB");
    // The rule still holds for a new address, and every client was served.
    let fresh = Ipv4Addr::new(127, 0, 0, 51);
    let mut first = server.connect_from(fresh);
    first.expect_line("READY");
    let mut second = server.connect_from(fresh);
    second.expect_line("ERR connecting too fast");
    let stats = stats_from(&server, Ipv4Addr::new(127, 0, 0, 52), None);
    assert_eq!(stats.get("accepted"), 100_002, "{}", stats.0);
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    server.assert_no_panic();
}

/// The failure table remembers an address for a period (60 s) after its
/// last failure, but never more than two generations of 8,192: 100,000
/// addresses failing once each within the period must not be remembered
/// all (that would be about 9 MiB).
#[test]
fn the_failure_table_stays_bounded_over_100000_source_addresses() {
    let file = TempFile::new("guards-bound", format!("{TOKEN}\n").as_bytes());
    let server = Server::start(&[
        "--auth-file",
        file.path(),
        "--max-auth-failures-per-ip",
        "2",
    ]);
    let growth = rss_growth_over_100000_addresses(&server, |from, addr| {
        let mut c = Client::connect_from(from, addr);
        c.expect_line("READY");
        c.send(b"AUTH guess\n");
        c.expect_line("ERR invalid token");
    });
    assert!(growth < 5 * 1024, "RSS grew by {growth} KiB");
    // The rule still holds for an address that fails twice now.
    let from = Ipv4Addr::new(127, 0, 0, 53);
    let mut c = server.connect_from(from);
    c.expect_line("READY");
    c.send(b"AUTH one\nAUTH two\n");
    c.expect_line("ERR invalid token");
    c.expect_line("ERR invalid token");
    let mut refused = server.connect_from(from);
    refused.expect_line("ERR too many auth failures");
    server.assert_no_panic();
}

/// Connects from `from`, reads the whole greeting, and closes.
fn greeted_from(from: Ipv4Addr, addr: SocketAddr) {
    let mut stream: TcpStream = Client::connect_from(from, addr).stream;
    let mut greeting = [0u8; 6];
    stream
        .read_exact(&mut greeting)
        .unwrap_or_else(|e| panic!("no greeting for {from}: {e}"));
    assert_eq!(&greeting, b"READY\n", "from {from}");
}
