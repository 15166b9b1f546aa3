//! Authentication with `--auth-file`, on the real binary: which commands
//! wait for `AUTH`, its answers byte for byte, the third failure closing
//! the connection, the token file's forms and failures, the token never in
//! the log, the permission warning, and SIGHUP reloading the token.

mod util;

use std::fs;

use util::{run_loopline, Client, Server, Stats, TempFile};

// Each runs with one event loop and with two (`--threads 2`).
util::one_and_two_loops!(sighup_reloads_the_token_and_a_failed_reload_keeps_the_old_one,);

const TOKEN: &str = "s3cret-T0ken";

/// A server at debug level with `--auth-file` holding TOKEN.
fn server_with_token(name: &str) -> (Server, TempFile) {
    let file = TempFile::new(name, format!("{TOKEN}\n").as_bytes());
    let server = Server::start(&["--auth-file", file.path()]);
    (server, file)
}

/// A client that has sent the right token.
fn authenticated(server: &Server, token: &str) -> Client {
    let mut c = server.client();
    c.send(format!("AUTH {token}\n").as_bytes());
    c.expect_line("OK");
    c
}

#[test]
fn before_auth_only_auth_help_quit_empty_and_unknown_lines_are_served() {
    let (server, _file) = server_with_token("gate");
    let mut c = server.client();
    c.send(b"HELP\n");
    c.expect_line("OK commands: PING ECHO QUIT HELP STATS AUTH");
    for line in [
        "PING", "PING x", "ping", "ECHO hi", "ECHO", "ECHO ", "STATS", "STATS x",
    ] {
        c.send(format!("{line}\n").as_bytes());
        assert_eq!(c.read_line(), "ERR auth required", "{line:?}");
    }
    c.send(b"\nFLY\nHELP x\n");
    c.expect_line("ERR empty command");
    c.expect_line("ERR unknown command");
    c.expect_line("ERR usage: HELP takes no argument");
    c.send(b"QUIT\nPING\n");
    c.expect_line("BYE");
    c.expect_eof();
    server.assert_no_panic();
}

#[test]
fn the_right_token_opens_every_command_and_crlf_is_a_line_end() {
    let (server, _file) = server_with_token("open");
    let mut c = server.client();
    c.send(b"AUTH wrong\n");
    c.expect_line("ERR invalid token");
    // CRLF: the CR is the line end's, not the token's.
    c.send(format!("auth {TOKEN}\r\n").as_bytes());
    c.expect_line("OK");
    c.send(b"PING\nECHO hi\nHELP\n");
    c.expect_line("PONG");
    c.expect_line("OK hi");
    c.expect_line("OK commands: PING ECHO QUIT HELP STATS AUTH");
    // After a success: the right token is OK again; a wrong one is a
    // failure that leaves the connection authenticated.
    c.send(format!("AUTH {TOKEN}\nAUTH nope\nPING\n").as_bytes());
    c.expect_line("OK");
    c.expect_line("ERR invalid token");
    c.expect_line("PONG");
    c.send(b"STATS\n");
    let stats = Stats(c.read_line());
    assert_eq!(stats.get("auth_failures"), 2, "{}", stats.0);
    c.send(b"QUIT\n");
    c.expect_line("BYE");
    c.expect_eof();
}

#[test]
fn a_token_followed_by_a_cr_or_a_space_is_another_token() {
    let (server, _file) = server_with_token("cr");
    let mut c = server.client();
    // Only one CR before the LF is removed: this token ends in a CR.
    c.send(format!("AUTH {TOKEN}\r\r\n").as_bytes());
    c.expect_line("ERR invalid token");
    c.send(format!("AUTH {TOKEN} \n").as_bytes());
    c.expect_line("ERR invalid token");
    c.send(format!("AUTH  {TOKEN}\n").as_bytes());
    c.expect_line("ERR too many auth failures");
    c.expect_eof();
}

