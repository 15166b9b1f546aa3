//! Property tests: the protocol's rules (docs/protocol.md) checked on
//! generated inputs rather than hand-picked examples.
//!
//! The oracle is `model`, an independent reference model of the protocol
//! written from the contract: it shares no code with the crate's framing
//! and protocol modules, so a bug there cannot hide by appearing on both
//! sides of a comparison.
//!
//! * Over the real server: any split of a request script into reads gives
//!   the responses of the same script sent in one write, and both equal the
//!   model's transcript.
//! * On the connection state machine, over a real loopback socket pair with
//!   a tiny read buffer and tiny kernel buffers: held input and pending
//!   output stay bounded whatever the client does, sent bytes are always
//!   consumed unless backpressure holds them, and the transcript equals the
//!   model's.
//! * Pure properties of `framing::cut_line` and `protocol::respond`, the
//!   latter against the model's answer to one line.
//!
//! `PROPTEST_CASES=N` changes the number of cases of every property.

mod model;
mod util;

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loopline::connection::{
    input_capacity_bound, output_capacity_bound, Accepted, Connection, Lent, Limits, Next, Role,
    State, SPARE_OUTPUT_KEEP,
};
use loopline::framing::{cut_line, final_line, unfinished_too_long, Cut};
use loopline::protocol::Loopline;
use loopline::service::{After, Context, Service};
use loopline::stats::Stats;
use loopline::timer::Timers;
use model::{ClientEnd, Expected, Transcript};
use proptest::collection::SizeRange;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use util::Server;

/// `--max-line` of the server in the split property.
const SERVER_MAX_LINE: usize = 64;

fn config(cases: u32) -> ProptestConfig {
    // PROPTEST_CASES, when set, overrides `cases` (proptest reads it). A
    // failing case is printed, shrunk, with the panic; it is not written to
    // a regressions file (the closure form of `proptest!` cannot place one).
    // Shrinking a case that waits on sockets may take seconds per step:
    // bounded to a minute.
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Bytes that print readably when a case fails.

#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

// ---------------------------------------------------------------------------
// Comparing with the model.

/// Fails the case, saying `what` was compared, unless the server sent
/// exactly the model's transcript.
fn agrees(expected: &Transcript, server_sent: &[u8], what: &str) -> Result<(), TestCaseError> {
    expected
        .check(server_sent)
        .map_err(|diff| TestCaseError::fail(format!("{what}: {diff}")))
}

// ---------------------------------------------------------------------------
// Request scripts.

/// Any byte but LF, with the awkward ones (NUL, 0xFF, CR, space) often.
fn text_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => 0x20u8..0x7f,
        2 => prop::sample::select(vec![0x00, 0xff, b'\r', b' ', 0x80, b'\t']),
        1 => any::<u8>().prop_filter("no LF", |b| *b != b'\n'),
    ]
}

fn text(len: impl Into<SizeRange>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(text_byte(), len)
}

