//! Command-line options, their accepted values, and the limits derived
//! from them.
//!
//! Options are parsed with clap. A bad option is a usage error: clap prints
//! a message naming the option and the process exits with status 2, before
//! anything is bound. A program that builds a [`Config`] by hand skips clap,
//! so [`Config::validate`] (called first thing by `Server::bind`) checks the
//! same ranges: each is defined once, in [`bounds`], and used by both.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use std::ffi::OsString;

use clap::builder::Resettable;
use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Args, Command, CommandFactory, FromArgMatches, Parser};

use crate::files::{self, FileError};
use crate::guard::Cidr;
use crate::limits::{Limits, LINGER_TIMEOUT};
use crate::token::AuthToken;
pub use crate::transport::TlsVersion;

/// What the end of `--help` says of the engine's options: the forms of a
/// DUR, logging, exit codes, signals. A program adds its own after it (its
/// examples). The man page is generated from it too.
const AFTER_HELP: &str = "\
DUR is a number of seconds (2, 0.5) or a number with a unit: 500ms, 2s, 5m, 1h.

HOST is an IPv4 address (127.0.0.1), an IPv6 address in brackets ([::1]) or a \
host name, resolved once at start to every address it names (localhost:9000 \
listens on 127.0.0.1 and on ::1 where both exist). Port 0 picks a free port; \
the log shows the real one.

Logging goes to stderr. RUST_LOG sets the level: error, warn, info (the \
default), debug or trace. Once every listener is bound, the server logs one \
line 'listening on ADDR' for each, then 'metrics on ADDR' for --metrics-listen.

Exit status: 0 after a graceful shutdown; 1 for a failure at start (an \
address in use, a host name that does not resolve, a TLS file that cannot be \
used (--tls-cert, --tls-key, --tls-client-ca, --tls-ocsp: missing, not PEM, \
not the kind of item it should hold, a key that does not fit the \
certificate), an --auth-file or --metrics-token-file that cannot be read or \
is empty, a descriptor passed by systemd that is not a listening socket) or a \
second SIGINT or SIGTERM during a graceful shutdown; 2 for a usage error (a \
bad option or value, named in the message, or a bad LOOPLINE_ variable; a \
tls listener without --tls-cert or --tls-key; TLS files given while no \
listener has the tls option).

Signals: SIGINT or SIGTERM starts a graceful shutdown (stop accepting, send \
every response already due, then 'ERR server shutting down', close); a second \
one hurries it, closing every connection at once. SIGHUP reloads, and never \
stops the server: it reads again the TLS certificate, key, client CA and OCSP \
response, and the --auth-file and --metrics-token-file tokens (new \
connections use them; a file that cannot be used keeps the old one, and an \
error line names it).

Listener options follow the address, comma-separated. 'tls' (--listen \
0.0.0.0:9443,tls) serves the protocol inside TLS 1.2 or 1.3 \
(--tls-min-version) with --tls-cert and --tls-key; clients resume sessions \
with tickets; 'openssl s_client -connect HOST:9443' talks to it. 'proxy' \
(--listen 0.0.0.0:9001,proxy, or ...,tls,proxy) is for a listener behind a \
load balancer (HAProxy, nginx): each connection must start with a PROXY \
protocol header, version 1 or 2, before anything else (before TLS too). The \
address it carries is the client's, for the log and every per-address limit. \
A connection without a valid header within --handshake-timeout is closed \
without a line. Only peers in --proxy-from may send one; without that option \
any peer may claim any address (a warning at start says so for a listener \
other peers can reach). --metrics-listen takes 'tls' too.

Per-address limits (--max-connections-per-ip, --max-connection-rate-per-ip, \
--max-auth-failures-per-ip) count IPv4 clients by address and IPv6 clients \
by their first --ipv6-prefix bits (64 by default).

Environment: every option can also be set as LOOPLINE_ and its name in \
capitals with _ for - (LOOPLINE_MAX_CONNECTIONS=500); the command line wins. \
LOOPLINE_LISTEN holds one or more listeners separated by spaces. A bad value \
there is a usage error naming the variable.

Under systemd: listening sockets passed by socket activation (LISTEN_PID, \
LISTEN_FDS) are served as plain listeners in place of the default --listen \
(an explicit --listen adds to them); with NOTIFY_SOCKET the server reports \
READY=1 once it listens, STOPPING=1 when it shuts down, and its number of \
connections; with JOURNAL_STREAM each log line starts with its syslog \
priority instead of a time.

--auth-file gives the protocol a token to check (for loopline, 'AUTH \
<token>'); the token is the file's first line. Keep the file readable by \
the server's user only: the server warns otherwise.";

/// Everything the server needs to start. Build it with [`Config::parse`]
/// (from the command line) or by hand (in tests and embedding programs);
/// `Server::bind` checks a hand-built one with [`Config::validate`].
///
/// The engine's options, every one: a program's command line is these and
/// its own ([`command`]).
#[derive(Debug, Clone, Parser)]
#[command(after_help = AFTER_HELP)]
pub struct Config {
    /// Address to listen on, as HOST:PORT (see HOST below), optionally
    /// followed by listener options, comma-separated: tls, proxy (see
    /// Listener options below). Repeatable; in the environment, several are
    /// separated by spaces.
    #[arg(
        long = "listen",
        env = "LOOPLINE_LISTEN",
        // LOOPLINE_LISTEN="127.0.0.1:9000 127.0.0.1:9443,tls" holds two. clap
        // splits an environment value only at a value delimiter, and then
        // splits command-line values too: harmless, as no address holds a space.
        value_delimiter = ' ',
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: Vec<ListenAddr>,

