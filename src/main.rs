//! The `loopline` binary: parse options, bind, run until a signal.
//!
//! Exit status, as `--help` documents it: 0 after a graceful shutdown; 2 for
//! a usage error (clap prints it, naming the option); 1 for a failure at
//! start or in the loop, with one line naming what failed.

use std::process::ExitCode;

use clap::Parser;
use loopline::{Config, Server, StartError};

/// A failure at start (an address in use, a name that does not resolve)
/// or in the event loop.
const EXIT_FAILURE: u8 = 1;
/// A bad option or value. clap exits with the same status on its own.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // On a usage error clap prints a message naming the option and exits 2.
    let config = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut server = match Server::bind(config) {
        Ok(server) => server,
        // clap has checked every range already, so this is only reached if
        // the two ever disagree; it is still a usage error.
        Err(e @ StartError::Config(_)) => return fail(&e, EXIT_USAGE),
        Err(e) => return fail(&e, EXIT_FAILURE),
    };
    if let Err(e) = server.handle_signals() {
        return fail(&e, EXIT_FAILURE);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, EXIT_FAILURE),
    }
}

/// Prints one line naming what failed, and gives the exit status.
fn fail(e: &dyn std::fmt::Display, status: u8) -> ExitCode {
    eprintln!("loopline: {e}");
    ExitCode::from(status)
}