/// `word` with each letter in a random case (`PING`, `ping`, `pInG`, ...).
fn any_case(word: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.bytes()
            .zip(upper)
            .map(|(b, up)| {
                if up {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// `name` (any case), a space, and `arg`.
fn with_arg(
    name: &'static str,
    arg: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Vec<u8>> {
    (any_case(name), arg).prop_map(|(mut line, arg)| {
        line.push(b' ');
        line.extend(arg);
        line
    })
}

/// One request line without its ending, never longer than `max_line`. No
/// `STATS`: its counters differ between runs. `QUIT` and lines that are too
/// long are placed separately (each ends the session).
fn request(max_line: usize) -> impl Strategy<Value = Vec<u8>> {
    let echo_max = max_line.saturating_sub(5);
    prop_oneof![
        3 => any_case("PING"),
        4 => with_arg("ECHO", text(0..=echo_max.min(40))),
        // Right at the limit: `ECHO ` + text of max_line - 5 bytes, or one less.
        1 => with_arg("ECHO", text(echo_max.saturating_sub(1)..=echo_max)),
        1 => any_case("ECHO"),
        1 => any_case("HELP"),
        1 => with_arg("PING", text(0..=8.min(echo_max))),
        1 => Just(Vec::new()),
        1 => prop::sample::select(vec![&b" PING"[..], b"PING\r", b"\r", b"FLY", b"PINGX", b"ECH", b"  ", b"QUIT x"])
            .prop_map(|s| s.to_vec()),
        1 => text(0..=20.min(max_line)),
        1 => text(0..=max_line),
    ]
}

/// A line longer than `max_line`: ECHO text or any bytes, up to 1.5 times
/// the limit (a CR at its end may still bring it back to the limit).
fn too_long(max_line: usize) -> impl Strategy<Value = Vec<u8>> {
    let over = max_line + 1..=max_line + 1 + max_line / 2;
    prop_oneof![
        with_arg("ECHO", text(max_line - 4..=max_line + max_line / 2)),
        text(over),
    ]
}

#[derive(Clone, Debug)]
struct Script {
    /// Request lines without endings.
    lines: Vec<Bytes>,
    /// Per line: CRLF (true) or LF.
    crlf: Vec<bool>,
    /// The last line has no ending at all (the client shuts its side after it).
    open_end: bool,
}

impl Script {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (line, crlf)) in self.lines.iter().zip(&self.crlf).enumerate() {
            out.extend_from_slice(&line.0);
            if i + 1 == self.lines.len() && self.open_end {
                break;
            }
            out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        out
    }
}

/// Request lines for a server with `max_line`; with probability `end` a
/// `QUIT` somewhere, and with probability `end` a line that is too long.
fn script(
    max_line: usize,
    lines: std::ops::Range<usize>,
    end: f64,
) -> impl Strategy<Value = Script> {
    (
        prop::collection::vec((request(max_line), any::<bool>()), lines),
        prop::option::weighted(end, (any::<Index>(), any_case("QUIT"), any::<bool>())),
        prop::option::weighted(end, (any::<Index>(), too_long(max_line), any::<bool>())),
        any::<bool>(),
    )
        .prop_map(|(mut lines, quit, over, open_end)| {
            for (at, line, crlf) in [quit, over].into_iter().flatten() {
                let at = at.index(lines.len() + 1);
                lines.insert(at, (line, crlf));
            }
            let (lines, crlf) = lines.into_iter().map(|(l, c)| (Bytes(l), c)).unzip();
            Script {
                lines,
                crlf,
                open_end,
            }
        })
}

/// Where to cut an input into writes.
#[derive(Clone, Debug)]
enum Split {
    /// At these positions (taken modulo the input length).
    At(Vec<Index>),
    /// One byte per write.
    EveryByte,
}

impl Split {
    fn chunks<'a>(&self, input: &'a [u8]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = match self {
            Split::At(at) => at.iter().map(|i| i.index(input.len() + 1)).collect(),
            Split::EveryByte => (0..=input.len()).collect(),
        };
        cuts.push(0);
        cuts.push(input.len());
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2).map(|w| &input[w[0]..w[1]]).collect()
    }
}

fn split() -> impl Strategy<Value = Split> {
    prop_oneof![
        8 => prop::collection::vec(any::<Index>(), 0..24).prop_map(Split::At),
        1 => Just(Split::EveryByte),
    ]
}

// ---------------------------------------------------------------------------
// 1a. The real server: any split into reads gives the same responses.

#[test]
fn any_split_into_reads_gives_the_same_responses() {
    let max_line = SERVER_MAX_LINE.to_string();
    let server = Server::start(&["--max-line", &max_line]);
    proptest!(config(64), |(script in script(SERVER_MAX_LINE, 0..24, 0.3), split in split(), sleeps in any::<u32>())| {
        let input = script.bytes();
        let whole = Bytes(util::responses_to(&server, &input));
        // The client has read READY already.
        let expected = model::transcript(&input, ClientEnd::ShutsWrite, SERVER_MAX_LINE);
        agrees(&expected.after_greeting(), &whole.0, "one write vs the model")?;

        let mut c = server.client();
        c.stream.set_nodelay(true).unwrap();
        for (i, chunk) in split.chunks(&input).into_iter().enumerate() {
            c.send(chunk);
            // Now and then wait a little, so the chunks really arrive (and
            // are read) apart rather than coalesced in the kernel.
            if sleeps >> (i % 32) & 1 == 1 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        c.shutdown_write();
        let split_up = Bytes(c.read_to_end());
        prop_assert_eq!(&split_up, &whole, "split writes vs one write");
    });
}

/// A request line of `max_line - 1` to `max_line + 2` bytes (mostly `ECHO`,
/// whose answer shows every byte), up to two of them CRs at its end, then
/// LF, CRLF or nothing: right where "too long" begins, which the scripts
/// above reach only now and then.
fn near_the_limit(max_line: usize) -> impl Strategy<Value = Vec<u8>> {
    let echo = |len: usize| with_arg("ECHO", text(len - 5..=len - 5));
    (
        (max_line - 1..=max_line + 2)
            .prop_flat_map(move |len| prop_oneof![3 => echo(len), 1 => text(len..=len)]),
        0usize..=2,
        prop::sample::select(vec![&b"\n"[..], b"\r\n", b""]),
    )
        .prop_map(|(mut line, crs, ending)| {
            let keep = line.len() - crs;
            line[keep..].fill(b'\r');
            line.extend_from_slice(ending);
            line
        })
}

/// Complete request lines, a line near the limit, and more complete lines
/// (sent only when the line near the limit has its LF).
fn around_the_limit(max_line: usize) -> impl Strategy<Value = Bytes> {
    let lines = || prop::collection::vec(request(max_line), 0..6);
    (lines(), near_the_limit(max_line), lines()).prop_map(|(before, near, after)| {
        let mut input: Vec<u8> = before
            .into_iter()
            .flat_map(|l| [l, b"\n".to_vec()].concat())
            .collect();
        let finished = near.ends_with(b"\n");
        input.extend(near);
        if finished {
            input.extend(after.into_iter().flat_map(|l| [l, b"\n".to_vec()].concat()));
        }
        Bytes(input)
    })
}

/// The client sends its bytes and keeps the connection open. The server
/// answers every complete line without waiting for EOF; a line that can no
/// longer fit is refused at once (no LF needed) and the server closes by
/// itself. After the client shuts its side, the rest (a last line without
/// LF) is answered too.
#[test]
fn lines_at_the_limit_are_answered_or_refused_without_waiting_for_eof() {
    let max_line = SERVER_MAX_LINE.to_string();
    let server = Server::start(&["--max-line", &max_line]);
    proptest!(config(64), |(input in around_the_limit(SERVER_MAX_LINE), split in split())| {
        let mut c = server.client();
        c.stream.set_nodelay(true).unwrap();
        for chunk in split.chunks(&input.0) {
            c.send(chunk);
        }
        let open = model::transcript(&input.0, ClientEnd::StaysOpen, SERVER_MAX_LINE).after_greeting();
        let mut received = Vec::new();
        if open.session_over {
            // Refused: the server must close without our EOF. (A server
            // that waits for an LF makes the read time out, which panics.)
            while let Some(line) = c.try_read_line() {
                received.extend([line, b"\n".to_vec()].concat());
            }
            received.extend(c.read_to_end());
            agrees(&open, &received, "before EOF, refused")?;
        } else {
            // Exactly the answers to the complete lines arrive before EOF...
            for _ in 0..open.lines.len() {
                let Some(line) = c.try_read_line() else { break };
                received.extend([line, b"\n".to_vec()].concat());
            }
            agrees(&open, &received, "before EOF")?;
            // ...and after it, the answer to an unfinished last line.
            c.shutdown_write();
            received.extend(c.read_to_end());
            let shut = model::transcript(&input.0, ClientEnd::ShutsWrite, SERVER_MAX_LINE).after_greeting();
            agrees(&shut, &received, "after EOF")?;
        }
    });
}

// ---------------------------------------------------------------------------
// 1b. The connection state machine on a real socket pair, no server process.

#[derive(Clone, Debug)]
enum Op {
    /// The client writes up to this many more bytes of the script (as many
    /// as its socket takes without blocking).
    Send(usize),
    /// The client reads up to this many bytes of the responses.
    Read(usize),
    /// Graceful shutdown of the server (`Connection::shut_down`).
    Shutdown,
}

/// What the client (and, with `shutdowns`, the server's operator) does.
fn ops(shutdowns: bool) -> impl Strategy<Value = Vec<Op>> {
    let shutdown_weight = if shutdowns { 2 } else { 0 };
    prop::collection::vec(
        prop_oneof![
            30 => (1usize..=2048).prop_map(Op::Send),
            10 => (1usize..=4096).prop_map(Op::Read),
            shutdown_weight => Just(Op::Shutdown),
        ],
        1..48,
    )
}

/// How the test calls into the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// `writable_again()` and `drive(true, false)` over and over, as if
    /// every event were a (possibly spurious) readable and writable one.
    AlwaysReadable,
    /// Like the server: the stream registered with a real edge-triggered
    /// mio `Poll`, driven only on its events (`writable_again()` on a
    /// writable one), and again while it answers `Next::Again`. An edge the
    /// connection fails to act on is lost for good, so a stall shows.
    EdgeTriggered,
    /// As kqueue reports them: readable and writable readiness as separate
    /// events (two edge-triggered polls, one per direction, on two
    /// descriptors of the same socket). Epoll reports both in one event,
    /// which can hide a connection that only reads on a readable event.
    SplitEdges,
}

#[derive(Clone, Debug)]
struct Setup {
    max_line: usize,
    max_output: usize,
    read_buf: usize,
    driver: Driver,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        8usize..=96,
        prop_oneof![1usize..=64, 64usize..=4096],
        prop_oneof![1usize..=32, 16usize..=256],
        prop_oneof![
            Just(Driver::AlwaysReadable),
            Just(Driver::EdgeTriggered),
            Just(Driver::SplitEdges)
        ],
    )
        .prop_map(|(max_line, max_output, read_buf, driver)| Setup {
            max_line,
            max_output,
            read_buf,
            driver,
        })
}

/// A connected pair over loopback with the smallest kernel buffers (the
/// kernel raises 1 to its minimum, a few KiB), so the server's output backs
/// up soon after the client stops reading.
/// Also returns a second descriptor of the server's socket.
fn socket_pair() -> (
    mio::net::TcpStream,
    std::net::SocketAddr,
    TcpStream,
    TcpStream,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    client.set_recv_buffer_size(1).unwrap();
    client
        .connect(&listener.local_addr().unwrap().into())
        .unwrap();
    let client: TcpStream = client.into();
    let (server_side, peer) = listener.accept().unwrap();
    socket2::SockRef::from(&server_side)
        .set_send_buffer_size(1)
        .unwrap();
    server_side.set_nodelay(true).unwrap();
    server_side.set_nonblocking(true).unwrap();
    client.set_nonblocking(true).unwrap();
    // Without it the client's own Nagle holds small writes back while the
    // server's output fills its zero window: stalls of seconds that are the
    // kernel's, not the connection's.
    client.set_nodelay(true).unwrap();
    let dup = server_side.try_clone().unwrap();
    (
        mio::net::TcpStream::from_std(server_side),
        peer,
        client,
        dup,
    )
}

/// The limits a setup stands for.
fn limits_for(setup: &Setup) -> Limits {
    Limits {
        max_line: setup.max_line,
        max_output: setup.max_output,
        idle_timeout: None,
        write_timeout: None,
        linger: Duration::from_secs(2),
        max_memory: usize::MAX,
        tcp_keepalive: None,
        handshake_timeout: None,
        loops: 1,
        longest_response: loopline::limits::echoing_response(setup.max_line),
    }
}

/// The invariants that hold after every call into the connection.
/// `shut_down` answers the lines held back by backpressure past
/// `--max-output` (at most one read's worth), so after it the output bound
/// grows by a reply per held line.
fn check(
    conn: &Connection<Loopline>,
    next: Next,
    setup: &Setup,
    after_shutdown: bool,
) -> Result<(), TestCaseError> {
    let input = conn.buffered_input();
    let pending = conn.pending_output();
    // The memory really held, not only the bytes pending: capacities never
    // grow with what the connection sent or read over its life.
    let limits = limits_for(setup);
    let (input_capacity, output_capacity) = conn.buffer_capacities();
    prop_assert!(
        input_capacity <= input_capacity_bound(&limits, setup.read_buf),
        "input capacity {} > bound {}",
        input_capacity,
        input_capacity_bound(&limits, setup.read_buf)
    );
    prop_assert!(
        output_capacity <= output_capacity_bound(&limits),
        "output capacity {} > bound {}",
        output_capacity,
        output_capacity_bound(&limits)
    );
    prop_assert!(
        input <= setup.max_line + 1 + setup.read_buf,
        "held input {} > max_line + 1 + read buffer ({} + 1 + {})",
        input,
        setup.max_line,
        setup.read_buf
    );
    if !matches!(conn.state(), State::Open | State::Paused | State::Draining) {
        prop_assert_eq!(input, 0, "a closing connection holds no input");
    } else if next == Next::Wait && pending == 0 {
        // Nothing pending and nothing more to do: reading is not paused (a
        // paused connection with empty output returns Next::Again), so all
        // it may hold is one unfinished line.
        prop_assert!(
            input <= setup.max_line + 1,
            "unpaused connection holds {} bytes of input, max_line {}",
            input,
            setup.max_line
        );
    }
    let held_replies = if after_shutdown {
        (setup.max_line + 64) * (setup.max_line + 2 + setup.read_buf) + 64
    } else {
        0
    };
    prop_assert!(
        pending <= setup.max_output + setup.max_line + 64 + held_replies,
        "pending output {} > max_output + max_line + 64 ({} + {} + 64){}",
        pending,
        setup.max_output,
        setup.max_line,
        if after_shutdown {
            " + held replies after shutdown"
        } else {
            ""
        }
    );
    Ok(())
}

/// The connection, its loan from the "loop", and (edge-triggered) its polls.
struct Harness<'a> {
    conn: Connection<Loopline>,
    cx: Lent<'a, Loopline>,
    polls: Vec<(mio::Poll, mio::Events)>,
    /// The second descriptor of the socket (registered for writable edges
    /// when they come apart); closed with the connection.
    _dup: mio::net::TcpStream,
    setup: &'a Setup,
    closed: bool,
    /// `shut_down` was called (while the connection was open: the bytes
    /// consumed by then; otherwise it was a no-op).
    shutdown_at: Option<usize>,
}