    /// TLS listeners: the certificate chain, leaf first (PEM file).
    #[arg(long, env = "LOOPLINE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// TLS listeners: the certificate's private key (PEM file).
    #[arg(long, env = "LOOPLINE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// TLS listeners: require a client certificate signed by this CA (PEM file).
    #[arg(long, env = "LOOPLINE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// TLS listeners: the lowest TLS version offered, 1.2 or 1.3.
    #[arg(
        long,
        env = "LOOPLINE_TLS_MIN_VERSION",
        value_name = "VERSION",
        default_value = "1.2"
    )]
    pub tls_min_version: TlsVersion,

    /// TLS listeners: staple this OCSP response (DER file, from the
    /// certificate's CA) to the certificate. SIGHUP reads it again.
    #[arg(long, env = "LOOPLINE_TLS_OCSP", value_name = "FILE")]
    pub tls_ocsp: Option<PathBuf>,

    /// Close a connection whose TLS handshake or PROXY header has not finished in this long, without a line; 0 turns off the handshake's limit (a PROXY header keeps 10s).
    #[arg(long, env = "LOOPLINE_HANDSHAKE_TIMEOUT", value_name = "DUR", default_value = "10s",
          value_parser = bounds::HANDSHAKE_TIMEOUT.parser())]
    pub handshake_timeout: Duration,

    /// Open client connections at once; one more gets ERR server busy.
    #[arg(long, env = "LOOPLINE_MAX_CONNECTIONS", value_name = "N", default_value_t = 10_000,
          value_parser = bounds::MAX_CONNECTIONS.parser())]
    pub max_connections: u64,

    /// Longest request line in bytes (CR and LF not counted).
    #[arg(long, env = "LOOPLINE_MAX_LINE", value_name = "BYTES", default_value_t = 1024,
          value_parser = bounds::MAX_LINE.parser())]
    pub max_line: u64,

    /// Pending output in bytes above which the server stops reading from a client.
    #[arg(long, env = "LOOPLINE_MAX_OUTPUT", value_name = "BYTES", default_value_t = 1_048_576,
          value_parser = bounds::MAX_OUTPUT.parser())]
    pub max_output: u64,

    /// Bytes held in all client buffers of the process together (unfinished
    /// input, held lines, pending output); above it, reading pauses.
    #[arg(long, env = "LOOPLINE_MAX_MEMORY", value_name = "BYTES", default_value_t = 268_435_456,
          value_parser = bounds::MAX_MEMORY.parser())]
    pub max_memory: u64,

    /// Close a connection with no complete request for this long; 0 turns it off.
    #[arg(long, env = "LOOPLINE_IDLE_TIMEOUT", value_name = "DUR", default_value = "300s",
          value_parser = bounds::IDLE_TIMEOUT.parser())]
    pub idle_timeout: Duration,

    /// Close a connection whose peer takes no bytes for this long while output is pending; 0 turns it off.
    #[arg(long, env = "LOOPLINE_WRITE_TIMEOUT", value_name = "DUR", default_value = "30s",
          value_parser = bounds::WRITE_TIMEOUT.parser())]
    pub write_timeout: Duration,

    /// How long a graceful shutdown (SIGINT, SIGTERM) may spend flushing before closing anyway.
    #[arg(long, env = "LOOPLINE_SHUTDOWN_TIMEOUT", value_name = "DUR", default_value = "5s",
          value_parser = bounds::SHUTDOWN_TIMEOUT.parser())]
    pub shutdown_timeout: Duration,

    /// Idle time after which the kernel probes a client whose connection is
    /// silent, to find peers that are gone; 0 turns it off.
    #[arg(long, env = "LOOPLINE_TCP_KEEPALIVE", value_name = "DUR", default_value = "300s",
          value_parser = bounds::TCP_KEEPALIVE.parser())]
    pub tcp_keepalive: Duration,

    /// Open client connections at once from one IP address; one more gets
    /// ERR too many connections from your address. 0 turns it off.
    #[arg(long, env = "LOOPLINE_MAX_CONNECTIONS_PER_IP", value_name = "N", default_value_t = 0,
          value_parser = bounds::MAX_CONNECTIONS_PER_IP.parser())]
    pub max_connections_per_ip: u64,

    /// Count IPv6 clients by their first N bits in every per-address limit
    /// (64: a /64 is one client; 128: exact addresses). IPv4 addresses
    /// count exactly.
    #[arg(long, env = "LOOPLINE_IPV6_PREFIX", value_name = "N", default_value_t = 64,
          value_parser = bounds::IPV6_PREFIX.parser())]
    pub ipv6_prefix: u64,

    /// New connections from one address within a second (refused ones
    /// count too); one more gets ERR connecting too fast. 0 turns it off.
    #[arg(long, env = "LOOPLINE_MAX_CONNECTION_RATE_PER_IP", value_name = "N", default_value_t = 0,
          value_parser = bounds::MAX_CONNECTION_RATE_PER_IP.parser())]
    pub max_connection_rate_per_ip: u64,

    /// The token the protocol checks (loopline: 'AUTH TOKEN' before PING,
    /// ECHO and STATS): TOKEN is the first line of FILE. SIGHUP reads it
    /// again.
    #[arg(long, env = "LOOPLINE_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,

    /// With --auth-file: failed AUTHs from one address within 60s after
    /// which its AUTHs and new connections get ERR too many auth failures,
    /// until 60s pass since its last failure. 0 turns it off.
    #[arg(long, env = "LOOPLINE_MAX_AUTH_FAILURES_PER_IP", value_name = "N", default_value_t = 10,
          value_parser = bounds::MAX_AUTH_FAILURES_PER_IP.parser())]
    pub max_auth_failures_per_ip: u64,

    /// proxy listeners: take a PROXY header only from peers in these
    /// address ranges (CIDR or single addresses, comma-separated:
    /// 10.0.0.0/8,2001:db8::/32,192.0.2.7); any other peer is closed at
    /// once. Without it every peer may claim any client address.
    #[arg(
        long,
        env = "LOOPLINE_PROXY_FROM",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub proxy_from: Vec<Cidr>,

    /// Event loops, each on its own thread with its own listeners; they
    /// share the counters and limits above. One per core is the most that
    /// helps.
    #[arg(long, env = "LOOPLINE_THREADS", value_name = "N", default_value_t = 1,
          value_parser = bounds::THREADS.parser())]
    pub threads: u64,

    /// Serve Prometheus metrics over HTTP/1.1 on this HOST:PORT (GET
    /// /metrics), in the same event loop; off unless given. One address; a
    /// host name uses its first address that binds. ',tls' serves HTTPS
    /// with --tls-cert and --tls-key.
    #[arg(long, value_name = "HOST:PORT", env = "LOOPLINE_METRICS_LISTEN",
          value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<ListenAddr>,

    /// With --metrics-listen: a request must carry 'Authorization: Bearer
    /// TOKEN', TOKEN being the first line of FILE; others get 401. SIGHUP
    /// reads it again.
    #[arg(long, env = "LOOPLINE_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

/// A `--metrics-listen` value: a `--listen` address, with the `tls`
/// option at most (the endpoint speaks HTTP, never a PROXY header).
fn parse_metrics_listen(text: &str) -> Result<ListenAddr, String> {
    let addr: ListenAddr = text.parse().map_err(|e: ListenAddrError| e.to_string())?;
    if addr.options().iter().any(|&o| o != ListenerOption::Tls) {
        return Err(format!(
            "{text:?}: --metrics-listen takes an address and at most the tls option"
        ));
    }
    Ok(addr)
}

