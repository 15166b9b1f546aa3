//! Log lines for the journal: with `JOURNAL_STREAM` set (systemd sets it
//! when stderr goes to the journal), each line starts with its syslog
//! priority and carries no time of its own; without it, the usual format.

mod service;
mod util;

use service::loopline;
use util::{Client, Server};

/// Runs a server on 0.0.0.0:0 (whose announcement brings a warning) at
/// `debug`, serves one client to its QUIT (a debug line for the close),
/// stops it, and returns every line it logged.
fn log_of_a_short_run(journal: bool) -> Vec<String> {
    let mut command = loopline(&["--listen", "0.0.0.0:0"], "debug");
    if journal {
        // DEVICE:INODE of the journal's stream; the server only asks
        // whether the variable is set.
        command.env("JOURNAL_STREAM", "8:123456");
    }
    let mut server = Server::spawn(command);
    let mut client = Client::connect(([127, 0, 0, 1], server.addr.port()).into());
    client.expect_line("READY");
    client.send(b"QUIT\n");
    client.expect_line("BYE");
    client.expect_eof();
    server.signal("TERM");
    server.wait_for_log("shutdown complete");
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.log.lock().unwrap().clone();
    log
}

/// The first line holding `needle`.
fn line_with<'a>(log: &'a [String], needle: &str) -> &'a str {
    log.iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}: {log:#?}"))
}

#[test]
fn under_the_journal_lines_start_with_their_priority_and_have_no_time() {
    let log = log_of_a_short_run(true);
    assert!(
        line_with(&log, "listening on 0.0.0.0:").starts_with("<6>"),
        "{log:#?}"
    );
    assert!(
        line_with(&log, "is not a loopback address").starts_with("<4>"),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("<7>")),
        "no debug line: {log:#?}"
    );
    for line in &log {
        // `<N>[LEVEL target] message`: the level comes right after the
        // bracket, where the usual format has the time.
        let level = line
            .strip_prefix(|c: char| c == '<')
            .and_then(|rest| rest.split_once(">["))
            .map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""));
        assert!(
            matches!(level, Some("ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE")),
            "not a journal line: {line:?}"
        );
    }
}

#[test]
fn elsewhere_lines_keep_their_time_and_no_priority() {
    let log = log_of_a_short_run(false);
    for line in &log {
        assert!(!line.starts_with('<'), "{line:?}");
        // [2026-12-01T17:04:40Z INFO  loopline::server] ...
        let time = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_whitespace().next());
        assert!(
            time.is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.contains('T')),
            "no time in {line:?}"
        );
    }
}
