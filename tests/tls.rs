//! TLS listeners: the protocol inside a TLS session, the handshake and its
//! timeout, peers that speak the wrong thing, mutual TLS, reloading
//! certificates on SIGHUP, and a real `openssl s_client`.
//!
//! Every server here listens on 127.0.0.1:0 with the `tls` option and a
//! certificate from a CA made at test time (`util::tls::Pki`).
#![cfg(feature = "tls")]

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki, TlsStream};
use util::{Server, PATIENCE};

/// A server with one TLS listener, and more options.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let mut args = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_raw(&args, "debug")
}

fn client(server: &Server, pki: &Pki) -> (TlsStream, Vec<u8>) {
    let stream = tls::connect(server.addr, pki.client_config(None)).expect("TLS handshake");
    (stream, Vec::new())
}

fn line(c: &mut (TlsStream, Vec<u8>)) -> String {
    tls::read_line(&mut c.0, &mut c.1).expect("a line, not the end of the stream")
}

fn send(c: &mut (TlsStream, Vec<u8>), bytes: &[u8]) {
    c.0.write_all(bytes).expect("TLS write");
    c.0.flush().expect("TLS flush");
}

/// The `STATS` counters, asked over a fresh TLS session.
fn stats(server: &Server, pki: &Pki) -> util::Stats {
    let mut c = client(server, pki);
    assert_eq!(line(&mut c), "READY");
    send(&mut c, b"STATS\n");
    util::Stats(line(&mut c))
}

/// The end of the stream must be a TLS close_notify, not a bare TCP close.
fn expect_close_notify(c: &mut (TlsStream, Vec<u8>)) {
    let mut rest = Vec::new();
    match c.0.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after the last line: {rest:?}"),
        Err(e) => panic!("the session ended without close_notify: {e}"),
    }
}

#[test]
fn a_session_greets_answers_and_ends_with_close_notify() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    assert!(
        server.logged("(tls)"),
        "the listening line names the tls option"
    );
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    send(
        &mut c,
        b"PING\r\nECHO over tls\nping x\n\nnope\nHELP\nQUIT\nPING\n",
    );
    for want in [
        "PONG",
        "OK over tls",
        "ERR usage: ping takes no argument",
        "ERR empty command",
        "ERR unknown command",
        "OK commands: PING ECHO QUIT HELP STATS",
        "BYE",
    ] {
        assert_eq!(line(&mut c), want);
    }
    expect_close_notify(&mut c);
    server.assert_no_panic();
}

#[test]
fn ten_thousand_pipelined_commands_in_one_write() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    let mut batch = Vec::new();
    for i in 0..10_000 {
        batch.extend_from_slice(format!("ECHO {i}\n").as_bytes());
    }
    let mut writer = c.0.sock.try_clone().unwrap();
    // The session is not shared between threads: encrypt here, send the
    // bytes from another thread so neither side's buffers can deadlock.
    // Encrypt it all at once (past the client session's buffer limit).
    c.0.conn.set_buffer_limit(None);
    c.0.conn.writer().write_all(&batch).unwrap();
    let mut records = Vec::new();
    while c.0.conn.wants_write() {
        c.0.conn.write_tls(&mut records).unwrap();
    }
    let sender = thread::spawn(move || writer.write_all(&records).unwrap());
    for i in 0..10_000 {
        assert_eq!(line(&mut c), format!("OK {i}"));
    }
    sender.join().unwrap();
}

#[test]
fn any_split_of_the_records_gives_the_same_answers() {
    // The TLS records themselves are cut into single bytes on the wire.
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    c.0.sock.set_nodelay(true).unwrap();
    c.0.conn
        .writer()
        .write_all(b"PING\r\nECHO a b\nQUIT\n")
        .unwrap();
    let mut records = Vec::new();
    while c.0.conn.wants_write() {
        c.0.conn.write_tls(&mut records).unwrap();
    }
    for byte in &records {
        c.0.sock.write_all(std::slice::from_ref(byte)).unwrap();
    }
    for want in ["PONG", "OK a b", "BYE"] {
        assert_eq!(line(&mut c), want);
    }
    expect_close_notify(&mut c);
}

#[test]
fn the_line_limit_holds_inside_tls() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--max-line", "16"]);
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    send(&mut c, b"PING\nECHO 0123456789abcdef\n");
    assert_eq!(line(&mut c), "PONG");
    assert_eq!(line(&mut c), "ERR line too long");
    expect_close_notify(&mut c);
}