impl Default for Config {
    /// The documented defaults: what `loopline` with no option uses, and no
    /// `LOOPLINE_*` variable either (the environment of the process that
    /// builds a `Config` by hand must not change its defaults).
    fn default() -> Config {
        let without_environment = Config::command().mut_args(|arg| arg.env(None));
        let matches = without_environment.get_matches_from(["loopline"]);
        // No argument and no environment: only the declared defaults, which
        // the unit test `defaults` parses.
        Config::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Every option's environment variable starts with this: `--max-line` is
/// also `LOOPLINE_MAX_LINE`.
pub const ENV_PREFIX: &str = "LOOPLINE_";

/// The environment variable of the option with long name `long`:
/// `max-connections` gives `LOOPLINE_MAX_CONNECTIONS`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// A parsed command line (and environment): the engine's options, the
/// service's own (`A`), and what the values alone do not tell.
#[derive(Debug, Clone)]
pub struct Options<A> {
    /// The engine's options, validated by [`Config::validate`].
    pub config: Config,
    /// `--listen` holds its default: given neither on the command line nor
    /// in `LOOPLINE_LISTEN`. Listeners passed by systemd replace the
    /// default, and add to explicit ones.
    pub listen_is_default: bool,
    /// The service's own options.
    pub service: A,
}

/// A program's whole command line: `A`'s (its name, version and about,
/// and its own options, if any), then every engine option ([`Config`]),
/// and the engine's notes after the options (`--help`'s end, and the man
/// page's).
pub fn command<A: CommandFactory>() -> Command {
    let own = A::command();
    // Flattening applies the engine's own about (its doc comment) to the
    // command: the program's stays.
    let keep = |text: Option<&clap::builder::StyledStr>| {
        text.cloned().map_or(Resettable::Reset, Resettable::Value)
    };
    let about = keep(own.get_about());
    let long_about = keep(own.get_long_about());
    // The engine's notes, then the program's (its examples, say).
    let after_help = match own.get_after_help() {
        Some(theirs) => format!("{AFTER_HELP}\n\n{theirs}"),
        None => AFTER_HELP.to_string(),
    };
    Config::augment_args(own)
        .about(about)
        .long_about(long_about)
        .after_help(after_help)
}

impl<A: FromArgMatches + CommandFactory> Options<A> {
    /// Parses the process's command line and `LOOPLINE_*` environment. On a
    /// usage error, prints clap's message (with a tip naming the variable
    /// when the bad value came from the environment) and exits with status
    /// 2; `--help` and `--version` print and exit 0.
    pub fn parse() -> Options<A> {
        let args: Vec<OsString> = std::env::args_os().collect();
        Options::try_parse_from(&args).unwrap_or_else(|e| e.exit())
    }

    /// [`Options::parse`] from `args` (the program name first) and the
    /// process's environment, returning the error instead of exiting.
    pub fn try_parse_from<I, T>(args: I) -> Result<Options<A>, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = command::<A>();
        let parsed = command.try_get_matches_from_mut(&args).and_then(|matches| {
            let config = Config::from_arg_matches(&matches)?;
            let service = A::from_arg_matches(&matches)?;
            let listen_is_default =
                matches.value_source("listen") == Some(ValueSource::DefaultValue);
            Ok(Options {
                config,
                listen_is_default,
                service,
            })
        });
        parsed.map_err(|mut e| {
            if let Some(tip) = blame_the_environment(&command, &e, &args) {
                e.insert(
                    ContextKind::Suggested,
                    ContextValue::StyledStrs(vec![tip.into()]),
                );
            }
            e
        })
    }
}

/// When `error` is about a value that came from the environment (its option
/// is not on the command line, and its variable is set), a tip naming the
/// variable: clap's own message names only the option, which the user may
/// never have typed.
fn blame_the_environment(
    command: &Command,
    error: &clap::Error,
    args: &[OsString],
) -> Option<String> {
    // clap names the option as `--max-line <BYTES>`.
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let option = shown.split_whitespace().next()?;
    let arg = command.get_arguments().find(|arg| {
        arg.get_long()
            .is_some_and(|long| option == format!("--{long}"))
    })?;
    let variable = arg.get_env()?;
    let value = std::env::var_os(variable)?;
    let typed = args.iter().skip(1).any(|given| {
        let given = given.to_string_lossy();
        given == option || given.starts_with(&format!("{option}="))
    });
    (!typed).then(|| {
        format!(
            "the value comes from the environment: {}={:?}",
            variable.to_string_lossy(),
            value.to_string_lossy()
        )
    })
}

impl Config {
    /// Checks every field against the range its option accepts. The command
    /// line is checked by clap already; this catches a `Config` built by
    /// hand, whose values would otherwise overflow (a line limit of
    /// `u64::MAX`) or panic (a deadline `Duration::MAX` away) deep in the loop.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(0)
    }

    /// [`Config::validate`] for a server that also serves
    /// `inherited_listeners` sockets it was given (by systemd): `listen`
    /// may then be empty.
    pub fn validate_with(&self, inherited_listeners: usize) -> Result<(), ConfigError> {
        if self.listen.is_empty() && inherited_listeners == 0 {
            return Err(ConfigError::NoListener);
        }
        bounds::MAX_CONNECTIONS.check(self.max_connections)?;
        bounds::MAX_LINE.check(self.max_line)?;
        bounds::MAX_OUTPUT.check(self.max_output)?;
        bounds::MAX_MEMORY.check(self.max_memory)?;
        bounds::IDLE_TIMEOUT.check(self.idle_timeout)?;
        bounds::WRITE_TIMEOUT.check(self.write_timeout)?;
        bounds::SHUTDOWN_TIMEOUT.check(self.shutdown_timeout)?;
        bounds::TCP_KEEPALIVE.check(self.tcp_keepalive)?;
        bounds::HANDSHAKE_TIMEOUT.check(self.handshake_timeout)?;
        self.validate_tls()?;
        bounds::MAX_CONNECTIONS_PER_IP.check(self.max_connections_per_ip)?;
        bounds::IPV6_PREFIX.check(self.ipv6_prefix)?;
        bounds::MAX_CONNECTION_RATE_PER_IP.check(self.max_connection_rate_per_ip)?;
        bounds::MAX_AUTH_FAILURES_PER_IP.check(self.max_auth_failures_per_ip)?;
        bounds::THREADS.check(self.threads)?;
        Ok(())
    }

    /// Whether any listener (the metrics one included) serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.listen
            .iter()
            .chain(&self.metrics_listen)
            .any(|l| l.has(ListenerOption::Tls))
    }

    /// A `tls` listener needs a certificate and a key; TLS files without a
    /// `tls` listener would be ignored, and an operator who forgot `,tls`
    /// would serve tokens in clear: both are usage errors.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        if self.serves_tls() {
            if !cfg!(feature = "tls") {
                return Err(ConfigError::TlsNeeds("the tls feature"));
            }
            if self.tls_cert.is_none() {
                return Err(ConfigError::TlsNeeds("--tls-cert"));
            }
            if self.tls_key.is_none() {
                return Err(ConfigError::TlsNeeds("--tls-key"));
            }
            return Ok(());
        }
        let given = [
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
            ("--tls-client-ca", self.tls_client_ca.is_some()),
            ("--tls-ocsp", self.tls_ocsp.is_some()),
        ];
        match given.iter().find(|(_, set)| *set) {
            Some((option, _)) => Err(ConfigError::TlsUnused {
                option,
                plain: self.listen.iter().map(ToString::to_string).collect(),
            }),
            None => Ok(()),
        }
    }
}

/// The longest DUR any option accepts: 10 years, far beyond any useful
/// timeout, and far enough from `Duration::MAX` that `Instant + duration`
/// (every deadline) cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The range of values each option accepts.
pub mod bounds {
    use super::{Bounds, MAX_DURATION};
    use std::time::Duration;

