//! The `loopline` binary: parse options, bind, run until a signal.
//!
//! Exit status (SPEC section 2): 0 after a graceful shutdown, 2 for a usage
//! error (clap prints it), 1 for a failure at start or in the loop, with one
//! line naming what failed.

use std::process::ExitCode;

use clap::Parser;
use loopline::{Config, Server};

fn main() -> ExitCode {
    // On a usage error clap prints a message naming the option and exits 2.
    let config = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => return fail(&e),
    };
    if let Err(e) = server.handle_signals() {
        return fail(&e);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("loopline: {e}");
    ExitCode::from(1)
}
