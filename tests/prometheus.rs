//! A real Prometheus scraping loopline's metrics over HTTPS with a bearer
//! token: `--metrics-listen ADDR,tls` with the `--tls-cert` of a CA made at
//! test time, and `--metrics-token-file`. Prometheus (Debian's
//! `prometheus`, which `.ci/run` installs) runs on a free loopback port
//! with its data in a directory of its own, and scrapes the endpoint every
//! second as two jobs: one with `authorization: Bearer` (up), one without
//! (down: 401). Its HTTP API tells the test what it saw.
//!
//! The same endpoint is also asked directly, through the tests' TLS client:
//! without the token, `401 Unauthorized` with `WWW-Authenticate: Bearer`;
//! with it, `200` and the metrics.
#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::thread;
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki};
use util::{Client, Server, TempDir, PATIENCE};

/// The bearer token scrapes must carry.
const TOKEN: &str = "prometheus-may-scrape";

/// A value of `--max-connections` no default has: the series Prometheus
/// stores must carry it.
const MAX_CONNECTIONS: &str = "4242";

/// How often the test asks Prometheus again while it waits.
const POLL: Duration = Duration::from_millis(200);

/// loopline with a plain protocol listener and an HTTPS metrics endpoint
/// that wants `TOKEN` (written into `dir`, readable by its owner only);
/// returns it with the endpoint's address and the token file.
fn start_loopline(pki: &Pki, dir: &TempDir) -> (Server, SocketAddr, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let token_file = dir.0.join("metrics-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (cert, key, token) = (
        tls::path(&pki.cert),
        tls::path(&pki.key),
        tls::path(&token_file),
    );
    let mut server = Server::start(&[
        "--metrics-listen",
        "127.0.0.1:0,tls",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--metrics-token-file",
        &token,
        "--max-connections",
        MAX_CONNECTIONS,
    ]);
    let metrics = server.metrics_addr();
    (server, metrics, token_file)
}

