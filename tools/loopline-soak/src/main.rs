//! Soak test for loopline: a bounded run of mixed, partly hostile clients
//! against the real release binary, then a health check.
//!
//! Run it through `scripts/soak.sh` (which builds both binaries), or:
//!
//! ```text
//! cargo build --release -p loopline -p loopline-soak
//! target/release/loopline-soak [--duration DUR] [--warmup DUR] [--binary PATH]
//! ```
//!
//! DUR is read by the server's own parser: `180`, `90s`, `3m`.
//!
//! It starts `loopline --listen 127.0.0.1:0 --idle-timeout 5s --write-timeout 5s`
//! at RUST_LOG=info and drives, side by side: well-behaved clients,
//! pipelining clients, slow readers, clients that stop reading altogether,
//! clients that reset, clients that trickle a byte at a time and idle
//! clients. After a warm-up it lets the server settle and takes its memory
//! as the reference; at the end it checks that the server is up and
//! answering, that `STATS connections` is back to 1 (the asking
//! connection), that its log has no panic, error or unexpected warning, and
//! that its memory is back within a small margin of the reference. It prints
//! the figures and exits with 1 if a check failed (2 for bad options).
//!
//! The server's memory and CPU time come from `loopline_proc` (`/proc`,
//! Linux only); elsewhere they read as 0, so there the memory check proves
//! nothing.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use loopline::config::parse_duration;
use loopline_proc::{process_cpu_time, process_rss_kib};
use socket2::{Domain, Protocol, Socket, Type};

const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Any single wait of a client, and the wait for the server to settle.
const PATIENCE: Duration = Duration::from_secs(30);
/// How far the server's memory may be above the post-warm-up reference.
const RSS_MARGIN_KIB: u64 = 4 * 1024;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