#[test]
fn the_third_failure_answers_too_many_and_closes_executing_nothing_after() {
    let (server, _file) = server_with_token("three");
    let mut c = server.client();
    // AUTH alone (no token at all) is a failure too.
    c.send(b"AUTH\n");
    c.expect_line("ERR invalid token");
    c.send(b"AUTH \n");
    c.expect_line("ERR invalid token");
    // The right token after the third failure, in the same read: never run.
    c.send(format!("AUTH wrong\nAUTH {TOKEN}\nHELP\n").as_bytes());
    c.expect_line("ERR too many auth failures");
    c.expect_eof();

    let mut other = authenticated(&server, TOKEN);
    other.send(b"STATS\n");
    let stats = Stats(other.read_line());
    assert_eq!(stats.get("auth_failures"), 3, "{}", stats.0);
    assert_eq!(stats.get("connections"), 1, "{}", stats.0);
    server.assert_no_panic();
}

#[test]
fn without_auth_file_auth_is_not_enabled_and_help_is_unchanged() {
    let server = Server::start(&[]);
    let mut c = server.client();
    c.send(b"HELP\nAUTH\nAUTH x\nauth \nPING\n");
    c.expect_line("OK commands: PING ECHO QUIT HELP STATS");
    for _ in 0..3 {
        c.expect_line("ERR auth not enabled");
    }
    c.expect_line("PONG");
    c.send(b"STATS\n");
    assert_eq!(Stats(c.read_line()).get("auth_failures"), 0);
}

#[test]
fn a_token_file_with_crlf_gives_the_token_without_its_cr() {
    let file = TempFile::new("crlf", format!("{TOKEN}\r\nsecond line\r\n").as_bytes());
    let server = Server::start(&["--auth-file", file.path()]);
    let mut c = authenticated(&server, TOKEN);
    c.send(b"PING\n");
    c.expect_line("PONG");
}