impl Harness<'_> {
    /// Calls `drive` once, then again while it answers `Next::Again`,
    /// checking the invariants after every call.
    fn drive(&mut self, readable: bool, hangup: bool) -> Result<(), TestCaseError> {
        let next = self.conn.drive(readable, hangup, &mut self.cx);
        self.follow(next)
    }

    /// Acts on what the connection asked for, as the loop does: checks the
    /// invariants and runs it again while it answers `Next::Again`.
    fn follow(&mut self, mut next: Next) -> Result<(), TestCaseError> {
        let mut turns = 0;
        loop {
            check(&self.conn, next, self.setup, self.shutdown_at.is_some())?;
            // The loop's spare output buffer gives a burst's memory back.
            prop_assert!(
                self.cx.spare.capacity()
                    <= SPARE_OUTPUT_KEEP.min(output_capacity_bound(self.cx.limits)),
                "spare output buffer kept {} bytes",
                self.cx.spare.capacity()
            );
            match next {
                Next::Wait => return Ok(()),
                Next::Close => {
                    self.closed = true;
                    return Ok(());
                }
                Next::Again => {}
            }
            turns += 1;
            prop_assert!(turns < 100_000, "the connection asks to run again forever");
            next = self.conn.drive(true, false, &mut self.cx);
        }
    }

    /// One round: `drive(true, false)`, or the events the polls have
    /// (waiting up to `wait` for one).
    fn round(&mut self, wait: Duration) -> Result<(), TestCaseError> {
        if self.polls.is_empty() {
            self.conn.writable_again();
            return self.drive(true, false);
        }
        let single = self.polls.len() == 1;
        let mut happened = Vec::new();
        for (poll, events) in &mut self.polls {
            let timeout = if single { wait } else { Duration::ZERO };
            loop {
                match poll.poll(events, Some(timeout)) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(TestCaseError::fail(format!("poll: {e}"))),
                }
            }
            happened.extend(events.iter().map(|e| {
                (
                    e.is_readable(),
                    e.is_writable(),
                    e.is_read_closed() || e.is_error(),
                )
            }));
        }
        if happened.is_empty() && !single {
            thread::sleep(wait);
        }
        // As the server does: a writable edge unblocks writing, closed and
        // error flags are hints that also count as readable.
        for (readable, writable, hangup) in happened {
            if self.closed {
                break;
            }
            if writable {
                self.conn.writable_again();
            }
            self.drive(readable || hangup, hangup)?;
        }
        Ok(())
    }

    /// Graceful shutdown, as the loop does it on SIGTERM.
    fn shut_down(&mut self) -> Result<(), TestCaseError> {
        if self.closed {
            return Ok(());
        }
        if matches!(self.conn.state(), State::Open | State::Paused) && self.shutdown_at.is_none() {
            self.shutdown_at = Some(self.cx.stats.snapshot().bytes_in as usize);
        }
        let next = self.conn.shut_down(&mut self.cx);
        self.follow(next)
    }

    /// Runs the connection until it has consumed every byte the client sent,
    /// or may rightly be waiting (it is closing, or output is pending, which
    /// backpressure may be holding), or it closes. Bytes sent on loopback
    /// may take a moment to arrive: it waits for them, a bounded time, and a
    /// connection that neither takes them nor has a reason not to fails.
    fn pump(&mut self, sent: usize) -> Result<(), TestCaseError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut wait = Duration::ZERO;
        loop {
            self.round(wait)?;
            if self.closed {
                return Ok(());
            }
            let consumed = self.cx.stats.snapshot().bytes_in as usize;
            prop_assert!(consumed <= sent);
            // A paused connection resumes (when driven) once its pending
            // output is down to max_output / 2. Driven only by events, it
            // may also wait for a writable edge while any output is pending.
            let may_hold = match self.setup.driver {
                Driver::AlwaysReadable => self.setup.max_output / 2,
                Driver::EdgeTriggered | Driver::SplitEdges => 0,
            };
            if consumed == sent
                || self.conn.state() == State::Closing
                || self.conn.pending_output() > may_hold
            {
                return Ok(());
            }
            prop_assert!(
                Instant::now() < deadline,
                "stalled: {} bytes sent, {} consumed, {} pending, state {:?}",
                sent,
                consumed,
                self.conn.pending_output(),
                self.conn.state()
            );
            match self.setup.driver {
                Driver::AlwaysReadable => thread::sleep(Duration::from_micros(100)),
                Driver::EdgeTriggered => wait = Duration::from_millis(10),
                Driver::SplitEdges => wait = Duration::from_millis(1),
            }
        }
    }
}

