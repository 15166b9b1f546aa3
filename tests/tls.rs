//! What only TLS listeners have: the handshake and its timeout, peers that
//! speak the wrong thing, mutual TLS, reloading certificates on SIGHUP,
//! certificate errors at start, and a real `openssl s_client`.
//!
//! The protocol and the limits inside TLS (every command, splits,
//! pipelining, the line limit, backpressure, half-close, the idle timeout,
//! graceful shutdown with close_notify) are tested by the same tests as over
//! plain TCP, run over both transports: see `protocol.rs`, `limits.rs`,
//! `half_close.rs`, `timers.rs` and `shutdown.rs`.
//!
//! Every server here listens on 127.0.0.1:0 with the `tls` option and a
//! certificate from a CA made at test time (`util::tls::Pki`), which the
//! test keeps to change it or to make clients of its own.
#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki};
use util::{Client, Server, PATIENCE};

// Each runs with one event loop and with two (`--threads 2`).
util::one_and_two_loops!(sighup_reloads_the_certificate_for_new_connections_only,);

/// A server with one TLS listener with `pki`'s certificate, and more options.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let mut args = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_raw(&args, "debug")
}

/// A TLS client that trusts `pki`'s CA and has read its `READY`.
fn client(server: &Server, pki: &Pki) -> Client {
    let mut c = Client::connect_tls(server.addr, pki.client_config(None)).expect("TLS handshake");
    c.expect_line("READY");
    c
}

#[test]
fn the_listening_line_names_the_tls_option() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    assert!(
        server.logged("(tls)"),
        "the listening line names the tls option"
    );
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
    // (Regression: this loop failed once with `Interrupted`, which
    // `wait_closed` retries.)
    for s in &mut stalled {
        let said = util::wait_closed(s);
        assert!(said.is_empty(), "a stalled handshake got {said:?}");
    }
    let took = started.elapsed();
    let growth = peak.saturating_sub(baseline);
    eprintln!("{STALLED} stalled handshakes: closed after {took:?}; RSS +{growth} KiB at the peak ({} B each)", growth * 1024 / STALLED as u64);
    assert!(took >= Duration::from_secs(1), "closed before the timeout");
    // A stalled handshake holds the session's state: measured at 6.5 to
    // 7.5 KiB (rustls's session and its 4 KiB receive buffer); allowed
    // 12 KiB, for the allocator's slack on a busy machine.
    assert!(
        growth < 12 * STALLED as u64,
        "{STALLED} stalled handshakes took {growth} KiB"
    );
    // And the server serves as before.
    client(&server, &pki);
}

#[test]
fn garbage_instead_of_a_client_hello_closes_that_connection_only() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut good = client(&server, &pki);
    let mut bad = TcpStream::connect(server.addr).unwrap();
    bad.set_read_timeout(Some(PATIENCE)).unwrap();
    bad.write_all(b"\x16\x03\x01\x00\x05hello, not a handshake\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = bad.read_to_end(&mut reply);
    // At most a TLS alert record (type 21), never a protocol line.
    assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");
    good.send(b"PING\n");
    good.expect_line("PONG");
}

#[test]
fn a_plain_client_on_a_tls_listener_gets_no_line() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut plain = Client::connect(server.addr);
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
    assert!(Client::connect_tls(server.addr, pki.client_config(None)).is_err());
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
    let mut c = Client::connect_tls(server.addr, pki.client_config(Some((&cert, &key))))
        .expect("handshake");
    c.expect_line("READY");
    // Without one, or with one from another CA: the session ends before
    // any line.
    let other = Pki::new();
    let (cert, key) = other.issue(&["client.example"]);
    for config in [
        pki.client_config(None),
        pki.client_config(Some((&cert, &key))),
    ] {
        if let Ok(mut c) = Client::connect_tls(server.addr, config) {
            let mut buf = [0u8; 64];
            assert!(
                !matches!(c.read_some(&mut buf), Ok(n) if n > 0),
                "a client the CA did not vouch for was served"
            );
        }
    }
}

