//! Prometheus metrics over HTTP/1.1 (`--metrics-listen ADDR`), served by
//! the same event loop as the protocol: one more listener, and a small slab
//! of HTTP connections beside the clients' one. Edge-triggered like every
//! other socket: each handler reads or writes until the kernel says
//! `WouldBlock`, and nothing here blocks or starts a thread.
//!
//! What a metrics connection may do, and its bounds:
//!
//! * `GET /metrics` answers `200` with the Prometheus text format
//!   ([`render`]); another path `404`; another method, on any path, `405`
//!   with `Allow: GET`. A head over [`MAX_HEAD`] bytes answers `431`, a
//!   malformed one `400`; both then close. Requests carry no body: a `GET`
//!   with one (a `Content-Length` other than 0, or any `Transfer-Encoding`)
//!   answers `400` and closes, and a `405` to a request with a body closes
//!   too, since where its body ends is not read.
//! * Keep-alive as HTTP/1.1 has it by default (`Connection: close` is
//!   honoured; HTTP/1.0 closes unless it asks for `keep-alive`). Pipelined
//!   requests are answered one at a time, in order: the next is parsed only
//!   once the previous answer is written, so a client that sends without
//!   reading holds one answer and at most [`MAX_HEAD`] bytes of input.
//! * A head must be complete within the head timeout (`--handshake-timeout`,
//!   or [`crate::connection::OPENING_TIMEOUT_WHEN_OFF`] when that is 0), counted from its first
//!   byte (from the accept, for the first); a connection with nothing to do
//!   is closed after [`KEEP_ALIVE_IDLE`]; an answer the peer does not read
//!   is bounded by the same idle time.
//! * At most [`MAX_METRICS_CONNECTIONS`] at once: past that, a newcomer is
//!   closed at once. They are not clients: they never count in
//!   `connections`, nor against `--max-connections`.
//!
//! Rendering reads the counters of [`Stats`], kept as events happen: a
//! scrape costs the same with ten clients or ten thousand, and never walks
//! the clients' slab.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::config::ListenAddr;
use crate::stats::Stats;
use crate::summaries::Kind;
use crate::timer::{Timer, TimerKind, Timers};

/// The longest request head (request line and headers, up to the blank
/// line) a metrics connection may send; a longer one answers `431`.
pub const MAX_HEAD: usize = 8 * 1024;

/// Metrics connections open at once; a newcomer past them is closed at once.
/// Each holds a descriptor, so the loop counts them out of its socket budget.
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// A metrics connection with no request under way is closed after this long.
/// Prometheus scrapes every 15 s to 1 min and reconnects when it must.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);

/// The most headers a head may carry; more answers `431`.
const MAX_HEADERS: usize = 64;

/// Connections accepted per listener event before the loop serves the
/// others (a connect flood on the metrics port must not hold the loop).
const ACCEPTS_PER_TURN: usize = 16;

/// After an accept error other than "nothing queued", wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes of unread input thrown away after the last answer, waiting for the
/// peer's close, before closing anyway (see [`Phase::Draining`]).
const DRAIN_LIMIT: usize = 64 * 1024;

/// Tokens: the listener is `TOKEN_BASE`, connection `key` is
/// `TOKEN_BASE + 1 + key`. The range sits between the clients' slab keys
/// (far below) and the protocol listeners' tokens (from `usize::MAX / 2`).
const TOKEN_BASE: usize = usize::MAX / 4;
const LISTENER: Token = Token(TOKEN_BASE);

/// Whether `token` names the metrics listener or one of its connections.
pub fn owns(token: Token) -> bool {
    (TOKEN_BASE..=TOKEN_BASE + MAX_METRICS_CONNECTIONS).contains(&token.0)
}

/// Why `--metrics-listen` could not be served.
#[derive(Debug)]
pub struct MetricsError {
    /// The `--metrics-listen` value.
    pub listen: ListenAddr,
    /// The address that failed, when it got that far.
    pub addr: Option<SocketAddr>,
    pub source: io::Error,
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(addr) => write!(
                f,
                "cannot serve metrics on {addr} (--metrics-listen {}): {}",
                self.listen, self.source
            ),
            None => write!(
                f,
                "cannot resolve --metrics-listen {}: {}",
                self.listen, self.source
            ),
        }
    }
}

