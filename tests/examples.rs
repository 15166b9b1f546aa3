//! Tests for the teaching examples in `examples/` (the tutorial ladder,
//! `docs/tutorial.md`).
//!
//! Each test starts a compiled example binary on 127.0.0.1:0, reads the real
//! port from its `listening on ADDR` line on stderr, and talks to it over
//! loopback. Every read and write has a timeout, and the child process is
//! killed when the test ends, pass or fail.
//!
//! The binaries live in target/<profile>/examples/. A plain `cargo test`
//! builds every example before it runs integration tests; a run restricted
//! to this file (`cargo test --test examples`) may not, so build them first
//! with `cargo build --examples` in that case.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "promptly".
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long we listen for something that must NOT arrive.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A running example. Dropping it kills the process.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Lines the example writes to stderr, read by a helper thread so the
    /// child can never block on a full pipe.
    log: Receiver<String>,
}

impl Server {
    fn start(name: &str, extra_args: &[&str]) -> Server {
        let path = example_path(name);
        let mut child = Command::new(&path)
            .arg("127.0.0.1:0")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", path.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Once the test stops listening, keep draining anyway.
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = server.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no address in {line:?}"));
        server.addr = addr;
        server
    }

    /// Waits (at most TIMEOUT) for a stderr line containing `needle`.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => panic!("no log line with {needle:?} in time"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server exited before logging {needle:?}")
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where cargo put the example binary: the test executable is
/// target/<profile>/deps/examples-<hash>, examples are in
/// target/<profile>/examples/.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is in target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: a plain `cargo test` builds the examples first; \
         otherwise run `cargo build --examples`",
        path.display()
    );
    path
}

/// A client connection with line-oriented helpers, all bounded by timeouts.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        Conn::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Conn {
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        let writer = stream.try_clone().expect("clone stream");
        Conn {
            reader: BufReader::new(stream),
            writer,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to server");
    }

    /// Reads one line, LF included; panics on timeout or EOF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("server closed the connection, expected a line"),
            Ok(_) => line,
            Err(err) => panic!("reading a line failed after {line:?}: {err}"),
        }
    }

    /// Reads exactly `n` bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.reader.read_exact(&mut buf).expect("read reply bytes");
        buf
    }

    /// Asserts the server closes the connection without sending more.
    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "unexpected bytes before EOF: {rest:?}"),
            // A reset after our last reply is as good as a FIN here.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
            Err(err) => panic!("expected EOF, got {err}"),
        }
    }

    /// Asserts that nothing arrives within QUIET.
    fn expect_silence(&mut self) {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(QUIET)).expect("read timeout");
        let mut byte = [0u8; 1];
        let result = self.reader.read(&mut byte);
        self.reader
            .get_ref()
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        match result {
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("connection closed, expected it to stay silent"),
            Ok(_) => panic!("got {:?}, expected silence", byte[0] as char),
            Err(err) => panic!("expected silence, got {err}"),
        }
    }
}

/// A field of /proc/<pid>/status in kB (VmRSS, VmHWM, ...).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------
// Step 1: blocking, one client at a time
// ---------------------------------------------------------------------------

#[test]
fn step1_echoes_lines_as_is() {
    let server = Server::start("step1_blocking", &[]);
    let mut c = server.connect();
    assert_eq!(c.line(), "READY\n");
    c.send(b"hello\nwith CRLF\r\n");
    assert_eq!(c.line(), "hello\n");
    assert_eq!(c.line(), "with CRLF\r\n");
}

#[test]
fn step1_second_client_waits_until_first_leaves() {
    let server = Server::start("step1_blocking", &[]);
    let mut first = server.connect();
    assert_eq!(first.line(), "READY\n");

    // The kernel completes the second handshake (listen backlog), but the
    // server is busy in the first client's read: no greeting.
    let mut second = server.connect();
    second.expect_silence();

    // The first client is still served...
    first.send(b"still here\n");
    assert_eq!(first.line(), "still here\n");
    second.expect_silence();

    // ...and only when it leaves does the second get its turn.
    drop(first);
    assert_eq!(second.line(), "READY\n");
    second.send(b"my turn\n");
    assert_eq!(second.line(), "my turn\n");
}

