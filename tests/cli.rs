//! The command line: options and their ranges, --listen forms, --help,
//! --version, exit codes.

mod util;

use util::{run_loopline, Server};

#[test]
fn help_lists_every_option_and_exits_0() {
    let out = run_loopline(&["--help"], "info");
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
        "--max-memory",
        "--tcp-keepalive",
        "--version",
    ] {
        assert!(text.contains(option), "--help lacks {option}");
    }
    // Wrapped to the terminal (100 columns without one): fold whitespace.
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(folded.contains("[default: 127.0.0.1:9000]"), "{text}");
}

#[test]
fn help_tells_a_newcomer_exit_codes_signals_and_logging() {
    let out = run_loopline(&["--help"], "info");
    let text = String::from_utf8(out.stdout).unwrap();
    for needed in [
        "Exit status: 0 after a graceful shutdown; 1 for a failure at start",
        "2 for a usage error",
        "SIGINT or SIGTERM starts a graceful shutdown",
        "a second one hurries it",
        "SIGHUP reloads, and never stops the server",
        "RUST_LOG",
        "500ms, 2s, 5m, 1h",
        "Examples:",
    ] {
        // Wrapping may break a phrase across lines: compare with the
        // whitespace folded.
        let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(folded.contains(needed), "--help lacks {needed:?}:\n{text}");
    }
    assert!(!text.contains('`'), "Markdown backticks in --help:\n{text}");
}

#[test]
fn version_prints_the_version() {
    let out = run_loopline(&["--version"], "info");
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
        let out = run_loopline(args, "info");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(named), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn every_range_is_a_sentence_and_a_usage_error() {
    for (args, sentence) in [
        (
            &["--max-connections", "0"][..],
            "--max-connections must be between 1 and 1000000",
        ),
        (
            &["--max-connections", "1000001"],
            "--max-connections must be between 1 and 1000000",
        ),
        (
            &["--max-line", "1073741825"],
            "--max-line must be between 1 and 1073741824",
        ),
        (
            &["--max-line", "99999999999999999999999"],
            "--max-line must be between 1 and 1073741824",
        ),
        (
            &["--max-output", "0"],
            "--max-output must be between 1 and 1099511627776",
        ),
        (
            &["--max-memory", "1023"],
            "--max-memory must be between 1024 and 1099511627776",
        ),
        (
            &["--idle-timeout", "87601h"],
            "--idle-timeout must be at most 87600h",
        ),
        (
            &["--write-timeout", "99999999h"],
            "--write-timeout must be at most 87600h",
        ),
        (
            &["--shutdown-timeout", "87600.5h"],
            "--shutdown-timeout must be at most 87600h",
        ),
        (
            &["--tcp-keepalive", "500ms"],
            "--tcp-keepalive must be 0 (off) or between 1s and 32767s",
        ),
        (
            &["--tcp-keepalive", "10h"],
            "--tcp-keepalive must be 0 (off) or between 1s and 32767s",
        ),
    ] {
        let out = run_loopline(args, "info");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(sentence), "{args:?}: {err}");
        assert!(!err.contains("..="), "a Rust range in {err}");
    }
}

#[test]
fn the_new_limits_are_accepted_at_their_small_ends() {
    let server = Server::start(&["--max-memory", "65536", "--tcp-keepalive", "0"]);
    let mut c = server.client();
    c.send(b"PING\n");
    c.expect_line("PONG");
}

#[test]
fn a_malformed_listen_value_exits_2_showing_the_forms() {
    for value in [
        "127.0.0.1",
        "::1:9000",
        "127.0.0.256:9000",
        "[::1]:port",
        "bad_host!:80",
    ] {
        let out = run_loopline(&["--listen", value], "info");
        assert_eq!(out.status.code(), Some(2), "{value}");
        let err = String::from_utf8(out.stderr).unwrap();
        for form in [
            "HOST:PORT",
            "127.0.0.1:9000",
            "[::1]:9000",
            "localhost:9000",
        ] {
            assert!(err.contains(form), "{value}: {err}");
        }
    }
}

#[test]
fn unknown_listener_options_are_usage_errors() {
    for value in [
        "127.0.0.1:0,proxyy",
        "0.0.0.0:9443,tls,proxyy",
        "127.0.0.1:0,tlss",
    ] {
        let out = run_loopline(&["--listen", value], "info");
        assert_eq!(out.status.code(), Some(2), "{value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("unknown listener option"), "{value}: {err}");
    }
}

/// `tls` is a listener option; a TLS listener without its certificate and
/// key is a usage error naming the missing option (tests/tls.rs has the
/// rest).
#[cfg(feature = "tls")]
#[test]
fn a_tls_listener_without_its_files_is_a_usage_error() {
    let out = run_loopline(&["--listen", "127.0.0.1:0,tls"], "info");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--tls-cert"), "{err}");
}

#[test]
fn a_host_name_listens_on_every_address_it_names() {
    use std::net::ToSocketAddrs;
    let mut expected: Vec<std::net::IpAddr> = Vec::new();
    for addr in ("localhost", 0).to_socket_addrs().unwrap() {
        if !expected.contains(&addr.ip()) {
            expected.push(addr.ip());
        }
    }
    let mut server = Server::start_raw(&["--listen", "localhost:0"], "info");
    // `start_raw` has read the first `listening on` line; read the others.
    let mut bound = vec![server.addr];
    while bound.len() < expected.len() {
        bound.push(util::parse_listening(&server.wait_for_log("listening on ")));
    }
    let ips: Vec<_> = bound.iter().map(|a| a.ip()).collect();
    assert!(ips.contains(&"127.0.0.1".parse().unwrap()), "{ips:?}");
    for ip in &expected {
        assert!(ips.contains(ip), "{ip} not bound: {ips:?}");
    }
    for addr in bound {
        let mut c = util::Client::connect(addr);
        c.expect_line("READY");
        c.send(b"PING\n");
        c.expect_line("PONG");
    }
}

#[test]
fn a_start_failing_on_its_second_address_logs_no_listening_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_loopline(&["--listen", "127.0.0.1:0", "--listen", &addr], "info");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("listening on"), "{err}");
    let failure: Vec<&str> = err.lines().filter(|l| l.contains(&addr)).collect();
    assert_eq!(failure.len(), 1, "{err}");
    assert!(failure[0].contains("in use"), "{err}");
}

#[test]
fn address_in_use_exits_1_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_loopline(&["--listen", &addr], "off");
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
