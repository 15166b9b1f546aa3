//! Prometheus metrics over HTTP/1.1 (`--metrics-listen ADDR`): what a
//! request head means and what it is answered. The connections themselves
//! are the loop's like any other ([`crate::connection`], `Role::Metrics`):
//! the same read budget, output buffer, write-stall clock, deadlines and
//! careful close. This module does no I/O.
//!
//! What a metrics connection may do, and its bounds:
//!
//! * `GET /metrics` answers `200` with the Prometheus text format
//!   ([`render`]); another path `404`; another method, on any path, `405`
//!   with `Allow: GET`. A head over [`MAX_HTTP_HEAD`] bytes answers `431`, a
//!   malformed one `400`; both then close. Requests carry no body: a `GET`
//!   with one (a `Content-Length` other than 0, or any `Transfer-Encoding`)
//!   answers `400` and closes, and a `405` to a request with a body closes
//!   too, since where its body ends is not read.
//! * Keep-alive as HTTP/1.1 has it by default (`Connection: close` is
//!   honoured; HTTP/1.0 closes unless it asks for `keep-alive`). Pipelined
//!   requests are answered one at a time, in order, one per loop turn: the
//!   next is parsed only once the previous answer is written, so a client
//!   that sends without reading holds one answer and at most
//!   [`MAX_HTTP_HEAD`] bytes of input, and a client that pipelines as fast
//!   as it can holds the loop for one answer at a time.
//! * A head must be complete within the opening timeout
//!   (`--handshake-timeout`, or 10 s when that is 0), counted from its
//!   first byte (from the accept, for the first); a connection with nothing
//!   to do is closed after [`METRICS_KEEP_ALIVE`]; an answer the peer does
//!   not read, after `--write-timeout` (or the keep-alive time when that is
//!   0) without progress.
//! * At most [`MAX_METRICS_CONNECTIONS`] at once: past that, a newcomer
//!   takes the place of the idle keep-alive connection active least
//!   recently (a scraper always gets its answer, even while another peer
//!   holds every slot open), or is closed at once if none is idle. They are
//!   not clients: they never count in `connections`, nor against
//!   `--max-connections`.
//!
//! Rendering reads the counters of [`Stats`], kept as events happen: a
//! scrape costs the same with ten clients or ten thousand, and never walks
//! the clients' slab.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::ListenAddr;
pub use crate::limits::{MAX_HTTP_HEAD, MAX_METRICS_CONNECTIONS, METRICS_KEEP_ALIVE};
use crate::stats::{Outcomes, Snapshot, Stats};
use crate::summaries::Kind;
use crate::token::AuthToken;

/// The most headers a head may carry; more answers `431`.
const MAX_HEADERS: usize = 64;

