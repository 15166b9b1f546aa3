//! `loopline-bench`: a load generator for any protocol where each request is
//! one line and each response is a fixed number of lines (loopline itself, or
//! Redis inline commands such as `PING\r\n` -> `+PONG\r\n`).
//!
//! Three modes:
//! - `load` (default): C connections spread over T threads, each thread a
//!   mio (edge-triggered) event loop; every connection keeps DEPTH requests in
//!   flight, written as one batch, and every response's latency goes into an
//!   HDR histogram. Prints responses/s after warm-up and p50/p99/p99.9.
//! - `hold`: opens N idle connections (spilling onto 127.0.0.2, .3, ... when
//!   one source address runs out of ephemeral ports), waits for each greeting,
//!   prints `held N connections` and, with `--server-pid`, the server's RSS
//!   growth per connection; then holds them for `--hold` (or until stdin
//!   closes) and closes them.
//! - `churn`: C concurrent slots, each looping connect -> greeting -> QUIT ->
//!   reply -> close for the duration; prints connections/s.
//!
//! Every mode prints one human line and one JSON line on stdout; progress and
//! warnings go to stderr. Only loopback targets are accepted unless
//! `--allow-non-loopback` is given.

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// `println!` that ignores a closed stdout (`| head -1`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        let mut o = io::stdout().lock();
        let _ = writeln!(o, $($t)*);
        let _ = o.flush();
    }};
}

/// Read buffer per thread; responses are only counted, never kept.
const READ_BUF: usize = 256 * 1024;
/// Longest error prefix compared at the start of each response line.
const HEAD: usize = 8;
/// Slice of time an event loop sleeps at most, so deadlines are noticed.
const TICK: Duration = Duration::from_millis(100);
/// Largest latency the histograms hold (ns); larger values saturate.
const HIST_MAX_NS: u64 = 120_000_000_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Pipelined request/response load; reports responses/s and latency.
    Load,
    /// Open N idle connections and hold them; reports server RSS per connection.
    Hold,
    /// Connect, greeting, QUIT, reply, close, in a loop; reports connections/s.
    Churn,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Eol {
    /// `\r\n`
    Crlf,
    /// `\n`
    Lf,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loopline-bench",
    version,
    about = "Load generator for one-line-request/one-line-response TCP protocols (loopline, Redis inline commands)"
)]
struct Args {
    /// Server address HOST:PORT (loopback only unless --allow-non-loopback).
    #[arg(
        long = "addr",
        visible_alias = "host",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9000"
    )]
    addr: String,

    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    mode: Mode,

    /// Connections (load, hold) or concurrent connect/close slots (churn).
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,

    /// Requests in flight per connection (load mode).
    #[arg(
        short = 'P',
        long = "pipeline",
        value_name = "DEPTH",
        default_value_t = 1
    )]
    pipeline: usize,

    /// Measured time after the warm-up (seconds, or with a unit: 500ms, 2s, 1m).
    #[arg(short = 'd', long, value_parser = parse_dur, value_name = "SECS", default_value = "10")]
    duration: Duration,

    /// Time run before measuring starts (not counted).
    #[arg(long, value_parser = parse_dur, value_name = "SECS", default_value = "1")]
    warmup: Duration,

    /// The request line. Escapes \r \n \t \0 \\ \xHH are understood; if it does
    /// not end with a line feed, the --eol ending is appended. Default: `PING\r\n`
    /// in load mode, `QUIT\r\n` in churn mode.
    #[arg(long, value_name = "BYTES")]
    request: Option<String>,

    /// Append this many `x` bytes to the request, before its line ending
    /// (e.g. --request 'ECHO ' --payload 512).
    #[arg(long, value_name = "N", default_value_t = 0)]
    payload: usize,

    /// Line ending appended to a --request that has none.
    #[arg(long, value_enum, default_value_t = Eol::Crlf)]
    eol: Eol,

    /// Lines the server sends on connect, skipped before requests start
    /// (1 for loopline's READY, 0 for Redis).
    #[arg(long, value_name = "N", default_value_t = 1)]
    skip_greeting: usize,

    /// Lines in one response (Redis answers inline ECHO with 2: `$N` and the data).
    #[arg(long, value_name = "N", default_value_t = 1)]
    lines_per_response: usize,

    /// Event-loop threads (load, churn); connections are shared out evenly.
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,

    /// Hold mode: how long to hold the connections once all are open
    /// (default: until stdin closes, or a signal ends the process).
    #[arg(long, value_parser = parse_dur, value_name = "SECS")]
    hold: Option<Duration>,

    /// Server process to watch: VmRSS (hold mode) and utime+stime per
    /// response or connection (load, churn), read from /proc.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// Spread connections over this many source addresses 127.0.0.1..N from
    /// the start (more are added on their own when ports run out).
    #[arg(long, value_name = "N", default_value_t = 1)]
    source_ips: usize,

    /// Connection attempts in progress at once (connect + greeting).
    #[arg(long, value_name = "N", default_value_t = 256)]
    connect_window: usize,

    /// Give up opening connections after this long (load, hold).
    #[arg(long, value_parser = parse_dur, value_name = "SECS", default_value = "30")]
    connect_timeout: Duration,

    /// Churn mode: a cycle that takes longer than this counts as an error.
    #[arg(long, value_parser = parse_dur, value_name = "SECS", default_value = "5")]
    op_timeout: Duration,

    /// Churn mode: close right after the reply instead of waiting for the
    /// server to close first (leaves TIME_WAIT sockets on the client side).
    #[arg(long)]
    close_first: bool,

    /// Response lines starting with one of these (comma separated) count as
    /// errors. Empty string turns the check off.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "ERR,-ERR"
    )]
    error_prefix: Vec<String>,

    /// At the end, close connections with an RST (SO_LINGER 0) instead of a
    /// FIN, so no TIME_WAIT sockets pile up on the client side between runs.
    #[arg(long)]
    close_rst: bool,

    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_non_loopback: bool,
}