struct Options {
    duration: Duration,
    warmup: Duration,
    binary: String,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        duration: Duration::from_secs(180),
        warmup: Duration::from_secs(20),
        binary: "target/release/loopline".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--duration" => options.duration = parse_duration(&value("--duration")?)?,
            "--warmup" => options.warmup = parse_duration(&value("--warmup")?)?,
            "--binary" => options.binary = value("--binary")?,
            "-h" | "--help" => {
                println!("usage: loopline-soak [--duration DUR (180s)] [--warmup DUR (20s)] [--binary PATH (target/release/loopline)]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if options.warmup >= options.duration {
        return Err("--warmup must be shorter than --duration".into());
    }
    Ok(options)
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(binary: &str) -> Result<Server, String> {
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--idle-timeout",
                "5s",
                "--write-timeout",
                "5s",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on ") {
                    let _ = tx.send(
                        line[at + 13..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .map_err(|_| "the server logged no `listening on` line".to_string())?
            .parse()
            .map_err(|e| format!("bad address in the log: {e}"))?;
        Ok(Server { child, addr, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory in KiB; 0 where it cannot be read.
    fn rss_kib(&self) -> u64 {
        process_rss_kib(self.pid()).unwrap_or(0)
    }

    /// User + system CPU time so far; zero where it cannot be read.
    fn cpu_time(&self) -> Duration {
        process_cpu_time(self.pid()).unwrap_or(Duration::ZERO)
    }

    /// `STATS` on a fresh connection, as `key=value` pairs.
    fn stats(&self) -> Result<Vec<(String, u64)>, String> {
        let mut c = Conn::connect(self.addr)?;
        c.expect("READY")?;
        c.send(b"STATS\n")?;
        let line = c.line()?;
        let rest = line
            .strip_prefix("OK ")
            .ok_or(format!("STATS answered {line:?}"))?;
        Ok(rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect())
    }

    fn stat(&self, key: &str) -> Result<u64, String> {
        self.stats()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or(format!("no {key} in STATS"))
    }

    /// Waits until only the asking connection is open.
    fn settle(&self) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let open = self.stat("connections")?;
            if open == 1 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > PATIENCE {
                return Err(format!(
                    "STATS connections still {open} after {PATIENCE:?} without clients"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Client plumbing
// ---------------------------------------------------------------------------

/// A blocking client with bounded waits.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream =
            TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(PATIENCE))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// One line without its LF; an error at EOF.
    fn line_bytes(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..lf].to_vec();
                self.buf.drain(..=lf);
                return Ok(line);
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "EOF (had {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn line(&mut self) -> Result<String, String> {
        self.line_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
    }

    fn expect(&mut self, want: &str) -> Result<(), String> {
        let got = self.line()?;
        if got == want {
            Ok(())
        } else {
            Err(format!("expected {want:?}, got {got:?}"))
        }
    }

    fn expect_eof(&mut self) -> Result<(), String> {
        let mut rest = std::mem::take(&mut self.buf);
        self.stream
            .read_to_end(&mut rest)
            .map_err(|e| format!("read to EOF: {e}"))?;
        if rest.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&rest)
            ))
        }
    }
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients did, and what went wrong.
#[derive(Default)]
struct Tally {
    kinds: Vec<(&'static str, AtomicU64, AtomicU64)>,
    failures: Mutex<Vec<String>>,
    failure_count: AtomicU64,
}

impl Tally {
    fn new(kinds: &[&'static str]) -> Tally {
        Tally {
            kinds: kinds
                .iter()
                .map(|&k| (k, AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            ..Tally::default()
        }
    }

    fn slot(&self, kind: &str) -> &(&'static str, AtomicU64, AtomicU64) {
        self.kinds
            .iter()
            .find(|(k, ..)| *k == kind)
            .expect("known kind")
    }

    /// One connection of `kind` done, with `requests` answered.
    fn done(&self, kind: &str, requests: u64) {
        let (_, conns, reqs) = self.slot(kind);
        conns.fetch_add(1, Ordering::Relaxed);
        reqs.fetch_add(requests, Ordering::Relaxed);
    }

    fn fail(&self, kind: &str, what: String) {
        self.failure_count.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(format!("{kind}: {what}"));
        }
    }
}

/// Runs `one` in a loop until `stop`, counting its results under `kind`.
fn client_loop(
    kind: &'static str,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    addr: SocketAddr,
    pause: Duration,
    one: fn(SocketAddr, &mut Rng) -> Result<u64, String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = Rng(seed);
        while !stop.load(Ordering::Relaxed) {
            match one(addr, &mut rng) {
                Ok(requests) => tally.done(kind, requests),
                Err(e) => tally.fail(kind, e),
            }
            thread::sleep(pause);
        }
    })
}

// ---------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------

/// A handful of ordinary requests, checked, then QUIT, a half-close or a
/// plain close.
fn well_behaved(addr: SocketAddr, rng: &mut Rng) -> Result<u64, String> {
    let mut c = Conn::connect(addr)?;
    c.expect("READY")?;
    let n = 1 + rng.below(40);
    for i in 0..n {
        match rng.below(6) {
            0 => {
                c.send(b"PING\n")?;
                c.expect("PONG")?;
            }
            1 => {
                let text = format!("hello {i} {}", "x".repeat(rng.below(200) as usize));
                c.send(format!("ECHO {text}\r\n").as_bytes())?;
                c.expect(&format!("OK {text}"))?;
            }
            2 => {
                c.send(b"help\n")?;
                c.expect("OK commands: PING ECHO QUIT HELP STATS")?;
            }
            3 => {
                c.send(b"STATS\n")?;
                let line = c.line()?;
                if !line.starts_with("OK connections=") {
                    return Err(format!("STATS answered {line:?}"));
                }
            }
            4 => {
                c.send(b"NOPE\n")?;
                c.expect("ERR unknown command")?;
            }
            _ => {
                c.send(b"\n")?;
                c.expect("ERR empty command")?;
            }
        }
    }
    match rng.below(3) {
        0 => {
            c.send(b"QUIT\n")?;
            c.expect("BYE")?;
            c.expect_eof()?;
        }
        1 => {
            c.send(b"PING")?;
            c.stream
                .shutdown(Shutdown::Write)
                .map_err(|e| e.to_string())?;
            c.expect("PONG")?;
            c.expect_eof()?;
        }
        _ => {}
    }
    Ok(n)
}

/// Sends `lines` pipelined ECHO requests from a writer thread (each padded
/// to `pad` bytes) then QUIT, while reading them back with `read_pause`
/// between reads; checks every response, in order.
fn pipelined(
    addr: SocketAddr,
    lines: u64,
    pad: usize,
    read_pause: Duration,
) -> Result<u64, String> {
    let mut c = Conn::connect(addr)?;
    c.expect("READY")?;
    let mut writer = c.stream.try_clone().map_err(|e| e.to_string())?;
    let padding = "p".repeat(pad);
    let sender = thread::spawn(move || -> Result<(), String> {
        let mut batch = Vec::with_capacity(1 << 16);
        for i in 0..lines {
            batch.extend_from_slice(format!("ECHO {i} {padding}\n").as_bytes());
            if batch.len() >= 1 << 15 {
                writer
                    .write_all(&batch)
                    .map_err(|e| format!("pipelined write: {e}"))?;
                batch.clear();
            }
        }
        batch.extend_from_slice(b"QUIT\n");
        writer
            .write_all(&batch)
            .map_err(|e| format!("pipelined write: {e}"))
    });
    let padding = "p".repeat(pad);
    for i in 0..lines {
        if !read_pause.is_zero() && i % 64 == 0 {
            thread::sleep(read_pause);
        }
        let line = c.line()?;
        let want = format!("OK {i} {padding}");
        if line != want {
            return Err(format!(
                "response {i}: got {:?}",
                &line[..line.len().min(40)]
            ));
        }
    }
    c.expect("BYE")?;
    c.expect_eof()?;
    sender.join().map_err(|_| "writer panicked".to_string())??;
    Ok(lines + 1)
}

fn pipelining(addr: SocketAddr, rng: &mut Rng) -> Result<u64, String> {
    pipelined(
        addr,
        1_000 + rng.below(10_000),
        rng.below(32) as usize,
        Duration::ZERO,
    )
}

/// Slow reader: about 2 MB of responses, read 64 lines at a time with
/// pauses, so the server's backpressure pauses and resumes it.
fn slow_reader(addr: SocketAddr, rng: &mut Rng) -> Result<u64, String> {
    pipelined(
        addr,
        2_000 + rng.below(2_000),
        700,
        Duration::from_millis(5),
    )
}

/// Never reads: pipelines until its socket is full, then waits. The write
/// timeout must close it; nothing is expected but a close.
fn non_reader(addr: SocketAddr, rng: &mut Rng) -> Result<u64, String> {
    let mut c = Conn::connect(addr)?;
    c.expect("READY")?;
    c.stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let line = format!("ECHO {}\n", "n".repeat(500 + rng.below(500) as usize));
    let batch = line.repeat(64);
    let started = Instant::now();
    loop {
        match c.stream.write(batch.as_bytes()) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(format!("write before the stall: {e}")),
        }
        if started.elapsed() > PATIENCE {
            return Err("the server never stopped reading a client that does not read".into());
        }
    }
    // Now read: the server must have closed us (EOF or reset) after its
    // write timeout, and the bytes are bounded by what was pending then.
    thread::sleep(WRITE_TIMEOUT + Duration::from_secs(1));
    let mut sink = [0u8; 65536];
    let mut received = 0usize;
    loop {
        match c.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "not closed by the write timeout ({received} bytes read, then silence)"
                ));
            }
            Err(e) => return Err(format!("read after the stall: {e}")),
        }
    }
    Ok(0)
}