/// Why `--metrics-listen` could not be served.
#[derive(Debug)]
pub struct MetricsError {
    /// The `--metrics-listen` value.
    pub listen: ListenAddr,
    /// The address that failed, when it got that far.
    pub addr: Option<SocketAddr>,
    /// What the system said.
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
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--max-connections`.
    pub max_connections: u64,
    /// `--max-memory`.
    pub max_memory: u64,
    /// The address of each protocol listener, in the listeners' order
    /// (`Stats::per_listener`): the `listener` label.
    pub listeners: Vec<String>,
}

/// What answering needs beyond the request: the settings, the start time,
/// and the body of the last scrape (kept for its capacity). One per
/// process, held by the loop that serves the endpoint and lent to its
/// metrics connections.
#[derive(Debug)]
pub struct Page {
    settings: Settings,
    /// When the server started, as Unix time in seconds.
    start_time: f64,
    body: String,
    /// A graceful shutdown is under way: every answer closes.
    pub shutting_down: bool,
    /// `--metrics-token-file`: a request must carry it as a bearer token
    /// (SIGHUP may replace it); `None`: no token needed.
    pub token: Option<Arc<AuthToken>>,
}

impl Page {
    /// The page of a server that started at `started`.
    pub fn new(settings: Settings, started: Instant) -> Page {
        // Unix time of the start: now, less the time since `started`.
        let since_start = Instant::now().saturating_duration_since(started);
        let start_time = SystemTime::now()
            .checked_sub(since_start)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        Page {
            settings,
            start_time,
            body: String::new(),
            shutting_down: false,
            token: None,
        }
    }
}

/// What [`answer`] made of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadAnswer {
    /// No whole head yet, and what there is may still become one.
    Incomplete,
    /// The head at the front, its first `used` bytes, was answered.
    Answered {
        /// Bytes of the head, to drop from the buffer's front.
        used: usize,
        /// The connection stays open for another request.
        keep_alive: bool,
        /// It was refused as malformed or too large (`400`, `431`).
        bad: bool,
    },
}

/// Answers the request head at the front of `input`, if it is whole (or
/// can never be: too long, malformed), appending the whole answer, head
/// and body, to `out`.
pub fn answer(input: &[u8], page: &mut Page, stats: &Stats, out: &mut Vec<u8>) -> HeadAnswer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(input);
    let (status, used, keep_alive) = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HTTP_HEAD => {
            let (status, keep_alive) = judge(&request, page.token.as_deref());
            (status, len, keep_alive)
        }
        Ok(httparse::Status::Complete(_)) => (Status::HeadTooLarge, input.len(), false),
        Ok(httparse::Status::Partial) if input.len() > MAX_HTTP_HEAD => {
            (Status::HeadTooLarge, input.len(), false)
        }
        Ok(httparse::Status::Partial) => return HeadAnswer::Incomplete,
        Err(httparse::Error::TooManyHeaders) => (Status::HeadTooLarge, input.len(), false),
        Err(_) => (Status::BadRequest, input.len(), false),
    };
    let keep_alive = keep_alive && !page.shutting_down;
    let http_1_0 = request.version == Some(0);
    write_response(out, status, keep_alive, http_1_0, page, stats);
    HeadAnswer::Answered {
        used,
        keep_alive,
        bad: matches!(status, Status::BadRequest | Status::HeadTooLarge),
    }
}

/// The answers a metrics connection gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Metrics,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    HeadTooLarge,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Metrics => "200 OK",
            Status::Unauthorized => "401 Unauthorized",
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
            Status::Unauthorized => "unauthorized: send Authorization: Bearer <token>\n",
            Status::NotFound => "not found: the metrics are at /metrics\n",
            Status::MethodNotAllowed => "method not allowed: use GET\n",
            Status::BadRequest => "bad request\n",
            Status::HeadTooLarge => "request head too large\n",
        }
    }
}

/// The answer to a complete head, and whether the connection stays open.
/// With a `token`, a request without it is answered `401` whatever it
/// asks: one without the token learns nothing, not even which paths exist.
fn judge(request: &httparse::Request, token: Option<&AuthToken>) -> (Status, bool) {
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut has_body = false;
    let mut authorized = token.is_none();
    for header in request.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("authorization") {
            authorized |= token.is_some_and(|token| bears(header.value, token));
        } else if header.name.eq_ignore_ascii_case("connection") {
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
    let status = if !authorized {
        Status::Unauthorized
    } else if request.method != Some("GET") {
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

/// Whether an `Authorization` value carries `token`: the scheme `Bearer`
/// (any case), spaces, then the token, compared in constant time
/// ([`AuthToken::matches`]).
fn bears(value: &[u8], token: &AuthToken) -> bool {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let credentials = value[SCHEME.len()..].trim_ascii();
    token.matches(credentials)
}

/// Appends the whole answer, head and body, to `output`.
fn write_response(
    output: &mut Vec<u8>,
    status: Status,
    keep_alive: bool,
    http_1_0: bool,
    page: &mut Page,
    stats: &Stats,
) {
    let (content_type, body) = if status == Status::Metrics {
        page.body.clear();
        render(stats, &page.settings, page.start_time, &mut page.body);
        ("text/plain; version=0.0.4", page.body.as_str())
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
    if status == Status::Unauthorized {
        head.push_str("WWW-Authenticate: Bearer\r\n");
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
/// a `# HELP` and a `# TYPE` line for every family, then its samples. The
/// whole process's counters, every loop's summed.
pub fn render(stats: &Stats, settings: &Settings, start_time: f64, out: &mut String) {
    render_counters(&stats.snapshot(), out);
    render_outcomes(&stats.outcomes(), out);
    render_listeners(&stats.per_listener(), &settings.listeners, out);
    render_settings(settings, start_time, out);
}

/// Client connections open now, by the listener that accepted them.
fn render_listeners(counts: &[u64], listeners: &[String], out: &mut String) {
    let labels: Vec<String> = listeners
        .iter()
        .map(|addr| format!("{{listener=\"{addr}\"}}"))
        .collect();
    let samples: Vec<(&str, u64)> = labels
        .iter()
        .zip(counts)
        .map(|(label, &count)| (label.as_str(), count))
        .collect();
    family(
        out,
        "loopline_listener_connections",
        "gauge",
        "Client connections open now, by the listener that accepted them.",
        &samples,
    );
}

/// One family: its `# HELP` and `# TYPE` lines, then its samples (labels,
/// value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    // Writing to a String cannot fail; the results are ignored.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The families of what `STATS` reports.
fn render_counters(stats: &Snapshot, out: &mut String) {
    let families: [(&str, &str, &str, u64); 9] = [
        (
            "loopline_connections",
            "gauge",
            "Client connections open now.",
            stats.connections,
        ),
        (
            "loopline_buffered_bytes",
            "gauge",
            "Bytes held now in client buffers (unfinished input, held lines, pending output).",
            stats.buffered,
        ),
        (
            "loopline_paused_connections",
            "gauge",
            "Client connections whose reading is paused now (backpressure).",
            stats.paused,
        ),
        (
            "loopline_accepted_total",
            "counter",
            "Client connections admitted (READY sent).",
            stats.accepted,
        ),
        (
            "loopline_rejected_total",
            "counter",
            "Client connections turned away (busy, too many from one address, out of descriptors).",
            stats.rejected,
        ),
        (
            "loopline_commands_total",
            "counter",
            "Request lines answered.",
            stats.commands,
        ),
        (
            "loopline_bytes_in_total",
            "counter",
            "Bytes read from clients.",
            stats.bytes_in,
        ),
        (
            "loopline_bytes_out_total",
            "counter",
            "Bytes written to clients.",
            stats.bytes_out,
        ),
        (
            "loopline_auth_failures_total",
            "counter",
            "Failed AUTH attempts.",
            stats.auth_failures,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help, &[("", value)]);
    }
}

/// The families of what became of connections, by reason.
fn render_outcomes(outcomes: &Outcomes, out: &mut String) {
    let hits = |kind| outcomes.limit_hits(kind);
    family(
        out,
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
            (
                "{reason=\"untrusted_balancer\"}",
                hits(Kind::UntrustedBalancer),
            ),
            (
                "{reason=\"connecting_too_fast\"}",
                hits(Kind::ConnectingTooFast),
            ),
            ("{reason=\"auth_failures\"}", hits(Kind::AuthFailures)),
        ],
    );
    family(
        out,
        "loopline_tls_handshakes_total",
        "counter",
        "TLS handshakes that completed or failed (timeouts are limit hits).",
        &[
            ("{result=\"completed\"}", outcomes.tls_handshakes),
            ("{result=\"failed\"}", outcomes.tls_handshake_failures),
        ],
    );
}