    /// At least one; a million is far past what one process should hold.
    pub const MAX_CONNECTIONS: Bounds<u64> = Bounds::new("--max-connections", 1, 1_000_000);
    /// Up to 1 GiB: a line is held whole in memory while it arrives.
    pub const MAX_LINE: Bounds<u64> = Bounds::new("--max-line", 1, 1 << 30);
    /// Up to 1 TiB; `--max-memory` is the practical cap.
    pub const MAX_OUTPUT: Bounds<u64> = Bounds::new("--max-output", 1, 1 << 40);
    /// From 1 KiB (small values let tests reach the cap quickly) to 1 TiB.
    pub const MAX_MEMORY: Bounds<u64> = Bounds::new("--max-memory", 1024, 1 << 40);
    /// Any duration; 0 turns the idle timeout off.
    pub const IDLE_TIMEOUT: Bounds<Duration> =
        Bounds::new("--idle-timeout", Duration::ZERO, MAX_DURATION);
    /// Any duration; 0 turns the write timeout off.
    pub const WRITE_TIMEOUT: Bounds<Duration> =
        Bounds::new("--write-timeout", Duration::ZERO, MAX_DURATION);
    /// Any duration; 0 closes every connection at once on shutdown.
    pub const SHUTDOWN_TIMEOUT: Bounds<Duration> =
        Bounds::new("--shutdown-timeout", Duration::ZERO, MAX_DURATION);
    /// The kernel counts keepalive idle time in whole seconds, from 1 to
    /// 32767 on Linux (TCP_KEEPIDLE); 0 is the server's own "off".
    pub const TCP_KEEPALIVE: Bounds<Duration> = Bounds::new(
        "--tcp-keepalive",
        Duration::from_secs(1),
        Duration::from_secs(32767),
    )
    .or_zero_for_off();
    /// Any duration; 0 turns the TLS handshake's limit off.
    pub const HANDSHAKE_TIMEOUT: Bounds<Duration> =
        Bounds::new("--handshake-timeout", Duration::ZERO, MAX_DURATION);
    /// As `--max-connections`, or 0 for no per-address limit.
    pub const MAX_CONNECTIONS_PER_IP: Bounds<u64> =
        Bounds::new("--max-connections-per-ip", 1, 1_000_000).or_zero_for_off();
    /// The bits of an IPv6 address: 128 counts exact addresses.
    pub const IPV6_PREFIX: Bounds<u64> = Bounds::new("--ipv6-prefix", 1, 128);
    /// Up to what a rate bucket counts (`guard::MAX_PER_ADDRESS_COUNT`).
    pub const MAX_CONNECTION_RATE_PER_IP: Bounds<u64> =
        Bounds::new("--max-connection-rate-per-ip", 1, 65_535).or_zero_for_off();
    /// Up to what a failure bucket counts, or 0 for no limit.
    pub const MAX_AUTH_FAILURES_PER_IP: Bounds<u64> =
        Bounds::new("--max-auth-failures-per-ip", 1, 65_535).or_zero_for_off();
    /// Past one loop per core, more only add threads that wait for a core.
    pub const THREADS: Bounds<u64> = Bounds::new("--threads", 1, 1024);
}

/// The values an option accepts: `min..=max`, and 0 as well when 0 turns
/// the feature off. Displayed as a sentence naming the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds<T> {
    /// The option, as typed on the command line.
    pub option: &'static str,
    /// The smallest value accepted (besides 0, if it turns the option off).
    pub min: T,
    /// The largest value accepted.
    pub max: T,
    /// 0 is accepted too, below `min`, and means "off".
    pub zero_turns_off: bool,
}

/// A type an option's value can have: a count (of connections or bytes)
/// or a duration.
pub trait BoundValue: Copy + PartialOrd + Send + Sync + 'static {
    /// The value 0 stands for, where it turns an option off.
    const ZERO: Self;
    /// Reads the value from the command line.
    fn parse(text: &str) -> Result<Self, String>;
    /// Writes the value as a user would type it.
    fn show(self) -> String;
    /// The error for `value` outside `bounds`.
    fn out_of_range(bounds: Bounds<Self>, value: Self) -> ConfigError;
}

impl BoundValue for u64 {
    const ZERO: u64 = 0;
    fn parse(text: &str) -> Result<u64, String> {
        text.parse().map_err(|_| {
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                format!("{text} is too large")
            } else {
                format!("{text:?} is not a whole number")
            }
        })
    }
    fn show(self) -> String {
        self.to_string()
    }
    fn out_of_range(bounds: Bounds<u64>, value: u64) -> ConfigError {
        ConfigError::Number { bounds, value }
    }
}

impl BoundValue for Duration {
    const ZERO: Duration = Duration::ZERO;
    fn parse(text: &str) -> Result<Duration, String> {
        parse_duration(text)
    }
    fn show(self) -> String {
        show_duration(self)
    }
    fn out_of_range(bounds: Bounds<Duration>, value: Duration) -> ConfigError {
        ConfigError::Duration { bounds, value }
    }
}

impl<T: BoundValue> Bounds<T> {
    /// `option` accepts `min..=max` (and not 0, unless
    /// [`Bounds::or_zero_for_off`] says so).
    pub const fn new(option: &'static str, min: T, max: T) -> Bounds<T> {
        Bounds {
            option,
            min,
            max,
            zero_turns_off: false,
        }
    }

    /// The same bounds, with 0 accepted as "off".
    pub const fn or_zero_for_off(self) -> Bounds<T> {
        Bounds {
            zero_turns_off: true,
            ..self
        }
    }

    /// Whether the option accepts `value`.
    pub fn contains(&self, value: T) -> bool {
        (self.zero_turns_off && value == T::ZERO) || (self.min <= value && value <= self.max)
    }

    /// `Ok` when `value` is accepted, else the error naming the option.
    pub fn check(&self, value: T) -> Result<(), ConfigError> {
        if self.contains(value) {
            Ok(())
        } else {
            Err(T::out_of_range(*self, value))
        }
    }

    /// The clap value parser for the option: parse, then check the range,
    /// with the same sentence as [`Config::validate`].
    pub fn parser(self) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
        move |text| {
            let value = T::parse(text).map_err(|problem| format!("{problem}; {self}"))?;
            self.check(value).map_err(|_| self.to_string())?;
            Ok(value)
        }
    }
}

impl<T: BoundValue> fmt::Display for Bounds<T> {
    /// "--max-line must be between 1 and 1073741824", "--idle-timeout must
    /// be at most 87600h", "--tcp-keepalive must be 0 (off) or between 1s
    /// and 32767s".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (option, min, max) = (self.option, self.min.show(), self.max.show());
        if self.min == T::ZERO {
            write!(f, "{option} must be at most {max}")
        } else if self.zero_turns_off {
            write!(f, "{option} must be 0 (off) or between {min} and {max}")
        } else {
            write!(f, "{option} must be between {min} and {max}")
        }
    }
}

/// A [`Config`] field outside the range its option accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A count (connections, bytes) out of range.
    Number {
        /// What the option accepts.
        bounds: Bounds<u64>,
        /// What it was given.
        value: u64,
    },
    /// A duration out of range.
    Duration {
        /// What the option accepts.
        bounds: Bounds<Duration>,
        /// What it was given.
        value: Duration,
    },
    /// No `--listen` address: the server would serve nothing.
    NoListener,
    /// `--auth-file` for a protocol that authenticates no one
    /// (`Service::authenticates`): a token nobody checks.
    AuthUnused,
    /// A `tls` listener without this option (`--tls-cert` or `--tls-key`).
    TlsNeeds(&'static str),
    /// A TLS option given, and no listener with the `tls` option: the
    /// listeners (`plain`) would all serve in clear.
    TlsUnused {
        /// The TLS option given, as typed.
        option: &'static str,
        /// Every listener, as typed, none of which has the `tls` option.
        plain: Vec<String>,
    },
}

