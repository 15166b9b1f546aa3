//! The TLS client settings every connection of a run shares (`--tls`,
//! `--tls-ca`, `--tls-name`): a rustls `ClientConfig` with the ring
//! provider, trusting only the CA file given, and the server name to check
//! the certificate against.
//!
//! Session resumption is turned off: every connection makes a full
//! handshake, so churn over TLS counts full handshakes per second and not
//! cheap resumptions after the first.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// What a new TLS connection needs: the shared configuration and the name
/// the server's certificate must carry.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The CA file or the server name cannot be used; the message names which.
#[derive(Debug)]
pub struct TlsSetupError(String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TlsClient {
    /// Trusts the certificates in the PEM file `ca_file` (and nothing else)
    /// and expects `server_name` (a DNS name or an IP address) on the
    /// server's certificate.
    pub fn new(ca_file: &Path, server_name: &str) -> Result<TlsClient, TlsSetupError> {
        let fail = |what: String| TlsSetupError(what);
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| fail(format!("--tls-name {server_name}: {e}")))?;
        let mut roots = RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| fail(format!("--tls-ca {}: {e}", ca_file.display())))?;
        for certificate in certificates {
            let certificate =
                certificate.map_err(|e| fail(format!("--tls-ca {}: {e}", ca_file.display())))?;
            roots
                .add(certificate)
                .map_err(|e| fail(format!("--tls-ca {}: {e}", ca_file.display())))?;
        }
        if roots.is_empty() {
            return Err(fail(format!(
                "--tls-ca {}: no certificate in the file",
                ca_file.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Full handshakes only (see the module note).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}