// ---------------------------------------------------------------------------
// Step 2: thread per connection
// ---------------------------------------------------------------------------

#[test]
fn step2_serves_two_clients_at_once() {
    let server = Server::start("step2_threads", &[]);
    let mut a = server.connect();
    assert_eq!(a.line(), "READY\n");
    // Greeted while the first is still connected and idle.
    let mut b = server.connect();
    assert_eq!(b.line(), "READY\n");

    b.send(b"from b\n");
    assert_eq!(b.line(), "from b\n");
    a.send(b"from a\n");
    assert_eq!(a.line(), "from a\n");
    b.send(b"b again\n");
    a.send(b"a again\n");
    assert_eq!(a.line(), "a again\n");
    assert_eq!(b.line(), "b again\n");
}

// ---------------------------------------------------------------------------
// Step 3: minimal mio echo
// ---------------------------------------------------------------------------

#[test]
fn step3_echoes_for_many_clients() {
    let server = Server::start("step3_mio_echo", &[]);
    let mut clients: Vec<Conn> = (0..100).map(|_| server.connect()).collect();

    // Everyone talks before anyone listens: the one thread must serve all.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("client {i} says hello\n").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate().rev() {
        c.send(format!("and goodbye from {i}").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let expected = format!("client {i} says hello\nand goodbye from {i}");
        // Raw bytes, no framing: read exactly what was sent.
        assert_eq!(c.bytes(expected.len()), expected.as_bytes());
    }
    // A client leaving does not disturb the others.
    clients.truncate(50);
    for c in &mut clients {
        c.send(b"still alive");
        assert_eq!(c.bytes(11), b"still alive");
    }
}

// ---------------------------------------------------------------------------
// Step 4: line framing
// ---------------------------------------------------------------------------

#[test]
fn step4_line_sent_one_byte_at_a_time() {
    let server = Server::start("step4_framing", &[]);
    let mut c = server.connect();
    for byte in b"hello, one byte at a time\r\n" {
        // With TCP_NODELAY each byte leaves as its own segment, so the server
        // very likely sees many short reads (the test does not rely on it).
        c.send(&[*byte]);
    }
    assert_eq!(c.line(), "OK hello, one byte at a time\n");
}

#[test]
fn step4_several_lines_in_one_write() {
    let server = Server::start("step4_framing", &[]);
    let mut c = server.connect();
    c.send(b"first\nsecond\r\n\nthird\npart");
    assert_eq!(c.line(), "OK first\n");
    assert_eq!(c.line(), "OK second\n");
    assert_eq!(c.line(), "OK \n");
    assert_eq!(c.line(), "OK third\n");
    // "part" is an unfinished line: no reply until its LF arrives.
    c.expect_silence();
    c.send(b"ial\n");
    assert_eq!(c.line(), "OK partial\n");
}

#[test]
fn step4_line_cap() {
    let server = Server::start("step4_framing", &[]);
    // Exactly 1024 bytes plus CRLF is fine.
    let mut c = server.connect();
    let longest = "x".repeat(1024);
    c.send(format!("{longest}\r\n").as_bytes());
    assert_eq!(c.line(), format!("OK {longest}\n"));

    // One byte more is refused as soon as it cannot fit: no LF needed.
    let mut c = server.connect();
    c.send(b"before\n");
    c.send("y".repeat(1025).as_bytes());
    assert_eq!(c.line(), "OK before\n");
    assert_eq!(c.line(), "ERR line too long\n");
    c.expect_eof();
}

#[test]
fn step4_last_line_without_lf_is_answered_at_eof() {
    let server = Server::start("step4_framing", &[]);
    let mut c = server.connect();
    c.send(b"one\ntail");
    c.writer.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(c.line(), "OK one\n");
    assert_eq!(c.line(), "OK tail\n");
    c.expect_eof();
}

