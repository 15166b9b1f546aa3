//! The command line: the options, their checks, and the [`Workload`] built
//! from them, which is all the modes read. Durations are parsed by the
//! server's own parser (`loopline::config::parse_duration`), so `500ms`,
//! `2s` and `5m` mean the same to both programs.

use crate::link::ClientTls;
use crate::template::{self, Template};
use clap::{Parser, ValueEnum};
use loopline::config::parse_duration;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Longest error prefix compared at the start of each response line; longer
/// `--error-prefix` values are cut to it.
pub const ERROR_PREFIX_MAX: usize = 8;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Pipelined request/response load; reports responses/s and latency.
    Load,
    /// Open N idle connections and hold them; reports server RSS per connection.
    Hold,
    /// Connect, greeting, QUIT, reply, close, in a loop; reports connections/s.
    Churn,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LineEnding {
    /// `\r\n`
    Crlf,
    /// `\n`
    Lf,
}

/// The TLS versions the client offers (`--tls-version`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsVersion {
    /// TLS 1.3 and 1.2: the server picks (1.3 where it has it).
    Auto,
    /// TLS 1.2 only (to measure its resumption: session ID or RFC 5077 ticket).
    #[value(name = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    V1_3,
}

impl TlsVersion {
    /// As the option spells it, for the result lines.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Auto => "auto",
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loopline-bench",
    version,
    about = "Load generator for one-line-request/one-line-response TCP protocols (loopline, Redis inline commands)"
)]
pub struct Args {
    /// Server address HOST:PORT (loopback only unless --allow-non-loopback).
    #[arg(
        long = "addr",
        visible_alias = "host",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9000"
    )]
    pub addr: String,

    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    pub mode: Mode,

    /// Connections (load, hold) or concurrent connect/close slots (churn).
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,

    /// Requests in flight per connection (load mode).
    #[arg(
        short = 'P',
        long = "pipeline",
        value_name = "DEPTH",
        default_value_t = 1
    )]
    pub pipeline: usize,

    /// Measured time after the warm-up (seconds, or with a unit: 500ms, 2s, 1m).
    #[arg(short = 'd', long, value_parser = parse_duration, value_name = "SECS", default_value = "10")]
    pub duration: Duration,

    /// Time run before measuring starts (not counted).
    #[arg(long, value_parser = parse_duration, value_name = "SECS", default_value = "1")]
    pub warmup: Duration,

    /// The request line. Escapes \r \n \t \0 \\ \xHH are understood; if it does
    /// not end with a line feed, the --eol ending is appended. Default: `PING\r\n`
    /// in load mode, `QUIT\r\n` in churn mode. In load mode `{key}` stands
    /// for a key index drawn uniformly from 0..N (--keys) per request,
    /// zero-padded to the width of N-1, and `{value}` for --value-size
    /// bytes of `v`: e.g. 'SET key:{key} {value}'.
    #[arg(long, value_name = "BYTES")]
    pub request: Option<String>,

    /// Load mode: how many keys `{key}` is drawn from (0..N), and how many
    /// --preload runs over.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub keys: u64,

    /// Bytes of the value `{value}` stands for in --request and --preload
    /// (all `v`, so a value holds no line feed).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub value_size: usize,

    /// Load mode: a request sent once for every key 0..N-1 (--keys), in
    /// order, pipelined, once the connections are open and before the
    /// warm-up (not measured), e.g. 'SET key:{key} {value}' so that every
    /// GET finds its key. Escapes and line ending as for --request.
    #[arg(long, value_name = "BYTES")]
    pub preload: Option<String>,

    /// Lines in one response to a --preload request.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub preload_lines_per_response: usize,

    /// Give up a --preload that takes longer than this (connections with
    /// preload requests still unanswered are closed and count as errors).
    #[arg(long, value_parser = parse_duration, value_name = "SECS", default_value = "120")]
    pub preload_timeout: Duration,

    /// Append this many `x` bytes to the request, before its line ending
    /// (e.g. --request 'ECHO ' --payload 512).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub payload: usize,

    /// Line ending appended to a --request that has none.
    #[arg(long, value_enum, default_value_t = LineEnding::Crlf)]
    pub eol: LineEnding,

    /// Lines the server sends on connect, skipped before requests start
    /// (1 for loopline's READY, 0 for Redis).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub skip_greeting: usize,

    /// Lines in one response (Redis answers inline ECHO with 2: `$N` and the data).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub lines_per_response: usize,

    /// Event-loop threads (load, churn); connections are shared out evenly.
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,

    /// Hold mode: how long to hold the connections once all are open
    /// (default: until stdin closes, or a signal ends the process).
    #[arg(long, value_parser = parse_duration, value_name = "SECS")]
    pub hold: Option<Duration>,

    /// Server process to watch: VmRSS (hold mode) and utime+stime per
    /// response or connection (load, churn), read from /proc (Linux only).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Spread connections over this many source addresses 127.0.0.1..N from
    /// the start (more are added on their own when ports run out).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub source_ips: usize,

    /// Connection attempts in progress at once (connect + greeting).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub connect_window: usize,

    /// Give up opening connections after this long (load, hold).
    #[arg(long, value_parser = parse_duration, value_name = "SECS", default_value = "30")]
    pub connect_timeout: Duration,

    /// Churn mode: a cycle that takes longer than this counts as an error.
    #[arg(long, value_parser = parse_duration, value_name = "SECS", default_value = "5")]
    pub op_timeout: Duration,

    /// Churn mode: close right after the reply instead of waiting for the
    /// server to close first (leaves TIME_WAIT sockets on the client side).
    #[arg(long)]
    pub close_first: bool,

    /// Response lines starting with one of these (comma separated) count as
    /// errors. Empty string turns the check off.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "ERR,-ERR"
    )]
    pub error_prefix: Vec<String>,

    /// At the end, close connections with an RST (SO_LINGER 0) instead of a
    /// FIN, so no TIME_WAIT sockets pile up on the client side between runs.
    #[arg(long)]
    pub close_rst: bool,

    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// Speak TLS (every mode): each connection makes a full handshake (no
    /// session resumption, unless --tls-resume) before its greeting and
    /// requests. Needs --tls-ca.
    #[arg(long)]
    pub tls: bool,

    /// Churn mode over TLS: each slot keeps the session of its previous
    /// connection (TLS 1.3 tickets; TLS 1.2 session ID or ticket) and offers
    /// it on its next connect, so cycles after a slot's first are resumed
    /// handshakes. The result counts the handshakes that really resumed; if
    /// fewer than 90% did, it says so on stderr, sets `resume_shortfall`
    /// and exits with failure.
    #[arg(long, requires = "tls")]
    pub tls_resume: bool,

    /// TLS versions to offer (with --tls): auto (1.3 and 1.2), 1.2 or 1.3.
    #[arg(
        long,
        value_enum,
        value_name = "VERSION",
        default_value_t = TlsVersion::Auto,
        requires = "tls"
    )]
    pub tls_version: TlsVersion,

    /// The CA certificate(s) to trust, as a PEM file (with --tls).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,

    /// The name the server's certificate must carry (with --tls).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls"
    )]
    pub tls_name: String,
}

