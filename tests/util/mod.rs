//! Shared helpers for the integration tests: start the real `loopline`
//! binary on 127.0.0.1:0, find its port in the `listening on` log line, and
//! talk to it over loopback with bounded timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails. Generous:
/// tests must not depend on the machine's speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The real server, as a child process. Killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Server {
    /// Starts `loopline --listen 127.0.0.1:0 ARGS...` and waits for it to listen.
    pub fn start(args: &[&str]) -> Server {
        Server::spawn(loopline_command(args, "debug"))
    }

    /// Starts `loopline ARGS...` (no implied --listen) at log level `level`.
    pub fn start_raw(args: &[&str], level: &str) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loopline"));
        command.args(args).env("RUST_LOG", level);
        Server::spawn(command)
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?}; log: {:#?}",
                    self.log.lock().unwrap()
                ),
            }
        }
    }

    /// Whether any stderr line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A client that has read its `READY`.
    pub fn client(&self) -> Client {
        let mut c = self.connect();
        c.expect_line("READY");
        c
    }

    /// The `STATS` counters, asked on a fresh connection (which counts itself).
    pub fn stats(&self) -> Stats {
        let mut c = self.client();
        c.send(b"STATS\n");
        Stats(c.read_line())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:")
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the server to exit, failing after PATIENCE.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the address out of a `listening on ADDR` line.
pub fn parse_listening(line: &str) -> SocketAddr {
    let at = line.find("listening on ").expect("listening on") + "listening on ".len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("address")
}

/// Reads a `Name:   value kB` field of /proc/PID/status.
pub fn proc_status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("field");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A parsed `STATS` reply.
pub struct Stats(pub String);

impl Stats {
    pub fn get(&self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.0))
            .parse()
            .unwrap()
    }
}

/// A blocking client with bounded reads.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client whose kernel receive buffer is `bytes` (set before the
    /// connect, so the window it advertises is small from the start): a
    /// reader that can only take a little at a time.
    pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        Client::from_stream(socket.into())
    }

    /// Wraps a connected stream, with the usual bounded timeouts.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one line (without its LF) as raw bytes; panics on EOF or timeout.
    pub fn read_line_bytes(&mut self) -> Vec<u8> {
        self.try_read_line().unwrap_or_else(|| {
            panic!(
                "connection closed; had {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    /// Reads one line, or None at EOF. Panics on a timeout or error.
    pub fn try_read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..lf].to_vec();
                self.buf.drain(..=lf);
                return Some(line);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!(
                    "read failed: {e} (had {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    pub fn read_line(&mut self) -> String {
        String::from_utf8(self.read_line_bytes()).expect("utf-8 line")
    }

    pub fn expect_line(&mut self, want: &str) {
        assert_eq!(self.read_line(), want);
    }

    /// Reads until the server closes, returning everything not yet read.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        self.stream.read_to_end(&mut rest).expect("read to end");
        rest
    }

    /// Asserts the server closes the connection with nothing more to say.
    pub fn expect_eof(&mut self) {
        let rest = self.read_to_end();
        assert!(
            rest.is_empty(),
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Shuts our writing side (half-close).
    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        assert!(self.buf.is_empty());
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
}

/// The responses the server gives to `input` sent in one write, then a
/// half-close: the reference for every split test.
pub fn responses_to(server: &Server, input: &[u8]) -> Vec<u8> {
    let mut c = server.client();
    c.send(input);
    c.shutdown_write();
    c.read_to_end()
}

/// A small deterministic PRNG (xorshift64*), so split tests repeat exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Server {
    /// Starts a prepared `loopline` command (see [`loopline_command`]): its
    /// stderr is piped into the log, and it must log `listening on` within
    /// PATIENCE. For tests that need more than arguments, e.g. a resource
    /// limit set with `CommandExt::pre_exec`.
    pub fn spawn(mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loopline");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            lines,
        };
        let line = server.wait_for_log("listening on ");
        server.addr = parse_listening(&line);
        server
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("proc stat");
        // The command name (field 2) is in parentheses and may hold spaces:
        // count fields from the last ')'. utime and stime are fields 14, 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz.max(1))
    }

    /// Waits until `STATS` reports `want` open connections (the asking one
    /// included), failing after PATIENCE. Closes are asynchronous.
    pub fn wait_for_connections(&self, want: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.stats().get("connections");
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "STATS connections stayed at {now}, expected {want}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the server never panicked (a panic would be in its log).
    pub fn assert_no_panic(&self) {
        let log = self.log.lock().unwrap();
        let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "the server panicked: {panics:#?}");
    }
}

/// `loopline --listen 127.0.0.1:0 ARGS...` with RUST_LOG=`level`, ready for
/// [`Server::spawn`].
pub fn loopline_command(args: &[&str], level: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loopline"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", level);
    command
}