#[test]
fn idle_timeout_and_graceful_shutdown_inside_tls() {
    let pki = Pki::new();
    let mut server = tls_server(&pki, &["--idle-timeout", "1s"]);
    let mut idle = client(&server, &pki);
    assert_eq!(line(&mut idle), "READY");
    assert_eq!(line(&mut idle), "ERR idle timeout");
    expect_close_notify(&mut idle);

    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    send(&mut c, b"PING\n");
    assert_eq!(line(&mut c), "PONG");
    server.signal("TERM");
    assert_eq!(line(&mut c), "ERR server shutting down");
    expect_close_notify(&mut c);
    assert!(server.wait_exit().success());
}

#[test]
fn a_half_closed_session_gets_its_last_answers() {
    // close_notify from the client ends its half; the answers to what it
    // sent before, a last line without LF included, still come.
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    c.0.write_all(b"PING\nECHO last").unwrap();
    c.0.conn.send_close_notify();
    c.0.flush().unwrap();
    assert_eq!(line(&mut c), "PONG");
    assert_eq!(line(&mut c), "OK last");
    expect_close_notify(&mut c);
}

#[test]
fn backpressure_inside_tls_loses_nothing() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--max-output", "65536"]);
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
    const LINES: usize = 50_000; // ~5 MB of replies, far past --max-output
    let mut batch = Vec::new();
    for i in 0..LINES {
        batch.extend_from_slice(format!("ECHO {i:06} {}\n", "x".repeat(90)).as_bytes());
    }
    // Encrypt it all at once (past the client session's buffer limit).
    c.0.conn.set_buffer_limit(None);
    c.0.conn.writer().write_all(&batch).unwrap();
    let mut records = Vec::new();
    while c.0.conn.wants_write() {
        c.0.conn.write_tls(&mut records).unwrap();
    }
    let mut writer = c.0.sock.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(&records).unwrap());
    // Read nothing until the server has stopped reading us.
    let deadline = Instant::now() + PATIENCE;
    while stats(&server, &pki).get("paused") == 0 {
        assert!(Instant::now() < deadline, "never paused");
        thread::sleep(Duration::from_millis(20));
    }
    let mut other = client(&server, &pki);
    assert_eq!(line(&mut other), "READY");
    send(&mut other, b"PING\n");
    assert_eq!(line(&mut other), "PONG");
    for i in 0..LINES {
        assert_eq!(line(&mut c), format!("OK {i:06} {}", "x".repeat(90)));
    }
    sender.join().unwrap();
}

#[test]
fn handshakes_that_never_finish_are_closed_on_time_with_bounded_memory() {
    const STALLED: usize = 3_000;
    let pki = Pki::new();
    let server = tls_server(&pki, &["--handshake-timeout", "1s"]);
    let baseline = server.rss_kib();
    let started = Instant::now();
    // Half of them send nothing, half a fragment of a ClientHello.
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            if i % 2 == 1 {
                s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01]).unwrap();
            }
            s
        })
        .collect();
    let peak = server.rss_kib();
    // Every one is closed by the server, without a byte of reply.
    for s in &mut stalled {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected a close, got {other:?}"),
        }
    }
    let took = started.elapsed();
    let growth = peak.saturating_sub(baseline);
    eprintln!("{STALLED} stalled handshakes: closed after {took:?}; RSS +{growth} KiB at the peak ({} B each)", growth * 1024 / STALLED as u64);
    assert!(took >= Duration::from_secs(1), "closed before the timeout");
    // A stalled handshake holds the session's state: measured at about
    // 6 KiB (rustls's session and its receive buffer); allowed 8 KiB.
    assert!(
        growth < 8 * STALLED as u64,
        "{STALLED} stalled handshakes took {growth} KiB"
    );
    // And the server serves as before.
    let mut c = client(&server, &pki);
    assert_eq!(line(&mut c), "READY");
}

#[test]
fn garbage_instead_of_a_client_hello_closes_that_connection_only() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut good = client(&server, &pki);
    assert_eq!(line(&mut good), "READY");
    let mut bad = TcpStream::connect(server.addr).unwrap();
    bad.set_read_timeout(Some(PATIENCE)).unwrap();
    bad.write_all(b"\x16\x03\x01\x00\x05hello, not a handshake\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = bad.read_to_end(&mut reply);
    // At most a TLS alert record (type 21), never a protocol line.
    assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");
    send(&mut good, b"PING\n");
    assert_eq!(line(&mut good), "PONG");
}