/// Reads what the client socket has, up to `limit` bytes, without blocking.
fn client_read(
    client: &mut TcpStream,
    limit: usize,
    into: &mut Vec<u8>,
) -> Result<usize, TestCaseError> {
    let mut buf = vec![0u8; limit.clamp(1, 1 << 16)];
    let mut total = 0;
    while total < limit {
        let want = (limit - total).min(buf.len());
        match client.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(TestCaseError::fail(format!("client read: {e}"))),
        }
    }
    Ok(total)
}

/// Writes up to `limit` more bytes of `input` from `*sent`, without blocking.
fn client_write(
    client: &mut TcpStream,
    input: &[u8],
    sent: &mut usize,
    limit: usize,
) -> Result<(), TestCaseError> {
    let end = input.len().min(sent.saturating_add(limit));
    while *sent < end {
        match client.write(&input[*sent..end]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(TestCaseError::fail(format!("client write: {e}"))),
        }
    }
    Ok(())
}

fn run_state_machine(setup: &Setup, script: &Script, ops: &[Op]) -> Result<(), TestCaseError> {
    let input = script.bytes();
    let limits = limits_for(setup);
    let now = Instant::now();
    let stats = Stats::new(now);
    let mut timers = Timers::new(now);
    let mut read_buf = vec![0u8; setup.read_buf];
    let mut spare = loopline::connection::Spare::default();
    let mut memory = loopline::connection::MemoryPressure::default();
    let mut cx = Lent {
        service: &Loopline,
        now,
        key: 0,
        limits: &limits,
        stats: &stats,
        token: None,
        guards: &loopline::guard::Guards::OFF,
        timers: &mut timers,
        read_buf: &mut read_buf,
        spare: &mut spare,
        memory: &mut memory,
        metrics: None,
    };
    let (stream, peer, mut client, dup) = socket_pair();
    // The loop counts a client when it accepts it; the connection uncounts
    // itself when its last line is out.
    stats.client_opened(loopline::stats::Client {
        ip: peer.ip(),
        listener: 0,
    });
    let mut dup = mio::net::TcpStream::from_std(dup);
    let accepted = Accepted {
        stream,
        transport: loopline::transport::Transport::Plain,
        peer,
        role: Role::Client,
        proxied: false,
        listener: 0,
    };
    let (mut conn, next) = Connection::start(accepted, &mut cx);
    check(&conn, next, setup, false)?;
    let (rw, r, w) = (
        mio::Interest::READABLE | mio::Interest::WRITABLE,
        mio::Interest::READABLE,
        mio::Interest::WRITABLE,
    );
    let mut polls = Vec::new();
    let mut poll_for = |source: &mut mio::net::TcpStream, interest| {
        let poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(source, mio::Token(0), interest)
            .unwrap();
        polls.push((poll, mio::Events::with_capacity(16)));
    };
    match setup.driver {
        Driver::AlwaysReadable => {}
        Driver::EdgeTriggered => poll_for(conn.stream_mut(), rw),
        Driver::SplitEdges => {
            poll_for(conn.stream_mut(), r);
            poll_for(&mut dup, w);
        }
    }
    let mut h = Harness {
        conn,
        cx,
        polls,
        _dup: dup,
        setup,
        closed: false,
        shutdown_at: None,
    };
    h.follow(next)?;

    let mut sent = 0;
    let mut received = Vec::new();
    for op in ops {
        match *op {
            Op::Send(n) => client_write(&mut client, &input, &mut sent, n)?,
            Op::Read(n) => {
                client_read(&mut client, n, &mut received)?;
            }
            Op::Shutdown => h.shut_down()?,
        }
        if !h.closed {
            h.pump(sent)?;
        }
    }

    // The client sends the rest, shuts its side and reads everything; the
    // connection must then finish by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut shut = false;
    while !h.closed {
        if sent < input.len() {
            client_write(&mut client, &input, &mut sent, usize::MAX)?;
        } else if !shut {
            client.shutdown(Shutdown::Write).unwrap();
            shut = true;
        }
        let got = client_read(&mut client, usize::MAX, &mut received)?;
        h.pump(sent)?;
        prop_assert!(
            Instant::now() < deadline,
            "never closed: state {:?}, {}/{} sent, {} pending, {} held",
            h.conn.state(),
            sent,
            input.len(),
            h.conn.pending_output(),
            h.conn.buffered_input()
        );
        if got == 0 && !h.closed && h.polls.is_empty() {
            thread::sleep(Duration::from_micros(100));
        }
    }
    prop_assert_eq!(h.conn.pending_output(), 0, "closed with output unsent");
    let shutdown_at = h.shutdown_at;
    prop_assert_eq!(
        h.cx.stats.connections(),
        0,
        "a finished connection still counts as open"
    );
    drop(h);
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(util::PATIENCE)).unwrap();
    client
        .read_to_end(&mut received)
        .map_err(|e| TestCaseError::fail(format!("client read: {e}")))?;

    let expected = match shutdown_at {
        None => model::transcript(&input, ClientEnd::ShutsWrite, setup.max_line),
        // Shut down while open: every complete line read by then is
        // answered (those held back by backpressure too), then the shutdown
        // line, unless one of those lines already ended the session (BYE,
        // line too long: the last line the connection gets).
        Some(consumed) => {
            let mut expected =
                model::transcript(&input[..consumed], ClientEnd::StaysOpen, setup.max_line);
            if !expected.session_over {
                let shutting_down = Expected::Exact(model::SHUTTING_DOWN.to_vec());
                expected.lines.push(shutting_down);
            }
            expected
        }
    };
    agrees(&expected, &received, "transcript vs the model")?;
    Ok(())
}