impl std::error::Error for MetricsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What the metrics render besides the counters: fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--max-connections`.
    pub max_connections: u64,
    /// `--max-memory`.
    pub max_memory: u64,
    /// How long a request head may take (see the module doc).
    pub head_timeout: Duration,
}

/// The metrics listener and its connections.
pub struct MetricsEndpoint {
    /// `None` once a graceful shutdown has closed it.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    conns: Slab<HttpConnection>,
    /// The connections' deadlines (their own heap: the clients' timers and
    /// slab keys stay the clients').
    timers: Timers,
    next_id: u64,
    settings: Settings,
    /// When the server started, as Unix time in seconds.
    start_time: f64,
    /// The accept budget ran out with connections maybe still queued.
    accept_again: bool,
    /// Accepting failed (say, out of descriptors): try again then.
    accept_retry_at: Option<Instant>,
    /// A graceful shutdown is under way: every answer closes.
    shutting_down: bool,
    /// The body of the last scrape, kept for its capacity.
    body: String,
}

/// Where a metrics connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading heads and answering them.
    Serving,
    /// Its last answer is queued: write it, then send our FIN.
    Closing,
    /// Our FIN is sent: throw away what the peer still sends until it
    /// closes too, so that unread input does not make the kernel reset the
    /// connection (a reset can discard the answer before the peer reads it).
    Draining,
}

/// What the endpoint does with a connection after driving it.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Keep,
    Close,
}

struct HttpConnection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Serial number: a timer entry names it with its key, as slots are reused.
    id: u64,
    /// Bytes read and not yet parsed: at most one head (and [`MAX_HEAD`] + 1).
    input: Vec<u8>,
    /// The answer being written, and how much of it is out.
    output: Vec<u8>,
    written: usize,
    phase: Phase,
    /// When the connection is closed unless something moves it on.
    deadline: Instant,
    /// The due time of its entry in the timer heap, if one is there.
    armed: Option<Instant>,
    /// Bytes thrown away while draining.
    drained: usize,
}

impl MetricsEndpoint {
    /// Binds `listen` (its first address that binds, for a host name) and
    /// registers it with the loop.
    pub fn bind(
        listen: &ListenAddr,
        settings: Settings,
        registry: &Registry,
        started: Instant,
    ) -> Result<MetricsEndpoint, MetricsError> {
        let failed = |addr, source| MetricsError {
            listen: listen.clone(),
            addr,
            source,
        };
        let addrs = listen.resolve().map_err(|e| failed(None, e))?;
        // mio's own bind: address reuse on, and its backlog (128) is far
        // more than `MAX_METRICS_CONNECTIONS` scrapers need.
        let mut bound = Err(failed(
            None,
            io::Error::new(io::ErrorKind::NotFound, "the name has no address"),
        ));
        for addr in addrs {
            bound = TcpListener::bind(addr)
                .map(|listener| (addr, listener))
                .map_err(|e| failed(Some(addr), e));
            if bound.is_ok() {
                break;
            }
        }
        let (addr, mut listener) = bound?;
        let local_addr = listener.local_addr().map_err(|e| failed(Some(addr), e))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| failed(Some(addr), e))?;
        // Unix time of the start: now, less the time since `started`.
        let since_start = Instant::now().saturating_duration_since(started);
        let start_time = SystemTime::now()
            .checked_sub(since_start)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(MetricsEndpoint {
            listener: Some(listener),
            local_addr,
            conns: Slab::with_capacity(MAX_METRICS_CONNECTIONS),
            timers: Timers::new(),
            next_id: 0,
            settings,
            start_time,
            accept_again: false,
            accept_retry_at: None,
            shutting_down: false,
            body: String::new(),
        })
    }

    /// The bound address, with its real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Descriptors the endpoint may hold at once: its listener and its
    /// connections.
    pub fn descriptors(&self) -> u64 {
        1 + MAX_METRICS_CONNECTIONS as u64
    }

    /// Metrics connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether the loop must not sleep: accepting has budget left to use.
    pub fn wants_to_run(&self) -> bool {
        self.accept_again
    }

    /// The nearest deadline, for the loop's `poll` timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.timers.next_deadline(), self.accept_retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An event for one of our tokens (see [`owns`]).
    pub fn on_event(&mut self, token: Token, registry: &Registry, stats: &Stats, now: Instant) {
        if token == LISTENER {
            self.accept_within_budget(registry, now);
            return;
        }
        let key = token.0 - TOKEN_BASE - 1;
        // Closed connections leave the slab at once, so an event later in
        // the same batch may name a slot that a newcomer took since: it
        // only makes that one try a read or write that finds nothing.
        self.drive(key, registry, stats, now);
    }

    /// Once per loop turn, after the events: due deadlines, and accepting
    /// that ran out of budget or was paused.
    pub fn run_due(&mut self, registry: &Registry, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(timer.key) else {
                continue;
            };
            // An entry of a connection gone, or one the connection replaced
            // by an earlier one: not its live deadline.
            if conn.id != timer.conn_id || conn.armed != Some(timer.at) {
                continue;
            }
            conn.armed = None;
            if conn.deadline <= now {
                debug!("metrics: closed {}: timed out", conn.peer);
                self.close(timer.key, registry);
            } else {
                let deadline = conn.deadline;
                conn.arm(timer.key, deadline, &mut self.timers);
            }
        }
        if self.accept_retry_at.is_some_and(|at| at <= now) {
            self.accept_retry_at = None;
            self.accept_again = true;
        }
        if std::mem::take(&mut self.accept_again) {
            self.accept_within_budget(registry, now);
        }
    }

    /// Graceful shutdown: the listener closes; an answer being written is
    /// finished (it is small), then that connection closes; the others
    /// close now.
    pub fn shut_down(&mut self, registry: &Registry, now: Instant) {
        self.shutting_down = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        self.accept_again = false;
        self.accept_retry_at = None;
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.output.len() > conn.written {
                conn.phase = Phase::Closing;
                conn.input.clear();
                conn.set_deadline(key, now + self.settings.head_timeout, &mut self.timers);
            } else {
                self.close(key, registry);
            }
        }
    }

    fn accept_within_budget(&mut self, registry: &Registry, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::sys::is_per_connection_accept_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors, most likely: the listener stays
                    // readable, and retrying at once would spin.
                    debug!("metrics: accept failed: {e}; retrying shortly");
                    self.accept_retry_at = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.conns.len() >= MAX_METRICS_CONNECTIONS {
                debug!("metrics: turned away {peer}: {MAX_METRICS_CONNECTIONS} metrics connections are open");
                continue; // Dropping the stream closes it.
            }
            // Answers are single small writes; do not let Nagle hold one.
            let _ = stream.set_nodelay(true);
            let key = self.conns.vacant_key();
            let token = Token(TOKEN_BASE + 1 + key);
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                debug!("metrics: cannot register {peer}: {e}");
                continue;
            }
            self.next_id += 1;
            let conn = HttpConnection {
                stream,
                peer,
                id: self.next_id,
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                phase: Phase::Serving,
                deadline: now,
                armed: None,
                drained: 0,
            };
            self.conns.insert(conn);
            // The first head is due within the head timeout of the accept.
            self.conns[key].set_deadline(key, now + self.settings.head_timeout, &mut self.timers);
            // Bytes already waiting are reported by the registration itself.
            debug!("metrics: accepted {peer}");
        }
        // Budget spent: more may be queued, and the listener will not say so again.
        self.accept_again = true;
    }

    fn drive(&mut self, key: usize, registry: &Registry, stats: &Stats, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut answer = Answerer {
            stats,
            settings: &self.settings,
            start_time: self.start_time,
            shutting_down: self.shutting_down,
            body: &mut self.body,
        };
        let step = conn.drive(key, &mut answer, &mut self.timers, now);
        if step == Step::Close {
            self.close(key, registry);
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut conn.stream);
            debug!("metrics: closed {}", conn.peer);
        }
    }
}

/// What answering a request needs from the endpoint.
struct Answerer<'a> {
    stats: &'a Stats,
    settings: &'a Settings,
    start_time: f64,
    shutting_down: bool,
    body: &'a mut String,
}

impl HttpConnection {
    /// Moves the deadline; the heap gets a new entry only when the new one
    /// is earlier than the entry there (a later one is found when that
    /// entry comes due, and pushed again: see `run_due`).
    fn set_deadline(&mut self, key: usize, at: Instant, timers: &mut Timers) {
        self.deadline = at;
        if self.armed.is_none_or(|armed| armed > at) {
            self.arm(key, at, timers);
        }
    }

    fn arm(&mut self, key: usize, at: Instant, timers: &mut Timers) {
        self.armed = Some(at);
        timers.schedule(Timer {
            at,
            conn_id: self.id,
            key,
            // One kind of deadline here; the kind is not looked at.
            kind: TimerKind::Idle,
        });
    }

    /// Writes, reads and answers until the socket would block (edge-triggered:
    /// no event comes again for bytes already waiting), or the connection is done.
    fn drive(
        &mut self,
        key: usize,
        answer: &mut Answerer,
        timers: &mut Timers,
        now: Instant,
    ) -> Step {
        let head_timeout = answer.settings.head_timeout;
        loop {
            // The answer in hand goes out first: the next request waits for it.
            while self.written < self.output.len() {
                match self.stream.write(&self.output[self.written..]) {
                    Ok(0) => return Step::Close,
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            self.output.clear();
            self.written = 0;
            match self.phase {
                Phase::Serving => {}
                Phase::Closing => {
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.phase = Phase::Draining;
                    self.set_deadline(key, now + head_timeout, timers);
                    continue;
                }
                Phase::Draining => return self.drain(),
            }
            if self.answer_one(key, answer, timers, now) {
                continue;
            }
            // No complete head in hand: read more, up to one byte past the
            // limit. `answer_one` answered 431 to anything longer, so `held`
            // is at most MAX_HEAD and the read has room: a 0 means EOF.
            let held = self.input.len();
            let room = (MAX_HEAD + 1).saturating_sub(held).min(4096);
            self.input.resize(held + room, 0);
            let read = self.stream.read(&mut self.input[held..]);
            self.input.truncate(held + *read.as_ref().unwrap_or(&0));
            match read {
                // The peer closed its side: complete heads were answered;
                // half a head never will be.
                Ok(0) => return Step::Close,
                Ok(_) => {
                    if held == 0 {
                        // A new head begins: it has the head timeout to complete.
                        self.set_deadline(key, now + head_timeout, timers);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }

    /// Answers the head at the front of the input, if it is complete (or
    /// can never be: too long, malformed). Returns whether an answer was queued.
    fn answer_one(
        &mut self,
        key: usize,
        answer: &mut Answerer,
        timers: &mut Timers,
        now: Instant,
    ) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(&self.input);
        let (status, head_len, keep_alive) = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
                let (status, keep_alive) = judge(&request);
                (status, len, keep_alive)
            }
            Ok(httparse::Status::Complete(_)) => (Status::HeadTooLarge, 0, false),
            Ok(httparse::Status::Partial) if self.input.len() > MAX_HEAD => {
                (Status::HeadTooLarge, 0, false)
            }
            Ok(httparse::Status::Partial) => return false,
            Err(httparse::Error::TooManyHeaders) => (Status::HeadTooLarge, 0, false),
            Err(_) => (Status::BadRequest, 0, false),
        };
        let keep_alive = keep_alive && !answer.shutting_down;
        let http_1_0 = request.version == Some(0);
        write_response(&mut self.output, status, keep_alive, http_1_0, answer);
        if keep_alive {
            self.input.drain(..head_len);
            // Pipelined bytes of the next head have the head timeout; with
            // none, the connection may wait for the next scrape.
            let wait = if self.input.is_empty() {
                KEEP_ALIVE_IDLE
            } else {
                answer.settings.head_timeout
            };
            self.set_deadline(key, now + wait, timers);
        } else {
            // Nothing after this head is read as a request.
            self.input.clear();
            self.phase = Phase::Closing;
            self.set_deadline(key, now + answer.settings.head_timeout, timers);
        }
        true
    }

    /// Throws away what the peer sends after our last answer, until it
    /// closes (or sends too much, or its time is up: see `run_due`).
    fn drain(&mut self) -> Step {
        let mut scratch = [0u8; 4096];
        loop {
            match self.stream.read(&mut scratch) {
                Ok(0) => return Step::Close,
                Ok(n) => {
                    self.drained += n;
                    if self.drained > DRAIN_LIMIT {
                        return Step::Close;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }
}

/// The answers a metrics connection gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    HeadTooLarge,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Metrics => "200 OK",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::BadRequest => "400 Bad Request",
            Status::HeadTooLarge => "431 Request Header Fields Too Large",
        }
    }

    /// The body of an answer other than `200`: one line saying why.
    fn reason(self) -> &'static str {
        match self {
            Status::Metrics => "",
            Status::NotFound => "not found: the metrics are at /metrics\n",
            Status::MethodNotAllowed => "method not allowed: use GET\n",
            Status::BadRequest => "bad request\n",
            Status::HeadTooLarge => "request head too large\n",
        }
    }
}

/// The answer to a complete head, and whether the connection stays open.
fn judge(request: &httparse::Request) -> (Status, bool) {
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut has_body = false;
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                close |= option.eq_ignore_ascii_case("close");
                keep_alive_asked |= option.eq_ignore_ascii_case("keep-alive");
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            has_body |= value.trim() != "0";
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        }
    }
    // HTTP/1.1 keeps the connection unless told not to; HTTP/1.0 closes
    // unless asked to keep it. A body is never read, so where the next
    // request would begin is unknown: such a connection closes.
    let keep_alive = match request.version {
        Some(1) => !close,
        _ => keep_alive_asked && !close,
    } && !has_body;
    let path = request.path.unwrap_or("");
    // A query string does not change what is served.
    let path = path.split('?').next().unwrap_or(path);
    let status = if request.method != Some("GET") {
        Status::MethodNotAllowed
    } else if has_body {
        Status::BadRequest
    } else if path != "/metrics" {
        Status::NotFound
    } else {
        Status::Metrics
    };
    (status, keep_alive)
}

/// Appends the whole answer, head and body, to `output`.
fn write_response(
    output: &mut Vec<u8>,
    status: Status,
    keep_alive: bool,
    http_1_0: bool,
    answer: &mut Answerer,
) {
    let (content_type, body) = if status == Status::Metrics {
        answer.body.clear();
        render(
            answer.stats,
            answer.settings,
            answer.start_time,
            answer.body,
        );
        ("text/plain; version=0.0.4", answer.body.as_str())
    } else {
        ("text/plain; charset=utf-8", status.reason())
    };
    let mut head = String::with_capacity(160);
    // Writing to a String cannot fail; the results are ignored.
    let _ = write!(
        head,
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        status.line(),
        body.len()
    );
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    } else if http_1_0 {
        // HTTP/1.0 closes by default: say that this one stays open.
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    output.extend_from_slice(head.as_bytes());
    output.extend_from_slice(body.as_bytes());
}

/// The Prometheus text exposition format (version 0.0.4) of the counters:
/// a `# HELP` and a `# TYPE` line for every family, then its samples.
pub fn render(stats: &Stats, settings: &Settings, start_time: f64, out: &mut String) {
    // The whole process's counters, every loop's summed.
    let outcomes = stats.outcomes();
    let hits = |kind| outcomes.limit_hits(kind);
    let stats = stats.snapshot();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        // Writing to a String cannot fail; the results are ignored.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "loopline_connections",
        "gauge",
        "Client connections open now.",
        &[("", stats.connections)],
    );
    family(
        "loopline_buffered_bytes",
        "gauge",
        "Bytes held now in client buffers (unfinished input, held lines, pending output).",
        &[("", stats.buffered)],
    );
    family(
        "loopline_paused_connections",
        "gauge",
        "Client connections whose reading is paused now (backpressure).",
        &[("", stats.paused)],
    );
    family(
        "loopline_accepted_total",
        "counter",
        "Client connections admitted (READY sent).",
        &[("", stats.accepted)],
    );
    family(
        "loopline_rejected_total",
        "counter",
        "Client connections turned away (busy, too many from one address, out of descriptors).",
        &[("", stats.rejected)],
    );
    family(
        "loopline_commands_total",
        "counter",
        "Request lines answered.",
        &[("", stats.commands)],
    );
    family(
        "loopline_bytes_in_total",
        "counter",
        "Bytes read from clients.",
        &[("", stats.bytes_in)],
    );
    family(
        "loopline_bytes_out_total",
        "counter",
        "Bytes written to clients.",
        &[("", stats.bytes_out)],
    );
    family(
        "loopline_auth_failures_total",
        "counter",
        "Failed AUTH attempts.",
        &[("", stats.auth_failures)],
    );
    family(
        "loopline_limit_hits_total",
        "counter",
        "Client connections turned away or closed by a limit or a timer, by reason.",
        &[
            ("{reason=\"busy\"}", hits(Kind::Busy)),
            ("{reason=\"per_address\"}", hits(Kind::TooManyFromAddress)),
            (
                "{reason=\"out_of_descriptors\"}",
                hits(Kind::OutOfDescriptors),
            ),
            ("{reason=\"line_too_long\"}", hits(Kind::LineTooLong)),
            ("{reason=\"idle_timeout\"}", hits(Kind::IdleTimeout)),
            ("{reason=\"write_timeout\"}", hits(Kind::WriteTimeout)),
            (
                "{reason=\"handshake_timeout\"}",
                hits(Kind::HandshakeTimeout),
            ),
        ],
    );
    family(
        "loopline_tls_handshakes_total",
        "counter",
        "TLS handshakes that completed or failed (timeouts are limit hits).",
        &[
            ("{result=\"completed\"}", outcomes.tls_handshakes),
            ("{result=\"failed\"}", outcomes.tls_handshake_failures),
        ],
    );
    family(
        "loopline_max_connections",
        "gauge",
        "The --max-connections limit.",
        &[("", settings.max_connections)],
    );
    family(
        "loopline_max_memory_bytes",
        "gauge",
        "The --max-memory limit on client buffer memory.",
        &[("", settings.max_memory)],
    );
    // A float: the closure above takes integers.
    let name = "loopline_start_time_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} When the server started, in seconds since the Unix epoch."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {start_time:.3}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(head: &[u8]) -> (Status, bool) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(head).unwrap().is_complete());
        judge(&request)
    }

    #[test]
    fn requests_are_judged_by_method_path_version_and_body() {
        let cases: &[(&[u8], Status, bool)] = &[
            (b"GET /metrics HTTP/1.1\r\n\r\n", Status::Metrics, true),
            (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", Status::Metrics, true),
            (b"GET / HTTP/1.1\r\n\r\n", Status::NotFound, true),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Status::MethodNotAllowed,
                true,
            ),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                Status::MethodNotAllowed,
                false,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                Status::BadRequest,
                false,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                Status::Metrics,
                true,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Status::BadRequest,
                false,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nConnection: Close\r\n\r\n",
                Status::Metrics,
                false,
            ),
            (b"GET /metrics HTTP/1.0\r\n\r\n", Status::Metrics, false),
            (
                b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                Status::Metrics,
                true,
            ),
        ];
        for (head, status, keep_alive) in cases {
            assert_eq!(
                judged(head),
                (*status, *keep_alive),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let stats = Stats::new(Instant::now());
        let settings = Settings {
            max_connections: 10,
            max_memory: 20,
            head_timeout: Duration::from_secs(1),
        };
        let mut out = String::new();
        render(&stats, &settings, 1.5, &mut out);
        let mut families = 0;
        for line in out.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(out.contains(&format!("# HELP {name} ")), "{name}");
            assert_eq!(name.ends_with("_total"), kind == "counter", "{name}");
            families += 1;
        }
        assert_eq!(families, 14);
        assert!(out.contains("loopline_max_memory_bytes 20\n"));
        assert!(out.contains("loopline_limit_hits_total{reason=\"busy\"} 0\n"));
    }

    #[test]
    fn tokens_of_the_endpoint_are_told_apart_from_the_others() {
        assert!(owns(LISTENER));
        assert!(owns(Token(TOKEN_BASE + MAX_METRICS_CONNECTIONS)));
        assert!(!owns(Token(TOKEN_BASE + MAX_METRICS_CONNECTIONS + 1)));
        assert!(!owns(Token(0)));
        assert!(!owns(Token(usize::MAX / 2)));
    }
}
