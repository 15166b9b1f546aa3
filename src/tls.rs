//! Certificates and keys for listeners with the `tls` option: read from PEM
//! files into a rustls `ServerConfig` (TLS 1.2 and 1.3, or 1.3 only with
//! `--tls-min-version 1.3`; the ring provider; session tickets and a
//! bounded session cache; an OCSP response stapled with `--tls-ocsp`), at
//! start and again on SIGHUP. The session itself lives in each
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
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use crate::files;
use crate::transport::TlsVersion;

/// What a TLS listener is configured from: files, and choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// `--tls-key`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `--tls-client-ca`: if set, clients must present a certificate this
    /// CA (PEM, one or more certificates) vouches for.
    pub client_ca: Option<PathBuf>,
    /// `--tls-ocsp`: an OCSP response (DER) stapled to the certificate.
    pub ocsp: Option<PathBuf>,
    /// `--tls-min-version`.
    pub min_version: TlsVersion,
}

/// A TLS file that cannot be used; the message names the option and the
/// file.
#[derive(Debug)]
pub struct TlsError {
    /// The option that names the file (`--tls-cert`, ...).
    pub option: &'static str,
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.option,
            self.file.display(),
            self.problem
        )
    }
}

impl std::error::Error for TlsError {}

/// One file of the configuration, with the option that names it.
#[derive(Clone, Copy)]
struct Named<'a> {
    option: &'static str,
    file: &'a Path,
}

impl Named<'_> {
    fn problem(self, problem: impl fmt::Display) -> TlsError {
        TlsError {
            option: self.option,
            file: self.file.to_path_buf(),
            problem: problem.to_string(),
        }
    }
}

/// How many sessions the server remembers for clients that resume without
/// a ticket (a TLS 1.2 client that sent no ticket extension; TLS 1.3
/// resumes with tickets). About 200 bytes each, under 2 MiB in all; more
/// with `--tls-client-ca`, as each keeps the client's certificate chain
/// (a few KiB): the cache is outside `--max-memory`, bounded by this count.
pub const SESSION_CACHE_ENTRIES: usize = 8192;

/// Reads the files and builds the configuration every new TLS connection
/// shares (an `Arc`: a reload swaps it for new connections only).
///
/// Resumption: clients get session tickets (TLS 1.3: two after each full
/// handshake; TLS 1.2: one, RFC 5077), sealed with a key that rustls's
/// `Ticketer` draws at random and rotates every 6 hours (a ticket is good
/// for 12), and the server keeps [`SESSION_CACHE_ENTRIES`] sessions for
/// clients that resume by session ID. Keys and cache live in this
/// configuration, in memory only: every loop shares them (one
/// configuration for the process), a reload starts new ones, and a restart
/// forgets them, so each client's next connection is a full handshake.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_file = Named {
        option: "--tls-cert",
        file: &files.cert,
    };
    let key_file = Named {
        option: "--tls-key",
        file: &files.key,
    };
    let certs = read_certificates(cert_file)?;
    let key = read_key(key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| cert_file.problem(e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let ca_file = Named {
                option: "--tls-client-ca",
                file: ca_file,
            };
            let mut roots = RootCertStore::empty();
            for ca in read_certificates(ca_file)? {
                roots.add(ca).map_err(|e| ca_file.problem(e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_file.problem(e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let ocsp = match &files.ocsp {
        Some(file) => read_ocsp(Named {
            option: "--tls-ocsp",
            file,
        })?,
        None => Vec::new(),
    };
    let mut config = builder
        .with_single_cert_with_ocsp(certs, key, ocsp)
        .map_err(|e| key_file.problem(format!("does not fit the certificate: {e}")))?;
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| cert_file.problem(format!("cannot make session tickets: {e}")))?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok(Arc::new(config))
}

/// The largest PEM file read: a CA bundle is a few hundred KiB.
const PEM_FILE_MAX: u64 = 16 * 1024 * 1024;

/// The bytes of a configured file: a regular file only, read without
/// blocking (a FIFO in its place fails at once: see [`crate::files`]).
fn read_file(named: Named<'_>, what: &str) -> Result<Vec<u8>, TlsError> {
    let contents = files::read_regular(named.file, PEM_FILE_MAX).map_err(|e| named.problem(e))?;
    if contents.truncated {
        return Err(named.problem(format!(
            "larger than {} MiB: not {what}",
            PEM_FILE_MAX >> 20
        )));
    }
    Ok(contents.bytes)
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(named: Named<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(named, "a PEM file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(named, e))?;
    if certs.is_empty() {
        return Err(named.problem(match pem_kind(&pem) {
            Some(kind) => format!("no certificate in it (it holds a {kind})"),
            None => "no PEM certificate in it".to_string(),
        }));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn read_key(named: Named<'_>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(named, "a PEM file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => named.problem(match pem_kind(&pem) {
            Some(kind) => format!("no private key in it (it holds a {kind})"),
            None => "no PEM private key in it".to_string(),
        }),
        other => describe(named, other),
    })
}

/// An OCSP response: DER, as a CA's responder gives it (`openssl ocsp
/// -respout`). Checked only for being there and not PEM: rustls staples
/// the bytes as they are, and the client judges them.
fn read_ocsp(named: Named<'_>) -> Result<Vec<u8>, TlsError> {
    let der = read_file(named, "an OCSP response")?;
    if der.is_empty() {
        return Err(named.problem("empty: no OCSP response in it"));
    }
    if der.starts_with(b"-----BEGIN") {
        return Err(named
            .problem("PEM text, not an OCSP response in DER (openssl ocsp -respout writes DER)"));
    }
    // A DER response is one SEQUENCE.
    if der[0] != 0x30 {
        return Err(named.problem("not an OCSP response in DER"));
    }
    Ok(der)
}

/// What the first PEM block of a file is, from its `BEGIN` line: for a
/// message about a file holding the wrong kind of item.
fn pem_kind(pem: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(pem);
    let begin = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let end = text[begin..].find("-----")? + begin;
    Some(text[begin..end].to_lowercase())
}

/// A PEM error, in words a user can act on.
fn describe(named: Named<'_>, error: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) if e.kind() == io::ErrorKind::NotFound => named.problem("no such file"),
        Error::Io(e) => named.problem(e),
        Error::NoItemsFound => named.problem("no PEM item of the expected kind in it"),
        other => named.problem(format!("not valid PEM ({other:?})")),
    }
}
