//! The one call that makes a program of a service: the whole command line
//! (every engine option, the environment, `--help`, the man page's
//! sections), sockets passed by systemd, logging, signals, readiness
//! notification, the exit status. The `loopline` binary is this call with
//! loopline's protocol; `examples/kv.rs` is this call with a key-value
//! store.
//!
//! Exit status, as `--help` documents it: 0 after a graceful shutdown; 2
//! for a usage error (clap prints it, naming the option, and the
//! environment variable when the value came from there); 1 for a failure
//! at start or in the loop, with one line naming what failed.

use std::io::Write;
use std::process::ExitCode;

use crate::config::Options;
use crate::service::Service;
use crate::{systemd, Server, StartError};

/// A failure at start (an address in use, a name that does not resolve)
/// or in the event loop.
const EXIT_FAILURE: u8 = 1;
/// A bad option or value. clap exits with the same status on its own.
const EXIT_USAGE: u8 = 2;

/// Runs a server for the service `make` builds from the program's own
/// options `A` (a clap `Parser`: its name, version and about are the
/// program's; it may have no field at all), with every engine option
/// added, until a signal stops it. Returns the exit status.
///
/// Call it first thing in `main`, before the program opens a file or a
/// socket: it takes the listening sockets systemd may have passed
/// (descriptors 3 and up, named by `LISTEN_FDS`), which nothing else may
/// then own.
///
/// ```no_run
/// use std::process::ExitCode;
/// use loopline::service::{After, Context, Service};
///
/// /// `loopline`'s example service: one option of its own.
/// #[derive(clap::Parser)]
/// #[command(name = "shout", version, about = "Answers every line in capitals")]
/// struct Args {
///     /// Add this many exclamation marks.
///     #[arg(long, default_value_t = 1)]
///     bangs: usize,
/// }
///
/// struct Shout {
///     bangs: usize,
/// }
///
/// impl Service for Shout {
///     type Session = ();
///     fn session(&self, _: &Context) {}
///     fn respond(&self, line: &[u8], _: &mut (), _: &Context, out: &mut Vec<u8>) -> After {
///         out.extend(line.iter().map(u8::to_ascii_uppercase));
///         out.extend(std::iter::repeat(b'!').take(self.bangs));
///         out.push(b'\n');
///         After::KeepOpen
///     }
/// }
///
/// fn main() -> ExitCode {
///     loopline::serve(|args: Args| Shout { bangs: args.bangs })
/// }
/// ```
pub fn serve<A, S>(make: impl FnOnce(A) -> S) -> ExitCode
where
    A: clap::FromArgMatches + clap::CommandFactory,
    S: Service,
{
    // First, before anything opens a descriptor: 3 and up are the ones
    // systemd passed, if it did.
    let passed = systemd::take_passed_listeners();
    // On a usage error clap prints a message naming the option and exits 2.
    let Options {
        mut config,
        listen_is_default,
        service,
    } = Options::<A>::parse();
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

    let mut server = match Server::bind_with(config, passed, make(service)) {
        Ok(server) => server,
        // clap has checked every range already, so a usage error here is
        // about options together (TLS files without a tls listener, a token
        // for a protocol that checks none).
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
/// gives the exit status. The program's name starts it, as clap's own
/// messages do.
fn fail(e: &dyn std::fmt::Display, status: u8) -> ExitCode {
    let priority = if systemd::logs_to_journal() {
        format!("<{}>", systemd::syslog_priority(log::Level::Error))
    } else {
        String::new()
    };
    // args_os: a program path need not be UTF-8 (`args` would panic).
    let program = std::env::args_os()
        .next()
        .and_then(|path| {
            std::path::Path::new(&path)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "loopline".to_string());
    eprintln!("{priority}{program}: {e}");
    ExitCode::from(status)
}
