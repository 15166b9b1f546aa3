//! `--metrics-listen`, on the real binary: the Prometheus endpoint answers
//! with exact bytes (200, 404, 405, 431, 400), keeps connections alive and
//! answers pipelined requests in order, passes `promtool check metrics`,
//! does not count its connections as clients, closes a head that stalls,
//! and announces itself as `metrics on ADDR`, never `listening on`; with
//! `--metrics-token-file` it answers only requests bearing the token (401
//! otherwise; SIGHUP reloads it), with `,tls` over HTTPS, and it counts
//! client connections per listener. (A real Prometheus scraping it over
//! HTTPS with the token: `prometheus.rs`.)

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{Client, Server, PATIENCE};

// Each runs with one event loop and with two (`--threads 2`): the
// endpoint reports every loop's counters.
util::one_and_two_loops!(
    answers_have_exact_bytes_and_the_counters_move,
    a_live_scrape_passes_promtool,
    metrics_connections_are_not_clients,
    connections_are_counted_per_listener,
);

/// Starts `loopline --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 ARGS...`
/// and returns it with the metrics address, read from its `metrics on` line.
fn start(args: &[&str]) -> (Server, SocketAddr) {
    let mut all = vec!["--metrics-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut server = Server::start(&all);
    let metrics = server.metrics_addr();
    (server, metrics)
}

fn http_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Reads one whole response (head, then `Content-Length` bytes of body),
/// taking no byte past it: pipelined responses are read one by one.
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the head");
        assert_eq!(
            n,
            1,
            "closed inside the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the body");
    (head, String::from_utf8(body).unwrap())
}

/// Asserts the server closes the connection (EOF; a reset would lose the
/// answer before it, so it fails the test too).
fn expect_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = http_connect(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    read_response(&mut stream)
}

fn scrape(addr: SocketAddr) -> String {
    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    body
}

/// The value of the sample `name` (with its labels, if any) in a scrape.
fn sample(body: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
        .parse()
        .unwrap()
}

/// An answer other than 200, byte for byte.
fn plain_answer(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn answers_have_exact_bytes_and_the_counters_move() {
    let (server, metrics) = start(&[]);
    let mut a = server.client();
    let _b = server.client();
    for _ in 0..3 {
        a.send(b"PING\n");
        a.expect_line("PONG");
    }
    let (head, body) = get(metrics, "/metrics");
    assert_eq!(
        head,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    );
    for (family, kind) in [
        ("loopline_connections", "gauge"),
        ("loopline_buffered_bytes", "gauge"),
        ("loopline_paused_connections", "gauge"),
        ("loopline_accepted_total", "counter"),
        ("loopline_rejected_total", "counter"),
        ("loopline_commands_total", "counter"),
        ("loopline_bytes_in_total", "counter"),
        ("loopline_bytes_out_total", "counter"),
        ("loopline_auth_failures_total", "counter"),
    ] {
        assert!(body.contains(&format!("# HELP {family} ")), "{family}");
        assert!(
            body.contains(&format!("\n# TYPE {family} {kind}\n")),
            "{family}"
        );
    }
    assert_eq!(sample(&body, "loopline_connections"), 2);
    assert_eq!(sample(&body, "loopline_commands_total"), 3);
    assert_eq!(sample(&body, "loopline_accepted_total"), 2);
    assert_eq!(sample(&body, "loopline_bytes_in_total"), 15);

    let mut stream = http_connect(metrics);
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut stream);
    assert_eq!(
        head + &body,
        plain_answer(
            "404 Not Found",
            "",
            "not found: the metrics are at /metrics\n"
        )
    );

    // Another method, on any path (the right one included).
    for path in ["/metrics", "/other"] {
        stream
            .write_all(format!("POST {path} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        let (head, body) = read_response(&mut stream);
        assert_eq!(
            head + &body,
            plain_answer(
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "method not allowed: use GET\n"
            )
        );
    }

    // A 9 KiB head: 431, then the close.
    let mut stream = http_connect(metrics);
    let filler = "a".repeat(9 * 1024);
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n"
    )
    .unwrap();
    let (head, body) = read_response(&mut stream);
    assert_eq!(
        head + &body,
        plain_answer(
            "431 Request Header Fields Too Large",
            "Connection: close\r\n",
            "request head too large\n"
        )
    );
    expect_eof(&mut stream);

    // A malformed head: 400, then the close.
    let mut stream = http_connect(metrics);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut stream);
    assert_eq!(
        head + &body,
        plain_answer("400 Bad Request", "Connection: close\r\n", "bad request\n")
    );
    expect_eof(&mut stream);
    server.assert_no_panic();
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let (server, metrics) = start(&[]);
    let mut stream = http_connect(metrics);
    // Two requests, one after the other, on one connection.
    for _ in 0..2 {
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let (head, _) = read_response(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    }
    // Two in one write: answered in order (200, then 404), then the
    // second's `Connection: close` is honoured.
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (first, _) = read_response(&mut stream);
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    let (second, _) = read_response(&mut stream);
    assert!(second.starts_with("HTTP/1.1 404 Not Found\r\n"), "{second}");
    assert!(second.contains("\r\nConnection: close\r\n"), "{second}");
    expect_eof(&mut stream);

    // HTTP/1.0 closes unless it asks for keep-alive.
    let mut stream = http_connect(metrics);
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut stream);
    assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let (head, _) = read_response(&mut stream);
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    expect_eof(&mut stream);
    server.assert_no_panic();
}

