//! `--tcp-keepalive`: the kernel's keepalive timer on accepted client
//! sockets, as `ss -tnoi` shows it for the server's side of a connection.
//! Linux only: `ss` and the timer it reports are Linux's.
#![cfg(target_os = "linux")]

mod util;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use util::{Client, Server, PATIENCE};

/// The `ss -tnoi` lines of the server's side of `client`'s connection:
/// source port the server's, destination port the client's.
fn server_side_socket(server: &Server, client: &Client) -> String {
    let client_port = client.stream.local_addr().unwrap().port();
    let filter = format!(
        "( sport = :{} and dport = :{client_port} )",
        server.addr.port()
    );
    let output = match Command::new("ss")
        .args(["-tnoi", "state", "established", &filter])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("ss not found: apt-get install iproute2")
        }
        Err(e) => panic!("cannot run ss: {e}"),
    };
    assert!(output.status.success(), "ss failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // The filter must have found the socket, or "no keepalive timer" below
    // would hold of nothing.
    let peer = format!("127.0.0.1:{client_port}");
    assert_eq!(
        text.lines().filter(|l| l.contains(&peer)).count(),
        1,
        "ss did not show the server's socket once:\n{text}"
    );
    text
}

/// Samples the server's socket until no retransmit or zero-window timer
/// hides the others (ss shows one timer; a reply not yet acknowledged
/// shows `timer:(on,...)` instead of the keepalive), and returns the sample.
fn settled_socket(server: &Server, client: &Client) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sample = server_side_socket(server, client);
        if !sample.contains("timer:(on,") && !sample.contains("timer:(persist,") {
            return sample;
        }
        assert!(
            Instant::now() < deadline,
            "the socket never settled:\n{sample}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The time left on the keepalive timer in `sample`, if it has one.
fn keepalive_left(sample: &str) -> Option<Duration> {
    let at = sample.find("timer:(keepalive,")? + "timer:(keepalive,".len();
    let time = sample[at..].split(',').next()?;
    Some(parse_ss_timer(time))
}

/// Parses a time as `ss` prints a timer: `120min`, `4min59sec`, `7sec`,
/// `6.992ms` (6 s and 992 ms), `992ms`, or nothing for zero.
fn parse_ss_timer(text: &str) -> Duration {
    let bad = || panic!("cannot read the ss timer {text:?}");
    let number = |digits: &str| digits.parse::<u64>().unwrap_or_else(|_| bad());
    let mut millis = 0;
    let mut rest = text;
    if let Some((minutes, after)) = rest.split_once("min") {
        millis += number(minutes) * 60_000;
        rest = after;
    }
    if let Some(seconds) = rest.strip_suffix("sec") {
        millis += number(seconds) * 1000;
    } else if let Some(ms) = rest.strip_suffix("ms") {
        // Seconds and milliseconds are joined by a dot: `6.992ms`.
        let (seconds, ms) = ms.split_once('.').unwrap_or(("0", ms));
        millis += number(seconds) * 1000 + number(ms);
    } else if !rest.is_empty() {
        bad();
    }
    Duration::from_millis(millis)
}

#[test]
fn ss_timers_are_read_as_printed() {
    assert_eq!(parse_ss_timer("120min"), Duration::from_secs(7200));
    assert_eq!(parse_ss_timer("4min59sec"), Duration::from_secs(299));
    assert_eq!(parse_ss_timer("7sec"), Duration::from_secs(7));
    assert_eq!(parse_ss_timer("6.992ms"), Duration::from_millis(6992));
    assert_eq!(parse_ss_timer("992ms"), Duration::from_millis(992));
    assert_eq!(parse_ss_timer(""), Duration::ZERO);
}

/// The keepalive timer on the server's side of a fresh connection.
fn keepalive_of_a_client(args: &[&str]) -> Option<Duration> {
    let server = Server::start(args);
    // READY is written after the socket options are set.
    let client = server.client();
    keepalive_left(&settled_socket(&server, &client))
}

#[test]
fn tcp_keepalive_sets_the_idle_time_on_client_sockets() {
    let left = keepalive_of_a_client(&["--tcp-keepalive", "7s"])
        .expect("no keepalive timer on the server's socket");
    // Without our idle time the kernel's default (2 hours) would show.
    assert!(left <= Duration::from_secs(7), "keepalive in {left:?}");
}

#[test]
fn tcp_keepalive_is_on_by_default() {
    let left = keepalive_of_a_client(&[]).expect("no keepalive timer by default");
    assert!(left <= Duration::from_secs(300), "keepalive in {left:?}");
}

#[test]
fn tcp_keepalive_zero_turns_it_off() {
    let left = keepalive_of_a_client(&["--tcp-keepalive", "0"]);
    assert_eq!(left, None, "a keepalive timer with --tcp-keepalive 0");
}