/// Regression (found by these properties and by the `connection` fuzz
/// target, shrunk by hand): a QUIT held back by backpressure when the server
/// shuts down is answered with BYE, and the connection used to get `ERR
/// server shutting down` after it, though BYE must be the last line the
/// connection gets. The same with a held line too long.
#[test]
fn bye_stays_the_last_line_when_shutdown_runs_a_held_quit() {
    for last in [&b"QUIT"[..], &[b'x'; 80]] {
        let mut lines = vec![Bytes(b"HELP".to_vec()); 50];
        lines.push(Bytes(last.to_vec()));
        let script = Script {
            crlf: vec![false; lines.len()],
            lines,
            open_end: false,
        };
        // Every reply passes max_output: the first line pauses reading with
        // the other 50 held; the client reads nothing, so output backs up.
        let setup = Setup {
            max_line: 64,
            max_output: 1,
            read_buf: 256,
            driver: Driver::EdgeTriggered,
        };
        let ops = [Op::Send(usize::MAX), Op::Shutdown];
        if let Err(e) = run_state_machine(&setup, &script, &ops) {
            panic!("{e}");
        }
    }
}

fn setup_and_script() -> impl Strategy<Value = (Setup, Script)> {
    setup().prop_flat_map(|setup| {
        let max_line = setup.max_line;
        (Just(setup), script(max_line, 0..400, 0.15))
    })
}