/// The families of the limits, and the start time.
fn render_settings(settings: &Settings, start_time: f64, out: &mut String) {
    family(
        out,
        "loopline_max_connections",
        "gauge",
        "The --max-connections limit.",
        &[("", settings.max_connections)],
    );
    family(
        out,
        "loopline_max_memory_bytes",
        "gauge",
        "The --max-memory limit on client buffer memory.",
        &[("", settings.max_memory)],
    );
    // A float: `family` takes integers.
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
        judge(&request, None)
    }

    #[test]
    fn with_a_token_only_a_request_bearing_it_is_served() {
        let token = AuthToken::new(b"s3cret").unwrap();
        let judge_with = |head: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            assert!(request.parse(head).unwrap().is_complete());
            judge(&request, Some(&token)).0
        };
        let cases: &[(&[u8], Status)] = &[
            (b"GET /metrics HTTP/1.1\r\n\r\n", Status::Unauthorized),
            (b"GET /nothing HTTP/1.1\r\n\r\n", Status::Unauthorized),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Status::Unauthorized),
            (
                b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
                Status::Metrics,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nauthorization: bearer  s3cret \r\n\r\n",
                Status::Metrics,
            ),
            (
                b"GET /x HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
                Status::NotFound,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cre\r\n\r\n",
                Status::Unauthorized,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cretX\r\n\r\n",
                Status::Unauthorized,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nAuthorization: Basic s3cret\r\n\r\n",
                Status::Unauthorized,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nAuthorization: Bearers3cret\r\n\r\n",
                Status::Unauthorized,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n",
                Status::Unauthorized,
            ),
        ];
        for (head, status) in cases {
            assert_eq!(
                judge_with(head),
                *status,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let mut out = Vec::new();
        let mut page = Page::new(Settings::default(), Instant::now());
        page.token = Some(Arc::new(token.clone()));
        let stats = Stats::new(Instant::now());
        answer(
            b"GET /metrics HTTP/1.1\r\n\r\n",
            &mut page,
            &stats,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("\r\nWWW-Authenticate: Bearer\r\n"), "{text}");
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
            listeners: vec!["127.0.0.1:9000".to_string()],
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
        assert_eq!(families, 15);
        assert!(out.contains("loopline_max_memory_bytes 20\n"));
        assert!(out.contains("loopline_listener_connections{listener=\"127.0.0.1:9000\"} 0\n"));
        assert!(out.contains("loopline_limit_hits_total{reason=\"busy\"} 0\n"));
    }

    /// Regression: a family rendered from the wrong counter (bytes out
    /// from bytes in) passed every test, as every counter was 0 or equal to
    /// another. Here every counter holds a different value, and each family
    /// must show its own.
    #[test]
    fn every_family_shows_its_own_counter() {
        let values = crate::stats::Snapshot {
            connections: 11,
            accepted: 12,
            rejected: 13,
            commands: 14,
            bytes_in: 15,
            bytes_out: 16,
            buffered: 17,
            paused: 18,
            auth_failures: 19,
        };
        let stats = Stats::holding(Instant::now(), values);
        let settings = Settings {
            max_connections: 21,
            max_memory: 22,
            listeners: Vec::new(),
        };
        let mut out = String::new();
        render(&stats, &settings, 1.5, &mut out);
        let sample = |name: &str| -> u64 {
            let prefix = format!("{name} ");
            out.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no sample of {name}"))
                .parse()
                .unwrap()
        };
        assert_eq!(sample("loopline_connections"), 11);
        assert_eq!(sample("loopline_accepted_total"), 12);
        assert_eq!(sample("loopline_rejected_total"), 13);
        assert_eq!(sample("loopline_commands_total"), 14);
        assert_eq!(sample("loopline_bytes_in_total"), 15);
        assert_eq!(sample("loopline_bytes_out_total"), 16);
        assert_eq!(sample("loopline_buffered_bytes"), 17);
        assert_eq!(sample("loopline_paused_connections"), 18);
        assert_eq!(sample("loopline_auth_failures_total"), 19);
        assert_eq!(sample("loopline_max_connections"), 21);
        assert_eq!(sample("loopline_max_memory_bytes"), 22);
    }

    #[test]
    fn a_head_is_answered_once_whole_and_a_huge_one_is_refused() {
        let stats = Stats::new(Instant::now());
        let settings = Settings {
            max_connections: 1,
            max_memory: 1024,
            listeners: Vec::new(),
        };
        let mut page = Page::new(settings, Instant::now());
        let mut out = Vec::new();
        let head = b"GET /x HTTP/1.1\r\n\r\nGET";
        assert_eq!(
            answer(&head[..10], &mut page, &stats, &mut out),
            HeadAnswer::Incomplete
        );
        assert!(out.is_empty());
        assert_eq!(
            answer(head, &mut page, &stats, &mut out),
            HeadAnswer::Answered {
                used: 19,
                keep_alive: true,
                bad: false
            }
        );
        assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        out.clear();
        let huge = [b'a'; MAX_HTTP_HEAD + 1];
        assert!(matches!(
            answer(&huge, &mut page, &stats, &mut out),
            HeadAnswer::Answered {
                bad: true,
                keep_alive: false,
                ..
            }
        ));
    }
}
