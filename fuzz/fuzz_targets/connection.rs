//! Fuzz target `connection`: the real `Connection` state machine, driven
//! over a Unix socket pair (kernel-buffered, synchronous, no network) with
//! fuzzer-chosen limits, read sizes, client reads and graceful shutdowns,
//! through each way a connection can open: a client admitted at once, one
//! turned away, one behind a PROXY header that the loop then admits, a TLS
//! client (a real rustls client on the other end), a TLS client turned
//! away. Checked after every call: held input and pending output stay
//! bounded, a closing connection holds no input; at the end the client's
//! transcript is exactly the contract's (framing + protocol in one read,
//! `proxy::parse` for the header).
//!
//! Input: byte 0 sets max_line (1..=64), byte 1 max_output (1..=256), byte 2
//! the read buffer (1..=128), byte 3 the number of op bytes (bits 0-4,
//! 0..=31) that follow, cycled, and the opening (bits 5-7, mod 5: client,
//! turned away, PROXY header first, TLS client, TLS turned away); the rest
//! is the client's stream (inside TLS, the plaintext its session
//! encrypts). An op byte: bits 0-5 the bytes to send (1..=64; of records,
//! inside TLS), bit 6 the client reads what has arrived first, bit 7 the
//! server shuts down gracefully first (not inside TLS, whose model would
//! have to know when the handshake ended; ignored when the environment has
//! FUZZ_NO_SHUTDOWN=1, to explore the rest of the state machine alone).

#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use loopline::connection::{
    input_capacity_bound, output_capacity_bound, Accepted, Connection, Lent, Limits, Next, Refusal,
    Role, Spare, State, SPARE_OUTPUT_KEEP,
};
use loopline::framing::{cut_line, final_line, Cut};
use loopline::protocol::{Loopline, Session};
use loopline::proxy::{self, Parsed};
use loopline::service::{After, Context, Service};
use loopline::stats::Stats;
use loopline::timer::Timers;
use loopline::transport::Transport;

/// How the connection opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    Client,
    TurnedAway,
    Proxied,
    Tls,
    TlsTurnedAway,
}

impl Opening {
    fn from_byte(b: u8) -> Opening {
        match (b >> 5) % 5 {
            0 => Opening::Client,
            1 => Opening::TurnedAway,
            2 => Opening::Proxied,
            3 => Opening::Tls,
            _ => Opening::TlsTurnedAway,
        }
    }

    fn tls(self) -> bool {
        matches!(self, Opening::Tls | Opening::TlsTurnedAway)
    }
}

/// The responses to the complete lines of `input`, and whether one of them
/// ended the session (QUIT, or a line too long, finished or not).
fn replies(input: &[u8], max_line: usize, stats: &Stats, now: Instant) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut session = Session::new(false);
    let mut rest = input;
    loop {
        match cut_line(rest, max_line) {
            Cut::Line { line, used } => {
                rest = &rest[used..];
                if Loopline.respond(line, &mut session, &Context::new(&stats, now), &mut out)
                    == After::Close
                {
                    return (out, true);
                }
            }
            Cut::TooLong => {
                out.extend_from_slice(loopline::service::Notice::LineTooLong.line());
                return (out, true);
            }
            Cut::Partial => return (out, false),
        }
    }
}

/// The whole conversation a client sending `input` (then its end of
/// stream) must see: the greeting, a response per line, one to a final
/// line without LF; or, with a graceful shutdown after `shutdown_at` bytes
/// were consumed, the responses to those and the shutdown line.
fn transcript(input: &[u8], max_line: usize, shutdown_at: Option<usize>, now: Instant) -> Vec<u8> {
    let stats = Stats::new(now);
    let mut want = loopline::service::GREETING.to_vec();
    match shutdown_at {
        None => {
            let (out, ended) = replies(input, max_line, &stats, now);
            want.extend(out);
            let tail = &input[input
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |lf| lf + 1)..];
            if !ended && !tail.is_empty() {
                let mut session = Session::new(false);
                Loopline.respond(
                    final_line(tail),
                    &mut session,
                    &Context::new(&stats, now),
                    &mut want,
                );
            }
        }
        Some(at) => {
            let (out, ended) = replies(&input[..at], max_line, &stats, now);
            want.extend(out);
            if !ended {
                want.extend_from_slice(loopline::service::Notice::ShuttingDown.line());
            }
        }
    }
    want
}