fn raw(addr: SocketAddr) -> Result<Socket, String> {
    let s =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    s.connect_timeout(&addr.into(), PATIENCE)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Resets at some point: before the greeting, mid-line, or with a pile of
/// pipelined requests and pending output.
fn resetter(addr: SocketAddr, rng: &mut Rng) -> Result<u64, String> {
    let mut s = raw(addr)?;
    match rng.below(3) {
        0 => {}
        1 => {
            let mut greeting = [0u8; 6];
            s.read_exact(&mut greeting)
                .map_err(|e| format!("greeting: {e}"))?;
            s.write_all(b"PING\nECHO half a li")
                .map_err(|e| e.to_string())?;
        }
        _ => {
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| e.to_string())?;
            let batch = b"ECHO reset me later, please\n".repeat(2_000);
            for _ in 0..rng.below(20) {
                if s.write_all(&batch).is_err() {
                    break;
                }
            }
        }
    }
    s.set_linger(Some(Duration::ZERO))
        .map_err(|e| e.to_string())?;
    drop(s);
    Ok(0)
}

/// A pool of connections that either trickle a byte now and then, never
/// ending a line, or do nothing at all. Each must get `ERR idle timeout`
/// and a close about IDLE_TIMEOUT after it connected; closed ones are
/// replaced until `stop`.
fn lurkers(
    kind: &'static str,
    trickle: bool,
    pool: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    addr: SocketAddr,
) -> thread::JoinHandle<()> {
    struct Lurker {
        stream: TcpStream,
        since: Instant,
        got: Vec<u8>,
    }
    let open = move |tally: &Tally| -> Option<Lurker> {
        match TcpStream::connect_timeout(&addr, PATIENCE)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(stream) => Some(Lurker {
                stream,
                since: Instant::now(),
                got: Vec::new(),
            }),
            Err(e) => {
                tally.fail(kind, format!("connect: {e}"));
                None
            }
        }
    };
    thread::spawn(move || {
        let mut lurkers: Vec<Lurker> = (0..pool).filter_map(|_| open(&tally)).collect();
        let mut tick = 0u64;
        while !lurkers.is_empty() {
            tick += 1;
            let stopping = stop.load(Ordering::Relaxed);
            let mut i = 0;
            while i < lurkers.len() {
                let l = &mut lurkers[i];
                let mut closed = false;
                let mut buf = [0u8; 256];
                loop {
                    match l.stream.read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => l.got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tally.fail(
                                kind,
                                format!("read: {e} after {:?}", String::from_utf8_lossy(&l.got)),
                            );
                            closed = true;
                            break;
                        }
                    }
                }
                let age = l.since.elapsed();
                if closed {
                    if l.got != b"READY\nERR idle timeout\n" {
                        tally.fail(
                            kind,
                            format!("got {:?} before the close", String::from_utf8_lossy(&l.got)),
                        );
                    } else if age < IDLE_TIMEOUT {
                        tally.fail(
                            kind,
                            format!("closed after {age:?}, before the idle timeout"),
                        );
                    } else {
                        tally.done(kind, 0);
                    }
                } else if age > IDLE_TIMEOUT + PATIENCE {
                    tally.fail(kind, format!("still open after {age:?}"));
                    closed = true;
                } else if trickle && tick % 5 == (i as u64) % 5 {
                    let _ = l.stream.write(b"z");
                }
                if closed || stopping {
                    lurkers.swap_remove(i);
                    if !stopping {
                        if let Some(new) = open(&tally) {
                            lurkers.push(new);
                        }
                    }
                } else {
                    i += 1;
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    })
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

const KINDS: [&str; 7] = [
    "well-behaved",
    "pipelining",
    "slow-reading",
    "non-reading",
    "resetting",
    "trickling",
    "idle",
];

/// Runs the whole mix for `length`, sampling the server's memory; returns
/// the peak RSS seen.
fn run_mix(server: &Server, length: Duration, tally: &Arc<Tally>, seed: u64) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr;
    let ms = Duration::from_millis;
    let mut threads = Vec::new();
    let mut spawn = |kind, n: u64, pause, one| {
        for i in 0..n {
            threads.push(client_loop(
                kind,
                seed * 1000 + i,
                stop.clone(),
                tally.clone(),
                addr,
                pause,
                one,
            ));
        }
    };
    spawn("well-behaved", 4, ms(2), well_behaved);
    spawn("pipelining", 2, ms(50), pipelining);
    spawn("slow-reading", 1, ms(20), slow_reader);
    spawn("non-reading", 2, ms(100), non_reader);
    spawn("resetting", 2, ms(5), resetter);
    threads.push(lurkers(
        "trickling",
        true,
        50,
        stop.clone(),
        tally.clone(),
        addr,
    ));
    threads.push(lurkers(
        "idle",
        false,
        50,
        stop.clone(),
        tally.clone(),
        addr,
    ));

    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < length {
        peak = peak.max(server.rss_kib());
        thread::sleep(ms(250).min(length.saturating_sub(started.elapsed())));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        if t.join().is_err() {
            tally.fail("driver", "a client thread panicked".into());
        }
    }
    peak
}