/// What every mode needs to know, checked and in the form the event loops
/// use. Built once by [`Workload::from_args`] and shared read-only.
#[derive(Debug)]
pub struct Workload {
    pub mode: Mode,
    pub target: SocketAddr,
    /// One complete request, line ending included (for a keyed request,
    /// the one for key 0).
    pub request: Vec<u8>,
    /// The request with its `{key}` and `{value}` placeholders resolved
    /// (load mode renders one per request when it has a key).
    pub request_template: Template,
    /// Keys `{key}` is drawn from: 0..keys.
    pub keys: u64,
    /// `--preload`: sent once per key before the warm-up (load mode).
    pub preload: Option<Template>,
    pub preload_lines_per_response: usize,
    pub preload_timeout: Duration,
    /// Connections (load, hold) or concurrent connect/close slots (churn).
    pub connections: usize,
    pub threads: usize,
    /// Requests kept in flight on each connection (load).
    pub pipeline_depth: usize,
    /// Lines the server sends on connect, before any response.
    pub greeting_lines: usize,
    pub lines_per_response: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Hold mode: how long to hold; `None` holds until stdin closes.
    pub hold: Option<Duration>,
    pub server_pid: Option<u32>,
    /// Response lines starting with one of these count as errors; each is
    /// at most [`ERROR_PREFIX_MAX`] bytes.
    pub error_prefixes: Vec<Vec<u8>>,
    pub connect_window: usize,
    pub connect_timeout: Duration,
    /// Churn mode: a cycle that takes longer counts as an error.
    pub cycle_timeout: Duration,
    pub close_first: bool,
    pub close_with_reset: bool,
    pub source_ips: usize,
    /// With `--tls`: the settings every connection's TLS session shares
    /// (with `--tls-resume`, each churn slot gets its own copy holding its
    /// own session cache: [`ClientTls::for_one_client`]).
    pub tls: Option<ClientTls>,
    /// `--tls-resume`: churn slots resume their previous session.
    pub tls_resume: bool,
    pub tls_version: TlsVersion,
}

