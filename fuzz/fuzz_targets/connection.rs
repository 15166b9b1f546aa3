//! Fuzz target `connection`: the real `Connection` state machine, driven
//! over a Unix socket pair (kernel-buffered, synchronous, no network) with
//! fuzzer-chosen limits, read sizes, client reads and graceful shutdowns.
//! Checked after every call: held input and pending output stay bounded, a
//! closing connection holds no input; at the end the client's transcript is
//! exactly the contract's responses (framing + protocol in one read).
//!
//! Input: byte 0 sets max_line (1..=64), byte 1 max_output (1..=256), byte 2
//! the read buffer (1..=128), byte 3 the number of op bytes (0..=31) that
//! follow, cycled; the rest is the client's stream. An op byte: bits 0-5
//! the bytes to send (1..=64), bit 6 the client reads what has arrived
//! first, bit 7 the server shuts down gracefully first (ignored when the
//! environment has FUZZ_NO_SHUTDOWN=1, to explore the rest of the state machine alone).

#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use loopline::connection::{
    input_capacity_bound, output_capacity_bound, Accepted, Connection, Lent, Limits, Next, Role,
    Spare, State, SPARE_OUTPUT_KEEP,
};
use loopline::framing::{cut_line, final_line, Cut};
use loopline::protocol::{self, After, Session};
use loopline::stats::Stats;
use loopline::timer::Timers;

/// The responses to the complete lines of `input`, and whether one of them
/// ended the session (QUIT, or a line too long, finished or not).
fn replies(input: &[u8], max_line: usize, stats: &Stats, now: Instant) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut session = Session::new(None);
    let mut rest = input;
    loop {
        match cut_line(rest, max_line) {
            Cut::Line { line, used } => {
                rest = &rest[used..];
                if protocol::respond(line, &mut session, None, stats, now, &mut out) == After::Close {
                    return (out, true);
                }
            }
            Cut::TooLong => {
                out.extend_from_slice(protocol::LINE_TOO_LONG);
                return (out, true);
            }
            Cut::Partial => return (out, false),
        }
    }
}

struct Run<'a> {
    conn: Connection,
    cx: Lent<'a>,
    max_line: usize,
    max_output: usize,
    read_buf: usize,
    shut_down: bool,
    closed: bool,
}

impl Run<'_> {
    fn check(&self) {
        let held = self.conn.buffered_input();
        let pending = self.conn.pending_output();
        assert!(
            held <= self.max_line + 1 + self.read_buf,
            "held input {held}"
        );
        if !matches!(
            self.conn.state(),
            State::Open | State::Paused | State::Draining
        ) {
            assert_eq!(held, 0, "a closing connection holds input");
        }
        // The memory really held: capacities, not only pending bytes.
        let (input_capacity, output_capacity) = self.conn.buffer_capacities();
        assert!(
            input_capacity <= input_capacity_bound(self.cx.limits, self.read_buf),
            "input capacity {input_capacity}"
        );
        assert!(
            output_capacity <= output_capacity_bound(self.cx.limits),
            "output capacity {output_capacity}"
        );
        assert!(
            self.cx.spare.capacity()
                <= SPARE_OUTPUT_KEEP.min(output_capacity_bound(self.cx.limits)),
            "spare output kept {}",
            self.cx.spare.capacity()
        );
        // After a shutdown, lines held back by backpressure are answered
        // past max_output: at most one read's worth, a reply each.
        let extra = if self.shut_down {
            (self.max_line + 64) * (self.max_line + 2 + self.read_buf) + 64
        } else {
            0
        };
        assert!(
            pending <= self.max_output + self.max_line + 64 + extra,
            "pending output {pending}"
        );
    }

    fn follow(&mut self, mut next: Next) {
        let mut turns = 0;
        loop {
            self.check();
            match next {
                Next::Wait => return,
                Next::Close => {
                    self.closed = true;
                    return;
                }
                Next::Again => {}
            }
            turns += 1;
            assert!(turns < 100_000, "asks to run again forever");
            next = self.conn.drive(true, false, &mut self.cx);
        }
    }

    /// An event, readable and writable (spurious or not: both are allowed).
    fn event(&mut self) {
        if !self.closed {
            self.conn.writable_again();
            let next = self.conn.drive(true, false, &mut self.cx);
            self.follow(next);
        }
    }
}

fn read_available(client: &mut UnixStream, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the server closed: nothing more to read.
            Err(_) => return true,
        }
    }
}

fn send(client: &mut UnixStream, bytes: &[u8]) -> usize {
    match client.write(bytes) {
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
        Err(e) => panic!("client write: {e}"),
    }
}

