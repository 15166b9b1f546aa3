//! Runs `loopline-bench` against a tiny in-test line server on 127.0.0.1:0
//! (greets with READY, answers every line with PONG, QUIT with BYE and a
//! close) and checks its JSON result lines; and, over TLS, against a real
//! loopline server with a TLS listener, run inside the test process. Every
//! run is short and guarded by a watchdog.

mod common;

use common::{bench, json_line, num};

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

fn serve(stream: TcpStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(stream);
    if writer
        .write_all(b"READY\n")
        .and_then(|_| writer.flush())
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let quit = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            == Some(b"QUIT");
        let reply: &[u8] = if quit { b"BYE\n" } else { b"PONG\n" };
        if writer.write_all(reply).is_err() {
            return;
        }
        // answer pipelined requests in one write
        if (quit || reader.buffer().is_empty()) && writer.flush().is_err() {
            return;
        }
        if quit {
            return;
        }
    }
}

/// Starts the line server; its threads end with their connections.
fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || serve(s));
        }
    });
    addr
}

#[test]
fn load_mode_reports_json() {
    let addr = start_server().to_string();
    let (ok, out) = bench(&[
        "--addr",
        &addr,
        "-c",
        "2",
        "-P",
        "4",
        "-d",
        "1",
        "--warmup",
        "0.2",
        "--skip-greeting",
        "1",
        "--request",
        "PING",
        "--eol",
        "lf",
    ]);
    assert!(ok, "loopline-bench failed:\n{out}");
    let m = json_line(&out);
    assert_eq!(m["mode"], "load");
    assert_eq!(num(&m, "connections"), 2.0);
    assert_eq!(num(&m, "pipeline"), 4.0);
    assert!(num(&m, "rps") > 0.0, "{out}");
    assert_eq!(num(&m, "errors"), 0.0, "{out}");
    let (p50, p99, p999) = (num(&m, "p50_us"), num(&m, "p99_us"), num(&m, "p999_us"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("load ") && l.contains("responses/s")),
        "{out}"
    );
}

#[test]
fn hold_and_churn_modes_report_json() {
    let addr = start_server().to_string();
    let pid = std::process::id().to_string();
    let (ok, out) = bench(&[
        "--mode",
        "hold",
        "--addr",
        &addr,
        "-c",
        "20",
        "--hold",
        "0",
        "--server-pid",
        &pid,
    ]);
    assert!(ok, "hold failed:\n{out}");
    assert!(out.contains("held 20 connections"), "{out}");
    let m = json_line(&out);
    assert_eq!(m["mode"], "hold");
    assert_eq!(num(&m, "held"), 20.0);
    // The server's RSS is read from /proc, which only Linux has.
    if cfg!(target_os = "linux") {
        assert!(num(&m, "rss_after_kb") > 0.0, "{out}");
    }

    let (ok, out) = bench(&[
        "--mode", "churn", "--addr", &addr, "-c", "2", "-d", "0.5", "--warmup", "0.1",
    ]);
    assert!(ok, "churn failed:\n{out}");
    let m = json_line(&out);
    assert_eq!(m["mode"], "churn");
    assert!(num(&m, "cps") > 0.0, "{out}");
    assert_eq!(num(&m, "errors"), 0.0, "{out}");
}

#[test]
fn refuses_a_non_loopback_target() {
    let (ok, out) = bench(&["--addr", "192.0.2.1:9", "-d", "0.1"]);
    assert!(!ok);
    assert!(!out.contains('{'), "{out}");
}

/// A throwaway CA and a server certificate it signs for `localhost` and
/// 127.0.0.1, made with the real `openssl` command in a directory of their
/// own. (The server's tests have the same few lines in their own test
/// helpers, which this crate cannot import, so they are written again
/// here.)
#[cfg(feature = "tls")]
struct TestCertificates {
    dir: std::path::PathBuf,
}