/// A command line that cannot run: the message names the option.
#[derive(Debug)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Workload {
    pub fn from_args(args: &Args) -> Result<Workload, UsageError> {
        let usage = |msg: String| Err(UsageError(msg));
        let target = match args.addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            Ok(None) => return usage(format!("--addr {}: no address", args.addr)),
            Err(e) => return usage(format!("--addr {}: {e}", args.addr)),
        };
        if !target.ip().is_loopback() && !args.allow_non_loopback {
            return usage(format!(
                "--addr {target} is not a loopback address (pass --allow-non-loopback to allow it)"
            ));
        }
        for (name, value) in [
            ("--pipeline", args.pipeline),
            ("--lines-per-response", args.lines_per_response),
            ("--threads", args.threads),
            ("--connect-window", args.connect_window),
            (
                "--preload-lines-per-response",
                args.preload_lines_per_response,
            ),
        ] {
            if value == 0 {
                return usage(format!("{name} must be at least 1"));
            }
        }
        let default_request = match args.mode {
            Mode::Churn => "QUIT\\r\\n",
            Mode::Load | Mode::Hold => "PING\\r\\n",
        };
        if args.keys == 0 {
            return usage("--keys must be at least 1".into());
        }
        let request_template = Template::new(
            &build_request(
                args.request.as_deref().unwrap_or(default_request),
                args.payload,
                args.eol,
            ),
            args.keys,
            args.value_size,
        );
        if request_template.is_keyed() && args.mode != Mode::Load {
            return usage(format!(
                "--request with {}: load mode only",
                String::from_utf8_lossy(template::KEY)
            ));
        }
        if args.preload.is_some() && args.mode != Mode::Load {
            return usage("--preload applies to --mode load only".into());
        }
        let preload = args
            .preload
            .as_deref()
            .map(|raw| Template::new(&build_request(raw, 0, args.eol), args.keys, args.value_size));
        let error_prefixes = args
            .error_prefix
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let mut bytes = unescape(p);
                bytes.truncate(ERROR_PREFIX_MAX);
                bytes
            })
            .collect();
        if args.tls_resume && args.mode != Mode::Churn {
            return usage(
                "--tls-resume applies to --mode churn only (the other modes connect once)".into(),
            );
        }
        let tls = tls_settings(args)?;
        Ok(Workload {
            mode: args.mode,
            target,
            request: request_template.base().to_vec(),
            request_template,
            keys: args.keys,
            preload,
            preload_lines_per_response: args.preload_lines_per_response,
            preload_timeout: args.preload_timeout,
            connections: args.connections,
            // More threads than connections would leave threads with nothing.
            threads: args.threads.clamp(1, args.connections.max(1)),
            pipeline_depth: args.pipeline,
            greeting_lines: args.skip_greeting,
            lines_per_response: args.lines_per_response,
            warmup: args.warmup,
            duration: args.duration,
            hold: args.hold,
            server_pid: args.server_pid,
            error_prefixes,
            connect_window: args.connect_window,
            connect_timeout: args.connect_timeout,
            cycle_timeout: args.op_timeout,
            close_first: args.close_first,
            close_with_reset: args.close_rst,
            source_ips: args.source_ips,
            tls,
            tls_resume: args.tls_resume,
            tls_version: args.tls_version,
        })
    }
}