/// The server's TLS configuration, from the certificate committed for the
/// fuzzer (fuzz/tls/), and a client that trusts the CA that signed it.
fn tls_configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    CONFIGS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tls");
        let files = loopline::tls::TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            ocsp: None,
            min_version: loopline::transport::TlsVersion::V1_2,
        };
        let server = loopline::tls::load(&files).expect("the fuzzer's certificate");
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let cert = std::fs::read(dir.join("ca.pem")).unwrap();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&cert).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        (server, Arc::new(client))
    })
}

/// The client's end: its socket, and inside TLS its session.
struct Peer {
    socket: UnixStream,
    tls: Option<TlsClient>,
    /// Plain bytes (or, inside TLS, record bytes) sent so far.
    sent: usize,
}

struct TlsClient {
    session: rustls::ClientConnection,
    /// Records the session made, not yet on the socket.
    wire: Vec<u8>,
}

impl Peer {
    /// Sends up to `limit` more bytes of `input` (inside TLS: of the
    /// records that carry it). Returns whether everything is sent.
    fn send(&mut self, input: &[u8], limit: usize) -> bool {
        match &mut self.tls {
            None => {
                let end = input.len().min(self.sent + limit);
                self.sent += send(&mut self.socket, &input[self.sent..end]);
                self.sent == input.len()
            }
            Some(tls) => {
                while tls.session.wants_write() {
                    tls.session
                        .write_tls(&mut tls.wire)
                        .expect("records into a Vec");
                }
                let end = tls.wire.len().min(limit);
                let n = send(&mut self.socket, &tls.wire[..end]);
                tls.wire.drain(..n);
                self.sent += n;
                tls.wire.is_empty() && !tls.session.wants_write() && !tls.session.is_handshaking()
            }
        }
    }

    /// Reads what has arrived into `into` (decrypted, inside TLS); true at
    /// the end of the stream.
    fn receive(&mut self, into: &mut Vec<u8>) -> bool {
        match &mut self.tls {
            None => read_available(&mut self.socket, into),
            Some(tls) => {
                let mut wire = Vec::new();
                let ended = read_available(&mut self.socket, &mut wire);
                let mut rest = &wire[..];
                while !rest.is_empty() {
                    tls.session.read_tls(&mut rest).expect("read records");
                    tls.session
                        .process_new_packets()
                        .expect("the server's records are valid");
                }
                let _ = tls.session.reader().read_to_end(into);
                ended
            }
        }
    }

    /// Ends the client's stream: close_notify (inside TLS), then the FIN.
    fn end(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.session.send_close_notify();
            while tls.session.wants_write() {
                tls.session
                    .write_tls(&mut tls.wire)
                    .expect("records into a Vec");
            }
            let mut wire = std::mem::take(&mut tls.wire);
            while !wire.is_empty() {
                let n = send(&mut self.socket, &wire);
                wire.drain(..n);
            }
        }
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

struct Run<'a> {
    conn: Connection<Loopline>,
    cx: Lent<'a, Loopline>,
    max_line: usize,
    max_output: usize,
    read_buf: usize,
    shut_down: bool,
    closed: bool,
    /// The client has ended its stream: events carry the hang-up hint.
    hangup: bool,
    /// Bytes of PROXY header the connection read before it was admitted.
    header_len: Option<usize>,
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
            assert_eq!(held, 0, "a connection not serving holds input");
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
            if self.conn.state() == State::Admitting {
                next = self.admit();
                continue;
            }
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

