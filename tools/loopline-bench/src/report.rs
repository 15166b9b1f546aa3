//! The results: each mode prints one human line and one flat JSON line on
//! stdout (scripts read the JSON line: its keys are an interface), progress
//! and warnings go to stderr.

use crate::cli::TlsVersion;
use crate::measure::{percentile_us, MeasuredRun};
use hdrhistogram::Histogram;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;

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

/// How the measured modes (load, churn) describe their window in the human
/// line: `(2 threads, 10.0s after 1.0s warm-up)`.
fn describe_window(run: &MeasuredRun) -> String {
    let plural = if run.threads == 1 { "" } else { "s" };
    format!(
        "({} thread{plural}, {:.1}s after {:.1}s warm-up)",
        run.threads,
        run.duration.as_secs_f64(),
        run.warmup.as_secs_f64()
    )
}

/// The human line's closing clause for the server's CPU time per unit, with
/// `decimals` digits; empty when the server was not watched.
fn server_cpu_clause(us_per_unit: Option<f64>, decimals: usize, unit: &str) -> String {
    match us_per_unit {
        Some(v) => format!("; server CPU {v:.decimals$} us/{unit}"),
        None => String::new(),
    }
}

/// The 50th, 99th and 99.9th percentiles of a histogram in microseconds
/// (`None` for no samples), as the measured modes show them.
struct Percentiles {
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: percentile_us(histogram, 0.5),
            p99: percentile_us(histogram, 0.99),
            p999: percentile_us(histogram, 0.999),
        }
    }

    /// For the human line: `p50 36.2 us, p99 82.4 us, p99.9 545.3 us`.
    fn human(&self) -> String {
        format!(
            "p50 {} us, p99 {} us, p99.9 {} us",
            json_number(self.p50, 1),
            json_number(self.p99, 1),
            json_number(self.p999, 1)
        )
    }

    /// For the JSON line: `"p50_us":36.2,"p99_us":82.4,"p999_us":545.3`.
    fn json_fields(&self) -> String {
        format!(
            "\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}",
            json_number(self.p50, 1),
            json_number(self.p99, 1),
            json_number(self.p999, 1)
        )
    }
}

/// What a load run did, merged over its threads.
pub struct LoadSummary {
    pub run: MeasuredRun,
    /// Connections asked for.
    pub connections: usize,
    /// Connections that finished their greeting.
    pub connected: u64,
    pub pipeline_depth: usize,
    /// Responses in the measured window.
    pub responses: u64,
    pub latency: Histogram<u64>,
    /// Connections that failed or were closed.
    pub connection_errors: u64,
    /// Response lines that start with an error prefix.
    pub error_lines: u64,
    /// Responses nobody asked for.
    pub unexpected: u64,
    /// With `--preload`: how it went.
    pub preload: Option<PreloadSummary>,
}

/// What `--preload` did, before the warm-up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PreloadSummary {
    /// Keys to preload (`--keys`).
    pub keys: u64,
    /// Preload requests answered.
    pub answered: u64,
    /// Answers that start with an error prefix.
    pub error_lines: u64,
    /// Seconds it took (the slowest thread's).
    pub secs: f64,
}

impl PreloadSummary {
    /// Keys whose preload request got no answer.
    pub fn missing(&self) -> u64 {
        self.keys.saturating_sub(self.answered)
    }

    /// Failed preload requests: error answers and unanswered ones.
    pub fn errors(&self) -> u64 {
        self.error_lines + self.missing()
    }
}

impl LoadSummary {
    pub fn print(&self) {
        print_lines(self.lines());
    }