fn a_live_scrape_passes_promtool() {
    let (server, metrics) = start(&[]);
    let mut client = server.client();
    client.send(b"PING\nNOPE\n");
    client.expect_line("PONG");
    client.expect_line("ERR unknown command");
    let body = scrape(metrics);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {printed}\n{body}");
    assert!(printed.trim().is_empty(), "promtool warned: {printed}");
}

fn metrics_connections_are_not_clients() {
    let (server, metrics) = start(&["--max-connections", "1"]);
    // A metrics connection, open and served...
    let mut held = http_connect(metrics);
    held.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let (_, body) = read_response(&mut held);
    assert_eq!(sample(&body, "loopline_connections"), 0);
    // ...does not take the one client place.
    let mut client = server.client();
    client.send(b"STATS\n");
    let stats = util::Stats(client.read_line());
    assert_eq!(stats.get("connections"), 1);
    // The next client is turned away, and the metrics say why.
    let mut busy = Client::connect(server.addr);
    busy.expect_line("ERR server busy");
    held.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let (_, body) = read_response(&mut held);
    assert_eq!(sample(&body, "loopline_connections"), 1);
    assert_eq!(sample(&body, "loopline_rejected_total"), 1);
    assert_eq!(
        sample(&body, "loopline_limit_hits_total{reason=\"busy\"}"),
        1
    );
    assert_eq!(sample(&body, "loopline_max_connections"), 1);
}

#[test]
fn a_stalled_head_is_closed_after_the_head_timeout_and_the_log_tells_the_listeners_apart() {
    let (mut server, metrics) = start(&["--handshake-timeout", "1s"]);
    let mut stream = http_connect(metrics);
    let sent = Instant::now();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
        .unwrap();
    // Nothing is answered; the connection is closed once the head is late.
    expect_eof(&mut stream);
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the head timeout",
        sent.elapsed()
    );
    let log = server.log.lock().unwrap().clone();
    let listening: Vec<&String> = log.iter().filter(|l| l.contains("listening on")).collect();
    assert_eq!(listening.len(), 1, "{log:#?}");
    assert!(!listening[0].contains(&metrics.to_string()), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("metrics on {metrics}"))),
        "{log:#?}"
    );
    // A graceful shutdown ends an idle metrics connection and the listener.
    let mut idle = http_connect(metrics);
    idle.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut idle);
    server.signal("TERM");
    expect_eof(&mut idle);
    assert!(server.wait_exit().success());
    assert!(TcpStream::connect_timeout(&metrics, PATIENCE).is_err());
}

