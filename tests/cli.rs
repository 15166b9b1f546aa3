//! The command line (SPEC section 2): options, --help, --version, exit codes.

mod util;

use std::process::{Command, Output};
use util::Server;

fn loopline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loopline"))
        .args(args)
        .output()
        .expect("run loopline")
}

#[test]
fn help_lists_every_option_and_exits_0() {
    let out = loopline(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--listen",
        "--max-connections",
        "--max-line",
        "--max-output",
        "--idle-timeout",
        "--write-timeout",
        "--shutdown-timeout",
        "--version",
    ] {
        assert!(text.contains(option), "--help lacks {option}");
    }
    assert!(text.contains("[default: 127.0.0.1:9000]"));
}

#[test]
fn version_prints_the_version() {
    let out = loopline(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("loopline {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_naming_the_option() {
    for (args, named) in [
        (&["--max-line", "0"][..], "--max-line"),
        (&["--idle-timeout", "soon"], "--idle-timeout"),
        (&["--write-timeout", "5 parsecs"], "--write-timeout"),
        (&["--listen", "not-an-address"], "--listen"),
        (&["--max-connections", "many"], "--max-connections"),
        (&["--frobnicate"], "--frobnicate"),
    ] {
        let out = loopline(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(named), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn address_in_use_exits_1_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_loopline"))
        .args(["--listen", &addr])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
}

#[test]
fn listens_on_several_addresses_including_ipv6() {
    // IPv6 loopback may be off on some machines; then test IPv4 twice.
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let second = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
    let mut server = Server::start(&["--listen", second]);
    let line = server.wait_for_log("listening on ");
    let other = util::parse_listening(&line);
    assert_eq!(other.is_ipv6(), v6);
    for addr in [server.addr, other] {
        let mut c = util::Client::connect(addr);
        c.expect_line("READY");
        c.send(b"PING\n");
        c.expect_line("PONG");
    }
}

#[test]
fn non_loopback_address_logs_a_warning() {
    // Binds the wildcard address on port 0; no traffic is sent to it.
    let mut server = Server::start_raw(&["--listen", "0.0.0.0:0"], "info");
    let warning = server.wait_for_log("not a loopback address");
    assert!(warning.contains("WARN"), "{warning}");
}