#[test]
fn connection_buffers_stay_bounded_and_the_transcript_is_right() {
    proptest!(config(96), |((setup, script) in setup_and_script(), ops in ops(false))| {
        run_state_machine(&setup, &script, &ops)?;
    });
}

/// The same with graceful shutdowns among the steps: every line read by
/// then is answered, then `ERR server shutting down`, unless one of those
/// lines ended the session.
#[test]
fn shutdown_answers_what_was_read_and_bye_stays_last() {
    proptest!(config(96), |((setup, script) in setup_and_script(), ops in ops(true))| {
        run_state_machine(&setup, &script, &ops)?;
    });
}

// ---------------------------------------------------------------------------
// 1c. Pure properties of framing and protocol.

/// Random bytes with many LFs and CRs.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => text_byte(),
            1 => Just(b'\n'),
            1 => Just(b'\r'),
        ],
        0..400,
    )
}

proptest! {
    #![proptest_config(config(1024))]

    /// Cutting a buffer line by line gives exactly its LF-separated lines,
    /// each with one trailing CR removed, until the first line longer than
    /// max_line, which is TooLong; the unfinished rest is Partial unless it
    /// can no longer fit.
    #[test]
    fn cut_line_gives_the_lf_split_lines(buf in stream_bytes(), max_line in 1usize..48) {
        let mut pieces: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        let tail = pieces.pop().unwrap();
        let mut rest = &buf[..];
        let mut refused = false;
        for piece in pieces {
            let want = piece.strip_suffix(b"\r").unwrap_or(piece);
            if want.len() > max_line {
                prop_assert_eq!(cut_line(rest, max_line), Cut::TooLong);
                refused = true;
                break;
            }
            prop_assert_eq!(cut_line(rest, max_line), Cut::Line { line: want, used: piece.len() + 1 });
            rest = &rest[piece.len() + 1..];
        }
        if !refused {
            prop_assert_eq!(rest, tail);
            // The tail can still become a valid line iff it is one without
            // a trailing CR (the shortest ending is a bare LF after it).
            let shortest = tail.strip_suffix(b"\r").unwrap_or(tail);
            prop_assert_eq!(final_line(tail), shortest);
            let fits = shortest.len() <= max_line;
            let want = if fits { Cut::Partial } else { Cut::TooLong };
            prop_assert_eq!(cut_line(rest, max_line), want);
            prop_assert_eq!(
                unfinished_too_long(tail.len(), tail.last().copied(), max_line),
                !fits
            );
        }
    }

    /// No prefix of a valid line and its ending is ever refused; the whole
    /// is that line. Includes lines of exactly max_line bytes ended by CRLF.
    #[test]
    fn prefixes_of_a_valid_line_are_never_too_long(
        (max_line, line) in (1usize..64).prop_flat_map(|max| {
            let exact = text(max..=max);
            (Just(max), prop_oneof![1 => exact, 1 => text(0..=max)])
        }),
        crlf in any::<bool>(),
        extra in text(0..8),
    ) {
        let mut full = line.clone();
        full.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        for cut in 0..full.len() {
            prop_assert_eq!(cut_line(&full[..cut], max_line), Cut::Partial, "prefix of {} bytes", cut);
        }
        // A CRLF takes one CR off; a bare LF after a CR is a CRLF too.
        let want = if crlf { &line[..] } else { line.strip_suffix(b"\r").unwrap_or(&line) };
        // Whatever follows the LF does not change the line.
        full.extend_from_slice(&extra);
        let used = line.len() + if crlf { 2 } else { 1 };
        prop_assert_eq!(cut_line(&full, max_line), Cut::Line { line: want, used });
    }

    /// One more byte than max_line (not counting a CR right before the LF)
    /// is refused, however much of the line has arrived past the limit.
    #[test]
    fn a_line_one_byte_too_long_is_refused_early(max_line in 1usize..64, line in text(65..=80)) {
        let over = &line[..max_line + 1];
        if over.last() != Some(&b'\r') {
            prop_assert_eq!(cut_line(over, max_line), Cut::TooLong);
        }
        let mut finished = over.to_vec();
        finished.extend_from_slice(b"\r\n");
        prop_assert_eq!(cut_line(&finished, max_line), Cut::TooLong);
    }

    /// `respond` appends exactly one line, ending in exactly one LF, for any
    /// line without LF: the model's answer (a STATS reply compared loosely);
    /// and closes exactly on QUIT.
    #[test]
    fn respond_appends_exactly_one_line(
        line in prop_oneof![
            3 => text(0..200),
            1 => prop::sample::select(vec!["PING", "ECHO", "QUIT", "HELP", "STATS"])
                .prop_flat_map(|w| (any_case(w), prop::option::of(text(0..20))))
                .prop_map(|(mut name, arg)| {
                    if let Some(arg) = arg {
                        name.push(b' ');
                        name.extend(arg);
                    }
                    name
                }),
        ],
        before in text(0..16),
        counters in any::<[u64; 6]>(),
        up_s in 0u64..1_000_000_000,
    ) {
        let started = Instant::now();
        let [connections, accepted, rejected, commands, bytes_in, bytes_out] = counters;
        let stats = Stats::holding(started, loopline::stats::Snapshot {
            connections, accepted, rejected, commands, bytes_in, bytes_out,
            ..Default::default()
        });
        let now = started + Duration::from_secs(up_s);
        let mut out = before.clone();
        let context = Context::new(&stats, now);
        let mut session = Loopline.session(&context);
        let after = Loopline.respond(&line, &mut session, &context, &mut out);
        prop_assert!(out.starts_with(&before), "respond changed what was there");
        let reply = &out[before.len()..];
        prop_assert_eq!(reply.last(), Some(&b'\n'), "reply {:?}", Bytes(reply.to_vec()));
        prop_assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1, "reply {:?}", Bytes(reply.to_vec()));
        let (want, quit) = model::answer(&line);
        let expected = Transcript { lines: vec![want], session_over: quit };
        agrees(&expected, reply, "respond vs the model")?;
        prop_assert_eq!(after != After::KeepOpen, quit);
    }
}