#[cfg(feature = "tls")]
#[test]
fn tls_handshakes_are_counted_completed_and_failed() {
    let mut server = Server::start_over(util::Transport::Tls, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let _client = server.client();
    let mut garbage = Client::connect(server.addr);
    garbage.send(b"this is no ClientHello\r\n\r\n");
    // The server answers with an alert, then closes.
    let mut alert_and_close = Vec::new();
    let _ = garbage.stream.read_to_end(&mut alert_and_close);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body = scrape(metrics);
        let completed = sample(&body, "loopline_tls_handshakes_total{result=\"completed\"}");
        let failed = sample(&body, "loopline_tls_handshakes_total{result=\"failed\"}");
        assert_eq!(completed, 1, "{body}");
        if failed == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed handshake was never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_metrics_address_in_use_fails_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = util::run_loopline(
        &["--listen", "127.0.0.1:0", "--metrics-listen", &addr],
        "info",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// Regression: 64 keep-alive metrics connections from one peer took every
/// slot of the endpoint, and a scraper got an empty close. At the cap, a
/// newcomer takes the place of the idle connection active least recently:
/// a scrape always gets its answer, even while another peer holds every
/// slot open.
#[test]
fn a_scrape_gets_its_answer_while_another_peer_holds_every_slot() {
    const SLOTS: usize = 64;
    let (_server, metrics) = start(&[]);
    let mut held: Vec<TcpStream> = (0..SLOTS)
        .map(|_| {
            let mut s = http_connect(metrics);
            s.write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
            let (head, _) = read_response(&mut s);
            assert!(head.starts_with("HTTP/1.1 404"), "{head}");
            s
        })
        .collect();
    let body = scrape(metrics);
    assert!(body.contains("\nloopline_connections "), "{body}");
    // The one closed to make room was the least recently active: the first.
    expect_eof(&mut held[0]);
    // The others are kept alive, and served.
    let last = held.last_mut().unwrap();
    last.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let (head, _) = read_response(last);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
}

fn connections_are_counted_per_listener() {
    let (server, metrics) = start(&["--listen", "127.0.0.1:0"]);
    // Two listeners (the harness's and this one): the log names both.
    let second = {
        let lines = server.log.lock().unwrap().clone();
        let addrs: Vec<SocketAddr> = lines
            .iter()
            .filter(|l| l.contains("listening on "))
            .map(|l| util::parse_listening(l))
            .collect();
        assert_eq!(addrs.len(), 2, "{lines:#?}");
        addrs.into_iter().find(|a| *a != server.addr).unwrap()
    };
    let _one = server.client();
    let _two = server.client();
    let mut three = Client::connect(second);
    three.expect_line("READY");
    let body = scrape(metrics);
    let label = |addr: SocketAddr| format!("loopline_listener_connections{{listener=\"{addr}\"}}");
    assert_eq!(sample(&body, &label(server.addr)), 2, "{body}");
    assert_eq!(sample(&body, &label(second)), 1, "{body}");
    three.send(b"QUIT\n");
    three.expect_line("BYE");
    three.expect_eof();
    let body = scrape(metrics);
    assert_eq!(sample(&body, &label(second)), 0, "{body}");
    assert_eq!(sample(&body, &label(server.addr)), 2, "{body}");
}

/// A GET of /metrics bearing `token` (none if `None`): the whole answer.
fn get_with_token(addr: SocketAddr, token: Option<&str>) -> (String, String) {
    let mut stream = http_connect(addr);
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(stream, "GET /metrics HTTP/1.1\r\n{authorization}\r\n").unwrap();
    read_response(&mut stream)
}

#[test]
fn a_token_guards_the_endpoint_and_sighup_reloads_it() {
    let file = util::TempFile::new("metrics-token", b"first-token\n");
    let (mut server, metrics) = start(&["--metrics-token-file", file.path()]);
    let (head, body) = get_with_token(metrics, None);
    assert_eq!(
        head + &body,
        plain_answer(
            "401 Unauthorized",
            "WWW-Authenticate: Bearer\r\n",
            "unauthorized: send Authorization: Bearer <token>\n"
        )
    );
    // Whatever it asks: without the token, nothing is told (not even 404).
    let (head, _) = get(metrics, "/elsewhere");
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    let (head, _) = get_with_token(metrics, Some("first-tokeN"));
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    let (head, body) = get_with_token(metrics, Some("first-token"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(body.contains("loopline_connections "), "{body}");

    std::fs::write(&file.0, "second-token\n").unwrap();
    server.signal("HUP");
    let line = server.wait_for_log("reload:");
    assert!(
        line.contains(&format!(
            "reload: metrics token reloaded from {}",
            file.path()
        )),
        "{line}"
    );
    let (head, _) = get_with_token(metrics, Some("first-token"));
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    let (head, _) = get_with_token(metrics, Some("second-token"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    server.assert_no_panic();
}

/// A metrics token file that cannot be used stops the start as the
/// `--auth-file` one does: exit 1, one line naming the option and the file.
#[test]
fn a_bad_metrics_token_file_exits_1_naming_the_option() {
    let empty = util::TempFile::new("metrics-token-empty", b"\n");
    let missing = std::env::temp_dir().join(format!(
        "loopline-metrics-token-{}-none",
        std::process::id()
    ));
    for (path, problem) in [
        (empty.path(), "empty"),
        (missing.to_str().unwrap(), "No such file"),
    ] {
        let out = util::run_loopline(
            &[
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--metrics-token-file",
                path,
            ],
            "info",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("--metrics-token-file") && stderr.contains(path),
            "{stderr}"
        );
        assert!(stderr.contains(problem), "{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[cfg(feature = "tls")]
#[test]
fn with_the_tls_option_the_endpoint_speaks_https_only() {
    let pki = util::tls::Pki::new();
    let (cert, key) = (util::tls::path(&pki.cert), util::tls::path(&pki.key));
    let mut server = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0,tls",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let metrics = server.metrics_addr();
    let mut https = Client::connect_tls(metrics, pki.client_config(None)).expect("a TLS handshake");
    https.send(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    let answer = String::from_utf8(https.read_to_end()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\nloopline_connections 0\n"), "{answer}");
    // Plain HTTP on it gets no answer: the bytes are no ClientHello.
    let mut plain = http_connect(metrics);
    plain.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The protocol listener stays plain.
    server.client();
    server.assert_no_panic();
}
