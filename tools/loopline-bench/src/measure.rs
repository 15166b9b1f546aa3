//! What is measured besides counting: latency histograms, and the CPU time
//! the server and this process spend in the measured window.
//!
//! The server's CPU time comes from `loopline::sys::process_cpu_time`
//! (`/proc/PID/stat`, Linux only: elsewhere the figure is `null`); this
//! process's own from `getrusage`, which every Unix has.

use hdrhistogram::Histogram;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// Largest latency the histograms hold (ns); larger values saturate.
const LATENCY_MAX_NS: u64 = 120_000_000_000;

/// An empty latency histogram: 1 ns to 120 s, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1,
    // high >= 2 * low, 3 digits), so this cannot fail at run time.
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// The latency at quantile `q` in microseconds; `None` for no samples.
pub fn percentile_us(histogram: &Histogram<u64>, q: f64) -> Option<f64> {
    if histogram.is_empty() {
        None
    } else {
        Some(histogram.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// Nanoseconds from `since` to `now`, saturating (a u64 holds 584 years).
pub fn elapsed_ns(now: Instant, since: Instant) -> u64 {
    u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX)
}

/// CPU time spent in the measured window.
pub struct CpuWindow {
    /// The server's user + system time, when `--server-pid` is readable.
    pub server_us: Option<f64>,
    /// This process's user + system time, all threads.
    pub client_us: f64,
}

impl CpuWindow {
    /// For `count` units (responses, connections) done in `window`: the
    /// rate per second, and server and client CPU microseconds per unit.
    pub fn per_unit(&self, count: u64, window: Duration) -> (f64, Option<f64>, Option<f64>) {
        let secs = window.as_secs_f64();
        let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
        let per = |us: f64| (count > 0).then(|| us / count as f64);
        (rate, self.server_us.and_then(per), per(self.client_us))
    }
}

/// Lines the main thread up with the workers (they start their window at
/// the same barrier), then samples server and client CPU at the start and
/// the end of the measured window.
pub fn measure_window(
    barrier: &Barrier,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
) -> CpuWindow {
    barrier.wait();
    let start = Instant::now();
    thread::sleep(warmup);
    let server_before = server_cpu_us(server_pid);
    let client_before = own_cpu_us();
    let end = start + warmup + duration;
    let now = Instant::now();
    if end > now {
        thread::sleep(end - now);
    }
    let server_after = server_cpu_us(server_pid);
    let client_after = own_cpu_us();
    CpuWindow {
        server_us: match (server_before, server_after) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        },
        client_us: client_after - client_before,
    }
}

/// The server's CPU time (user + system) so far, in microseconds.
fn server_cpu_us(pid: Option<u32>) -> Option<f64> {
    let cpu = loopline::sys::process_cpu_time(pid?)?;
    Some(cpu.as_secs_f64() * 1e6)
}

/// This process's CPU time (user + system, all threads) in microseconds.
fn own_cpu_us() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass, nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    // tv_sec and tv_usec are integers of platform-dependent width.
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}
