//! Options from the environment: every option has its `LOOPLINE_*`
//! variable, a variable changes what the server does, the command line
//! wins over it, `LOOPLINE_LISTEN` holds several listeners, and a bad value
//! there is a usage error that names the variable.

mod service;
mod util;

use clap::CommandFactory;
use loopline::config::{env_name, ENV_PREFIX};
use loopline::Config;
use service::{lines_with, loopline, run_to_exit};
use util::{parse_listening, Client, Server};

#[test]
fn every_option_has_its_environment_variable() {
    let command = Config::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        // --help and --version are clap's own, and set nothing.
        if matches!(arg.get_id().as_str(), "help" | "version") {
            continue;
        }
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("option {} has no long name", arg.get_id()));
        let want = env_name(long);
        assert!(want.starts_with(ENV_PREFIX), "{want}");
        assert_eq!(
            arg.get_env()
                .map(|name| name.to_string_lossy().into_owned()),
            Some(want.clone()),
            "--{long} must also be settable as {want}: add `env = \"{want}\"` to its #[arg]"
        );
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} options seen");
    assert_eq!(
        env_name("max-connections-per-ip"),
        "LOOPLINE_MAX_CONNECTIONS_PER_IP"
    );
}

#[test]
fn help_names_each_variable() {
    let out = run_to_exit(loopline(&["--help"], "info"));
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for arg in Config::command().get_arguments() {
        if let Some(long) = arg.get_long().filter(|l| !matches!(*l, "help" | "version")) {
            let shown = format!("[env: {}=]", env_name(long));
            assert!(folded.contains(&shown), "--help lacks {shown}:\n{text}");
        }
    }
}

/// A line of `len` bytes: `ECHO ` and then `x`s.
fn echo_line(len: usize) -> Vec<u8> {
    let mut line = b"ECHO ".to_vec();
    line.resize(len, b'x');
    line.push(b'\n');
    line
}

#[test]
fn a_variable_sets_its_option() {
    let mut command = util::loopline_command(&[], "info");
    service::clean_environment(&mut command);
    command.env("LOOPLINE_MAX_LINE", "16");
    let server = Server::spawn(command);
    let mut client = server.client();
    client.send(&echo_line(16));
    client.expect_line(&format!("OK {}", "x".repeat(11)));
    client.send(&echo_line(17));
    client.expect_line("ERR line too long");
}

#[test]
fn the_command_line_wins_over_a_variable() {
    let mut command = util::loopline_command(&["--max-line", "64"], "info");
    service::clean_environment(&mut command);
    command.env("LOOPLINE_MAX_LINE", "16");
    let server = Server::spawn(command);
    let mut client = server.client();
    client.send(&echo_line(64));
    client.expect_line(&format!("OK {}", "x".repeat(59)));
    client.send(&echo_line(65));
    client.expect_line("ERR line too long");
}

/// Serves until SIGTERM, then returns every `listening on` line it logged
/// (the shutdown's last line comes after all of them).
fn listening_lines(mut server: Server) -> Vec<String> {
    server.signal("TERM");
    server.wait_for_log("shutdown complete");
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.log.lock().unwrap();
    lines_with(&log, "listening on ")
}

#[test]
fn loopline_listen_holds_several_listeners() {
    let mut command = loopline(&[], "info");
    command.env("LOOPLINE_LISTEN", "127.0.0.1:0 127.0.0.1:0");
    let mut server = Server::spawn(command);
    let second = parse_listening(&server.wait_for_log("listening on "));
    for addr in [server.addr, second] {
        let mut client = Client::connect(addr);
        client.expect_line("READY");
        client.send(b"PING\n");
        client.expect_line("PONG");
    }
    let lines = listening_lines(server);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(":9000")), "{lines:#?}");
}

#[test]
fn listen_on_the_command_line_wins_over_loopline_listen() {
    let mut command = loopline(&["--listen", "127.0.0.1:0"], "info");
    command.env("LOOPLINE_LISTEN", "127.0.0.1:0 127.0.0.1:0");
    let server = Server::spawn(command);
    server.client();
    let lines = listening_lines(server);
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

#[test]
fn a_bad_value_in_a_variable_is_a_usage_error_naming_it() {
    for (variable, value, option) in [
        ("LOOPLINE_MAX_CONNECTIONS", "many", "--max-connections"),
        ("LOOPLINE_IDLE_TIMEOUT", "soon", "--idle-timeout"),
        ("LOOPLINE_LISTEN", "127.0.0.1:0 nowhere", "--listen"),
    ] {
        let mut command = loopline(&[], "info");
        command.env(variable, value);
        let out = run_to_exit(command);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}={value}: {err}");
        assert!(err.contains(variable), "{variable} not named: {err}");
        assert!(err.contains(option), "{option} not named: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_bad_value_on_the_command_line_does_not_blame_the_variable() {
    let mut command = loopline(&["--max-line", "0"], "info");
    command.env("LOOPLINE_MAX_LINE", "100");
    let out = run_to_exit(command);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-line"), "{err}");
    assert!(!err.contains("LOOPLINE_MAX_LINE"), "{err}");
}