    /// What the loop does once the PROXY header is read: counts the client
    /// under its address, and admits it.
    fn admit(&mut self) -> Next {
        self.header_len = Some(self.cx.stats.snapshot().bytes_in as usize);
        let ip: IpAddr = self.conn.peer().ip();
        self.cx
            .stats
            .client_opened(loopline::stats::Client { ip, listener: 0 });
        self.conn.admitted(Role::Client, &mut self.cx)
    }

    /// An event, readable and writable (spurious or not: both are allowed).
    fn event(&mut self) {
        if !self.closed {
            self.conn.writable_again();
            let next = self.conn.drive(true, self.hangup, &mut self.cx);
            self.follow(next);
        }
    }

    fn shut_down(&mut self) {
        self.shut_down = true;
        let next = self.conn.shut_down(&mut self.cx);
        self.follow(next);
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
    // MSG_NOSIGNAL: a write after the server closed (it refused a header,
    // say) fails with EPIPE instead of killing the fuzzer with SIGPIPE.
    match socket2::SockRef::from(&*client).send_with_flags(bytes, libc::MSG_NOSIGNAL) {
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
        // The server closed (a refusal, say): nothing more goes through.
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            bytes.len()
        }
        Err(e) => panic!("client write: {e}"),
    }
}

fn shutdowns_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("FUZZ_NO_SHUTDOWN").is_none_or(|v| v != "1"))
}

/// A connected pair: the server's end as a mio TCP stream, the client's.
fn socket_pair() -> (mio::net::TcpStream, UnixStream) {
    let (server_side, client) = UnixStream::pair().expect("socketpair");
    server_side.set_nonblocking(true).unwrap();
    client.set_nonblocking(true).unwrap();
    // The smallest send buffer (the kernel raises 1 to its minimum): output
    // backs up after a few replies while the client does not read.
    socket2::SockRef::from(&server_side)
        .set_send_buffer_size(1)
        .unwrap();
    // SAFETY: the fd is a connected stream socket that we own; the
    // connection only reads, writes, peeks and shuts it down, which a Unix
    // stream socket supports like a TCP one.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(server_side.into_raw_fd()) };
    (mio::net::TcpStream::from_std(stream), client)
}