// ---------------------------------------------------------------------------
// small helpers

fn parse_dur(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{s}` (use 10, 0.5, 500ms, 2s, 1m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration `{s}`"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Turns `\r`, `\n`, `\t`, `\0`, `\\` and `\xHH` into bytes.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
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
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
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

fn build_request(raw: &str, payload: usize, eol: Eol) -> Vec<u8> {
    let mut v = unescape(raw);
    let ending: &[u8] = if v.ends_with(b"\r\n") {
        v.truncate(v.len() - 2);
        b"\r\n"
    } else if v.ends_with(b"\n") {
        v.truncate(v.len() - 1);
        b"\n"
    } else {
        match eol {
            Eol::Crlf => b"\r\n",
            Eol::Lf => b"\n",
        }
    };
    v.resize(v.len() + payload, b'x');
    v.extend_from_slice(ending);
    v
}

fn show_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(40) {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if b.len() > 40 {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

/// Raise the soft open-files limit to the hard limit.
fn raise_nofile() -> libc::rlim_t {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur
    }
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the comm field: f[0] is field 3 (state); utime is 14, stime 15
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some(ut + st)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Server CPU time (user + system) in microseconds.
fn server_cpu_us(pid: Option<u32>) -> Option<f64> {
    pid.and_then(proc_cpu_ticks)
        .map(|t| t as f64 * 1e6 / clk_tck())
}

/// This process's CPU time (user + system, all threads) in microseconds.
fn self_cpu_us() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn jnum(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "null".to_string(),
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("histogram bounds are valid")
}

fn q_us(h: &Histogram<u64>, q: f64) -> Option<f64> {
    if h.is_empty() {
        None
    } else {
        Some(h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// Makes the coming close send an RST when `rst` is set.
fn linger0<'s>(rst: bool, streams: impl Iterator<Item = &'s TcpStream>) {
    if rst {
        for s in streams {
            socket2::SockRef::from(s)
                .set_linger(Some(Duration::ZERO))
                .ok();
        }
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

// ---------------------------------------------------------------------------
// connecting

/// Source addresses for outgoing connections. With an IPv4 loopback target,
/// connections spill over to 127.0.0.2, .3, ... when a source runs out of
/// ephemeral ports (EADDRNOTAVAIL); other targets use the kernel's choice.
#[derive(Clone)]
struct Sources {
    enabled: bool,
    first: usize,
    count: usize,
    rr: usize,
}

impl Sources {
    fn new(target: SocketAddr, count: usize) -> Sources {
        let enabled = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
        Sources {
            enabled,
            first: 0,
            count: count.clamp(1, 250),
            rr: 0,
        }
    }

    fn pick(&mut self) -> Option<Ipv4Addr> {
        if !self.enabled {
            return None;
        }
        let idx = self.first + self.rr % self.count;
        self.rr = self.rr.wrapping_add(1);
        if idx == 0 && self.count == 1 {
            None // plain connect: the kernel picks 127.0.0.1
        } else {
            Some(Ipv4Addr::new(127, 0, 0, (1 + idx) as u8))
        }
    }

    /// The current first source ran out of ports: move on. False when no
    /// source is left.
    fn exhausted(&mut self) -> bool {
        if !self.enabled || self.first + self.count >= 250 {
            return false;
        }
        self.first += 1;
        eprintln!(
            "loopline-bench: source address ran out of ports; now using 127.0.0.{}..127.0.0.{}",
            self.first + 1,
            self.first + self.count
        );
        true
    }
}

fn try_connect(target: SocketAddr, src: Option<Ipv4Addr>, nodelay: bool) -> io::Result<TcpStream> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if nodelay {
        sock.set_nodelay(true)?;
    }
    if let Some(ip) = src {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own fd with a c_int option value. Lets
        // the port be chosen at connect time, per destination.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
    }
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(sock)))
}

/// Opens a non-blocking connection, moving to the next source address on
/// port exhaustion.
fn open_conn(target: SocketAddr, sources: &mut Sources, nodelay: bool) -> io::Result<TcpStream> {
    loop {
        let src = sources.pick();
        match try_connect(target, src, nodelay) {
            Err(e)
                if (e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    || e.raw_os_error() == Some(libc::EADDRINUSE))
                    && sources.exhausted() => {}
            r => return r,
        }
    }
}

/// The event says the peer closed or the socket failed.
fn closing(ev: &mio::event::Event) -> bool {
    ev.is_read_closed() || ev.is_error()
}

/// After an event on a connecting socket: `None` while still connecting.
fn connect_result(s: &TcpStream, ev: &mio::event::Event) -> Option<io::Result<()>> {
    match s.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        Ok(None) => {}
    }
    match s.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == ErrorKind::NotConnected => {
            if ev.is_error() || ev.is_write_closed() {
                Some(Err(io::Error::new(
                    ErrorKind::ConnectionRefused,
                    "connect failed",
                )))
            } else {
                None
            }
        }
        Err(e) => Some(Err(e)),
    }
}

// ---------------------------------------------------------------------------
// counting response lines

/// Counts lines with memchr and checks each line's first bytes against the
/// error prefixes, across read boundaries, without allocating.
#[derive(Clone, Default)]
struct LineScan {
    head: [u8; HEAD],
    len: usize,
}

impl LineScan {
    #[inline]
    fn feed(&mut self, seg: &[u8]) {
        if self.len < HEAD {
            let n = (HEAD - self.len).min(seg.len());
            self.head[self.len..self.len + n].copy_from_slice(&seg[..n]);
            self.len += n;
        }
    }

    /// Returns (complete lines, lines that look like errors).
    #[inline]
    fn scan(&mut self, data: &[u8], prefixes: &[Vec<u8>]) -> (usize, usize) {
        if prefixes.is_empty() {
            return (memchr::memchr_iter(b'\n', data).count(), 0);
        }
        let (mut lines, mut errs, mut start) = (0, 0, 0);
        for nl in memchr::memchr_iter(b'\n', data) {
            self.feed(&data[start..nl]);
            let head = &self.head[..self.len];
            if prefixes.iter().any(|p| head.starts_with(p)) {
                errs += 1;
            }
            self.len = 0;
            lines += 1;
            start = nl + 1;
        }
        self.feed(&data[start..]);
        (lines, errs)
    }
}

enum ReadOutcome {
    Open,
    Eof,
    Failed,
}

/// Reads until the socket is drained: a short read or WouldBlock both mean
/// the receive queue is empty, which is enough for edge-triggered epoll on a
/// stream socket, except that a FIN that came with the same edge would be
/// missed: `to_end` (the event said read-closed or error) reads on to the
/// end of the stream. Returns (lines, error lines, outcome).
fn drain(
    stream: &mut TcpStream,
    buf: &mut [u8],
    scan: &mut LineScan,
    prefixes: &[Vec<u8>],
    to_end: bool,
) -> (usize, usize, ReadOutcome) {
    let (mut lines, mut errs) = (0, 0);
    loop {
        match stream.read(buf) {
            Ok(0) => return (lines, errs, ReadOutcome::Eof),
            Ok(n) => {
                let (l, e) = scan.scan(&buf[..n], prefixes);
                lines += l;
                errs += e;
                if n < buf.len() && !to_end {
                    return (lines, errs, ReadOutcome::Open);
                }
            }
            Err(e) if is_would_block(&e) => return (lines, errs, ReadOutcome::Open),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (lines, errs, ReadOutcome::Failed),
        }
    }
}

// ---------------------------------------------------------------------------
// load mode

struct Cfg {
    target: SocketAddr,
    request: Vec<u8>,
    depth: usize,
    skip: usize,
    lpr: usize,
    warmup: Duration,
    duration: Duration,
    prefixes: Vec<Vec<u8>>,
    connect_window: usize,
    connect_timeout: Duration,
    op_timeout: Duration,
    close_first: bool,
    close_rst: bool,
    source_ips: usize,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum St {
    Connecting,
    Greeting,
    /// Greeting done, waiting for the start signal.
    Ready,
    Active,
}

struct LConn {
    stream: TcpStream,
    st: St,
    skip: usize,
    line_rem: usize,
    scan: LineScan,
    /// Send instants of the requests in flight, oldest first (capacity DEPTH).
    sent: VecDeque<Instant>,
    /// Request bytes queued but not yet written.
    unsent: usize,
    /// Offset inside the request of the next byte to write.
    wpos: usize,
}

struct LoadStats {
    responses: u64,
    hist: Histogram<u64>,
    conn_errors: u64,
    err_lines: u64,
    connected: u64,
    unexpected: u64,
}

struct LoadWorker<'a> {
    cfg: &'a Cfg,
    poll: Poll,
    conns: Vec<Option<LConn>>,
    sources: Sources,
    buf: Vec<u8>,
    /// The request repeated DEPTH+1 times: any queued run of requests,
    /// starting at any offset, is one contiguous slice of it.
    batch: Vec<u8>,
    stats: LoadStats,
    started: bool,
    warm_end: Instant,
    end: Instant,
    in_setup: usize,
    next_open: usize,
}

impl<'a> LoadWorker<'a> {
    fn new(cfg: &'a Cfg, n: usize, thread_idx: usize) -> io::Result<LoadWorker<'a>> {
        let mut sources = Sources::new(cfg.target, cfg.source_ips);
        sources.rr = thread_idx;
        let now = Instant::now();
        Ok(LoadWorker {
            cfg,
            poll: Poll::new()?,
            conns: (0..n).map(|_| None).collect(),
            sources,
            buf: vec![0; READ_BUF],
            batch: cfg.request.repeat(cfg.depth + 1),
            stats: LoadStats {
                responses: 0,
                hist: new_hist(),
                conn_errors: 0,
                err_lines: 0,
                connected: 0,
                unexpected: 0,
            },
            started: false,
            warm_end: now,
            end: now,
            in_setup: 0,
            next_open: 0,
        })
    }

    fn open_more(&mut self) {
        while self.next_open < self.conns.len() && self.in_setup < self.cfg.connect_window {
            let i = self.next_open;
            self.next_open += 1;
            match open_conn(self.cfg.target, &mut self.sources, true) {
                Ok(mut stream) => {
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.stats.conn_errors += 1;
                        continue;
                    }
                    self.conns[i] = Some(LConn {
                        stream,
                        st: St::Connecting,
                        skip: self.cfg.skip,
                        line_rem: 0,
                        scan: LineScan::default(),
                        sent: VecDeque::with_capacity(self.cfg.depth),
                        unsent: 0,
                        wpos: 0,
                    });
                    self.in_setup += 1;
                }
                Err(e) => {
                    if self.stats.conn_errors == 0 {
                        eprintln!("loopline-bench: connect to {}: {e}", self.cfg.target);
                    }
                    self.stats.conn_errors += 1;
                }
            }
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(c) = self.conns[i].take() {
            if matches!(c.st, St::Connecting | St::Greeting) {
                self.in_setup -= 1;
            }
            self.stats.conn_errors += 1;
            // dropping the stream closes it, which also removes it from epoll
        }
    }

    /// The connection finished its greeting.
    fn ready(&mut self, i: usize) {
        self.in_setup -= 1;
        self.stats.connected += 1;
        let started = self.started;
        if let Some(c) = self.conns[i].as_mut() {
            c.st = St::Ready;
        }
        if started {
            self.kick(i);
        }
    }

    /// Start a ready connection: queue DEPTH requests and write them.
    fn kick(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        if c.st != St::Ready {
            return;
        }
        c.st = St::Active;
        let now = Instant::now();
        for _ in 0..self.cfg.depth {
            c.sent.push_back(now);
        }
        c.unsent += self.cfg.depth * self.cfg.request.len();
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let rlen = self.cfg.request.len();
        let mut failed = false;
        while c.unsent > 0 {
            let slice = &self.batch[c.wpos..c.wpos + c.unsent];
            match c.stream.write(slice) {
                Ok(n) => {
                    c.unsent -= n;
                    c.wpos = (c.wpos + n) % rlen;
                    if n < slice.len() {
                        break; // send buffer full: wait for the writable edge
                    }
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.kill(i);
        }
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let i = ev.token().0;
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        if c.st == St::Connecting {
            match connect_result(&c.stream, ev) {
                None => return,
                Some(Err(_)) => {
                    self.kill(i);
                    return;
                }
                Some(Ok(())) => {
                    c.st = St::Greeting;
                    if self.cfg.skip == 0 {
                        self.ready(i);
                    }
                }
            }
            // the greeting may have arrived with the connect edge
            self.on_readable(i, closing(ev));
            return;
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.on_readable(i, closing(ev));
        }
        if ev.is_writable() {
            if let Some(c) = self.conns[i].as_ref() {
                if c.st == St::Active && c.unsent > 0 {
                    self.flush(i);
                }
            }
        }
    }

    fn on_readable(&mut self, i: usize, to_end: bool) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let (lines, errs, outcome) = drain(
            &mut c.stream,
            &mut self.buf,
            &mut c.scan,
            &self.cfg.prefixes,
            to_end,
        );
        self.stats.err_lines += errs as u64;
        if lines > 0 {
            self.on_lines(i, lines);
        }
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof | ReadOutcome::Failed => self.kill(i),
        }
    }

    fn on_lines(&mut self, i: usize, lines: usize) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        let mut l = lines;
        if c.skip > 0 {
            let k = l.min(c.skip);
            c.skip -= k;
            l -= k;
        }
        if c.st == St::Greeting && c.skip == 0 {
            self.ready(i);
            // lines after the greeting before any request was sent are noise
            return;
        }
        if c.st != St::Active || l == 0 {
            return;
        }
        let tot = c.line_rem + l;
        let r = tot / self.cfg.lpr;
        c.line_rem = tot % self.cfg.lpr;
        if r == 0 {
            return;
        }
        let now = Instant::now();
        let in_window = now >= self.warm_end;
        let hist = &mut self.stats.hist;
        let mut run: Option<(Instant, u64)> = None;
        let mut got = 0u64;
        for _ in 0..r {
            match c.sent.pop_front() {
                Some(t) => {
                    got += 1;
                    if in_window {
                        run = match run {
                            Some((rt, n)) if rt == t => Some((rt, n + 1)),
                            Some((rt, n)) => {
                                hist.saturating_record_n(
                                    now.duration_since(rt).as_nanos() as u64,
                                    n,
                                );
                                Some((t, 1))
                            }
                            None => Some((t, 1)),
                        };
                    }
                }
                None => self.stats.unexpected += 1,
            }
        }
        if let Some((rt, n)) = run {
            hist.saturating_record_n(now.duration_since(rt).as_nanos() as u64, n);
        }
        if in_window {
            self.stats.responses += got;
        }
        if now < self.end {
            let k = self.cfg.depth - c.sent.len();
            for _ in 0..k {
                c.sent.push_back(now);
            }
            c.unsent += k * self.cfg.request.len();
            self.flush(i);
        }
    }

    fn run(mut self, barrier: &Barrier) -> LoadStats {
        let mut events = Events::with_capacity(1024);
        // set-up: open every connection and wait for its greeting
        let deadline = Instant::now() + self.cfg.connect_timeout;
        self.open_more();
        while self.in_setup > 0 || self.next_open < self.conns.len() {
            let now = Instant::now();
            if now >= deadline {
                eprintln!(
                    "loopline-bench: connect timeout: {} connection(s) still not ready",
                    self.in_setup + self.conns.len() - self.next_open
                );
                break;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK.min(deadline - now))) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("loopline-bench: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                self.on_event(ev);
            }
            self.open_more();
        }
        barrier.wait();

        // measured run
        let start = Instant::now();
        self.warm_end = start + self.cfg.warmup;
        self.end = self.warm_end + self.cfg.duration;
        self.started = true;
        for i in 0..self.conns.len() {
            self.kick(i);
        }
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK.min(self.end - now))) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("loopline-bench: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                self.on_event(ev);
            }
        }
        linger0(
            self.cfg.close_rst,
            self.conns.iter().flatten().map(|c| &c.stream),
        );
        self.stats
    }
}

fn split(total: usize, parts: usize, idx: usize) -> usize {
    total / parts + usize::from(idx < total % parts)
}

struct CpuWindow {
    server_us: Option<f64>,
    client_us: f64,
}

impl CpuWindow {
    /// For `count` units (responses, connections) done in `window`: the
    /// rate per second, and server and client CPU microseconds per unit.
    fn per_unit(&self, count: u64, window: Duration) -> (f64, Option<f64>, Option<f64>) {
        let secs = window.as_secs_f64();
        let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
        let per = |us: f64| (count > 0).then(|| us / count as f64);
        (rate, self.server_us.and_then(per), per(self.client_us))
    }
}

/// Lines the main thread up with the workers, then samples server and client
/// CPU at the start and the end of the measured window.
fn measure_window(
    barrier: &Barrier,
    warmup: Duration,
    duration: Duration,
    pid: Option<u32>,
) -> CpuWindow {
    barrier.wait();
    let start = Instant::now();
    thread::sleep(warmup);
    let s0 = server_cpu_us(pid);
    let c0 = self_cpu_us();
    let end = start + warmup + duration;
    let now = Instant::now();
    if end > now {
        thread::sleep(end - now);
    }
    let s1 = server_cpu_us(pid);
    let c1 = self_cpu_us();
    CpuWindow {
        server_us: match (s0, s1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        client_us: c1 - c0,
    }
}

fn run_load(args: &Args, cfg: Cfg) -> ExitCode {
    let threads = args.threads.clamp(1, args.connections.max(1));
    let cfg = Arc::new(cfg);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = split(args.connections, threads, t);
        let cfg = Arc::clone(&cfg);
        let barrier = Arc::clone(&barrier);
        handles.push(thread::spawn(move || match LoadWorker::new(&cfg, n, t) {
            Ok(w) => Some(w.run(&barrier)),
            Err(e) => {
                eprintln!("loopline-bench: thread {t}: {e}");
                barrier.wait();
                None
            }
        }));
    }
    let cpu = measure_window(&barrier, cfg.warmup, cfg.duration, args.server_pid);
    let mut hist = new_hist();
    let (mut responses, mut conn_errors, mut err_lines, mut connected, mut unexpected) =
        (0, 0, 0, 0, 0);
    for h in handles {
        if let Ok(Some(s)) = h.join() {
            hist.add(&s.hist).ok();
            responses += s.responses;
            conn_errors += s.conn_errors;
            err_lines += s.err_lines;
            connected += s.connected;
            unexpected += s.unexpected;
        } else {
            conn_errors += 1;
        }
    }
    let secs = cfg.duration.as_secs_f64();
    let (rps, server_cpu, client_cpu) = cpu.per_unit(responses, cfg.duration);
    let errors = conn_errors + err_lines + unexpected;
    let (p50, p99, p999, max) = (
        q_us(&hist, 0.5),
        q_us(&hist, 0.99),
        q_us(&hist, 0.999),
        if hist.is_empty() {
            None
        } else {
            Some(hist.max() as f64 / 1000.0)
        },
    );
    let f = |v: Option<f64>| jnum(v, 1);
    out!(
        "load {}: {} conns x depth {} ({} thread{}, {:.1}s after {:.1}s warm-up): {:.0} responses/s, latency p50 {} us, p99 {} us, p99.9 {} us, max {} us; errors {}{}; client CPU {:.0}% ({} us/resp){}",
        cfg.target,
        connected,
        cfg.depth,
        threads,
        if threads == 1 { "" } else { "s" },
        secs,
        cfg.warmup.as_secs_f64(),
        rps,
        f(p50),
        f(p99),
        f(p999),
        f(max),
        errors,
        if errors > 0 {
            format!(" (connections {conn_errors}, error lines {err_lines}, unexpected {unexpected})")
        } else {
            String::new()
        },
        if secs > 0.0 { cpu.client_us / (secs * 1e4) } else { 0.0 },
        jnum(client_cpu, 3),
        match server_cpu {
            Some(v) => format!("; server CPU {v:.3} us/resp"),
            None => String::new(),
        }
    );
    out!(
        "{{\"mode\":\"load\",\"addr\":\"{}\",\"connections\":{},\"connected\":{},\"pipeline\":{},\"threads\":{},\"duration_s\":{:.3},\"responses\":{},\"rps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"errors\":{},\"conn_errors\":{},\"err_lines\":{},\"server_cpu_us_per_resp\":{},\"client_cpu_us_per_resp\":{}}}",
        cfg.target,
        args.connections,
        connected,
        cfg.depth,
        threads,
        secs,
        responses,
        rps,
        f(p50),
        f(p99),
        f(p999),
        f(max),
        errors,
        conn_errors,
        err_lines,
        jnum(server_cpu, 4),
        jnum(client_cpu, 4),
    );
    if responses == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------
// hold mode

struct HConn {
    stream: TcpStream,
    st: St,
    skip: usize,
    scan: LineScan,
}

fn run_hold(args: &Args, cfg: &Cfg) -> ExitCode {
    let n = args.connections;
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loopline-bench: poll: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut poll = poll;
    let mut events = Events::with_capacity(1024);
    let mut sources = Sources::new(cfg.target, cfg.source_ips);
    let mut buf = vec![0u8; 64 * 1024];
    let mut conns: Vec<Option<HConn>> = (0..n).map(|_| None).collect();
    let rss_before = args.server_pid.and_then(rss_kb);
    let t0 = Instant::now();
    let deadline = t0 + cfg.connect_timeout;
    let (mut next_open, mut in_setup, mut held, mut failed, mut dropped) =
        (0usize, 0usize, 0usize, 0usize, 0usize);

    // one poll step, shared by the opening and the holding phase
    let mut step = |conns: &mut Vec<Option<HConn>>,
                    poll: &mut Poll,
                    events: &mut Events,
                    timeout: Duration,
                    in_setup: &mut usize,
                    held: &mut usize,
                    failed: &mut usize,
                    dropped: &mut usize| {
        if let Err(e) = poll.poll(events, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                eprintln!("loopline-bench: poll: {e}");
            }
            return;
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else { continue };
            let mut dead = false;
            if c.st == St::Connecting {
                match connect_result(&c.stream, ev) {
                    None => continue,
                    Some(Err(_)) => dead = true,
                    Some(Ok(())) => {
                        if c.skip == 0 {
                            c.st = St::Active;
                            *in_setup -= 1;
                            *held += 1;
                        } else {
                            c.st = St::Greeting;
                        }
                    }
                }
            }
            if !dead {
                let (lines, _errs, outcome) =
                    drain(&mut c.stream, &mut buf, &mut c.scan, &[], closing(ev));
                if c.st == St::Greeting && lines > 0 {
                    c.skip = c.skip.saturating_sub(lines);
                    if c.skip == 0 {
                        c.st = St::Active;
                        *in_setup -= 1;
                        *held += 1;
                    }
                }
                dead = !matches!(outcome, ReadOutcome::Open);
            }
            if dead {
                let c = conns[i].take().expect("checked above");
                if c.st == St::Active {
                    *held -= 1;
                    *dropped += 1;
                } else {
                    *in_setup -= 1;
                    *failed += 1;
                }
            }
        }
    };

    while held + failed + dropped < n {
        while next_open < n && in_setup < cfg.connect_window {
            let i = next_open;
            next_open += 1;
            match open_conn(cfg.target, &mut sources, false) {
                Ok(mut stream) => {
                    if poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok()
                    {
                        conns[i] = Some(HConn {
                            stream,
                            st: St::Connecting,
                            skip: cfg.skip,
                            scan: LineScan::default(),
                        });
                        in_setup += 1;
                    } else {
                        failed += 1;
                    }
                }
                Err(e) => {
                    if failed == 0 {
                        eprintln!("loopline-bench: connect to {}: {e}", cfg.target);
                    }
                    failed += 1;
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            eprintln!(
                "loopline-bench: connect timeout with {held} held, {} not ready",
                n - held - failed - dropped
            );
            break;
        }
        step(
            &mut conns,
            &mut poll,
            &mut events,
            TICK.min(deadline - now),
            &mut in_setup,
            &mut held,
            &mut failed,
            &mut dropped,
        );
    }
    let open_secs = t0.elapsed().as_secs_f64();
    // without a greeting there is no sign the server has taken the
    // connection in yet: give it a moment before reading its RSS
    let settle = Instant::now()
        + if cfg.skip == 0 {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(100)
        };
    while Instant::now() < settle {
        let left = settle.saturating_duration_since(Instant::now());
        step(
            &mut conns,
            &mut poll,
            &mut events,
            left,
            &mut in_setup,
            &mut held,
            &mut failed,
            &mut dropped,
        );
    }
    let rss_after = args.server_pid.and_then(rss_kb);
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if held > 0 => Some((b as f64 - a as f64) * 1024.0 / held as f64),
        _ => None,
    };
    let errors = failed + dropped;
    out!(
        "held {held} connections (of {n}; {errors} failed) to {} in {open_secs:.2}s{}",
        cfg.target,
        match (rss_before, rss_after, per_conn) {
            (Some(a), Some(b), Some(p)) =>
                format!("; server VmRSS {a} kB before, {b} kB after: {p:.0} bytes per connection"),
            _ => String::new(),
        }
    );
    out!(
        "{{\"mode\":\"hold\",\"addr\":\"{}\",\"connections\":{n},\"held\":{held},\"errors\":{errors},\"open_s\":{open_secs:.3},\"rss_before_kb\":{},\"rss_after_kb\":{},\"bytes_per_conn\":{}}}",
        cfg.target,
        rss_before.map_or("null".into(), |v| v.to_string()),
        rss_after.map_or("null".into(), |v| v.to_string()),
        jnum(per_conn, 0),
    );
    // flush so a reader of a pipe sees the lines while we hold
    io::stdout().flush().ok();

    // hold
    let stdin_closed = Arc::new(AtomicBool::new(false));
    let hold_until = match args.hold {
        Some(d) => Some(Instant::now() + d),
        None => {
            eprintln!("loopline-bench: holding until stdin closes (or a signal)");
            let flag = Arc::clone(&stdin_closed);
            thread::spawn(move || {
                let mut sink = [0u8; 512];
                let mut stdin = io::stdin().lock();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                flag.store(true, Ordering::SeqCst);
            });
            None
        }
    };
    loop {
        if stdin_closed.load(Ordering::SeqCst) {
            break;
        }
        let timeout = match hold_until {
            Some(t) => {
                let now = Instant::now();
                if now >= t {
                    break;
                }
                TICK.min(t - now)
            }
            None => TICK,
        };
        step(
            &mut conns,
            &mut poll,
            &mut events,
            timeout,
            &mut in_setup,
            &mut held,
            &mut failed,
            &mut dropped,
        );
    }
    let still = held;
    linger0(cfg.close_rst, conns.iter().flatten().map(|c| &c.stream));
    drop(conns);
    out!("closed {still} connections ({dropped} dropped by the server while held)");
    if held == 0 && n > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------
// churn mode

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum CSt {
    Connecting,
    Greeting,
    Sending,
    AwaitReply,
    AwaitClose,
}

struct Slot {
    stream: TcpStream,
    st: CSt,
    skip: usize,
    lines: usize,
    wpos: usize,
    scan: LineScan,
    started: Instant,
}

struct ChurnStats {
    cycles: u64,
    hist: Histogram<u64>,
    errors: u64,
    err_lines: u64,
}

struct ChurnWorker<'a> {
    cfg: &'a Cfg,
    poll: Poll,
    slots: Vec<Option<Slot>>,
    sources: Sources,
    buf: Vec<u8>,
    stats: ChurnStats,
    warm_end: Instant,
    end: Instant,
    first_error: bool,
}

impl<'a> ChurnWorker<'a> {
    fn start(&mut self, i: usize) {
        let now = Instant::now();
        if now >= self.end {
            return;
        }
        match open_conn(self.cfg.target, &mut self.sources, true) {
            Ok(mut stream) => {
                if self
                    .poll
                    .registry()
                    .register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    self.stats.errors += 1;
                    return;
                }
                self.slots[i] = Some(Slot {
                    stream,
                    st: CSt::Connecting,
                    skip: self.cfg.skip,
                    lines: 0,
                    wpos: 0,
                    scan: LineScan::default(),
                    started: now,
                });
            }
            Err(e) => {
                if self.first_error {
                    eprintln!("loopline-bench: connect to {}: {e}", self.cfg.target);
                    self.first_error = false;
                }
                self.stats.errors += 1;
            }
        }
    }

    fn finish(&mut self, i: usize, ok: bool) {
        if let Some(s) = self.slots[i].take() {
            let now = Instant::now();
            if now >= self.warm_end && now < self.end {
                if ok {
                    self.stats.cycles += 1;
                    self.stats
                        .hist
                        .saturating_record(now.duration_since(s.started).as_nanos() as u64);
                } else {
                    self.stats.errors += 1;
                }
            }
            drop(s);
        }
        self.start(i);
    }

    fn send(&mut self, i: usize) {
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        let req = &self.cfg.request;
        while s.wpos < req.len() {
            match s.stream.write(&req[s.wpos..]) {
                Ok(n) => s.wpos += n,
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.finish(i, false);
                    return;
                }
            }
        }
        s.st = CSt::AwaitReply;
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let i = ev.token().0;
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        if s.st == CSt::Connecting {
            match connect_result(&s.stream, ev) {
                None => return,
                Some(Err(_)) => {
                    self.finish(i, false);
                    return;
                }
                Some(Ok(())) => {
                    if s.skip > 0 {
                        s.st = CSt::Greeting;
                    } else {
                        s.st = CSt::Sending;
                        self.send(i);
                    }
                }
            }
        } else if s.st == CSt::Sending && ev.is_writable() {
            self.send(i);
        }
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        let (lines, errs, outcome) = drain(
            &mut s.stream,
            &mut self.buf,
            &mut s.scan,
            &self.cfg.prefixes,
            closing(ev),
        );
        self.stats.err_lines += errs as u64;
        let mut l = lines;
        if s.skip > 0 {
            let k = l.min(s.skip);
            s.skip -= k;
            l -= k;
            if s.skip == 0 && s.st == CSt::Greeting {
                s.st = CSt::Sending;
                self.send(i);
            }
        }
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        if s.st == CSt::AwaitReply {
            s.lines += l;
            if s.lines >= self.cfg.lpr {
                s.st = CSt::AwaitClose;
                if self.cfg.close_first {
                    self.finish(i, true);
                    return;
                }
            }
        }
        let replied = s.st == CSt::AwaitClose;
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof => self.finish(i, replied),
            ReadOutcome::Failed => self.finish(i, false),
        }
    }

    fn run(mut self, barrier: &Barrier) -> ChurnStats {
        let mut events = Events::with_capacity(1024);
        barrier.wait();
        let start = Instant::now();
        self.warm_end = start + self.cfg.warmup;
        self.end = self.warm_end + self.cfg.duration;
        for i in 0..self.slots.len() {
            self.start(i);
        }
        let mut next_sweep = start + TICK;
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            if now >= next_sweep {
                next_sweep = now + TICK;
                for i in 0..self.slots.len() {
                    let stuck = match &self.slots[i] {
                        Some(s) => now.duration_since(s.started) > self.cfg.op_timeout,
                        None => true, // a failed connect: try again
                    };
                    if stuck {
                        self.finish(i, false);
                    }
                }
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK.min(self.end - now))) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("loopline-bench: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                self.on_event(ev);
            }
        }
        linger0(
            self.cfg.close_rst,
            self.slots.iter().flatten().map(|s| &s.stream),
        );
        self.stats
    }
}

fn run_churn(args: &Args, cfg: Cfg) -> ExitCode {
    let threads = args.threads.clamp(1, args.connections.max(1));
    let cfg = Arc::new(cfg);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = split(args.connections, threads, t);
        let cfg = Arc::clone(&cfg);
        let barrier = Arc::clone(&barrier);
        handles.push(thread::spawn(move || {
            let poll = match Poll::new() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("loopline-bench: thread {t}: {e}");
                    barrier.wait();
                    return None;
                }
            };
            let mut sources = Sources::new(cfg.target, cfg.source_ips);
            sources.rr = t;
            let now = Instant::now();
            let w = ChurnWorker {
                cfg: &cfg,
                poll,
                slots: (0..n).map(|_| None).collect(),
                sources,
                buf: vec![0; 16 * 1024],
                stats: ChurnStats {
                    cycles: 0,
                    hist: new_hist(),
                    errors: 0,
                    err_lines: 0,
                },
                warm_end: now,
                end: now,
                first_error: t == 0,
            };
            Some(w.run(&barrier))
        }));
    }
    let cpu = measure_window(&barrier, cfg.warmup, cfg.duration, args.server_pid);
    let mut hist = new_hist();
    let (mut cycles, mut errors, mut err_lines) = (0u64, 0u64, 0u64);
    for h in handles {
        if let Ok(Some(s)) = h.join() {
            hist.add(&s.hist).ok();
            cycles += s.cycles;
            errors += s.errors;
            err_lines += s.err_lines;
        } else {
            errors += 1;
        }
    }
    let secs = cfg.duration.as_secs_f64();
    let (cps, server_cpu, client_cpu) = cpu.per_unit(cycles, cfg.duration);
    let f = |v: Option<f64>| jnum(v, 1);
    let (p50, p99, p999) = (q_us(&hist, 0.5), q_us(&hist, 0.99), q_us(&hist, 0.999));
    let all_errors = errors + err_lines;
    out!(
        "churn {}: {} slots ({} thread{}, {:.1}s after {:.1}s warm-up): {:.0} connections/s, cycle p50 {} us, p99 {} us, p99.9 {} us; errors {}; client CPU {} us/conn{}",
        cfg.target,
        args.connections,
        threads,
        if threads == 1 { "" } else { "s" },
        secs,
        cfg.warmup.as_secs_f64(),
        cps,
        f(p50),
        f(p99),
        f(p999),
        all_errors,
        jnum(client_cpu, 2),
        match server_cpu {
            Some(v) => format!("; server CPU {v:.2} us/conn"),
            None => String::new(),
        }
    );
    out!(
        "{{\"mode\":\"churn\",\"addr\":\"{}\",\"connections\":{},\"threads\":{},\"duration_s\":{:.3},\"cycles\":{},\"cps\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"errors\":{},\"server_cpu_us_per_conn\":{},\"client_cpu_us_per_conn\":{}}}",
        cfg.target,
        args.connections,
        threads,
        secs,
        cycles,
        cps,
        f(p50),
        f(p99),
        f(p999),
        all_errors,
        jnum(server_cpu, 3),
        jnum(client_cpu, 3),
    );
    if cycles == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = Args::parse();
    let usage = |msg: String| {
        eprintln!("loopline-bench: {msg}");
        ExitCode::from(2)
    };
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
    if args.pipeline == 0 {
        return usage("--pipeline must be at least 1".into());
    }
    if args.lines_per_response == 0 {
        return usage("--lines-per-response must be at least 1".into());
    }
    if args.threads == 0 {
        return usage("--threads must be at least 1".into());
    }
    if args.connect_window == 0 {
        return usage("--connect-window must be at least 1".into());
    }
    let nofile = raise_nofile();
    if args.connections as libc::rlim_t + 64 > nofile {
        eprintln!(
            "loopline-bench: warning: {} connections but only {nofile} open files allowed",
            args.connections
        );
    }
    let default_req = match args.mode {
        Mode::Churn => "QUIT\\r\\n",
        _ => "PING\\r\\n",
    };
    let request = build_request(
        args.request.as_deref().unwrap_or(default_req),
        args.payload,
        args.eol,
    );
    let prefixes: Vec<Vec<u8>> = args
        .error_prefix
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut b = unescape(p);
            b.truncate(HEAD);
            b
        })
        .collect();
    if args.mode != Mode::Hold {
        eprintln!(
            "loopline-bench: {:?} {} request `{}`, {} greeting line(s), {} line(s) per response",
            args.mode,
            target,
            show_bytes(&request),
            args.skip_greeting,
            args.lines_per_response
        );
    }
    let cfg = Cfg {
        target,
        request,
        depth: args.pipeline,
        skip: args.skip_greeting,
        lpr: args.lines_per_response,
        warmup: args.warmup,
        duration: args.duration,
        prefixes,
        connect_window: args.connect_window,
        connect_timeout: args.connect_timeout,
        op_timeout: args.op_timeout,
        close_first: args.close_first,
        close_rst: args.close_rst,
        source_ips: args.source_ips,
    };
    match args.mode {
        Mode::Load => run_load(&args, cfg),
        Mode::Hold => run_hold(&args, &cfg),
        Mode::Churn => run_churn(&args, cfg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(build_request("PING\\r\\n", 0, Eol::Lf), b"PING\r\n");
        assert_eq!(build_request("PING", 0, Eol::Lf), b"PING\n");
        assert_eq!(build_request("PING", 0, Eol::Crlf), b"PING\r\n");
        assert_eq!(build_request("ECHO ", 3, Eol::Lf), b"ECHO xxx\n");
        assert_eq!(build_request("ECHO \\n", 2, Eol::Crlf), b"ECHO xx\n");
        assert_eq!(unescape("a\\x41\\x4"), b"aA\\x4");
        assert_eq!(unescape("\\\\\\t"), b"\\\t");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_dur("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_dur("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_dur("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_dur("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_dur("x").is_err());
    }

    #[test]
    fn line_scan_across_reads() {
        let p = vec![b"ERR".to_vec(), b"-ERR".to_vec()];
        let mut s = LineScan::default();
        assert_eq!(s.scan(b"PONG\nE", &p), (1, 0));
        assert_eq!(s.scan(b"R", &p), (0, 0));
        assert_eq!(s.scan(b"R x\n-ERR y\r\n+PONG\r\n", &p), (3, 2));
        assert_eq!(s.scan(b"\n", &p), (1, 0));
    }
}
