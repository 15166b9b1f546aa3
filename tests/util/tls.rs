//! TLS for the tests: a throwaway CA made at test time with the real
//! `openssl` command (Debian's openssl, which `.ci/run` installs), the
//! server certificate and key it signs, written as PEM files for
//! `--tls-cert` and `--tls-key`, and the TLS side of [`Client`]: a blocking
//! rustls session over a loopback socket.
//!
//! (Not a Rust certificate generator: those bring C code that cannot be
//! built for every platform the repository is checked for.)
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::{Client, PATIENCE};

/// A CA and what it signed, on disk in a directory of its own (removed on
/// drop).
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate (PEM): the client's trust root, or the server's
    /// `--tls-client-ca`.
    pub ca_pem: PathBuf,
    ca_key: PathBuf,
    /// The server's certificate (PEM), for `localhost` and 127.0.0.1.
    pub cert: PathBuf,
    /// The server's key (PEM).
    pub key: PathBuf,
    issued: AtomicU64,
}

/// The `openssl req` arguments for a new P-256 key, unencrypted.
const NEW_P256_KEY: &[&str] = &[
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// Runs `openssl ARGS` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    openssl_output(dir, args);
}

impl Pki {
    /// A new CA, and a server certificate it signs.
    pub fn new() -> Pki {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopline-tls-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        openssl(
            &dir,
            &[
                &["req", "-x509"],
                NEW_P256_KEY,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=loopline test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        let mut pki = Pki {
            ca_pem: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            issued: AtomicU64::new(0),
        };
        pki.issue_server_certificate();
        pki
    }

    /// (Re)writes the server certificate and key files: a fresh key pair,
    /// signed by this CA.
    pub fn issue_server_certificate(&mut self) {
        let (cert, key) = self.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(&self.cert, cert).unwrap();
        std::fs::write(&self.key, key).unwrap();
    }

    /// A certificate and key (both PEM) for `names` (DNS names or IP
    /// addresses), signed by this CA, good for servers and clients.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let (key, csr, cert, ext) = (
            format!("issued-{n}.key"),
            format!("issued-{n}.csr"),
            format!("issued-{n}.pem"),
            format!("issued-{n}.ext"),
        );
        let alt_names: Vec<String> = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{name}"),
                Err(_) => format!("DNS:{name}"),
            })
            .collect();
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
                alt_names.join(",")
            ),
        )
        .unwrap();
        let subject = format!("/CN={}", names[0]);
        openssl(
            &self.dir,
            &[
                &["req", "-new"],
                NEW_P256_KEY,
                &["-keyout", &key, "-out", &csr, "-subj", &subject],
            ]
            .concat(),
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap();
        (read(&cert), read(&key))
    }

    /// The server options for a TLS listener on 127.0.0.1:0.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--listen".into(),
            "127.0.0.1:0,tls".into(),
            "--tls-cert".into(),
            path(&self.cert),
            "--tls-key".into(),
            path(&self.key),
        ]
    }

    /// A client configuration that trusts this CA (and, with `identity`, a
    /// client certificate and key it signed, for mutual TLS).
    pub fn client_config(&self, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let ca = std::fs::read(&self.ca_pem).unwrap();
        roots
            .add(CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        };
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

impl Client {
    /// Connects to `addr` and completes the TLS handshake as `localhost`
    /// (or fails with the error the connect or the handshake met).
    pub fn connect_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Client> {
        Client::tls_over(TcpStream::connect_timeout(&addr, PATIENCE)?, config)
    }

    /// Completes the TLS handshake as `localhost` over a connected socket.
    pub fn tls_over(stream: TcpStream, config: Arc<ClientConfig>) -> io::Result<Client> {
        let mut client = Client::from_stream(stream);
        let name = ServerName::try_from("localhost").expect("a valid name");
        let mut session = ClientConnection::new(config, name).map_err(io::Error::other)?;
        // No limit on plaintext waiting to be encrypted: `Client::wire_bytes`
        // encrypts a whole request batch at once, however large.
        session.set_buffer_limit(None);
        while session.is_handshaking() {
            session.complete_io(&mut client.stream)?;
        }
        // Send the client's Finished now, not with the first request.
        client.stream.write_all(&take_records(&mut session))?;
        client.session = Some(Box::new(session));
        Ok(client)
    }

    /// The TLS session (the certificates the server showed, say); None for
    /// a plain client.
    pub fn tls_session(&self) -> Option<&ClientConnection> {
        self.session.as_deref()
    }
}

/// Every record `session` has waiting to be sent, encrypted, in order.
pub(super) fn take_records(session: &mut ClientConnection) -> Vec<u8> {
    let mut records = Vec::new();
    while session.wants_write() {
        // Writing into a Vec cannot fail.
        session.write_tls(&mut records).expect("write into a Vec");
    }
    records
}

/// One read of plaintext from `session`, reading records from `socket`
/// as needed: Ok(0) once the server's close_notify has come; a TCP close
/// without one is an `UnexpectedEof` error, which names the fault.
pub(super) fn read_plaintext(
    session: &mut ClientConnection,
    socket: &mut TcpStream,
    chunk: &mut [u8],
) -> io::Result<usize> {
    rustls::Stream::new(session, socket)
        .read(chunk)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(
                e.kind(),
                "the server closed the TCP connection without a TLS close_notify",
            ),
            _ => e,
        })
}