/// Log lines that are not plain info: panics, errors, warnings.
fn unexpected_log_lines(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| l.contains("panicked") || l.contains("ERROR") || l.contains("WARN"))
        .cloned()
        .collect()
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    match soak(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(1)
        }
    }
}

fn soak(options: &Options) -> Result<bool, String> {
    let mut server = Server::start(&options.binary)?;
    let rss_start = server.rss_kib();
    println!(
        "soak: {} (pid {}) on {}, --idle-timeout 5s --write-timeout 5s, RUST_LOG=info; {:?} in all, the first {:?} warm-up",
        options.binary,
        server.pid(),
        server.addr,
        options.duration,
        options.warmup
    );

    let tally = Arc::new(Tally::new(&KINDS));
    let began = Instant::now();
    let peak_warm = run_mix(&server, options.warmup, &tally, 1);
    let settle_warm = server.settle()?;
    let rss_warm = server.rss_kib();
    println!("warm-up done: server settled {settle_warm:?} after the clients stopped; RSS {rss_warm} KiB");

    let peak_main = run_mix(&server, options.duration - options.warmup, &tally, 2);
    let load_time = began.elapsed();
    let settle_end = server.settle();
    let rss_end = server.rss_kib();
    let cpu = server.cpu_time();

    // The checks.
    let mut ok = true;
    let mut check = |pass: bool, what: String| {
        println!("  [{}] {what}", if pass { "ok" } else { "FAIL" });
        ok &= pass;
    };
    println!("\nfigures after {load_time:?} of load and wind-down:");
    for (kind, conns, reqs) in &tally.kinds {
        println!(
            "  {kind:<13} {:>8} connections {:>10} requests answered",
            conns.load(Ordering::Relaxed),
            reqs.load(Ordering::Relaxed)
        );
    }
    let stats = server.stats().map(|s| {
        s.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    println!(
        "  server STATS: {}",
        stats.as_deref().unwrap_or("(unavailable)")
    );
    println!("  server RSS: {rss_start} KiB at start, {rss_warm} KiB after warm-up, peak {} KiB under load, {rss_end} KiB at the end", peak_warm.max(peak_main));
    println!("  server CPU: {cpu:?} user+system");
    let log = server.log.lock().unwrap().clone();
    let unexpected = unexpected_log_lines(&log);
    println!("  server log: {} lines at info", log.len());

    println!("\nchecks:");
    let failures = tally.failure_count.load(Ordering::Relaxed);
    check(
        failures == 0,
        format!("every client saw what the spec says ({failures} failures)"),
    );
    for f in tally.failures.lock().unwrap().iter() {
        println!("        {f}");
    }
    let ping = || -> Result<(), String> {
        let mut c = Conn::connect(server.addr)?;
        c.expect("READY")?;
        c.send(b"PING\n")?;
        c.expect("PONG")
    };
    let answering = ping();
    check(
        server.alive() && answering.is_ok(),
        format!("server up and answering PING ({answering:?})"),
    );
    match settle_end {
        Ok(took) => check(
            true,
            format!("STATS connections back to 1, {took:?} after the clients stopped"),
        ),
        Err(e) => check(false, e),
    }
    check(
        unexpected.is_empty(),
        format!(
            "no panic, error or warning in the log ({} such lines)",
            unexpected.len()
        ),
    );
    for line in unexpected.iter().take(10) {
        println!("        {line}");
    }
    check(
        rss_end <= rss_warm + RSS_MARGIN_KIB,
        format!("RSS back near its post-warm-up level: {rss_end} KiB vs {rss_warm} KiB (margin {RSS_MARGIN_KIB} KiB)"),
    );
    println!("\nsoak {}", if ok { "passed" } else { "FAILED" });
    Ok(ok)
}
