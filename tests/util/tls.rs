//! TLS for the tests: a throwaway CA made at test time with the real
//! `openssl` command (Debian's openssl, which `.ci/run` installs), the
//! server certificate and key it signs, written as PEM files for
//! `--tls-cert` and `--tls-key`, and a blocking rustls client that speaks
//! to the server over loopback.
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
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::PATIENCE;

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

/// Runs `openssl ARGS` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
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
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
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
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
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

/// A blocking TLS client stream on loopback: the socket, with a rustls
/// session around it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` and completes the handshake (or fails with the
/// error the handshake met).
pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsStream> {
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(PATIENCE))?;
    socket.set_write_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from("localhost").unwrap();
    let session = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(session, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    // Flush the client's Finished.
    stream.flush()?;
    Ok(stream)
}

/// Reads one line (without its LF) from a TLS stream; `None` at the end of
/// the stream.
pub fn read_line(stream: &mut TlsStream, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(lf) = pending.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..lf]).into_owned();
            pending.drain(..=lf);
            return Some(line);
        }
        let mut chunk = [0u8; 16384];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("TLS read failed: {e}"),
        }
    }
}