/// Runs the binary with `--auth-file path`, which must fail at start:
/// exit 1, one line naming the file, nothing listening.
fn fails_at_start_naming(path: &str) -> String {
    let out = run_loopline(&["--listen", "127.0.0.1:0", "--auth-file", path], "info");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(path), "{stderr}");
    assert!(stderr.contains("--auth-file"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn an_empty_token_file_exits_1_naming_it() {
    for (name, content) in [
        ("empty", &b""[..]),
        ("blank", b"\n"),
        ("blank-crlf", b"\r\nx\n"),
    ] {
        let file = TempFile::new(name, content);
        let stderr = fails_at_start_naming(file.path());
        assert!(stderr.contains("empty"), "{stderr}");
    }
}

#[test]
fn a_missing_or_unreadable_token_file_exits_1_naming_it() {
    let missing = std::env::temp_dir().join(format!("loopline-auth-{}-none", std::process::id()));
    let stderr = fails_at_start_naming(missing.to_str().unwrap());
    assert!(stderr.contains("No such file"), "{stderr}");
    // A directory cannot be read as a file, even by root (a mode of 000
    // would not stop root).
    let dir = std::env::temp_dir();
    fails_at_start_naming(dir.to_str().unwrap());
    // A FIFO is refused at once (a plain open would wait for a writer
    // forever, and the start with it).
    let fifo = std::env::temp_dir().join(format!("loopline-auth-{}-fifo", std::process::id()));
    util::make_fifo(&fifo);
    let stderr = fails_at_start_naming(fifo.to_str().unwrap());
    assert!(stderr.contains("not a regular file (a FIFO)"), "{stderr}");
    fs::remove_file(&fifo).unwrap();
}

#[test]
fn the_token_never_reaches_the_log_even_at_debug() {
    let (mut server, file) = server_with_token("secret-log");
    // A reload, a failed one, and a reload again.
    server.signal("HUP");
    server.wait_for_log("token reloaded");
    file.write(b"");
    server.signal("HUP");
    server.wait_for_log("cannot reload");
    file.write(format!("{TOKEN}\n").as_bytes());
    server.signal("HUP");
    server.wait_for_log("token reloaded");
    // Clients that succeed and fail, each closed with a debug line.
    let mut c = authenticated(&server, TOKEN);
    c.send(b"QUIT\n");
    c.expect_line("BYE");
    c.expect_eof();
    drop(c);
    let mut failing = server.client();
    failing.send(format!("AUTH {TOKEN}x\nAUTH x{TOKEN}\nAUTH {TOKEN}\r\r\n").as_bytes());
    failing.read_line();
    failing.read_line();
    failing.expect_line("ERR too many auth failures");
    failing.expect_eof();
    drop(failing);
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while !(server.logged("client sent QUIT") && server.logged(": too many auth failures")) {
        assert!(std::time::Instant::now() < deadline, "no debug close lines");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log.lock().unwrap();
    let leaks: Vec<&String> = log.iter().filter(|l| l.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "the token is in the log: {leaks:#?}");
}

#[test]
fn a_token_file_readable_by_others_logs_a_warning_naming_it() {
    let file = TempFile::new("mode", format!("{TOKEN}\n").as_bytes());
    file.chmod(0o644);
    let server = Server::start(&["--auth-file", file.path()]);
    // Logged at start, before the `listening on` line that `start` waits for.
    let log = server.log.lock().unwrap();
    let warning = log
        .iter()
        .find(|l| l.contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning: {log:#?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(file.path()), "{warning}");

    file.chmod(0o600);
    let quiet = Server::start(&["--auth-file", file.path()]);
    quiet.client();
    assert!(!quiet.logged("readable by other users"));
}

#[test]
fn a_non_loopback_listener_warns_that_the_token_crosses_in_clear() {
    let file = TempFile::new("clear", format!("{TOKEN}\n").as_bytes());
    // Binds the wildcard address on port 0; no traffic is sent to it.
    let mut server = Server::start_raw(
        &["--listen", "0.0.0.0:0", "--auth-file", file.path()],
        "info",
    );
    let warning = server.wait_for_log("in clear");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.ends_with("--auth-file tokens cross the network in clear on this listener"),
        "{warning}"
    );

    let local = Server::start(&["--auth-file", file.path()]);
    local.client();
    assert!(!local.logged("in clear"));
}

fn sighup_reloads_the_token_and_a_failed_reload_keeps_the_old_one() {
    let (mut server, file) = server_with_token("reload");
    let mut authed = authenticated(&server, TOKEN);
    let mut waiting = server.client();

    file.write(b"new-token\n");
    server.signal("HUP");
    let line = server.wait_for_log("reload:");
    assert!(
        line.contains(&format!("reload: token reloaded from {}", file.path())),
        "{line}"
    );
    // New connections and unauthenticated ones use the new token...
    let mut newcomer = server.client();
    newcomer.send(format!("AUTH {TOKEN}\nAUTH new-token\nPING\n").as_bytes());
    newcomer.expect_line("ERR invalid token");
    newcomer.expect_line("OK");
    newcomer.expect_line("PONG");
    waiting.send(b"AUTH new-token\nPING\n");
    waiting.expect_line("OK");
    waiting.expect_line("PONG");
    // ...and authenticated ones stay authenticated.
    authed.send(b"PING\n");
    authed.expect_line("PONG");

    // An empty file, then a missing one: each logs an error naming the
    // file and keeps the token.
    file.write(b"\n");
    server.signal("HUP");
    let line = server.wait_for_log("reload:");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(file.path()), "{line}");
    assert!(line.contains("keeping the old token"), "{line}");
    fs::remove_file(&file.0).unwrap();
    server.signal("HUP");
    let line = server.wait_for_log("reload:");
    assert!(
        line.contains("ERROR") && line.contains(file.path()),
        "{line}"
    );
    assert!(line.contains("No such file"), "{line}");
    let mut later = server.client();
    later.send(b"AUTH new-token\n");
    later.expect_line("OK");
    server.assert_no_panic();
}
