//! What is measured besides counting: latency histograms, the CPU time the
//! server and this process spend in the measured window, and the running of
//! a measured mode (load, churn) over its threads, lined up with the main
//! thread that samples that CPU time.
//!
//! The server's CPU time comes from `loopline_proc::process_cpu_time`
//! (`/proc/PID/stat`, Linux only: elsewhere the figure is `null`); this
//! process's own from `getrusage`, which every Unix has.

use crate::cli::Workload;
use hdrhistogram::Histogram;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
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

/// A measured run over several threads (load, churn): where it ran, its
/// window, and the CPU time spent in that window.
pub struct MeasuredRun {
    pub target: SocketAddr,
    pub threads: usize,
    pub warmup: Duration,
    /// The measured window, which follows the warm-up.
    pub duration: Duration,
    pub cpu: CpuWindow,
}

impl MeasuredRun {
    /// For `count` units (responses, connections) done in the window: the
    /// rate per second, and server and client CPU microseconds per unit.
    pub fn per_unit(&self, count: u64) -> (f64, Option<f64>, Option<f64>) {
        let secs = self.duration.as_secs_f64();
        let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
        let per = |us: f64| (count > 0).then(|| us / count as f64);
        (
            rate,
            self.cpu.server_us.and_then(per),
            per(self.cpu.client_us),
        )
    }
}

/// One thread's event loop in a measured run (load, churn).
pub trait MeasuredWorker: Sized {
    /// What the thread counted; the main thread adds up every thread's.
    type Counts: Send + 'static;

    /// The worker of thread `thread_index`, which drives `share` of the
    /// `--connections`.
    fn new(workload: Arc<Workload>, share: usize, thread_index: usize) -> io::Result<Self>;

    /// Runs to the end of the window. Waits on `start_line` exactly once,
    /// when it is ready to start: every thread and the main thread, which
    /// starts its clock for the window there, pass it together.
    fn run(self, start_line: &Barrier) -> Self::Counts;
}

/// Thread `index`'s share when `total` connections are dealt out over
/// `threads`: equal shares, the first `total % threads` one more.
fn connections_for_thread(total: usize, threads: usize, index: usize) -> usize {
    total / threads + usize::from(index < total % threads)
}

/// Runs a `W` on each of the workload's threads while this thread samples
/// CPU time over the window. Returns the run and each thread's counts,
/// `None` for a thread that could not start or that panicked.
pub fn run_measured<W: MeasuredWorker + 'static>(
    workload: Workload,
) -> (MeasuredRun, Vec<Option<W::Counts>>) {
    let threads = workload.threads;
    let workload = Arc::new(workload);
    // The workers and this thread, which samples CPU time.
    let start_line = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let share = connections_for_thread(workload.connections, threads, t);
        let workload = Arc::clone(&workload);
        let start_line = Arc::clone(&start_line);
        handles.push(thread::spawn(move || match W::new(workload, share, t) {
            Ok(worker) => Some(worker.run(&start_line)),
            Err(e) => {
                eprintln!("loopline-bench: thread {t}: {e}");
                // Still at the start line, or everyone else waits forever.
                start_line.wait();
                None
            }
        }));
    }
    let cpu = measure_window(
        &start_line,
        workload.warmup,
        workload.duration,
        workload.server_pid,
    );
    let per_thread = handles
        .into_iter()
        .map(|handle| handle.join().ok().flatten())
        .collect();
    let run = MeasuredRun {
        target: workload.target,
        threads,
        warmup: workload.warmup,
        duration: workload.duration,
        cpu,
    };
    (run, per_thread)
}

/// Lines the main thread up with the workers (they start their window at
/// the same barrier), then samples server and client CPU at the start and
/// the end of the measured window.
fn measure_window(
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
    let cpu = loopline_proc::process_cpu_time(pid?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_dealt_out_evenly() {
        let shares: Vec<usize> = (0..3).map(|t| connections_for_thread(10, 3, t)).collect();
        assert_eq!(shares, [4, 3, 3]);
        assert_eq!(connections_for_thread(2, 4, 3), 0);
    }
}
