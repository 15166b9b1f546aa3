//! What the tests and the measuring tools read of a running process (the
//! server, usually): its resident memory and its CPU time so far. Linux
//! only, from `/proc`; `None` elsewhere, or when the process is gone.
//!
//! Not part of the server: the server never measures itself this way.

use std::time::Duration;

/// Resident memory of process `pid`, in KiB (`VmRSS`). `None` where it
/// cannot be read (not Linux, or the process is gone).
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmRSS:")
}

/// A `Name:   value kB` field of `/proc/PID/status` (Linux only).
pub fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU time of process `pid` so far. `None` where it cannot
/// be read (not Linux, or the process is gone).
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from the last ')'. utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_millis((utime + stime) * 1000 / ticks))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measurable() {
        let pid = std::process::id();
        assert!(process_rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(process_cpu_time(pid).is_some());
        assert!(proc_status_field(pid, "VmHWM:").is_some());
    }
}
