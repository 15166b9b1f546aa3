//! The per-address rules, on the real binary: the connection rate
//! (`--max-connection-rate-per-ip`), guessing the token
//! (`--max-auth-failures-per-ip`, and the warn line fail2ban matches, run
//! through the real `fail2ban-regex`), IPv6 clients grouped by
//! `--ipv6-prefix` (their addresses carried by PROXY headers, as a balancer
//! sends them) for every per-address limit, and the tables' bounds over
//! 100,000 source addresses (all of 127.0.0.0/8 is loopback: each client
//! binds its own). fail2ban's filter is checked against a log file and
//! against a real journal file.

mod util;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::{Client, Server, Stats, TempDir, TempFile, Transport};

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

/// The filter docs/deploy.md shows, as fail2ban reads it.
const FAIL2BAN_FILTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/fail2ban/loopline.conf"
);

/// Runs a server (under the journal if `journal`: its lines then start
/// with their priority), makes 127.0.0.41 fail `AUTH` past the limit, and
/// returns the server's pid and every line it logged.
fn log_with_the_warn_line(journal: bool) -> (u32, Vec<String>) {
    let file = TempFile::new("guards-fail2ban", format!("{TOKEN}\n").as_bytes());
    let mut command = util::loopline_command(
        &[
            "--auth-file",
            file.path(),
            "--max-auth-failures-per-ip",
            "1",
        ],
        "info",
    );
    if journal {
        command.env("JOURNAL_STREAM", "8:123456");
    }
    let mut server = Server::spawn(command);
    let from = Ipv4Addr::new(127, 0, 0, 41);
    let mut c = server.connect_from(from);
    c.expect_line("READY");
    c.send(b"AUTH wrong\n");
    c.expect_line("ERR invalid token");
    let mut refused = server.connect_from(from);
    refused.expect_line("ERR too many auth failures");
    server.wait_for_log("auth: too many failures from");
    server.assert_no_panic();
    let log = server.log.lock().unwrap().clone();
    (server.child.id(), log)
}

/// `fail2ban-regex ARGS... FILTER`: what it printed; fails the test if it
/// failed.
fn fail2ban_regex(args: &[&str]) -> String {
    let out = std::process::Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .args(args)
        .arg(FAIL2BAN_FILTER)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Of `total` lines, exactly the warn line matched, and fail2ban read the
/// address from it.
fn assert_only_the_warn_line_matched(text: &str, total: usize) {
    assert!(
        text.contains(&format!("Lines: {total} lines, 0 ignored, 1 matched")),
        "{text}"
    );
    assert!(text.contains("127.0.0.41"), "{text}");
}

/// The filter run by fail2ban's own tester against the server's real log,
/// written to a file (`backend = auto`, `logpath =`).
#[test]
fn fail2bans_filter_matches_the_warn_line() {
    let (_, log) = log_with_the_warn_line(false);
    let dir = TempDir::new("guards-fail2ban-file");
    let log_file = dir.0.join("loopline.log");
    std::fs::write(&log_file, format!("{}\n", log.join("\n"))).unwrap();
    let text = fail2ban_regex(&[log_file.to_str().unwrap()]);
    assert_only_the_warn_line_matched(&text, log.len());
}

/// The same filter through the journal, as the jail in docs/deploy.md reads
/// it (`backend = systemd`): fail2ban sees an entry as `HOST NAME[PID]:
/// MESSAGE`, not as the line written to stderr. The server's lines go into
/// a real journal file the way journald stores them (the `<N>` priority
/// prefix taken off into PRIORITY, the unit that ran it recorded), written
/// by systemd's own `systemd-journal-remote`, and fail2ban-regex reads that
/// file with the jail's `journalmatch`. Caught: a filter anchored at the
/// line's start that matched files and never the journal.
#[test]
fn fail2bans_filter_matches_the_warn_line_in_the_journal() {
    let (pid, log) = log_with_the_warn_line(true);
    let dir = TempDir::new("guards-fail2ban-journal");
    let export = dir.0.join("entries.export");
    let journal = dir.0.join("loopline.journal");
    std::fs::write(&export, journal_export(pid, &log)).unwrap();
    let written = std::process::Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", journal.display()))
        .arg(&export)
        .output()
        .expect("systemd-journal-remote (Debian package systemd-journal-remote)");
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let text = fail2ban_regex(&[
        "--journalmatch",
        "_SYSTEMD_UNIT=loopline.service",
        &format!("systemd-journal[journalfiles={}]", journal.display()),
    ]);
    assert_only_the_warn_line_matched(&text, log.len());
}

/// Where Debian puts systemd-journal-remote (not on PATH).
const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// `lines`, logged under the journal by loopline.service's process `pid`,
/// as journal entries in systemd's export format: what journald would
/// have stored.
fn journal_export(pid: u32, lines: &[String]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut export = String::new();
    for (i, line) in lines.iter().enumerate() {
        // journald reads a leading `<N>` as the priority and keeps the rest.
        let (priority, message) = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .unwrap_or_else(|| panic!("no priority prefix: {line}"));
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n\
             _BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=testhost\n\
             SYSLOG_IDENTIFIER=loopline\n_PID={pid}\n_SYSTEMD_UNIT=loopline.service\n\
             PRIORITY={priority}\nMESSAGE={message}\n\n",
            now + i as u128,
            1_000 + i,
        ));
    }
    export
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

