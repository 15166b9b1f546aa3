//! `loopline-bench`: a load generator for any protocol where each request is
//! one line and each response is a fixed number of lines (loopline itself, or
//! Redis inline commands such as `PING\r\n` -> `+PONG\r\n`).
//!
//! Three modes, one module each:
//! - [`load`] (default): pipelined requests over C connections and T
//!   threads; prints responses/s after warm-up and p50/p99/p99.9 latency.
//! - [`hold`]: opens N idle connections and holds them; prints the server's
//!   RSS growth per connection.
//! - [`churn`]: connect, greeting, QUIT, reply, close, in a loop; prints
//!   connections/s.
//!
//! The rest: [`cli`] (the options and the checked [`cli::Workload`]),
//! [`connect`] (opening and polling connections over several source
//! addresses), [`link`] (a connection's bytes, plain or inside TLS),
//! `tls` (the TLS client settings, with the `tls` feature), [`responses`] (counting greeting and response lines),
//! [`template`] (keyed requests: `{key}` and `{value}`, and the key choice),
//! [`measure`] (latency histograms, CPU time, a measured mode's threads)
//! and [`report`] (the human and JSON result lines).
//!
//! With `--tls` every mode runs over TLS (rustls, ring provider): each
//! connection makes a full handshake first (resumption off); the counting
//! is the same. `--tls-version 1.2|1.3` offers one version only; in churn
//! mode `--tls-resume` makes each slot resume its previous session, and
//! the result says how many handshakes really resumed.
//!
//! Every mode prints one human line and one JSON line on stdout; progress and
//! warnings go to stderr. Only loopback targets are accepted unless
//! `--allow-non-loopback` is given.

mod churn;
mod cli;
mod connect;
mod hold;
mod link;
mod load;
mod measure;
mod report;
mod responses;
mod template;
#[cfg(feature = "tls")]
mod tls;

use clap::Parser;
use cli::{Args, Mode, Workload};
use std::process::ExitCode;
use std::time::Duration;

/// Longest an event loop sleeps in one poll, so deadlines are noticed.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Descriptors kept free for everything that is not a connection (stdio,
/// the poll instance, the threads' wake-ups).
const SPARE_DESCRIPTORS: u64 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let workload = match Workload::from_args(&args) {
        Ok(workload) => workload,
        Err(e) => {
            eprintln!("loopline-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // Each connection is a descriptor: raise the soft limit as far as the
    // platform allows and warn when it is still too low.
    match loopline::sys::raise_descriptor_limit() {
        Ok(limit) if (workload.connections as u64).saturating_add(SPARE_DESCRIPTORS) > limit => {
            eprintln!(
                "loopline-bench: warning: {} connections but only {limit} open files allowed",
                workload.connections
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("loopline-bench: warning: cannot read the open-files limit: {e}"),
    }
    if workload.mode != Mode::Hold {
        eprintln!(
            "loopline-bench: {:?} {}{} request `{}`, {} greeting line(s), {} line(s) per response",
            workload.mode,
            workload.target,
            match (&workload.tls, workload.tls_resume) {
                (None, _) => String::new(),
                (Some(_), false) => format!(
                    " over TLS ({}, full handshakes)",
                    workload.tls_version.name()
                ),
                (Some(_), true) => format!(
                    " over TLS ({}, resuming sessions)",
                    workload.tls_version.name()
                ),
            },
            cli::show_bytes(&workload.request),
            workload.greeting_lines,
            workload.lines_per_response
        );
        if workload.request_template.is_keyed() {
            eprintln!(
                "loopline-bench: keys drawn uniformly from 0..{} (the request above is key 0's)",
                workload.keys
            );
        }
        if let Some(preload) = &workload.preload {
            eprintln!(
                "loopline-bench: preload: `{}` for each of the {} keys, {} line(s) per response",
                cli::show_bytes(preload.base()),
                workload.keys,
                workload.preload_lines_per_response
            );
        }
    }
    match workload.mode {
        Mode::Load => load::run(workload),
        Mode::Hold => hold::run(&workload),
        Mode::Churn => churn::run(workload),
    }
}