impl ConfigError {
    /// The option at fault, as typed on the command line.
    pub fn option(&self) -> &'static str {
        match self {
            ConfigError::Number { bounds, .. } => bounds.option,
            ConfigError::Duration { bounds, .. } => bounds.option,
            ConfigError::NoListener => "--listen",
            ConfigError::AuthUnused => "--auth-file",
            ConfigError::TlsNeeds(option) => option,
            ConfigError::TlsUnused { option, .. } => option,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Number { bounds, value } => write!(f, "{bounds}, not {value}"),
            ConfigError::Duration { bounds, value } => {
                write!(f, "{bounds}, not {}", show_duration(*value))
            }
            ConfigError::TlsNeeds(option) => {
                write!(f, "{option} is needed: a listener has the tls option")
            }
            ConfigError::TlsUnused { option, plain } => {
                let listeners = match plain.as_slice() {
                    [] => "the listeners systemd passed are plain".to_string(),
                    [one] => format!("--listen {one} has no tls option"),
                    many => format!(
                        "no --listen address has the tls option ({})",
                        many.join(", ")
                    ),
                };
                write!(
                    f,
                    "{option} is given, but {listeners}: it would serve in clear. \
                     Add ,tls to the listener that should use TLS (--listen HOST:PORT,tls)"
                )
            }
            ConfigError::NoListener => {
                write!(
                    f,
                    "--listen must be given at least once: there is nothing to serve"
                )
            }
            ConfigError::AuthUnused => write!(
                f,
                "--auth-file is given, but this server's protocol has no authentication: nobody would check the token"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a DUR: a number of seconds (`2`, `0.5`) or a number with a unit
/// (`500ms`, `2s`, `5m`, `1h`). Each option's [`bounds`] then say how long
/// it may be.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 2, 0.5, 500ms, 5m)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{text:?} is far too long"))
}

/// A duration in the largest DUR unit that shows it exactly: `87600h`,
/// `5m`, `30s`, `500ms`; seconds with a fraction otherwise.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        "0".to_string()
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}s", d.as_secs_f64())
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// An option a listener may carry after its address, comma-separated
/// (`0.0.0.0:9443,tls,proxy`). Adding one is adding a variant here; the
/// code that honours it asks [`ListenAddr::has`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerOption {
    /// TLS (needs `--tls-cert` and `--tls-key`, and the `tls` feature, on
    /// by default).
    Tls,
    /// A PROXY protocol header first, from a load balancer.
    Proxy,
}

impl ListenerOption {
    /// The options this build knows: `tls` needs the `tls` feature.
    #[cfg(feature = "tls")]
    pub const ALL: &'static [ListenerOption] = &[ListenerOption::Tls, ListenerOption::Proxy];
    /// See above: a build without the `tls` feature has `proxy` only.
    #[cfg(not(feature = "tls"))]
    pub const ALL: &'static [ListenerOption] = &[ListenerOption::Proxy];

    /// Its name, as written after the address.
    pub fn name(self) -> &'static str {
        match self {
            ListenerOption::Tls => "tls",
            ListenerOption::Proxy => "proxy",
        }
    }

    /// The option named `name`, if this build knows it.
    pub fn from_name(name: &str) -> Option<ListenerOption> {
        ListenerOption::ALL
            .iter()
            .copied()
            .find(|option| option.name() == name)
    }

    /// Every name this build knows, for messages: `tls, proxy`.
    fn known() -> String {
        let names: Vec<&str> = ListenerOption::ALL.iter().map(|o| o.name()).collect();
        names.join(", ")
    }
}

impl fmt::Display for ListenerOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `--listen` value: `HOST:PORT`, then listener options if any.
/// `"127.0.0.1:9000".parse()` and `SocketAddr::into()` both make one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// What to listen on: an address, or a name resolved at start.
    pub host: Host,
    /// The port; 0 lets the system pick a free one.
    pub port: u16,
    /// Each at most once, in the order given. Private, so that only
    /// parsing (which checks them) sets it.
    options: Vec<ListenerOption>,
}

/// The HOST of a [`ListenAddr`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 address, or an IPv6 one given in brackets.
    Ip(IpAddr),
    /// A host name, resolved when the server starts.
    Name(String),
}

impl ListenAddr {
    /// The listener options given, in order.
    pub fn options(&self) -> &[ListenerOption] {
        &self.options
    }

    /// Whether the listener option `option` was given.
    pub fn has(&self, option: ListenerOption) -> bool {
        self.options.contains(&option)
    }

    /// Every socket address this names, without duplicates, in the
    /// resolver's order. A host name is looked up now (the system
    /// resolver: /etc/hosts, then DNS); an IP address is used as it is.
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => (name.as_str(), self.port).to_socket_addrs()?.collect(),
        };
        // /etc/hosts may name an address twice (say, two lines for
        // localhost); binding it twice would fail with "address in use".
        let mut unique = Vec::with_capacity(found.len());
        for addr in found {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        if unique.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            ));
        }
        Ok(unique)
    }
}

impl From<SocketAddr> for ListenAddr {
    /// The address as it is, with no listener option. (An IPv6 scope id or
    /// flow label is not kept.)
    fn from(addr: SocketAddr) -> ListenAddr {
        ListenAddr {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
            options: Vec::new(),
        }
    }
}

impl fmt::Display for ListenAddr {
    /// The form it was given in: `127.0.0.1:9000`, `[::1]:9000`,
    /// `localhost:9000`, then `,OPTION` for each option.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port)?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port)?,
            Host::Name(name) => write!(f, "{name}:{}", self.port)?,
        }
        for option in &self.options {
            write!(f, ",{option}")?;
        }
        Ok(())
    }
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(text: &str) -> Result<ListenAddr, ListenAddrError> {
        let fail = |problem| ListenAddrError {
            value: text.to_string(),
            problem,
        };
        let mut parts = text.split(',');
        // `split` yields at least one part, maybe empty.
        let address = parts.next().unwrap_or_default();
        let (host, port) = parse_host_port(address).map_err(fail)?;
        let mut options = Vec::new();
        for name in parts {
            let Some(option) = ListenerOption::from_name(name) else {
                return Err(fail(ListenAddrProblem::UnknownOption(name.to_string())));
            };
            if options.contains(&option) {
                return Err(fail(ListenAddrProblem::RepeatedOption(option)));
            }
            options.push(option);
        }
        Ok(ListenAddr {
            host,
            port,
            options,
        })
    }
}

/// Splits `HOST:PORT` (`[IPv6]:PORT` for IPv6) and checks both halves.
fn parse_host_port(address: &str) -> Result<(Host, u16), ListenAddrProblem> {
    if let Some(bracketed) = address.strip_prefix('[') {
        let (ip, port) = bracketed
            .split_once("]:")
            .ok_or(ListenAddrProblem::MissingPort)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| ListenAddrProblem::BadIpv6)?;
        return Ok((Host::Ip(IpAddr::V6(ip)), parse_port(port)?));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or(ListenAddrProblem::MissingPort)?;
    let port = parse_port(port)?;
    if host.is_empty() {
        return Err(ListenAddrProblem::MissingHost);
    }
    if host.contains(':') {
        // `::1:9000`: which colon ends the address is anyone's guess.
        return Err(ListenAddrProblem::UnbracketedIpv6);
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Digits and dots mean an IPv4 address, never a host name: a typo
        // like 127.0.0.256 is reported, not sent to the resolver.
        let ip: Ipv4Addr = host.parse().map_err(|_| ListenAddrProblem::BadIpv4)?;
        return Ok((Host::Ip(IpAddr::V4(ip)), port));
    }
    if !is_host_name(host) {
        return Err(ListenAddrProblem::BadHostName);
    }
    Ok((Host::Name(host.to_string()), port))
}

fn parse_port(port: &str) -> Result<u16, ListenAddrProblem> {
    // `u16::from_str` alone would take "+80".
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ListenAddrProblem::BadPort);
    }
    port.parse().map_err(|_| ListenAddrProblem::BadPort)
}

/// A DNS name as resolvers take it: dot-separated labels of letters,
/// digits, `-` and `_`, each 1 to 63 bytes, not starting or ending with
/// `-`; at most 253 bytes in all. One trailing dot (fully qualified) is fine.
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A `--listen` value that is not of an accepted form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrError {
    /// The whole value, as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: ListenAddrProblem,
}