fn sighup_reloads_the_certificate_for_new_connections_only() {
    let mut pki = Pki::new();
    let mut server = tls_server(&pki, &[]);
    let mut before = client(&server, &pki);
    let old_cert = std::fs::read(&pki.cert).unwrap();

    // A new certificate (and key) in the same files, then SIGHUP.
    pki.issue_server_certificate();
    assert_ne!(std::fs::read(&pki.cert).unwrap(), old_cert);
    server.signal("HUP");
    server.wait_for_log("reload: TLS certificate");
    let after = client(&server, &pki);
    let served = after.tls_session().unwrap().peer_certificates().unwrap()[0].to_vec();
    assert_ne!(
        served,
        pem_der(&old_cert),
        "the old certificate is still served"
    );
    // The session opened before the reload goes on.
    before.send(b"PING\n");
    before.expect_line("PONG");

    // A reload that fails keeps what works, and names the file.
    std::fs::write(&pki.cert, b"not a certificate").unwrap();
    server.signal("HUP");
    let error = server.wait_for_log("keeping the old TLS configuration");
    assert!(error.contains(&tls::path(&pki.cert)), "{error}");
    client(&server, &pki);

    // Regression: a FIFO in place of the certificate made the reload block
    // the loop in `open`. It fails at once now, naming the file, and new
    // connections are served as before.
    util::make_fifo(&pki.cert);
    server.signal("HUP");
    let error = server.wait_for_log("keeping the old TLS configuration");
    assert!(error.contains(&tls::path(&pki.cert)), "{error}");
    assert!(error.contains("not a regular file (a FIFO)"), "{error}");
    client(&server, &pki);
    before.send(b"PING\n");
    before.expect_line("PONG");
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

/// Runs a `tls` listener with the certificate `cert`, the key `key` and
/// `extra` options, a start that must fail with exit 1 (a file that
/// cannot be used) and never listen: what it printed on stderr.
fn start_fails_with(cert: &Path, key: &Path, extra: &[&str]) -> String {
    let (cert, key) = (tls::path(cert), tls::path(key));
    let mut args = vec![
        "--listen",
        "127.0.0.1:0,tls",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    let out = util::run_loopline(&args, "info");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
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
    let stderr = start_fails_with(&bad, &pki.key, &[]);
    assert!(
        stderr.contains(&format!("cannot use --tls-cert {}", tls::path(&bad))),
        "{stderr}"
    );
    // A key file holding a certificate: it says so, naming the option.
    let stderr = start_fails_with(&pki.cert, &pki.cert, &[]);
    assert!(
        stderr.contains(&format!(
            "cannot use --tls-key {}: no private key in it (it holds a certificate)",
            tls::path(&pki.cert)
        )),
        "{stderr}"
    );
    // A missing file names its option too.
    let stderr = start_fails_with(&pki.cert, &pki.key, &["--tls-client-ca", "nope.pem"]);
    assert!(
        stderr.contains("cannot use --tls-client-ca nope.pem: "),
        "{stderr}"
    );
    // A FIFO in place of the key: refused at once, naming it (a plain
    // open would wait for a writer forever).
    let fifo = pki.dir.join("fifo.pem");
    util::make_fifo(&fifo);
    let stderr = start_fails_with(&pki.cert, &fifo, &[]);
    assert!(stderr.contains(&tls::path(&fifo)), "{stderr}");
    assert!(stderr.contains("not a regular file (a FIFO)"), "{stderr}");
    // An OCSP response that is not one: named with what is wrong with it.
    for (name, content, problem) in [
        ("empty.der", &b""[..], "empty: no OCSP response in it"),
        (
            "pem.der",
            b"-----BEGIN OCSP RESPONSE-----\n",
            "PEM text, not an OCSP response in DER",
        ),
        ("text.der", b"good\n", "not an OCSP response in DER"),
    ] {
        let ocsp = pki.dir.join(name);
        std::fs::write(&ocsp, content).unwrap();
        let stderr = start_fails_with(&pki.cert, &pki.key, &["--tls-ocsp", &tls::path(&ocsp)]);
        assert!(
            stderr.contains(&format!(
                "cannot use --tls-ocsp {}: {problem}",
                tls::path(&ocsp)
            )),
            "{stderr}"
        );
    }
}

/// An operator who sets the certificate and forgets `,tls` would serve
/// the protocol (and its tokens) in clear: a usage error, naming the
/// listener that lacks the option.
#[test]
fn tls_files_with_no_tls_listener_are_a_usage_error() {
    let pki = Pki::new();
    let out = util::run_loopline(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &tls::path(&pki.cert),
            "--tls-key",
            &tls::path(&pki.key),
        ],
        "info",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-cert is given, but --listen 127.0.0.1:0 has no tls option"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// A client configuration trusting `pki`'s CA that offers only `version`,
/// and keeps sessions to resume (rustls's default: 256 in memory).
fn client_config_for(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca_pem).unwrap();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(&ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

#[test]
fn tls_min_version_1_3_refuses_a_tls_1_2_client() {
    let pki = Pki::new();
    let strict = tls_server(&pki, &["--tls-min-version", "1.3"]);
    let only_1_2 = client_config_for(&pki, &rustls::version::TLS12);
    let refused = Client::connect_tls(strict.addr, only_1_2.clone());
    assert!(refused.is_err(), "a TLS 1.2 client got through");
    let mut c = Client::connect_tls(
        strict.addr,
        client_config_for(&pki, &rustls::version::TLS13),
    )
    .expect("a TLS 1.3 client");
    c.expect_line("READY");
    // The default, 1.2, takes both.
    let lenient = tls_server(&pki, &[]);
    let mut old = Client::connect_tls(lenient.addr, only_1_2).expect("a TLS 1.2 client");
    old.expect_line("READY");
    strict.assert_no_panic();
}

/// A client that comes back resumes its session instead of a full
/// handshake: with a ticket under TLS 1.3 and under TLS 1.2, on either
/// loop of two (the tickets' keys and the session cache are the
/// process's).
#[test]
fn clients_resume_their_sessions_over_tls_1_2_and_1_3() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--threads", "2"]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config_for(&pki, version);
        for round in 0..6 {
            let mut c = Client::connect_tls(server.addr, config.clone()).expect("handshake");
            c.expect_line("READY");
            // A TLS 1.3 ticket arrives after the handshake: a round trip
            // makes sure the client has it before it leaves.
            c.send(b"PING\n");
            c.expect_line("PONG");
            let kind = c.tls_session().unwrap().handshake_kind();
            let want = if round == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "{version:?}, connection {round}");
            c.send(b"QUIT\n");
            c.expect_line("BYE");
        }
    }
    server.assert_no_panic();
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

/// A request sent in the same flight as the end of the handshake (the
/// client's Finished and its first record in one write): rustls holds that
/// plaintext as the handshake ends, and no socket event will come for it,
/// so the server must read on right after `READY`.
#[test]
fn a_request_in_the_same_flight_as_the_handshake_is_answered() {
    use rustls::pki_types::ServerName;
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let mut socket = TcpStream::connect(server.addr).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut session = rustls::ClientConnection::new(pki.client_config(None), name).unwrap();
    // Queued before the handshake ends: sent right behind the Finished.
    session.writer().write_all(b"PING\nQUIT\n").unwrap();
    while session.is_handshaking() {
        session.complete_io(&mut socket).unwrap();
    }
    while session.wants_write() {
        session.write_tls(&mut socket).unwrap();
    }
    let mut stream = rustls::Stream::new(&mut session, &mut socket);
    let mut got = String::new();
    let _ = stream.read_to_string(&mut got);
    assert_eq!(got, "READY\nPONG\nBYE\n");
}
