//! The `loopline` binary: take what systemd passed, parse options, bind,
//! run until a signal.
//!
//! Exit status, as `--help` documents it: 0 after a graceful shutdown; 2 for
//! a usage error (clap prints it, naming the option, and the environment
//! variable when the value came from there); 1 for a failure at start or in
//! the loop, with one line naming what failed.

use std::io::Write;
use std::process::ExitCode;

use loopline::config::Options;
use loopline::{systemd, Server, StartError};

/// A failure at start (an address in use, a name that does not resolve)
/// or in the event loop.
const EXIT_FAILURE: u8 = 1;
/// A bad option or value. clap exits with the same status on its own.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // SAFETY: this is the first thing the process does: no other thread
    // exists yet (so removing LISTEN_* from the environment races with no
    // reader), and nothing has opened a descriptor, so 3 and up are the
    // ones systemd passed, owned by no one else.
    let passed = unsafe { systemd::take_passed_listeners() };
    // On a usage error clap prints a message naming the option and exits 2.
    let Options {
        mut config,
        listen_is_default,
    } = Options::parse();
    init_logging();
    let passed = match passed {
        Ok(listeners) => listeners,
        Err(e) => return fail(&e, EXIT_FAILURE),
    };
    // Sockets from systemd take the place of the default --listen; listeners
    // given on the command line or in LOOPLINE_LISTEN are served as well.
    if !passed.is_empty() && listen_is_default {
        config.listen.clear();
    }

    let mut server = match Server::bind_with(config, passed) {
        Ok(server) => server,
        // clap has checked every range already, so this is only reached if
        // the two ever disagree; it is still a usage error.
        Err(e @ StartError::Config(_)) => return fail(&e, EXIT_USAGE),
        Err(e) => return fail(&e, EXIT_FAILURE),
    };
    if let Err(e) = server.handle_signals() {
        return fail(&e, EXIT_FAILURE);
    }
    if let Some(notifier) = systemd::Notifier::from_env() {
        server.notify_systemd(notifier);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, EXIT_FAILURE),
    }
}

/// Log lines go to stderr, at the level RUST_LOG sets (info by default).
/// Under systemd's journal, each starts with its syslog priority (`<6>`
/// for info) and carries no time, which the journal records itself;
/// elsewhere, env_logger's usual `[TIME LEVEL target] message`.
fn init_logging() {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if systemd::logs_to_journal() {
        logger.format(|out, record| {
            writeln!(
                out,
                "<{}>[{:<5} {}] {}",
                systemd::syslog_priority(record.level()),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    logger.init();
}

/// Prints one line naming what failed (an error, to the journal), and
/// gives the exit status.
fn fail(e: &dyn std::fmt::Display, status: u8) -> ExitCode {
    let priority = if systemd::logs_to_journal() {
        format!("<{}>", systemd::syslog_priority(log::Level::Error))
    } else {
        String::new()
    };
    eprintln!("{priority}loopline: {e}");
    ExitCode::from(status)
}