/// What is wrong with a `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddrProblem {
    /// Nothing before `:PORT`.
    MissingHost,
    /// No `:PORT`.
    MissingPort,
    /// A port that is not a number from 0 to 65535.
    BadPort,
    /// Digits and dots that make no IPv4 address.
    BadIpv4,
    /// Brackets around something that is no IPv6 address.
    BadIpv6,
    /// An IPv6 address without its brackets.
    UnbracketedIpv6,
    /// A host name with a character or a label length names cannot have.
    BadHostName,
    /// A listener option this build does not know (this one).
    UnknownOption(String),
    /// A listener option given twice.
    RepeatedOption(ListenerOption),
}

impl fmt::Display for ListenAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = &self.value;
        match &self.problem {
            ListenAddrProblem::MissingHost => write!(
                f,
                "{value:?} has no HOST before its :PORT (0.0.0.0 means every IPv4 address)"
            )?,
            ListenAddrProblem::MissingPort => write!(f, "{value:?} has no :PORT")?,
            ListenAddrProblem::BadPort => {
                write!(f, "the port in {value:?} is not a number from 0 to 65535")?
            }
            ListenAddrProblem::BadIpv4 => write!(f, "{value:?} holds no valid IPv4 address")?,
            ListenAddrProblem::BadIpv6 => {
                write!(f, "{value:?} holds no valid IPv6 address in its brackets")?
            }
            ListenAddrProblem::UnbracketedIpv6 => {
                write!(f, "the IPv6 address in {value:?} must be in brackets")?
            }
            ListenAddrProblem::BadHostName => write!(f, "{value:?} holds no valid host name")?,
            ListenAddrProblem::UnknownOption(name) => {
                return write!(
                    f,
                    "unknown listener option {name:?} in {value:?} (known: {})",
                    ListenerOption::known()
                );
            }
            ListenAddrProblem::RepeatedOption(option) => {
                return write!(
                    f,
                    "listener option {:?} is given twice in {value:?}",
                    option.name()
                );
            }
        }
        // A malformed address: show every form that works.
        write!(
            f,
            "; use HOST:PORT with HOST an IPv4 address, [IPv6] or a host name, \
             e.g. 127.0.0.1:9000, [::1]:9000, localhost:9000"
        )
    }
}

impl std::error::Error for ListenAddrError {}

/// The `--auth-file` token, as read from its file.
#[derive(Debug)]
pub struct TokenFile {
    /// The token: the file's first line, without its line end.
    pub token: AuthToken,
    /// The file's mode lets users other than its owner read it (Unix: a
    /// group or other read bit). Worth a warning: the token is a password.
    pub readable_by_others: bool,
}

/// Why the token file gave no token. Its `Display` names neither the file
/// (the caller does) nor, ever, any byte of its content.
#[derive(Debug)]
pub enum TokenFileError {
    /// It could not be read, or is not a regular file.
    File(FileError),
    /// Its first line is empty.
    Empty,
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenFileError::File(e) => write!(f, "{e}"),
            TokenFileError::Empty => f.write_str("its first line is empty: no token"),
        }
    }
}

impl std::error::Error for TokenFileError {}

/// The longest first line read from a token file. A longer token could not
/// be sent anyway (an `AUTH` line is capped by `--max-line`), and a huge
/// file named by mistake is not read whole.
const TOKEN_FILE_MAX_LINE: u64 = 64 * 1024;