#[cfg(feature = "tls")]
impl TestCertificates {
    fn new() -> TestCertificates {
        let dir = std::env::temp_dir().join(format!("loopline-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("openssl not found ({e}): apt-get install openssl"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &new_key,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=loopline-bench test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(
            &[
                &["req", "-new"][..],
                &new_key,
                &[
                    "-keyout",
                    "key.pem",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        TestCertificates { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

#[cfg(feature = "tls")]
impl Drop for TestCertificates {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Every mode over TLS against a real loopline with a TLS listener on
/// 127.0.0.1:0: responses, full handshakes per second, resumed ones (TLS
/// 1.3 and 1.2) with their count, held connections, and a wrong server
/// name failing every connection.
#[cfg(feature = "tls")]
#[test]
fn every_mode_speaks_tls_to_a_real_loopline() {
    use clap::Parser;
    let certificates = TestCertificates::new();
    let (cert, key, ca) = (
        certificates.path("cert.pem"),
        certificates.path("key.pem"),
        certificates.path("ca.pem"),
    );
    let config = loopline::Config::try_parse_from([
        "loopline",
        "--listen",
        "127.0.0.1:0,tls",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])
    .expect("server options");
    let server =
        loopline::Server::bind(config, loopline::protocol::Loopline).expect("start loopline");
    let addr = server.local_addrs()[0].to_string();
    let shutdown = server.shutdown_handle();
    let server_thread = thread::spawn(move || server.run());
    let tls = ["--addr", &addr, "--tls", "--tls-ca", &ca, "--eol", "lf"];

    let (ok, out) = bench(
        &[
            &tls[..],
            &["-c", "2", "-P", "4", "-d", "0.5", "--warmup", "0.1"],
        ]
        .concat(),
    );
    assert!(ok, "load over TLS failed:\n{out}");
    let m = json_line(&out);
    assert_eq!(m["mode"], "load");
    assert_eq!(num(&m, "connected"), 2.0, "{out}");
    assert!(num(&m, "rps") > 0.0, "{out}");
    assert_eq!(num(&m, "errors"), 0.0, "{out}");

    let churn = [
        "--mode",
        "churn",
        "-c",
        "2",
        "-d",
        "0.5",
        "--warmup",
        "0.1",
        "--request",
        "QUIT",
    ];
    let (ok, out) = bench(&[&tls[..], &churn].concat());
    assert!(ok, "churn over TLS failed:\n{out}");
    let m = json_line(&out);
    assert!(num(&m, "cps") > 0.0, "{out}");
    assert_eq!(num(&m, "errors"), 0.0, "{out}");
    // Resumption off: every handshake full, each one counted.
    assert_eq!(m["tls_resume"], "0", "{out}");
    assert_eq!(num(&m, "handshakes_resumed"), 0.0, "{out}");
    assert_eq!(num(&m, "handshakes_full"), num(&m, "cycles"), "{out}");
    assert_eq!(num(&m, "resume_shortfall"), 0.0, "{out}");

    // --tls-resume: each slot resumes its previous session (loopline gives
    // TLS 1.3 tickets, and TLS 1.2 tickets and session IDs).
    for version in ["auto", "1.2"] {
        let resume = ["--tls-resume", "--tls-version", version];
        let (ok, out) = bench(&[&tls[..], &churn, &resume].concat());
        assert!(
            ok,
            "churn over TLS {version} with --tls-resume failed:\n{out}"
        );
        let m = json_line(&out);
        assert_eq!(m["tls_version"], version, "{out}");
        assert_eq!(m["tls_resume"], "1", "{out}");
        assert_eq!(num(&m, "errors"), 0.0, "{out}");
        assert!(num(&m, "handshakes_resumed") > 0.0, "{out}");
        assert!(num(&m, "resumed_fraction") >= 0.9, "{out}");
        assert_eq!(num(&m, "resume_shortfall"), 0.0, "{out}");
        assert!(out.contains("handshakes resumed"), "{out}");
    }

    let pid = std::process::id().to_string();
    let hold = [
        "--mode",
        "hold",
        "-c",
        "20",
        "--hold",
        "0",
        "--server-pid",
        &pid,
    ];
    let (ok, out) = bench(&[&tls[..], &hold].concat());
    assert!(ok, "hold over TLS failed:\n{out}");
    assert_eq!(num(&json_line(&out), "held"), 20.0, "{out}");

    // The certificate names localhost and 127.0.0.1, not this.
    let wrong_name = [
        "--tls-name",
        "example.com",
        "-c",
        "2",
        "-d",
        "0.2",
        "--warmup",
        "0",
        "--connect-timeout",
        "5",
    ];
    let (ok, out) = bench(&[&tls[..], &wrong_name].concat());
    assert!(!ok, "a wrong server name was accepted:\n{out}");
    let m = json_line(&out);
    assert_eq!(num(&m, "connected"), 0.0, "{out}");
    assert_eq!(num(&m, "conn_errors"), 2.0, "{out}");

    shutdown.shutdown();
    server_thread
        .join()
        .expect("server thread")
        .expect("server run");
}