    /// The human line, then the JSON line.
    fn lines(&self) -> [String; 2] {
        let run = &self.run;
        let secs = run.duration.as_secs_f64();
        let (rps, server_cpu, client_cpu) = run.per_unit(self.responses);
        let preload_errors = self.preload.as_ref().map_or(0, PreloadSummary::errors);
        let errors = self.connection_errors + self.error_lines + self.unexpected + preload_errors;
        let percentiles = Percentiles::of(&self.latency);
        let max = (!self.latency.is_empty()).then(|| self.latency.max() as f64 / 1000.0);
        let max = json_number(max, 1);
        // Client CPU as a share of one core: us / (secs * 1e6) * 100.
        let client_percent = if secs > 0.0 {
            run.cpu.client_us / (secs * 1e4)
        } else {
            0.0
        };
        let human = format!(
            "load {}: {} conns x depth {} {}: {rps:.0} responses/s, latency {}, max {max} us; errors {errors}{}; client CPU {client_percent:.0}% ({} us/resp){}",
            run.target,
            self.connected,
            self.pipeline_depth,
            describe_window(run),
            percentiles.human(),
            if errors > 0 {
                format!(
                    " (connections {}, error lines {}, unexpected {}{})",
                    self.connection_errors,
                    self.error_lines,
                    self.unexpected,
                    if preload_errors > 0 {
                        format!(", preload {preload_errors}")
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            },
            json_number(client_cpu, 3),
            server_cpu_clause(server_cpu, 3, "resp"),
        );
        let human = match &self.preload {
            None => human,
            Some(p) => format!(
                "{human}; preloaded {} of {} keys in {:.2}s",
                p.answered, p.keys, p.secs
            ),
        };
        let json = format!(
            "{{\"mode\":\"load\",\"addr\":\"{}\",\"connections\":{},\"connected\":{},\"pipeline\":{},\"threads\":{},\"duration_s\":{secs:.3},\"responses\":{},\"rps\":{rps:.1},{},\"max_us\":{max},\"errors\":{errors},\"conn_errors\":{},\"err_lines\":{},\"server_cpu_us_per_resp\":{},\"client_cpu_us_per_resp\":{}}}",
            run.target,
            self.connections,
            self.connected,
            self.pipeline_depth,
            run.threads,
            self.responses,
            percentiles.json_fields(),
            self.connection_errors,
            self.error_lines,
            json_number(server_cpu, 4),
            json_number(client_cpu, 4),
        );
        // With --preload, its fields before the closing brace.
        let json = match &self.preload {
            None => json,
            Some(p) => format!(
                "{},\"preload_keys\":{},\"preloaded\":{},\"preload_err_lines\":{},\"preload_s\":{:.3}}}",
                json.trim_end_matches('}'),
                p.keys,
                p.answered,
                p.error_lines,
                p.secs
            ),
        };
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
    pub run: MeasuredRun,
    /// Concurrent connect/close slots.
    pub slots: usize,
    /// Complete cycles in the measured window.
    pub cycles: u64,
    /// Duration of each cycle, connect to close.
    pub cycle_time: Histogram<u64>,
    /// Failed cycles plus error lines.
    pub errors: u64,
    /// Over TLS: how the complete cycles' handshakes went.
    pub tls: Option<TlsHandshakes>,
}

/// The handshakes of a churn run over TLS: what was asked for, and how
/// many of the complete cycles' handshakes were full or resumed (rustls's
/// `handshake_kind()`), so that a run that silently did full handshakes
/// shows.
pub struct TlsHandshakes {
    /// `--tls-version`.
    pub version: TlsVersion,
    /// `--tls-resume`: resumed handshakes were asked for.
    pub resume: bool,
    pub full: u64,
    pub resumed: u64,
}

impl TlsHandshakes {
    /// The share of handshakes that must resume for a `--tls-resume` run
    /// to count as measuring resumption (a slot's first connection, and
    /// any after a ticket ran out, are full).
    pub const RESUMED_ENOUGH: f64 = 0.9;

    /// Resumed handshakes / all handshakes; `None` for none.
    pub fn resumed_fraction(&self) -> Option<f64> {
        let total = self.full + self.resumed;
        (total > 0).then(|| self.resumed as f64 / total as f64)
    }

    /// With `--tls-resume` and fewer than [`Self::RESUMED_ENOUGH`] of the
    /// handshakes resumed: how many were full (non-zero whenever that
    /// happened). 0 otherwise, and for a run with no handshakes at all
    /// (which fails for having no cycles).
    pub fn shortfall(&self) -> u64 {
        match self.resumed_fraction() {
            Some(fraction) if self.resume && fraction < Self::RESUMED_ENOUGH => self.full,
            _ => 0,
        }
    }

    /// For the human line: `; TLS auto, --tls-resume: 990 of 1000
    /// handshakes resumed (99.0%), 10 full`.
    fn human(&self) -> String {
        let percent = json_number(self.resumed_fraction().map(|f| f * 100.0), 1);
        format!(
            "; TLS {}, {}: {} of {} handshakes resumed ({percent}%), {} full{}",
            self.version.name(),
            if self.resume {
                "--tls-resume"
            } else {
                "resumption off"
            },
            self.resumed,
            self.full + self.resumed,
            self.full,
            if self.shortfall() > 0 {
                " -- RESUMPTION FAILED: these are mostly full handshakes"
            } else {
                ""
            }
        )
    }

    /// For the JSON line, after a comma.
    fn json_fields(&self) -> String {
        format!(
            "\"tls_version\":\"{}\",\"tls_resume\":{},\"handshakes_full\":{},\"handshakes_resumed\":{},\"resumed_fraction\":{},\"resume_shortfall\":{}",
            self.version.name(),
            u8::from(self.resume),
            self.full,
            self.resumed,
            json_number(self.resumed_fraction(), 4),
            self.shortfall(),
        )
    }
}

impl ChurnSummary {
    pub fn print(&self) {
        print_lines(self.lines());
    }

    /// The human line, then the JSON line.
    fn lines(&self) -> [String; 2] {
        let run = &self.run;
        let (cps, server_cpu, client_cpu) = run.per_unit(self.cycles);
        let percentiles = Percentiles::of(&self.cycle_time);
        let human = format!(
            "churn {}: {} slots {}: {cps:.0} connections/s, cycle {}; errors {}; client CPU {} us/conn{}{}",
            run.target,
            self.slots,
            describe_window(run),
            percentiles.human(),
            self.errors,
            json_number(client_cpu, 2),
            server_cpu_clause(server_cpu, 2, "conn"),
            self.tls.as_ref().map_or(String::new(), TlsHandshakes::human),
        );
        let json = format!(
            "{{\"mode\":\"churn\",\"addr\":\"{}\",\"connections\":{},\"threads\":{},\"duration_s\":{:.3},\"cycles\":{},\"cps\":{cps:.1},{},\"errors\":{},\"server_cpu_us_per_conn\":{},\"client_cpu_us_per_conn\":{}{}}}",
            run.target,
            self.slots,
            run.threads,
            run.duration.as_secs_f64(),
            self.cycles,
            percentiles.json_fields(),
            self.errors,
            json_number(server_cpu, 3),
            json_number(client_cpu, 3),
            self.tls
                .as_ref()
                .map_or(String::new(), |tls| format!(",{}", tls.json_fields())),
        );
        [human, json]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{new_latency_histogram, CpuWindow};
    use std::time::Duration;

    /// A histogram with 100 samples: 1 to 100 microseconds.
    fn hundred_samples() -> Histogram<u64> {
        let mut histogram = new_latency_histogram();
        for us in 1..=100 {
            histogram.record(us * 1000).unwrap();
        }
        histogram
    }

    fn measured_run(threads: usize, warmup_ms: u64, duration_ms: u64) -> MeasuredRun {
        MeasuredRun {
            target: "127.0.0.1:9000".parse().unwrap(),
            threads,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
            cpu: CpuWindow {
                server_us: None,
                client_us: 0.0,
            },
        }
    }

    fn load_summary() -> LoadSummary {
        let mut run = measured_run(2, 200, 2000);
        run.cpu = CpuWindow {
            server_us: Some(250.0),
            client_us: 500_000.0,
        };
        LoadSummary {
            run,
            connections: 4,
            connected: 4,
            pipeline_depth: 2,
            responses: 100,
            latency: hundred_samples(),
            connection_errors: 0,
            error_lines: 0,
            unexpected: 0,
            preload: None,
        }
    }

    fn churn_summary() -> ChurnSummary {
        let mut run = measured_run(1, 0, 500);
        run.cpu = CpuWindow {
            server_us: Some(250.0),
            client_us: 1000.0,
        };
        ChurnSummary {
            run,
            slots: 3,
            cycles: 100,
            cycle_time: hundred_samples(),
            errors: 0,
            tls: None,
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
            run: measured_run(1, 200, 2000),
            responses: 0,
            latency: new_latency_histogram(),
            connection_errors: 1,
            error_lines: 2,
            unexpected: 3,
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
    fn load_lines_with_a_preload_are_pinned() {
        let summary = LoadSummary {
            preload: Some(PreloadSummary {
                keys: 1000,
                answered: 1000,
                error_lines: 0,
                secs: 0.25,
            }),
            ..load_summary()
        };
        let [human, json] = summary.lines();
        assert!(
            human.ends_with("server CPU 2.500 us/resp; preloaded 1000 of 1000 keys in 0.25s"),
            "{human}"
        );
        assert!(
            json.ends_with(r#""client_cpu_us_per_resp":5000.0000,"preload_keys":1000,"preloaded":1000,"preload_err_lines":0,"preload_s":0.250}"#),
            "{json}"
        );
        // Error answers and unanswered keys are errors of the run.
        let summary = LoadSummary {
            preload: Some(PreloadSummary {
                keys: 1000,
                answered: 990,
                error_lines: 5,
                secs: 1.0,
            }),
            ..load_summary()
        };
        let [human, json] = summary.lines();
        assert!(
            human.contains("errors 15 (connections 0, error lines 0, unexpected 0, preload 15)"),
            "{human}"
        );
        assert!(json.contains(r#""errors":15,"#), "{json}");
        assert!(
            json.ends_with(
                r#""preload_keys":1000,"preloaded":990,"preload_err_lines":5,"preload_s":1.000}"#
            ),
            "{json}"
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
        let mut run = measured_run(2, 0, 500);
        run.cpu.client_us = 10.0;
        let summary = ChurnSummary {
            run,
            cycles: 0,
            cycle_time: new_latency_histogram(),
            errors: 7,
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
    fn churn_lines_over_tls_are_pinned() {
        let summary = ChurnSummary {
            tls: Some(TlsHandshakes {
                version: TlsVersion::Auto,
                resume: false,
                full: 100,
                resumed: 0,
            }),
            ..churn_summary()
        };
        let [human, json] = summary.lines();
        assert_eq!(human, "churn 127.0.0.1:9000: 3 slots (1 thread, 0.5s after 0.0s warm-up): 200 connections/s, cycle p50 50.0 us, p99 99.0 us, p99.9 100.0 us; errors 0; client CPU 10.00 us/conn; server CPU 2.50 us/conn; TLS auto, resumption off: 0 of 100 handshakes resumed (0.0%), 100 full");
        assert_eq!(
            json,
            r#"{"mode":"churn","addr":"127.0.0.1:9000","connections":3,"threads":1,"duration_s":0.500,"cycles":100,"cps":200.0,"p50_us":50.0,"p99_us":99.0,"p999_us":100.0,"errors":0,"server_cpu_us_per_conn":2.500,"client_cpu_us_per_conn":10.000,"tls_version":"auto","tls_resume":0,"handshakes_full":100,"handshakes_resumed":0,"resumed_fraction":0.0000,"resume_shortfall":0}"#
        );

        let resumed = ChurnSummary {
            tls: Some(TlsHandshakes {
                version: TlsVersion::V1_2,
                resume: true,
                full: 3,
                resumed: 97,
            }),
            ..churn_summary()
        };
        let [human, json] = resumed.lines();
        assert!(
            human
                .ends_with("; TLS 1.2, --tls-resume: 97 of 100 handshakes resumed (97.0%), 3 full"),
            "{human}"
        );
        assert!(
            json.ends_with(r#","tls_version":"1.2","tls_resume":1,"handshakes_full":3,"handshakes_resumed":97,"resumed_fraction":0.9700,"resume_shortfall":0}"#),
            "{json}"
        );

        let not_resumed = ChurnSummary {
            tls: Some(TlsHandshakes {
                version: TlsVersion::V1_3,
                resume: true,
                full: 20,
                resumed: 80,
            }),
            ..churn_summary()
        };
        let [human, json] = not_resumed.lines();
        assert!(
            human.ends_with("; TLS 1.3, --tls-resume: 80 of 100 handshakes resumed (80.0%), 20 full -- RESUMPTION FAILED: these are mostly full handshakes"),
            "{human}"
        );
        assert!(
            json.ends_with(r#""resumed_fraction":0.8000,"resume_shortfall":20}"#),
            "{json}"
        );
    }

    #[test]
    fn resumption_shortfall_is_counted_only_when_asked_for() {
        let handshakes = |resume, full, resumed| TlsHandshakes {
            version: TlsVersion::Auto,
            resume,
            full,
            resumed,
        };
        assert_eq!(handshakes(true, 0, 0).shortfall(), 0);
        assert_eq!(handshakes(true, 10, 90).shortfall(), 0);
        assert_eq!(handshakes(true, 11, 89).shortfall(), 11);
        assert_eq!(handshakes(true, 50, 0).shortfall(), 50);
        assert_eq!(handshakes(false, 50, 0).shortfall(), 0);
        assert_eq!(handshakes(true, 0, 0).resumed_fraction(), None);
    }

    #[test]
    fn hold_lines_are_pinned() {
        let summary = HoldSummary {
            target: "127.0.0.1:9000".parse().unwrap(),
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