/// OCSP for `--tls-ocsp`: this CA answers for its own server certificate,
/// offline, with `openssl ocsp` as the responder.
impl Pki {
    /// Writes, and returns the path of, a DER OCSP response (signed by this
    /// CA, good for a day) saying the server certificate ([`Pki::cert`], as
    /// it is now) is good: what a CA's responder would give the server to
    /// staple. `openssl ocsp` makes the request, answers it from an
    /// `index.txt` naming the certificate valid, and checks the answer.
    pub fn ocsp_response(&self) -> PathBuf {
        self.ocsp_response_saying(CertStatus::Good)
    }

    /// The same, saying the certificate was revoked: a response that
    /// differs from [`Pki::ocsp_response`]'s in what a client reads.
    pub fn ocsp_response_revoked(&self) -> PathBuf {
        self.ocsp_response_saying(CertStatus::Revoked)
    }

    fn ocsp_response_saying(&self, said: CertStatus) -> PathBuf {
        let cert = path(&self.cert);
        let serial = openssl_output(&self.dir, &["x509", "-in", &cert, "-noout", "-serial"]);
        let serial = serial
            .trim()
            .strip_prefix("serial=")
            .unwrap_or_else(|| panic!("no serial in {serial:?}"))
            .to_string();
        let not_after = openssl_output(&self.dir, &["x509", "-in", &cert, "-noout", "-enddate"]);
        let not_after = index_time(
            not_after
                .trim()
                .strip_prefix("notAfter=")
                .unwrap_or_else(|| panic!("no notAfter in {not_after:?}")),
        );
        let subject = openssl_output(
            &self.dir,
            &[
                "x509", "-in", &cert, "-noout", "-subject", "-nameopt", "compat",
            ],
        );
        let subject = subject.trim().trim_start_matches("subject=").trim();
        // The CA database `openssl ca` keeps, one line per certificate:
        // status, expiry, revocation date (if revoked), serial, file, subject.
        let (status, revoked_at) = match said {
            CertStatus::Good => ("V", ""),
            CertStatus::Revoked => ("R", "250101000000Z"),
        };
        std::fs::write(
            self.dir.join("ocsp-index.txt"),
            format!("{status}\t{not_after}\t{revoked_at}\t{serial}\tunknown\t{subject}\n"),
        )
        .unwrap();
        let response = format!("ocsp-response-{}.der", said.word());
        openssl(
            &self.dir,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                &cert,
                "-reqout",
                "ocsp-request.der",
                "-no_nonce",
            ],
        );
        openssl(
            &self.dir,
            &[
                "ocsp",
                "-index",
                "ocsp-index.txt",
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.pem",
                "-reqin",
                "ocsp-request.der",
                "-respout",
                &response,
                "-ndays",
                "1",
            ],
        );
        // The response verifies against the CA and says what it should.
        let status = openssl_output(
            &self.dir,
            &[
                "ocsp", "-respin", &response, "-issuer", "ca.pem", "-cert", &cert, "-CAfile",
                "ca.pem",
            ],
        );
        let word = said.word();
        assert!(
            status.contains(&format!("{cert}: {word}")),
            "the OCSP response does not say the certificate is {word}: {status}"
        );
        self.dir.join(response)
    }
}

/// What an OCSP response says of the certificate.
#[derive(Clone, Copy)]
enum CertStatus {
    Good,
    Revoked,
}

impl CertStatus {
    /// As `openssl ocsp` prints it.
    fn word(self) -> &'static str {
        match self {
            CertStatus::Good => "good",
            CertStatus::Revoked => "revoked",
        }
    }
}

/// Runs `openssl ARGS` in `dir` and returns what it printed on stdout;
/// panics with its output if it fails.
fn openssl_output(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl not found ({e}): apt-get install openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A certificate date as `openssl x509 -enddate` prints it (`Dec  8
/// 21:48:27 2026 GMT`) in the form of an `index.txt` (`261208214827Z`).
fn index_time(openssl_date: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let fields: Vec<&str> = openssl_date.split_whitespace().collect();
    let [month, day, time, year, "GMT"] = fields[..] else {
        panic!("not a certificate date: {openssl_date:?}")
    };
    let month = MONTHS
        .iter()
        .position(|m| *m == month)
        .unwrap_or_else(|| panic!("no month in {openssl_date:?}"))
        + 1;
    let day: u32 = day.parse().expect("a day");
    let time = time.replace(':', "");
    // UTCTime (two digits) before 2050, GeneralizedTime from then on.
    let year = match year.parse::<u32>().expect("a year") {
        y if y < 2050 => format!("{:02}", y % 100),
        y => y.to_string(),
    };
    format!("{year}{month:02}{day:02}{time}Z")
}
