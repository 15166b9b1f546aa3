//! Command-line options (SPEC section 2), parsed with clap.
//!
//! A bad option is a usage error: clap prints a message naming the option
//! and the process exits with status 2, before anything is bound.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Everything the server needs to start. Build it with [`Config::parse`]
/// (from the command line) or by hand (in tests and embedding programs).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loopline",
    version,
    about = "A TCP line-protocol server (PING, ECHO, QUIT, HELP, STATS) on one mio event loop",
    after_help = "DUR is seconds (2, 0.5) or a number with a unit (500ms, 2s, 5m, 1h).\n\
                  Logging goes to stderr; RUST_LOG sets the level (default info)."
)]
pub struct Config {
    /// Address to listen on: IPv4 or [IPv6]:port; port 0 picks a free port. Repeatable.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:9000")]
    pub listen: Vec<SocketAddr>,

    /// Open client connections at once; one more gets `ERR server busy`.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Longest request line in bytes (CR and LF not counted).
    #[arg(long, value_name = "BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub max_line: u64,

    /// Pending output in bytes above which the server stops reading from a client.
    #[arg(long, value_name = "BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    pub max_output: u64,

    /// Close a connection with no complete request for this long; 0 turns it off.
    #[arg(long, value_name = "DUR", default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection whose peer takes no bytes for this long while output is pending; 0 turns it off.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How long a graceful shutdown (SIGINT, SIGTERM) may spend flushing before closing anyway.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Bytes held in all client buffers of the process together, above which reading pauses.
    #[arg(long, value_name = "BYTES", default_value_t = 268_435_456,
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 40)))]
    pub max_memory: u64,

    /// TCP keepalive on client sockets: idle time before the kernel probes; 0 turns it off.
    #[arg(long, value_name = "DUR", default_value = "300s", value_parser = parse_duration)]
    pub tcp_keepalive: Duration,
}

impl Default for Config {
    /// The defaults of SPEC section 2.
    fn default() -> Config {
        Config::parse_from(["loopline"])
    }
}

/// The longest DUR accepted: 10 years, far beyond any useful timeout.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a DUR: a number of seconds (`2`, `0.5`) or a number with a unit
/// (`500ms`, `2s`, `5m`, `1h`).
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
    let duration = Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("{text:?} is out of range"))?;
    // Deadlines are `Instant + duration`, which must not overflow.
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is longer than the maximum, 10 years"));
    }
    Ok(duration)
}

/// The limits a connection enforces, in the types the hot path wants.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-line`, in bytes.
    pub max_line: usize,
    /// `--max-output`: pending output above which reading pauses.
    pub max_output: usize,
    /// `--idle-timeout`, `None` when 0 (off).
    pub idle_timeout: Option<Duration>,
    /// `--write-timeout`, `None` when 0 (off).
    pub write_timeout: Option<Duration>,
    /// How long a closing connection may drain unread input after its last
    /// line, before the socket is dropped (see `Connection::linger`).
    pub linger: Duration,
    /// `--max-memory`: bytes held in all client buffers together.
    pub max_memory: usize,
    /// `--tcp-keepalive`, `None` when 0 (off).
    pub tcp_keepalive: Option<Duration>,
}

/// How long a closing connection reads and discards input after its last line.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &Config) -> Limits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Limits {
            max_line: usize::try_from(config.max_line).unwrap_or(usize::MAX),
            max_output: usize::try_from(config.max_output).unwrap_or(usize::MAX),
            idle_timeout: nonzero(config.idle_timeout),
            write_timeout: nonzero(config.write_timeout),
            linger: LINGER_TIMEOUT,
            max_memory: usize::try_from(config.max_memory).unwrap_or(usize::MAX),
            tcp_keepalive: nonzero(config.tcp_keepalive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_forms_of_the_spec() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(parse_duration("2"), Ok(ms(2000)));
        assert_eq!(parse_duration("0.5"), Ok(ms(500)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        for bad in [
            "",
            "s",
            "-1",
            "2x",
            "1e3",
            "abc",
            "2 s s",
            "10000000000000000000",
            "99999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.listen, vec!["127.0.0.1:9000".parse().unwrap()]);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_line, 1024);
        assert_eq!(c.max_output, 1_048_576);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn listen_repeats_and_takes_ipv6() {
        let c =
            Config::try_parse_from(["loopline", "--listen", "127.0.0.1:0", "--listen", "[::1]:0"])
                .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen[1].is_ipv6());
    }

    #[test]
    fn zero_timeouts_turn_timers_off() {
        let c =
            Config::try_parse_from(["loopline", "--idle-timeout", "0", "--write-timeout", "0s"])
                .unwrap();
        let limits = Limits::from_config(&c);
        assert_eq!(limits.idle_timeout, None);
        assert_eq!(limits.write_timeout, None);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["loopline", "--max-line", "0"][..],
            &["loopline", "--max-connections", "-3"],
            &["loopline", "--idle-timeout", "soon"],
            &["loopline", "--listen", "localhost"],
            &["loopline", "--nope"],
        ] {
            let err = Config::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
