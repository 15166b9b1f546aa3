//! Certificates and keys for listeners with the `tls` option: read from PEM
//! files into a rustls `ServerConfig` (TLS 1.2 and 1.3, the ring provider),
//! at start and again on SIGHUP. The session itself lives in each
//! connection's [`crate::transport::Transport`].
//!
//! Why ring: it is the provider that builds for every platform loopline
//! names from one Linux machine (aws-lc-sys needs FreeBSD's C headers to
//! cross-check), and the whole TLS stack stays behind the `tls` feature.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::files;

/// The files a TLS listener is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// `--tls-key`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `--tls-client-ca`: if set, clients must present a certificate this
    /// CA (PEM, one or more certificates) vouches for.
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that cannot be used; the message names the file.
#[derive(Debug)]
pub struct TlsError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

impl std::error::Error for TlsError {}

fn problem(file: &Path, problem: impl fmt::Display) -> TlsError {
    TlsError {
        file: file.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Reads the files and builds the configuration every new TLS connection
/// shares (an `Arc`: a reload swaps it for new connections only).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?)
        .map_err(|e| describe(&files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(&files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certificates(ca_file)? {
                roots.add(ca).map_err(|e| problem(ca_file, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| problem(ca_file, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| problem(&files.key, format!("does not fit the certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// The largest PEM file read: a CA bundle is a few hundred KiB.
const PEM_FILE_MAX: u64 = 16 * 1024 * 1024;

/// The bytes of a PEM file: a regular file only, read without blocking (a
/// FIFO in its place fails at once: see [`crate::files`]).
fn read_pem(file: &Path) -> Result<Vec<u8>, TlsError> {
    let contents = files::read_regular(file, PEM_FILE_MAX).map_err(|e| problem(file, e))?;
    if contents.truncated {
        return Err(problem(
            file,
            format!("larger than {} MiB: not a PEM file", PEM_FILE_MAX >> 20),
        ));
    }
    Ok(contents.bytes)
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(file, e))?;
    if certs.is_empty() {
        return Err(problem(file, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// A PEM error, in words a user can act on.
fn describe(file: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) if e.kind() == io::ErrorKind::NotFound => problem(file, "no such file"),
        Error::Io(e) => problem(file, e),
        Error::NoItemsFound => problem(file, "no PEM item of the expected kind in it"),
        other => problem(file, format!("not valid PEM ({other:?})")),
    }
}