/// Reads the token of `--auth-file`: the file's first line, without its
/// LF or CRLF. At start (an error stops the server) and on SIGHUP (an error
/// keeps the old token). Only a regular file is read, and without blocking
/// (see [`crate::files`]): a FIFO fails the read at once.
pub fn read_token_file(path: &Path) -> Result<TokenFile, TokenFileError> {
    let contents = files::read_regular(path, TOKEN_FILE_MAX_LINE).map_err(TokenFileError::File)?;
    let first = &contents.bytes;
    let line = match memchr::memchr(b'\n', first) {
        Some(lf) => &first[..lf],
        None => &first[..],
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let token = AuthToken::new(line).ok_or(TokenFileError::Empty)?;
    Ok(TokenFile {
        token,
        readable_by_others: files::readable_by_others(&contents.metadata),
    })
}

/// The config layer derives the limits; the connection layer, which
/// enforces them, defines them (a lower layer never imports a higher one).
impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Limits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        // The bounds keep every count far below usize::MAX on 64-bit
        // machines; a 32-bit one saturates instead of wrapping.
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Limits {
            max_line: bytes(config.max_line),
            max_output: bytes(config.max_output),
            max_memory: bytes(config.max_memory),
            idle_timeout: nonzero(config.idle_timeout),
            write_timeout: nonzero(config.write_timeout),
            tcp_keepalive: nonzero(config.tcp_keepalive),
            linger: LINGER_TIMEOUT,
            handshake_timeout: nonzero(config.handshake_timeout),
            // Validated: between 1 and 1024.
            loops: usize::try_from(config.threads).unwrap_or(1),
            // The server sets the service's own bound (`Service::longest_response`).
            longest_response: crate::limits::echoing_response(bytes(config.max_line)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_forms() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(parse_duration("2"), Ok(ms(2000)));
        assert_eq!(parse_duration("0.5"), Ok(ms(500)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        for bad in [
            "",
            "s",
            "-1",
            "2x",
            "1e3",
            "abc",
            "2 s s",
            "inf",
            &"9".repeat(400),
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_show_in_the_largest_exact_unit() {
        assert_eq!(show_duration(MAX_DURATION), "87600h");
        assert_eq!(show_duration(Duration::from_secs(300)), "5m");
        assert_eq!(show_duration(Duration::from_secs(32767)), "32767s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_micros(1500)), "0.0015s");
        assert_eq!(show_duration(Duration::ZERO), "0");
        // Every shown value reads back as itself.
        for d in [
            MAX_DURATION,
            Duration::from_millis(1500),
            Duration::from_secs(60),
        ] {
            assert_eq!(parse_duration(&show_duration(d)), Ok(d));
        }
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.listen, vec!["127.0.0.1:9000".parse().unwrap()]);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_line, 1024);
        assert_eq!(c.max_output, 1_048_576);
        assert_eq!(c.max_memory, 268_435_456);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.tcp_keepalive, Duration::from_secs(300));
        assert_eq!(c.max_connections_per_ip, 0);
        assert_eq!(c.auth_file, None);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn listen_repeats_and_takes_ipv6_and_names() {
        let c = Config::try_parse_from([
            "loopline",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--listen",
            "localhost:9000",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 3);
        assert_eq!(c.listen[1].host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(c.listen[2].host, Host::Name("localhost".into()));
        assert_eq!(c.listen[2].port, 9000);
    }

    #[test]
    fn listen_addr_display_round_trips() {
        for text in [
            "127.0.0.1:9000",
            "[::1]:0",
            "[fe80::1]:65535",
            "localhost:9000",
            "db-1.example.org.:80",
        ] {
            let addr: ListenAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
            assert!(addr.options().is_empty());
        }
        let socket: SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(ListenAddr::from(socket).to_string(), "[::1]:9000");
        assert_eq!(ListenAddr::from(socket).resolve().unwrap(), vec![socket]);
    }

    #[test]
    fn malformed_listen_values_name_their_problem_and_the_forms() {
        use ListenAddrProblem::*;
        for (text, problem) in [
            ("localhost", MissingPort),
            ("", MissingPort),
            ("[::1]", MissingPort),
            ("127.0.0.1:", BadPort),
            ("127.0.0.1:70000", BadPort),
            ("127.0.0.1:+80", BadPort),
            ("127.0.0.256:80", BadIpv4),
            ("1.2.3:80", BadIpv4),
            ("[::g]:80", BadIpv6),
            ("[127.0.0.1]:80", BadIpv6),
            ("::1:80", UnbracketedIpv6),
            (":80", MissingHost),
            ("-bad:80", BadHostName),
            ("a..b:80", BadHostName),
            ("sp ace:80", BadHostName),
        ] {
            let err = text.parse::<ListenAddr>().unwrap_err();
            assert_eq!(err.problem, problem, "{text:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("{text:?}")), "{message}");
            assert!(message.contains("HOST:PORT"), "{message}");
            assert!(message.contains("[::1]:9000"), "{message}");
        }
    }

    #[test]
    fn metrics_listen_takes_one_address_and_the_tls_option_only() {
        let c = Config::try_parse_from(["loopline", "--metrics-listen", "[::1]:9100"]).unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        assert_eq!(Config::default().metrics_listen, None);
        if cfg!(feature = "tls") {
            let c = Config::try_parse_from(["loopline", "--metrics-listen", "127.0.0.1:9100,tls"])
                .unwrap();
            assert!(c.serves_tls());
            assert_eq!(
                c.validate(),
                Err(ConfigError::TlsNeeds("--tls-cert")),
                "an HTTPS endpoint needs the certificate"
            );
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:9100,proxy",
            "127.0.0.1:9100,tls,proxy",
        ] {
            let err = Config::try_parse_from(["loopline", "--metrics-listen", bad]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("--metrics-listen"), "{err}");
        }
    }

    #[test]
    fn unknown_listener_options_are_rejected() {
        let unknown: &[&str] = if cfg!(feature = "tls") {
            &[
                "0.0.0.0:9443,tls,proxyy",
                "127.0.0.1:0,",
                "127.0.0.1:0,TLS",
                "127.0.0.1:0,PROXY",
            ]
        } else {
            &["0.0.0.0:9443,tls", "127.0.0.1:0,", "127.0.0.1:0,PROXY"]
        };
        for &text in unknown {
            let err = text.parse::<ListenAddr>().unwrap_err();
            assert!(
                matches!(err.problem, ListenAddrProblem::UnknownOption(_)),
                "{text:?}: {err:?}"
            );
            assert!(err.to_string().contains("unknown listener option"), "{err}");
        }
    }

    #[test]
    fn localhost_resolves_to_loopback_addresses_without_duplicates() {
        let addrs = "localhost:9000"
            .parse::<ListenAddr>()
            .unwrap()
            .resolve()
            .unwrap();
        assert!(
            addrs.iter().any(|a| a.ip() == Ipv4Addr::LOCALHOST),
            "{addrs:?}"
        );
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9000));
        for (i, a) in addrs.iter().enumerate() {
            assert!(!addrs[i + 1..].contains(a), "{a} twice in {addrs:?}");
        }
    }

    #[test]
    fn zero_timeouts_turn_timers_off() {
        let c = Config::try_parse_from([
            "loopline",
            "--idle-timeout",
            "0",
            "--write-timeout",
            "0s",
            "--tcp-keepalive",
            "0",
        ])
        .unwrap();
        let limits = Limits::from_config(&c);
        assert_eq!(limits.idle_timeout, None);
        assert_eq!(limits.write_timeout, None);
        assert_eq!(limits.tcp_keepalive, None);
    }

    #[test]
    fn new_options_reach_the_limits() {
        let c =
            Config::try_parse_from(["loopline", "--max-memory", "65536", "--tcp-keepalive", "2m"])
                .unwrap();
        let limits = Limits::from_config(&c);
        assert_eq!(limits.max_memory, 65536);
        assert_eq!(limits.tcp_keepalive, Some(Duration::from_secs(120)));
    }

    #[test]
    fn range_messages_read_as_sentences() {
        assert_eq!(
            bounds::MAX_CONNECTIONS.to_string(),
            "--max-connections must be between 1 and 1000000"
        );
        assert_eq!(
            bounds::MAX_LINE.to_string(),
            "--max-line must be between 1 and 1073741824"
        );
        assert_eq!(
            bounds::MAX_MEMORY.to_string(),
            "--max-memory must be between 1024 and 1099511627776"
        );
        assert_eq!(
            bounds::IDLE_TIMEOUT.to_string(),
            "--idle-timeout must be at most 87600h"
        );
        assert_eq!(
            bounds::TCP_KEEPALIVE.to_string(),
            "--tcp-keepalive must be 0 (off) or between 1s and 32767s"
        );
    }

    #[test]
    fn the_token_is_the_first_line_without_its_line_end() {
        let path = std::env::temp_dir().join(format!("loopline-token-{}", std::process::id()));
        let token = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            read_token_file(&path).map(|file| file.token)
        };
        let is = |content: &[u8], want: &[u8]| {
            let token = token(content).unwrap();
            assert!(token.matches(want), "{content:?}");
            assert!(!token.matches(content), "{content:?}");
        };
        is(b"s3cret\n", b"s3cret");
        is(b"s3cret\r\nsecond line\n", b"s3cret");
        assert!(token(b"s3cret").unwrap().matches(b"s3cret"));
        // Only one CR before the LF is a line end; spaces are kept.
        is(b"s3cret\r\r\n", b"s3cret\r");
        is(b" s3cret \n", b" s3cret ");
        for empty in [&b""[..], b"\n", b"\r\n", b"\nsecond line\n"] {
            assert!(
                matches!(token(empty), Err(TokenFileError::Empty)),
                "{empty:?}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_token_file(&path),
            Err(TokenFileError::File(_))
        ));
        assert_eq!(
            bounds::MAX_CONNECTIONS_PER_IP.to_string(),
            "--max-connections-per-ip must be 0 (off) or between 1 and 1000000"
        );
    }

    #[test]
    fn bounds_accept_their_ends_and_nothing_past_them() {
        let b = bounds::MAX_CONNECTIONS;
        assert!(!b.contains(0) && b.contains(1) && b.contains(1_000_000));
        assert!(!b.contains(1_000_001));
        let k = bounds::TCP_KEEPALIVE;
        assert!(k.contains(Duration::ZERO) && k.contains(Duration::from_secs(1)));
        assert!(!k.contains(Duration::from_millis(500)));
        assert!(!k.contains(Duration::from_secs(32768)));
        let i = bounds::IDLE_TIMEOUT;
        assert!(i.contains(Duration::ZERO) && i.contains(MAX_DURATION));
        assert!(!i.contains(MAX_DURATION + Duration::from_nanos(1)));
    }

    #[test]
    fn clap_and_validate_give_the_same_sentence() {
        let err = Config::try_parse_from(["loopline", "--max-connections", "1000001"])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&bounds::MAX_CONNECTIONS.to_string()), "{err}");
        let c = Config {
            max_connections: 1_000_001,
            ..Config::default()
        };
        let invalid = c.validate().unwrap_err();
        assert_eq!(
            invalid.to_string(),
            "--max-connections must be between 1 and 1000000, not 1000001"
        );
    }

    #[test]
    fn validate_catches_each_bad_field_of_a_hand_built_config() {
        let ok = Config::default();
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    listen: Vec::new(),
                    ..ok.clone()
                },
                "--listen",
            ),
            (
                Config {
                    max_connections: u64::MAX,
                    ..ok.clone()
                },
                "--max-connections",
            ),
            (
                Config {
                    max_connections: 0,
                    ..ok.clone()
                },
                "--max-connections",
            ),
            (
                Config {
                    threads: 0,
                    ..ok.clone()
                },
                "--threads",
            ),
            (
                Config {
                    max_line: u64::MAX,
                    ..ok.clone()
                },
                "--max-line",
            ),
            (
                Config {
                    max_output: 0,
                    ..ok.clone()
                },
                "--max-output",
            ),
            (
                Config {
                    max_memory: u64::MAX,
                    ..ok.clone()
                },
                "--max-memory",
            ),
            (
                Config {
                    idle_timeout: Duration::MAX,
                    ..ok.clone()
                },
                "--idle-timeout",
            ),
            (
                Config {
                    write_timeout: Duration::MAX,
                    ..ok.clone()
                },
                "--write-timeout",
            ),
            (
                Config {
                    shutdown_timeout: Duration::MAX,
                    ..ok.clone()
                },
                "--shutdown-timeout",
            ),
            (
                Config {
                    tcp_keepalive: Duration::from_millis(500),
                    ..ok.clone()
                },
                "--tcp-keepalive",
            ),
        ];
        for (config, option) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.option(), option, "{err}");
            assert!(err.to_string().starts_with(option), "{err}");
        }
    }

    #[test]
    fn server_bind_refuses_an_invalid_config_before_binding() {
        // Bound by hand, Duration::MAX would panic at the first deadline.
        let config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            idle_timeout: Duration::MAX,
            ..Config::default()
        };
        match crate::Server::bind(config, crate::protocol::Loopline) {
            Err(crate::StartError::Config(e)) => assert_eq!(e.option(), "--idle-timeout"),
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("bound a server with an idle timeout of Duration::MAX"),
        }
    }

    #[test]
    fn the_proxy_option_is_parsed_alone_or_with_tls() {
        let listen: ListenAddr = "127.0.0.1:9001,proxy".parse().unwrap();
        assert!(listen.has(ListenerOption::Proxy));
        assert_eq!(listen.to_string(), "127.0.0.1:9001,proxy");
        let twice = "127.0.0.1:9001,proxy,proxy".parse::<ListenAddr>();
        assert!(matches!(
            twice.unwrap_err().problem,
            ListenAddrProblem::RepeatedOption(ListenerOption::Proxy)
        ));
        #[cfg(feature = "tls")]
        {
            let both: ListenAddr = "0.0.0.0:9443,tls,proxy".parse().unwrap();
            assert!(both.has(ListenerOption::Tls) && both.has(ListenerOption::Proxy));
            assert_eq!(both.options(), [ListenerOption::Tls, ListenerOption::Proxy]);
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_listener_is_parsed_and_needs_a_certificate_and_a_key() {
        let listen: ListenAddr = "127.0.0.1:9443,tls".parse().unwrap();
        assert!(listen.has(ListenerOption::Tls));
        assert_eq!(listen.to_string(), "127.0.0.1:9443,tls");
        let config = Config {
            listen: vec![listen],
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().option(), "--tls-cert");
        let config = Config {
            tls_cert: Some("cert.pem".into()),
            ..config
        };
        assert_eq!(config.validate().unwrap_err().option(), "--tls-key");
        let config = Config {
            tls_key: Some("key.pem".into()),
            ..config
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["loopline", "--max-line", "0"][..],
            &["loopline", "--max-connections", "-3"],
            &["loopline", "--max-memory", "1023"],
            &["loopline", "--idle-timeout", "soon"],
            &["loopline", "--idle-timeout", "87601h"],
            &["loopline", "--tcp-keepalive", "10h"],
            &["loopline", "--max-connections-per-ip", "1000001"],
            &["loopline", "--max-connections-per-ip", "-1"],
            &["loopline", "--listen", "localhost"],
            &["loopline", "--listen", "127.0.0.1:0,proxyy"],
            &["loopline", "--ipv6-prefix", "0"],
            &["loopline", "--ipv6-prefix", "129"],
            &["loopline", "--max-connection-rate-per-ip", "65536"],
            &["loopline", "--max-auth-failures-per-ip", "x"],
            &["loopline", "--proxy-from", "10.0.0.1/8"],
            &["loopline", "--proxy-from", "10.0.0.0/8,nonsense"],
            &["loopline", "--tls-min-version", "1.1"],
            &["loopline", "--nope"],
        ] {
            let err = Config::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            // Clap names the option of a bad value (a value it takes for
            // an unknown argument, like -3, it names as such).
            let message = err.to_string();
            assert!(
                message.contains(args[1]) || message.contains(args[2]),
                "{message}"
            );
        }
    }

    /// A program of its own: its name, about and one option, with every
    /// engine option added; both parsed from one command line.
    #[derive(Debug, clap::Parser)]
    #[command(
        name = "shout",
        about = "Answers in capitals",
        after_help = "Example:\n  shout"
    )]
    struct ShoutArgs {
        /// Exclamation marks to add.
        #[arg(long, default_value_t = 1)]
        bangs: usize,
    }

    #[test]
    fn a_program_adds_its_own_options_to_the_engines() {
        let parsed = Options::<ShoutArgs>::try_parse_from([
            "shout",
            "--bangs",
            "3",
            "--max-line",
            "100",
            "--listen",
            "127.0.0.1:7000",
        ])
        .unwrap();
        assert_eq!(parsed.service.bangs, 3);
        assert_eq!(parsed.config.max_line, 100);
        assert!(!parsed.listen_is_default);
        let command = command::<ShoutArgs>();
        assert_eq!(command.get_name(), "shout");
        assert_eq!(
            command.get_about().map(ToString::to_string).as_deref(),
            Some("Answers in capitals")
        );
        let after = command
            .get_after_help()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            after.starts_with("DUR is"),
            "the engine's notes first: {after}"
        );
        assert!(
            after.ends_with("Example:\n  shout"),
            "then the program's: {after}"
        );
        // An option of either is a usage error when its value is bad.
        for args in [["shout", "--bangs", "x"], ["shout", "--max-line", "0"]] {
            let err = Options::<ShoutArgs>::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn the_new_operator_options_parse_with_their_defaults() {
        let c = Config::default();
        assert_eq!(c.ipv6_prefix, 64);
        assert_eq!(c.max_connection_rate_per_ip, 0);
        assert_eq!(c.max_auth_failures_per_ip, 10);
        assert_eq!(c.tls_min_version, TlsVersion::V1_2);
        assert!(c.proxy_from.is_empty());
        let c = Config::try_parse_from([
            "loopline",
            "--proxy-from",
            "10.0.0.0/8,::1",
            "--proxy-from",
            "192.0.2.7",
            "--ipv6-prefix",
            "48",
            "--tls-min-version",
            "1.3",
        ])
        .unwrap();
        let ranges: Vec<String> = c.proxy_from.iter().map(ToString::to_string).collect();
        assert_eq!(ranges, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
        assert_eq!(c.ipv6_prefix, 48);
        assert_eq!(c.tls_min_version, TlsVersion::V1_3);
    }

    /// An operator who sets the certificate and forgets `,tls` would serve
    /// tokens in clear: a usage error naming the plain listener.
    #[test]
    fn tls_files_without_a_tls_listener_are_a_usage_error() {
        let c = Config::try_parse_from([
            "loopline",
            "--listen",
            "0.0.0.0:9000",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ])
        .unwrap();
        let err = c.validate().unwrap_err();
        assert_eq!(err.option(), "--tls-cert");
        let message = err.to_string();
        assert!(
            message.contains("--listen 0.0.0.0:9000 has no tls option"),
            "{message}"
        );
        assert!(message.contains(",tls"), "{message}");
        let ocsp_only = Config {
            tls_ocsp: Some("ocsp.der".into()),
            ..Config::default()
        };
        assert_eq!(ocsp_only.validate().unwrap_err().option(), "--tls-ocsp");
    }
}