/// What the client must have received, and the connection's work done.
fn expected(
    opening: Opening,
    input: &[u8],
    run: &Run,
    shutdown_at: Option<usize>,
    read_buf: usize,
) -> Vec<u8> {
    let now = run.cx.now;
    match opening {
        Opening::TurnedAway | Opening::TlsTurnedAway => Refusal::Busy.notice().line().to_vec(),
        Opening::Client | Opening::Tls => transcript(input, run.max_line, shutdown_at, now),
        Opening::Proxied => {
            // The server looks at most this far for the header's end.
            let window = proxy::HEADER_MAX.min(read_buf);
            match proxy::parse(&input[..input.len().min(window)]) {
                Ok(Parsed::Header { len, .. }) => match (run.header_len, shutdown_at) {
                    (Some(read), _) => {
                        assert_eq!(read, len, "read past the header");
                        transcript(
                            &input[len..],
                            run.max_line,
                            shutdown_at.map(|at| at - len),
                            now,
                        )
                    }
                    // Shut down while it waited for its header.
                    (None, _) if run.shut_down => Vec::new(),
                    (None, _) => panic!("a whole header was never admitted"),
                },
                // Never admitted: closed without a byte.
                _ => {
                    assert!(run.header_len.is_none(), "admitted without a header");
                    Vec::new()
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let max_line = usize::from(data[0] % 64) + 1;
    let max_output = usize::from(data[1]) + 1;
    let read_buf_len = usize::from(data[2] % 128) + 1;
    let opening = Opening::from_byte(data[3]);
    let n_ops = usize::from(data[3] % 32).min(data.len() - 4);
    let ops = &data[4..4 + n_ops];
    let input = &data[4 + n_ops..];

    let (stream, client) = socket_pair();
    let limits = Limits {
        max_line,
        max_output,
        idle_timeout: None,
        write_timeout: None,
        linger: Duration::from_secs(2),
        max_memory: usize::MAX,
        tcp_keepalive: None,
        handshake_timeout: None,
        loops: 1,
        longest_response: loopline::limits::echoing_response(max_line),
    };
    let now = Instant::now();
    let stats = Stats::new(now);
    let mut timers = Timers::new(now);
    let mut read_buf = vec![0u8; read_buf_len];
    let mut spare = Spare::default();
    let mut memory = loopline::connection::MemoryPressure::default();
    let cx = Lent {
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
    let peer_addr = "127.0.0.1:1".parse().unwrap();
    let role = match opening {
        Opening::Client | Opening::Tls => {
            // The loop counts a client when it admits it; the connection
            // uncounts itself when its last line is out.
            stats.client_opened(loopline::stats::Client {
                ip: "127.0.0.1".parse().unwrap(),
                listener: 0,
            });
            Role::Client
        }
        Opening::TurnedAway | Opening::TlsTurnedAway => Role::Refused(Refusal::Busy),
        Opening::Proxied => Role::Undecided,
    };
    let (transport, tls) = if opening.tls() {
        let (server, client_config) = tls_configs();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut session = rustls::ClientConnection::new(client_config.clone(), name).unwrap();
        session.set_buffer_limit(None);
        session.writer().write_all(input).unwrap();
        let transport = Transport::tls(server.clone()).expect("a session");
        (
            transport,
            Some(TlsClient {
                session,
                wire: Vec::new(),
            }),
        )
    } else {
        (Transport::Plain, None)
    };
    let accepted = Accepted {
        stream,
        transport,
        peer: peer_addr,
        role,
        proxied: opening == Opening::Proxied,
        listener: 0,
    };
    let mut cx = cx;
    let (conn, next) = Connection::start(accepted, &mut cx);
    let mut run = Run {
        conn,
        cx,
        max_line,
        max_output,
        read_buf: read_buf_len,
        shut_down: false,
        closed: false,
        hangup: false,
        header_len: None,
    };
    run.follow(next);
    let mut peer = Peer {
        socket: client,
        tls,
        sent: 0,
    };

    let mut received = Vec::new();
    let mut shutdown_at = None;
    let may_shut_down = shutdowns_enabled() && !opening.tls();
    let mut all_sent = input.is_empty() && !opening.tls();
    if !ops.is_empty() {
        // Each step sends a byte at least, unless the server has stopped
        // reading (backpressure, or it is closing) and the client never
        // reads: bounded, the rest is sent below.
        for &op in ops.iter().cycle().take(4 * input.len() + ops.len() + 64) {
            if all_sent {
                break;
            }
            if op & 0x80 != 0 && may_shut_down && !run.closed && !run.shut_down {
                if matches!(run.conn.state(), State::Open | State::Paused) {
                    shutdown_at = Some(run.cx.stats.snapshot().bytes_in as usize);
                }
                run.shut_down();
            }
            if op & 0x40 != 0 {
                peer.receive(&mut received);
            }
            all_sent = peer.send(input, usize::from(op & 0x3f) + 1);
            run.event();
        }
    }

    // The client sends the rest, ends its stream and reads everything.
    let mut ended = false;
    let mut rounds = 0;
    while !run.closed {
        if !all_sent {
            all_sent = peer.send(input, usize::MAX);
        } else if !ended {
            peer.end();
            ended = true;
            run.hangup = true;
        }
        peer.receive(&mut received);
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
    if let Some(at) = shutdown_at {
        assert!(at <= consumed);
    }
    let want = expected(opening, input, &run, shutdown_at, read_buf_len);
    drop(run);
    peer.socket.set_nonblocking(false).unwrap();
    while !peer.receive(&mut received) {}
    assert!(
        received == want,
        "transcript differs ({opening:?})\n got: {}\nwant: {}",
        received.escape_ascii(),
        want.escape_ascii()
    );
});