#[test]
fn a_plain_client_on_a_tls_listener_gets_no_line() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut plain = util::Client::connect(server.addr);
    plain.send(b"PING\n");
    let reply = plain.read_to_end();
    assert!(
        !String::from_utf8_lossy(&reply).contains("PONG")
            && !String::from_utf8_lossy(&reply).contains("READY"),
        "{reply:?}"
    );
}

#[test]
fn a_tls_client_on_a_plain_listener_fails_and_the_server_goes_on() {
    let pki = Pki::new();
    let server = Server::start(&[]);
    assert!(tls::connect(server.addr, pki.client_config(None)).is_err());
    let mut c = server.client();
    c.send(b"PING\n");
    c.expect_line("PONG");
}

#[test]
fn mutual_tls_admits_only_clients_the_ca_vouches_for() {
    let pki = Pki::new();
    let ca = tls::path(&pki.ca_pem);
    let server = tls_server(&pki, &["--tls-client-ca", &ca]);
    // With a certificate the CA signed: served.
    let (cert, key) = pki.issue(&["client.example"]);
    let mut c = (
        tls::connect(server.addr, pki.client_config(Some((&cert, &key)))).expect("handshake"),
        Vec::new(),
    );
    assert_eq!(line(&mut c), "READY");
    // Without one, or with one from another CA: the session ends before
    // any line.
    let other = Pki::new();
    let (cert, key) = other.issue(&["client.example"]);
    for config in [
        pki.client_config(None),
        pki.client_config(Some((&cert, &key))),
    ] {
        if let Ok(mut stream) = tls::connect(server.addr, config) {
            let mut buf = [0u8; 64];
            assert!(
                !matches!(stream.read(&mut buf), Ok(n) if n > 0),
                "a client the CA did not vouch for was served"
            );
        }
    }
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let mut pki = Pki::new();
    let mut server = tls_server(&pki, &[]);
    let mut before = client(&server, &pki);
    assert_eq!(line(&mut before), "READY");
    let old_cert = std::fs::read(&pki.cert).unwrap();

    // A new certificate (and key) in the same files, then SIGHUP.
    pki.issue_server_certificate();
    assert_ne!(std::fs::read(&pki.cert).unwrap(), old_cert);
    server.signal("HUP");
    server.wait_for_log("reload: TLS certificate");
    let mut after = client(&server, &pki);
    assert_eq!(line(&mut after), "READY");
    let served = after.0.conn.peer_certificates().unwrap()[0].to_vec();
    assert_ne!(
        served,
        pem_der(&old_cert),
        "the old certificate is still served"
    );
    // The session opened before the reload goes on.
    send(&mut before, b"PING\n");
    assert_eq!(line(&mut before), "PONG");

    // A reload that fails keeps what works, and names the file.
    std::fs::write(&pki.cert, b"not a certificate").unwrap();
    server.signal("HUP");
    let error = server.wait_for_log("keeping the old TLS configuration");
    assert!(error.contains(&tls::path(&pki.cert)), "{error}");
    let mut still = client(&server, &pki);
    assert_eq!(line(&mut still), "READY");
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

#[test]
fn a_tls_listener_needs_a_certificate_and_a_key() {
    let pki = Pki::new();
    let out = util::run_loopline(
        &[
            "--listen",
            "127.0.0.1:0,tls",
            "--tls-cert",
            &tls::path(&pki.cert),
        ],
        "info",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
    // A file that is not a certificate: exit 1, naming it.
    let bad = pki.dir.join("bad.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    let out = util::run_loopline(
        &[
            "--listen",
            "127.0.0.1:0,tls",
            "--tls-cert",
            &tls::path(&bad),
            "--tls-key",
            &tls::path(&pki.key),
        ],
        "info",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&tls::path(&bad)), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// A real `openssl s_client` session, as a user would type it.
#[test]
fn openssl_s_client_gets_ready_pong_bye() {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl not found: apt-get install openssl");
    }
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &server.addr.to_string(),
            "-CAfile",
            &tls::path(&pki.ca_pem),
            "-verify_return_error",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"PING\nQUIT\n").unwrap();
    // Keep stdin open until the server has closed: s_client would send its
    // own close_notify at EOF.
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    drop(stdin);
    let mut errors = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut errors);
    let _ = child.wait();
    assert_eq!(out, "READY\nPONG\nBYE\n", "openssl said: {errors}");
}