/// The rate and the failures count IPv6 clients by prefix too: addresses
/// of one /64 share one count, another /64 has its own.
#[test]
fn the_rate_and_failure_limits_count_ipv6_clients_by_their_prefix() {
    let rate = Server::start_raw(
        &[
            "--listen",
            "127.0.0.1:0,proxy",
            "--max-connection-rate-per-ip",
            "2",
        ],
        "debug",
    );
    let started = Instant::now();
    for client in ["2001:db8:5:6::1", "2001:db8:5:6::2"] {
        let (_c, line) = first_line_behind_header(&rate, client);
        assert_eq!(line, "READY", "{client}");
    }
    // A third address of the /64, within the same second.
    let (mut third, line) = first_line_behind_header(&rate, "2001:db8:5:6:abcd::3");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "three connects took {:?}: too slow to test a rate per second",
        started.elapsed()
    );
    assert_eq!(line, "ERR connecting too fast");
    third.expect_eof();
    let (_other, line) = first_line_behind_header(&rate, "2001:db8:5:7::1");
    assert_eq!(line, "READY");
    rate.assert_no_panic();

    let file = TempFile::new("guards-ipv6-failures", format!("{TOKEN}\n").as_bytes());
    let mut failures = Server::start_raw(
        &[
            "--listen",
            "127.0.0.1:0,proxy",
            "--auth-file",
            file.path(),
            "--max-auth-failures-per-ip",
            "2",
        ],
        "debug",
    );
    for client in ["2001:db8:8:9::1", "2001:db8:8:9::2"] {
        let (mut c, line) = first_line_behind_header(&failures, client);
        assert_eq!(line, "READY", "{client}");
        c.send(b"AUTH wrong\n");
        c.expect_line("ERR invalid token");
    }
    let (mut refused, line) = first_line_behind_header(&failures, "2001:db8:8:9:ffff::7");
    assert_eq!(line, "ERR too many auth failures");
    refused.expect_eof();
    // The warn line names the address that asked.
    let warn = failures.wait_for_log("auth: too many failures from");
    assert!(
        warn.ends_with("auth: too many failures from 2001:db8:8:9:ffff::7"),
        "{warn}"
    );
    let (_other, line) = first_line_behind_header(&failures, "2001:db8:8:a::1");
    assert_eq!(line, "READY");
    failures.assert_no_panic();
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