fn shutdowns_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("FUZZ_NO_SHUTDOWN").is_none_or(|v| v != "1"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let max_line = usize::from(data[0] % 64) + 1;
    let max_output = usize::from(data[1]) + 1;
    let read_buf_len = usize::from(data[2] % 128) + 1;
    let n_ops = usize::from(data[3] % 32).min(data.len() - 4);
    let ops = &data[4..4 + n_ops];
    let input = &data[4 + n_ops..];

    let (server_side, mut client) = UnixStream::pair().expect("socketpair");
    server_side.set_nonblocking(true).unwrap();
    client.set_nonblocking(true).unwrap();
    // The smallest send buffer (the kernel raises 1 to its minimum): output
    // backs up after a few replies while the client does not read.
    socket2::SockRef::from(&server_side)
        .set_send_buffer_size(1)
        .unwrap();
    // SAFETY: the fd is a connected stream socket that we own; the
    // connection only reads, writes and shuts it down, which a Unix stream
    // socket supports like a TCP one.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(server_side.into_raw_fd()) };
    let stream = mio::net::TcpStream::from_std(stream);

    let limits = Limits {
        max_line,
        max_output,
        idle_timeout: None,
        write_timeout: None,
        linger: Duration::from_secs(2),
        max_memory: usize::MAX,
        tcp_keepalive: None,
        handshake_timeout: None,
    };
    let now = Instant::now();
    let stats = Stats::new(now);
    // The loop counts a client when it accepts it; the connection uncounts
    // itself when its last line is out.
    stats.client_opened("127.0.0.1".parse().unwrap());
    let mut timers = Timers::new(now);
    let mut read_buf = vec![0u8; read_buf_len];
    let mut spare = Spare::default();
    let mut memory = loopline::connection::MemoryPressure::default();
    let mut cx = Lent {
        now,
        key: 0,
        limits: &limits,
        stats: &stats,
        token: None,
        timers: &mut timers,
        read_buf: &mut read_buf,
        spare: &mut spare,
        memory: &mut memory,
        metrics: None,
    };
    let accepted = Accepted {
        stream,
        transport: loopline::transport::Transport::Plain,
        peer: "127.0.0.1:1".parse().unwrap(),
        role: Role::Client,
        proxied: false,
    };
    let (conn, next) = Connection::start(accepted, &mut cx);
    let mut run = Run {
        conn,
        cx,
        max_line,
        max_output,
        read_buf: read_buf_len,
        shut_down: false,
        closed: false,
    };
    run.follow(next);

    let mut sent = 0;
    let mut received = Vec::new();
    let mut shutdown_at = None;
    if !ops.is_empty() {
        // Each step sends a byte at least, unless the server has stopped
        // reading (backpressure, or it is closing) and the client never
        // reads: bounded, the rest is sent below.
        for &op in ops.iter().cycle().take(input.len() + ops.len()) {
            if sent == input.len() {
                break;
            }
            if op & 0x80 != 0 && shutdowns_enabled() && !run.closed && !run.shut_down {
                run.shut_down = true;
                if matches!(run.conn.state(), State::Open | State::Paused) {
                    shutdown_at = Some(run.cx.stats.snapshot().bytes_in as usize);
                }
                let next = run.conn.shut_down(&mut run.cx);
                run.follow(next);
            }
            if op & 0x40 != 0 {
                read_available(&mut client, &mut received);
            }
            let size = usize::from(op & 0x3f) + 1;
            sent += send(&mut client, &input[sent..input.len().min(sent + size)]);
            run.event();
        }
    }

    // The client sends the rest, shuts its side and reads everything.
    let mut eof_sent = false;
    let mut rounds = 0;
    while !run.closed {
        if sent < input.len() {
            sent += send(&mut client, &input[sent..]);
        } else if !eof_sent {
            client.shutdown(Shutdown::Write).unwrap();
            eof_sent = true;
        }
        read_available(&mut client, &mut received);
        run.event();
        rounds += 1;
        assert!(
            rounds < 100_000,
            "never closed: state {:?}",
            run.conn.state()
        );
    }
    assert_eq!(run.conn.pending_output(), 0, "closed with output unsent");
    assert_eq!(run.cx.stats.connections(), 0, "still counted as open");
    let consumed = run.cx.stats.snapshot().bytes_in as usize;
    drop(run);
    client.set_nonblocking(false).unwrap();
    while !read_available(&mut client, &mut received) {}

    let mut want = protocol::GREETING.to_vec();
    let ref_stats = Stats::new(now);
    match shutdown_at {
        None => {
            let (out, ended) = replies(input, max_line, &ref_stats, now);
            want.extend(out);
            let tail = &input[input
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |lf| lf + 1)..];
            if !ended && !tail.is_empty() {
                let mut session = Session::new(None);
                protocol::respond(final_line(tail), &mut session, None, &ref_stats, now, &mut want);
            }
        }
        Some(at) => {
            assert!(at <= consumed);
            let (out, ended) = replies(&input[..at], max_line, &ref_stats, now);
            want.extend(out);
            if !ended {
                want.extend_from_slice(protocol::SHUTTING_DOWN);
            }
        }
    }
    assert!(
        received == want,
        "transcript differs\n got: {}\nwant: {}",
        received.escape_ascii(),
        want.escape_ascii()
    );
});