/// The TLS settings `--tls`, `--tls-ca`, `--tls-name`, `--tls-version`
/// and `--tls-resume` ask for.
#[cfg(feature = "tls")]
fn tls_settings(args: &Args) -> Result<Option<ClientTls>, UsageError> {
    if !args.tls {
        return Ok(None);
    }
    let Some(ca_file) = &args.tls_ca else {
        return Err(UsageError(
            "--tls needs --tls-ca FILE (the CA to trust)".into(),
        ));
    };
    ClientTls::new(ca_file, &args.tls_name, args.tls_version, args.tls_resume)
        .map(Some)
        .map_err(|e| UsageError(e.to_string()))
}

/// Built without the `tls` feature: `--tls` is refused.
#[cfg(not(feature = "tls"))]
fn tls_settings(args: &Args) -> Result<Option<ClientTls>, UsageError> {
    if args.tls {
        return Err(UsageError(
            "--tls: this loopline-bench was built without TLS (feature `tls`)".into(),
        ));
    }
    Ok(None)
}

/// Turns `\r`, `\n`, `\t`, `\0`, `\\` and `\xHH` into bytes; any other
/// backslash stays as it is.
pub fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'x' if i + 3 < b.len() => match (hex(b[i + 2]), hex(b[i + 3])) {
                    (Some(high), Some(low)) => {
                        // Two hex digits: at most 0xff, so the cast is exact.
                        out.push((high * 16 + low) as u8);
                        i += 4;
                        continue;
                    }
                    _ => out.extend_from_slice(&b[i..i + 2]),
                },
                _ => out.extend_from_slice(&b[i..i + 2]),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The request as sent: `raw` unescaped, `payload` bytes of `x` before its
/// line ending, and `eol` appended when `raw` has no line ending of its own.
pub fn build_request(raw: &str, payload: usize, eol: LineEnding) -> Vec<u8> {
    let mut request = unescape(raw);
    let ending: &[u8] = if request.ends_with(b"\r\n") {
        request.truncate(request.len() - 2);
        b"\r\n"
    } else if request.ends_with(b"\n") {
        request.truncate(request.len() - 1);
        b"\n"
    } else {
        match eol {
            LineEnding::Crlf => b"\r\n",
            LineEnding::Lf => b"\n",
        }
    };
    request.resize(request.len() + payload, b'x');
    request.extend_from_slice(ending);
    request
}

