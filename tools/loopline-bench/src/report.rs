//! The results: each mode prints one human line and one flat JSON line on
//! stdout (scripts read the JSON line: its keys are an interface), progress
//! and warnings go to stderr.

use crate::measure::{percentile_us, CpuWindow};
use hdrhistogram::Histogram;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Prints one line on stdout and flushes it, ignoring a closed stdout
/// (`| head -1`) instead of panicking as `println!` would.
pub fn print_result(line: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_fmt(line);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// A JSON number with `decimals` digits, or `null` for no value.
pub fn json_number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "null".to_string(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// What a load run did, merged over its threads.
pub struct LoadSummary {
    pub target: SocketAddr,
    /// Connections asked for.
    pub connections: usize,
    /// Connections that finished their greeting.
    pub connected: u64,
    pub pipeline_depth: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Responses in the measured window.
    pub responses: u64,
    pub latency: Histogram<u64>,
    /// Connections that failed or were closed.
    pub connection_errors: u64,
    /// Response lines that start with an error prefix.
    pub error_lines: u64,
    /// Responses nobody asked for.
    pub unexpected: u64,
    pub cpu: CpuWindow,
}

impl LoadSummary {
    pub fn print(&self) {
        let secs = self.duration.as_secs_f64();
        let (rps, server_cpu, client_cpu) = self.cpu.per_unit(self.responses, self.duration);
        let errors = self.connection_errors + self.error_lines + self.unexpected;
        let latency = &self.latency;
        let (p50, p99, p999) = (
            percentile_us(latency, 0.5),
            percentile_us(latency, 0.99),
            percentile_us(latency, 0.999),
        );
        let max = (!latency.is_empty()).then(|| latency.max() as f64 / 1000.0);
        let us = |v: Option<f64>| json_number(v, 1);
        // Client CPU as a share of one core: us / (secs * 1e6) * 100.
        let client_percent = if secs > 0.0 {
            self.cpu.client_us / (secs * 1e4)
        } else {
            0.0
        };
        print_result(format_args!(
            "load {}: {} conns x depth {} ({} thread{}, {:.1}s after {:.1}s warm-up): {:.0} responses/s, latency p50 {} us, p99 {} us, p99.9 {} us, max {} us; errors {}{}; client CPU {:.0}% ({} us/resp){}",
            self.target,
            self.connected,
            self.pipeline_depth,
            self.threads,
            plural(self.threads),
            secs,
            self.warmup.as_secs_f64(),
            rps,
            us(p50),
            us(p99),
            us(p999),
            us(max),
            errors,
            if errors > 0 {
                format!(
                    " (connections {}, error lines {}, unexpected {})",
                    self.connection_errors, self.error_lines, self.unexpected
                )
            } else {
                String::new()
            },
            client_percent,
            json_number(client_cpu, 3),
            match server_cpu {
                Some(v) => format!("; server CPU {v:.3} us/resp"),
                None => String::new(),
            }
        ));
        print_result(format_args!(
            "{{\"mode\":\"load\",\"addr\":\"{}\",\"connections\":{},\"connected\":{},\"pipeline\":{},\"threads\":{},\"duration_s\":{:.3},\"responses\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"errors\":{},\"conn_errors\":{},\"err_lines\":{},\"server_cpu_us_per_resp\":{},\"client_cpu_us_per_resp\":{}}}",
            self.target,
            self.connections,
            self.connected,
            self.pipeline_depth,
            self.threads,
            secs,
            self.responses,
            rps,
            us(p50),
            us(p99),
            us(p999),
            us(max),
            errors,
            self.connection_errors,
            self.error_lines,
            json_number(server_cpu, 4),
            json_number(client_cpu, 4),
        ));
    }
}

/// What a hold run did once its connections were open.
pub struct HoldSummary {
    pub target: SocketAddr,
    /// Connections asked for.
    pub connections: usize,
    /// Connections open and greeted.
    pub held: usize,
    /// Connections that failed to open, or that the server closed.
    pub errors: usize,
    /// Seconds it took to open them.
    pub open_secs: f64,
    /// Server VmRSS before and after, in KiB, where readable.
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl HoldSummary {
    pub fn print(&self) {
        let bytes_per_connection = match (self.rss_before_kib, self.rss_after_kib) {
            (Some(before), Some(after)) if self.held > 0 => {
                Some((after as f64 - before as f64) * 1024.0 / self.held as f64)
            }
            _ => None,
        };
        let (held, n, errors, open_secs) =
            (self.held, self.connections, self.errors, self.open_secs);
        print_result(format_args!(
            "held {held} connections (of {n}; {errors} failed) to {} in {open_secs:.2}s{}",
            self.target,
            match (
                self.rss_before_kib,
                self.rss_after_kib,
                bytes_per_connection
            ) {
                (Some(a), Some(b), Some(p)) => format!(
                    "; server VmRSS {a} kB before, {b} kB after: {p:.0} bytes per connection"
                ),
                _ => String::new(),
            }
        ));
        let kib = |v: Option<u64>| v.map_or("null".into(), |v| v.to_string());
        print_result(format_args!(
            "{{\"mode\":\"hold\",\"addr\":\"{}\",\"connections\":{n},\"held\":{held},\"errors\":{errors},\"open_s\":{open_secs:.3},\"rss_before_kb\":{},\"rss_after_kb\":{},\"bytes_per_conn\":{}}}",
            self.target,
            kib(self.rss_before_kib),
            kib(self.rss_after_kib),
            json_number(bytes_per_connection, 0),
        ));
    }
}

/// What a churn run did, merged over its threads.
pub struct ChurnSummary {
    pub target: SocketAddr,
    /// Concurrent connect/close slots.
    pub slots: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Complete cycles in the measured window.
    pub cycles: u64,
    /// Duration of each cycle, connect to close.
    pub cycle_time: Histogram<u64>,
    /// Failed cycles plus error lines.
    pub errors: u64,
    pub cpu: CpuWindow,
}

impl ChurnSummary {
    pub fn print(&self) {
        let secs = self.duration.as_secs_f64();
        let (cps, server_cpu, client_cpu) = self.cpu.per_unit(self.cycles, self.duration);
        let us = |v: Option<f64>| json_number(v, 1);
        let cycle_time = &self.cycle_time;
        let (p50, p99, p999) = (
            percentile_us(cycle_time, 0.5),
            percentile_us(cycle_time, 0.99),
            percentile_us(cycle_time, 0.999),
        );
        print_result(format_args!(
            "churn {}: {} slots ({} thread{}, {:.1}s after {:.1}s warm-up): {:.0} connections/s, cycle p50 {} us, p99 {} us, p99.9 {} us; errors {}; client CPU {} us/conn{}",
            self.target,
            self.slots,
            self.threads,
            plural(self.threads),
            secs,
            self.warmup.as_secs_f64(),
            cps,
            us(p50),
            us(p99),
            us(p999),
            self.errors,
            json_number(client_cpu, 2),
            match server_cpu {
                Some(v) => format!("; server CPU {v:.2} us/conn"),
                None => String::new(),
            }
        ));
        print_result(format_args!(
            "{{\"mode\":\"churn\",\"addr\":\"{}\",\"connections\":{},\"threads\":{},\"duration_s\":{:.3},\"cycles\":{},\"cps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"errors\":{},\"server_cpu_us_per_conn\":{},\"client_cpu_us_per_conn\":{}}}",
            self.target,
            self.slots,
            self.threads,
            secs,
            self.cycles,
            cps,
            us(p50),
            us(p99),
            us(p999),
            self.errors,
            json_number(server_cpu, 3),
            json_number(client_cpu, 3),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_null_when_missing_or_not_finite() {
        assert_eq!(json_number(Some(0.75), 3), "0.750");
        assert_eq!(json_number(None, 1), "null");
        assert_eq!(json_number(Some(f64::NAN), 1), "null");
    }
}
