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

/// Prints each line with [`print_result`].
fn print_lines(lines: [String; 2]) {
    for line in lines {
        print_result(format_args!("{line}"));
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
        print_lines(self.lines());
    }

    /// The human line, then the JSON line.
    fn lines(&self) -> [String; 2] {
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
        let human = format!(
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
        );
        let json = format!(
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
        );
        [human, json]
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
        print_lines(self.lines());
    }

    /// The human line, then the JSON line.
    fn lines(&self) -> [String; 2] {
        let bytes_per_connection = match (self.rss_before_kib, self.rss_after_kib) {
            (Some(before), Some(after)) if self.held > 0 => {
                Some((after as f64 - before as f64) * 1024.0 / self.held as f64)
            }
            _ => None,
        };
        let (held, n, errors, open_secs) =
            (self.held, self.connections, self.errors, self.open_secs);
        let human = format!(
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
        );
        let kib = |v: Option<u64>| v.map_or("null".into(), |v| v.to_string());
        let json = format!(
            "{{\"mode\":\"hold\",\"addr\":\"{}\",\"connections\":{n},\"held\":{held},\"errors\":{errors},\"open_s\":{open_secs:.3},\"rss_before_kb\":{},\"rss_after_kb\":{},\"bytes_per_conn\":{}}}",
            self.target,
            kib(self.rss_before_kib),
            kib(self.rss_after_kib),
            json_number(bytes_per_connection, 0),
        );
        [human, json]
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
        print_lines(self.lines());
    }

    /// The human line, then the JSON line.
    fn lines(&self) -> [String; 2] {
        let secs = self.duration.as_secs_f64();
        let (cps, server_cpu, client_cpu) = self.cpu.per_unit(self.cycles, self.duration);
        let us = |v: Option<f64>| json_number(v, 1);
        let cycle_time = &self.cycle_time;
        let (p50, p99, p999) = (
            percentile_us(cycle_time, 0.5),
            percentile_us(cycle_time, 0.99),
            percentile_us(cycle_time, 0.999),
        );
        let human = format!(
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
        );
        let json = format!(
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
        );
        [human, json]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::new_latency_histogram;

    fn target() -> SocketAddr {
        "127.0.0.1:9000".parse().unwrap()
    }

    /// A histogram with 100 samples: 1 to 100 microseconds.
    fn hundred_samples() -> Histogram<u64> {
        let mut histogram = new_latency_histogram();
        for us in 1..=100 {
            histogram.record(us * 1000).unwrap();
        }
        histogram
    }

    fn load_summary() -> LoadSummary {
        LoadSummary {
            target: target(),
            connections: 4,
            connected: 4,
            pipeline_depth: 2,
            threads: 2,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(2),
            responses: 100,
            latency: hundred_samples(),
            connection_errors: 0,
            error_lines: 0,
            unexpected: 0,
            cpu: CpuWindow {
                server_us: Some(250.0),
                client_us: 500_000.0,
            },
        }
    }

    fn churn_summary() -> ChurnSummary {
        ChurnSummary {
            target: target(),
            slots: 3,
            threads: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
            cycles: 100,
            cycle_time: hundred_samples(),
            errors: 0,
            cpu: CpuWindow {
                server_us: Some(250.0),
                client_us: 1000.0,
            },
        }
    }

    // The result lines are an interface (scripts read the JSON line, people
    // compare the human line across runs): these pin them to the byte.

    #[test]
    fn load_lines_are_pinned() {
        let [human, json] = load_summary().lines();
        assert_eq!(human, "load 127.0.0.1:9000: 4 conns x depth 2 (2 threads, 2.0s after 0.2s warm-up): 50 responses/s, latency p50 50.0 us, p99 99.0 us, p99.9 100.0 us, max 100.0 us; errors 0; client CPU 25% (5000.000 us/resp); server CPU 2.500 us/resp");
        assert_eq!(
            json,
            r#"{"mode":"load","addr":"127.0.0.1:9000","connections":4,"connected":4,"pipeline":2,"threads":2,"duration_s":2.000,"responses":100,"rps":50.0,"p50_us":50.0,"p99_us":99.0,"p999_us":100.0,"max_us":100.0,"errors":0,"conn_errors":0,"err_lines":0,"server_cpu_us_per_resp":2.5000,"client_cpu_us_per_resp":5000.0000}"#
        );
    }

    #[test]
    fn load_lines_without_samples_or_server_and_with_errors_are_pinned() {
        let summary = LoadSummary {
            threads: 1,
            responses: 0,
            latency: new_latency_histogram(),
            connection_errors: 1,
            error_lines: 2,
            unexpected: 3,
            cpu: CpuWindow {
                server_us: None,
                client_us: 0.0,
            },
            ..load_summary()
        };
        let [human, json] = summary.lines();
        assert_eq!(human, "load 127.0.0.1:9000: 4 conns x depth 2 (1 thread, 2.0s after 0.2s warm-up): 0 responses/s, latency p50 null us, p99 null us, p99.9 null us, max null us; errors 6 (connections 1, error lines 2, unexpected 3); client CPU 0% (null us/resp)");
        assert_eq!(
            json,
            r#"{"mode":"load","addr":"127.0.0.1:9000","connections":4,"connected":4,"pipeline":2,"threads":1,"duration_s":2.000,"responses":0,"rps":0.0,"p50_us":null,"p99_us":null,"p999_us":null,"max_us":null,"errors":6,"conn_errors":1,"err_lines":2,"server_cpu_us_per_resp":null,"client_cpu_us_per_resp":null}"#
        );
    }

    #[test]
    fn churn_lines_are_pinned() {
        let [human, json] = churn_summary().lines();
        assert_eq!(human, "churn 127.0.0.1:9000: 3 slots (1 thread, 0.5s after 0.0s warm-up): 200 connections/s, cycle p50 50.0 us, p99 99.0 us, p99.9 100.0 us; errors 0; client CPU 10.00 us/conn; server CPU 2.50 us/conn");
        assert_eq!(
            json,
            r#"{"mode":"churn","addr":"127.0.0.1:9000","connections":3,"threads":1,"duration_s":0.500,"cycles":100,"cps":200.0,"p50_us":50.0,"p99_us":99.0,"p999_us":100.0,"errors":0,"server_cpu_us_per_conn":2.500,"client_cpu_us_per_conn":10.000}"#
        );
    }

    #[test]
    fn churn_lines_without_samples_or_server_are_pinned() {
        let summary = ChurnSummary {
            threads: 2,
            cycles: 0,
            cycle_time: new_latency_histogram(),
            errors: 7,
            cpu: CpuWindow {
                server_us: None,
                client_us: 10.0,
            },
            ..churn_summary()
        };
        let [human, json] = summary.lines();
        assert_eq!(human, "churn 127.0.0.1:9000: 3 slots (2 threads, 0.5s after 0.0s warm-up): 0 connections/s, cycle p50 null us, p99 null us, p99.9 null us; errors 7; client CPU null us/conn");
        assert_eq!(
            json,
            r#"{"mode":"churn","addr":"127.0.0.1:9000","connections":3,"threads":2,"duration_s":0.500,"cycles":0,"cps":0.0,"p50_us":null,"p99_us":null,"p999_us":null,"errors":7,"server_cpu_us_per_conn":null,"client_cpu_us_per_conn":null}"#
        );
    }

    #[test]
    fn hold_lines_are_pinned() {
        let summary = HoldSummary {
            target: target(),
            connections: 10,
            held: 8,
            errors: 2,
            open_secs: 0.25,
            rss_before_kib: Some(1000),
            rss_after_kib: Some(1100),
        };
        let [human, json] = summary.lines();
        assert_eq!(human, "held 8 connections (of 10; 2 failed) to 127.0.0.1:9000 in 0.25s; server VmRSS 1000 kB before, 1100 kB after: 12800 bytes per connection");
        assert_eq!(
            json,
            r#"{"mode":"hold","addr":"127.0.0.1:9000","connections":10,"held":8,"errors":2,"open_s":0.250,"rss_before_kb":1000,"rss_after_kb":1100,"bytes_per_conn":12800}"#
        );
        let unread = HoldSummary {
            rss_before_kib: None,
            rss_after_kib: None,
            ..summary
        };
        let [human, json] = unread.lines();
        assert_eq!(
            human,
            "held 8 connections (of 10; 2 failed) to 127.0.0.1:9000 in 0.25s"
        );
        assert_eq!(
            json,
            r#"{"mode":"hold","addr":"127.0.0.1:9000","connections":10,"held":8,"errors":2,"open_s":0.250,"rss_before_kb":null,"rss_after_kb":null,"bytes_per_conn":null}"#
        );
    }

    #[test]
    fn json_numbers_are_null_when_missing_or_not_finite() {
        assert_eq!(json_number(Some(0.75), 3), "0.750");
        assert_eq!(json_number(None, 1), "null");
        assert_eq!(json_number(Some(f64::NAN), 1), "null");
    }
}