/// One request to the metrics endpoint over TLS (the tests' rustls
/// client, trusting `pki`'s CA), answered in full: the head and the body.
fn https_get(pki: &Pki, metrics: SocketAddr, headers: &str) -> (String, String) {
    let mut client = Client::connect_tls(metrics, pki.client_config(None)).expect("TLS handshake");
    client.send(format!("GET /metrics HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes());
    let mut head = String::new();
    loop {
        let line = client.read_line();
        head.push_str(&line);
        head.push('\n');
        if line == "\r" {
            break;
        }
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
        .trim()
        .parse()
        .unwrap();
    let body = String::from_utf8(client.read_exact_bytes(length)).unwrap();
    (head, body)
}

#[test]
fn the_endpoint_wants_the_token_over_tls() {
    let pki = Pki::new();
    let dir = TempDir::new("prometheus-direct");
    let (_server, metrics, _token) = start_loopline(&pki, &dir);

    let (head, body) = https_get(&pki, metrics, "");
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(head.contains("\r\nWWW-Authenticate: Bearer\r\n"), "{head}");
    assert!(
        !body.contains("loopline_"),
        "metrics without the token: {body}"
    );

    let (head, _) = https_get(&pki, metrics, "Authorization: Bearer wrong-token\r\n");
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(head.contains("\r\nWWW-Authenticate: Bearer\r\n"), "{head}");

    let (head, body) = https_get(&pki, metrics, &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        body.contains(&format!("\nloopline_max_connections {MAX_CONNECTIONS}\n")),
        "{body}"
    );
}

/// A running Prometheus. Killed on drop (its directory goes with the
/// [`TempDir`] the caller keeps).
struct Prometheus {
    child: Child,
    /// Its HTTP API and UI.
    addr: SocketAddr,
    /// Its stderr (its log).
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `config`, on a loopback port that
    /// was free a moment ago, and waits until it is ready. A port another
    /// process took in between makes it exit at once: it is tried again
    /// with another.
    fn start(dir: &TempDir, config: &str) -> Prometheus {
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let mut last_log = String::new();
        for attempt in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            let log = dir.0.join(format!("prometheus-{attempt}.log"));
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", tls::path(&config_file)))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    tls::path(&dir.0.join(format!("data-{attempt}")))
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start prometheus ({e}): apt-get install prometheus")
                });
            let mut prometheus = Prometheus { child, addr, log };
            if prometheus.wait_until_ready() {
                return prometheus;
            }
            last_log = prometheus.log();
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("Prometheus did not start; its log:\n{last_log}");
    }

    /// Waits until `/-/ready` answers 200, or Prometheus has exited.
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some((200, _)) = self.get("/-/ready") {
                return true;
            }
            thread::sleep(POLL);
        }
        false
    }

    /// What Prometheus logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` over HTTP/1.0 (Prometheus closes after the answer): the
    /// status and the body, or None if it does not answer (yet).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, PATIENCE).ok()?;
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// The value of the one series an instant query for `query` returns
    /// now (`"1"`, say), or None if it returns none (yet).
    fn query(&self, query: &str) -> Option<String> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", url_encode(query)))?;
        assert_eq!(status, 200, "query {query}: {body}");
        assert!(
            body.contains(r#""status":"success""#),
            "query {query}: {body}"
        );
        // `"result":[{"metric":{...},"value":[<time>,"<value>"]}]`
        let (_, value) = body.split_once(r#""value":["#)?;
        let (_, value) = value.split_once(",\"")?;
        let (value, _) = value.split_once('"')?;
        assert_eq!(
            body.matches(r#""value":["#).count(),
            1,
            "query {query} returned more than one series: {body}"
        );
        Some(value.to_string())
    }

    /// The `lastError` Prometheus gives for the target of job `job` (empty
    /// when its last scrape worked), or None before its first scrape.
    fn last_error(&self, job: &str) -> Option<String> {
        let (_, body) = self.get("/api/v1/targets?state=active")?;
        // Each active target is an object with `"scrapePool":"<job>"`,
        // then its `"lastError":"..."`.
        let (_, target) = body.split_once(&format!(r#""scrapePool":"{job}""#))?;
        let target = target.split(r#""scrapePool":"#).next()?;
        if target.contains(r#""health":"unknown""#) {
            return None;
        }
        let (_, error) = target.split_once(r#""lastError":""#)?;
        Some(error.split('"').next()?.to_string())
    }
}

/// `text` for a URL's query string: letters, digits and `_` as they are,
/// every other byte percent-encoded.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Two jobs scraping `target` every second over HTTPS, trusting `ca` and
/// checking the name `localhost`: `with_token` sends the token in
/// `token_file`, `without_token` sends none.
fn config(target: SocketAddr, ca: &str, token_file: &str) -> String {
    let job = |name: &str, authorization: &str| {
        format!(
            "  - job_name: {name}
    scheme: https
{authorization}    tls_config:
      ca_file: '{ca}'
      server_name: localhost
    static_configs:
      - targets: ['{target}']
"
        )
    };
    format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
{}{}",
        job(
            "with_token",
            &format!(
                "    authorization:
      type: Bearer
      credentials_file: '{token_file}'
"
            )
        ),
        job("without_token", "")
    )
}

#[test]
fn prometheus_scrapes_over_tls_with_the_token_and_is_refused_without() {
    let pki = Pki::new();
    let dir = TempDir::new("prometheus");
    let (server, metrics, token_file) = start_loopline(&pki, &dir);
    let prometheus = Prometheus::start(
        &dir,
        &config(metrics, &tls::path(&pki.ca_pem), &tls::path(&token_file)),
    );

    // What the test waits for, each asked again every POLL: Prometheus
    // scrapes every second, its first scrape within a second of its start.
    let with_token_up = || prometheus.query(r#"up{job="with_token"}"#);
    let without_token_up = || prometheus.query(r#"up{job="without_token"}"#);
    let max_connections = || prometheus.query(r#"loopline_max_connections{job="with_token"}"#);
    let deadline = Instant::now() + PATIENCE;
    let seen = loop {
        let seen = (
            with_token_up(),
            without_token_up(),
            max_connections(),
            prometheus.last_error("without_token"),
        );
        if let (Some(up), Some(down), Some(max), Some(error)) = &seen {
            if up == "1" && down == "0" && max == MAX_CONNECTIONS && !error.is_empty() {
                break seen;
            }
        }
        if Instant::now() >= deadline {
            // Copied out first: a panic while the lock is held would
            // poison it for the thread that reads loopline's stderr.
            let loopline_log = server.log.lock().unwrap().clone();
            let loopline_log = &loopline_log[loopline_log.len().saturating_sub(40)..];
            panic!(
                "after {PATIENCE:?}, Prometheus saw (up with token, up without, \
                 loopline_max_connections, last error without token) = {seen:?}; \
                 targets: {:?}\nits log:\n{}\nloopline's last log lines: {loopline_log:#?}",
                prometheus.get("/api/v1/targets"),
                prometheus.log(),
            );
        }
        thread::sleep(POLL);
    };
    // Down because loopline refused it, not for a TLS or network error.
    let error = seen.3.unwrap();
    assert!(error.contains("401"), "without the token: {error}");
    // The series Prometheus stores carry the job's labels and loopline's
    // gauges, the connections its own protocol clients make included.
    let mut client = server.client();
    client.send(b"PING\n");
    client.expect_line("PONG");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let connections = prometheus.query(r#"loopline_connections{job="with_token"}"#);
        if connections.as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "loopline_connections never became 1: {connections:?}; Prometheus's log:\n{}",
            prometheus.log()
        );
        thread::sleep(POLL);
    }
    server.assert_no_panic();
}