// ---------------------------------------------------------------------------
// Step 5: partial writes and backpressure
// ---------------------------------------------------------------------------

#[test]
fn step5_framing_still_works() {
    let server = Server::start("step5_backpressure", &[]);
    let mut c = server.connect();
    for byte in b"slow\n" {
        c.send(&[*byte]);
    }
    c.send(b"a\r\nb\n\nlast");
    c.writer.shutdown(Shutdown::Write).expect("half-close");
    for expected in ["OK slow\n", "OK a\n", "OK b\n", "OK \n", "OK last\n"] {
        assert_eq!(c.line(), expected);
    }
    c.expect_eof();
}

#[test]
fn step5_client_that_does_not_read_loses_nothing() {
    flood_without_reading(&[]);
}

#[test]
fn step5_toggle_mode_behaves_the_same() {
    flood_without_reading(&["--toggle"]);
}

const FLOOD_LINES: usize = 160_000;
const FLOOD_LINE_LEN: usize = 100; // LF included: 16 MB in all

fn flood_line(i: usize) -> String {
    // "line 00000042 xxx...x\n", FLOOD_LINE_LEN bytes.
    let head = format!("line {i:08} ");
    format!("{head}{}\n", "x".repeat(FLOOD_LINE_LEN - head.len() - 1))
}

/// A client sends 16 MB of requests before reading a single reply. The
/// server must stop reading when its output for this client passes the cap
/// (it says so on stderr), keep its memory bounded, and then deliver every
/// reply, complete and in order, once the client reads.
fn flood_without_reading(extra_args: &[&str]) {
    let server = Server::start("step5_backpressure", extra_args);
    let rss_at_start = proc_status_kb(server.pid(), "VmRSS");

    // A small receive buffer on our side keeps the kernel from absorbing
    // most of the replies, so the server's own buffer must fill up.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    socket
        .connect_timeout(&server.addr.into(), TIMEOUT)
        .expect("connect");
    let mut conn = Conn::from_stream(socket.into());

    // The writer runs on its own thread: once the server pauses, our writes
    // block, and only reading the replies lets them continue.
    let mut writer = conn.writer.try_clone().expect("clone stream");
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut chunk = String::new();
        for i in 0..FLOOD_LINES {
            chunk.push_str(&flood_line(i));
            if chunk.len() >= 64 * 1024 {
                writer.write_all(chunk.as_bytes())?;
                chunk.clear();
            }
        }
        writer.write_all(chunk.as_bytes())?;
        // Half-close: "no more requests", replies still welcome.
        writer.shutdown(Shutdown::Write)
    });

    // Not a single byte read so far: the server must have stopped reading.
    server.wait_for_log("pausing reads");
    let rss_paused = proc_status_kb(server.pid(), "VmRSS");

    // Now read everything back and check it line by line.
    for i in 0..FLOOD_LINES {
        let line = conn.line();
        let expected = format!("OK {}", flood_line(i));
        assert!(
            line == expected,
            "reply {i}: got {line:?}, expected {expected:?}"
        );
    }
    conn.expect_eof();
    match sender.join() {
        Ok(result) => result.expect("sending the requests"),
        Err(_) => panic!("sender thread panicked"),
    }
    server.wait_for_log("resuming reads");

    // 16 MB went through; the server's peak memory grew by far less. (An
    // unbounded server would have buffered most of it: the client read
    // nothing until the server had paused.)
    let peak = proc_status_kb(server.pid(), "VmHWM");
    eprintln!(
        "server RSS at start {rss_at_start} kB, while paused {rss_paused} kB, peak {peak} kB"
    );
    assert!(
        peak < rss_at_start + 8 * 1024,
        "server peak RSS {peak} kB vs {rss_at_start} kB at start: output not bounded"
    );
}