/// The first 40 bytes of `bytes`, printable, for the start-up line.
pub fn show_bytes(bytes: &[u8]) -> String {
    let mut shown = String::new();
    for &c in bytes.iter().take(40) {
        match c {
            b'\r' => shown.push_str("\\r"),
            b'\n' => shown.push_str("\\n"),
            0x20..=0x7e => shown.push(c as char),
            _ => shown.push_str(&format!("\\x{c:02x}")),
        }
    }
    if bytes.len() > 40 {
        shown.push_str(&format!("...({} bytes)", bytes.len()));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_their_line_ending_and_payload() {
        assert_eq!(build_request("PING\\r\\n", 0, LineEnding::Lf), b"PING\r\n");
        assert_eq!(build_request("PING", 0, LineEnding::Lf), b"PING\n");
        assert_eq!(build_request("PING", 0, LineEnding::Crlf), b"PING\r\n");
        assert_eq!(build_request("ECHO ", 3, LineEnding::Lf), b"ECHO xxx\n");
        assert_eq!(build_request("ECHO \\n", 2, LineEnding::Crlf), b"ECHO xx\n");
    }

    #[test]
    fn escapes_are_understood_and_bad_ones_kept() {
        assert_eq!(unescape("a\\x41\\x4"), b"aA\\x4");
        assert_eq!(unescape("\\\\\\t"), b"\\\t");
        assert_eq!(unescape("\\q"), b"\\q");
    }

    #[test]
    fn durations_use_the_server_parser() {
        let args = Args::parse_from(["loopline-bench", "-d", "500ms", "--warmup", "0"]);
        assert_eq!(args.duration, Duration::from_millis(500));
        assert_eq!(args.warmup, Duration::ZERO);
        assert!(Args::try_parse_from(["loopline-bench", "-d", "x"]).is_err());
    }

    #[test]
    fn zero_counts_and_remote_targets_are_refused() {
        let args = Args::parse_from(["loopline-bench", "--threads", "0"]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("--threads"), "{err}");
        let args = Args::parse_from(["loopline-bench", "--addr", "192.0.2.1:9"]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("--allow-non-loopback"), "{err}");
    }

    #[test]
    fn keyed_requests_and_the_preload_are_read() {
        let args = Args::parse_from([
            "loopline-bench",
            "--request",
            "GET key:{key}",
            "--eol",
            "lf",
            "--keys",
            "1000",
            "--value-size",
            "3",
            "--preload",
            "SET key:{key} {value}",
        ]);
        let w = Workload::from_args(&args).unwrap();
        assert!(w.request_template.is_keyed());
        assert_eq!(w.request, b"GET key:000\n");
        assert_eq!(w.keys, 1000);
        let preload = w.preload.expect("a preload");
        let mut out = Vec::new();
        preload.render_into(999, &mut out);
        assert_eq!(out, b"SET key:999 vvv\n");
        assert_eq!(w.preload_lines_per_response, 1);
        // Defaults: 100,000 keys, 64-byte values, no preload.
        let w = Workload::from_args(&Args::parse_from(["loopline-bench"])).unwrap();
        assert_eq!(w.keys, 100_000);
        assert!(w.preload.is_none());
        assert!(!w.request_template.is_keyed());
        assert_eq!(w.request, b"PING\r\n");
        let args = Args::parse_from(["loopline-bench", "--request", "SET k {value}"]);
        let w = Workload::from_args(&args).unwrap();
        assert_eq!(w.request.len(), "SET k \r\n".len() + 64);
    }

    #[test]
    fn keys_and_preloads_outside_load_mode_are_refused() {
        for bad in [
            &["--keys", "0"][..],
            &["--preload-lines-per-response", "0"],
            &["--mode", "churn", "--request", "GET {key}"],
            &["--mode", "churn", "--preload", "SET {key} x"],
            &["--mode", "hold", "--preload", "SET {key} x"],
        ] {
            let args =
                Args::parse_from(std::iter::once("loopline-bench").chain(bad.iter().copied()));
            let err = Workload::from_args(&args).unwrap_err().to_string();
            assert!(err.contains("--"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn tls_options_need_tls_and_tls_needs_a_ca() {
        let args = Args::parse_from(["loopline-bench"]);
        assert!(!args.tls);
        assert_eq!(args.tls_name, "localhost");
        assert!(Workload::from_args(&args).unwrap().tls.is_none());
        // --tls-ca and --tls-name mean nothing without --tls.
        assert!(Args::try_parse_from(["loopline-bench", "--tls-ca", "ca.pem"]).is_err());
        assert!(Args::try_parse_from(["loopline-bench", "--tls-name", "x"]).is_err());
        assert!(Args::try_parse_from(["loopline-bench", "--tls-resume"]).is_err());
        assert!(Args::try_parse_from(["loopline-bench", "--tls-version", "1.2"]).is_err());
        let args = Args::parse_from(["loopline-bench", "--tls", "--tls-version", "1.2"]);
        assert_eq!(args.tls_version, TlsVersion::V1_2);
        assert!(!args.tls_resume);
        assert!(Args::try_parse_from(["loopline-bench", "--tls", "--tls-version", "1.1"]).is_err());
        // Resumption needs reconnects: churn only.
        let args = Args::parse_from(["loopline-bench", "--tls", "--tls-resume"]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("--tls-resume"), "{err}");
        let args = Args::parse_from(["loopline-bench", "--tls"]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("--tls"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let missing = std::env::temp_dir().join("loopline-bench-no-such-ca.pem");
        let args = Args::parse_from([
            "loopline-bench",
            "--tls",
            "--tls-ca",
            missing.to_str().unwrap(),
        ]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("--tls-ca"), "{err}");
        let empty =
            std::env::temp_dir().join(format!("loopline-bench-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let args = Args::parse_from([
            "loopline-bench",
            "--tls",
            "--tls-ca",
            empty.to_str().unwrap(),
        ]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        std::fs::remove_file(&empty).ok();
        assert!(err.contains("no certificate"), "{err}");
        let args = Args::parse_from([
            "loopline-bench",
            "--tls",
            "--tls-ca",
            "x",
            "--tls-name",
            "bad name!",
        ]);
        let err = Workload::from_args(&args).unwrap_err().to_string();
        assert!(err.contains("--tls-name"), "{err}");
    }
}
