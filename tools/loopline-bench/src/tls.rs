//! The TLS client settings of a run (`--tls`, `--tls-ca`, `--tls-name`,
//! `--tls-version`, `--tls-resume`): a rustls `ClientConfig` with the ring
//! provider, trusting only the CA file given, offering the versions asked
//! for, and the server name to check the certificate against.
//!
//! By default session resumption is turned off (`Resumption::disabled()`:
//! no session cache, no tickets or session IDs offered): every connection
//! makes a full handshake, so churn over TLS counts full handshakes per
//! second and not cheap resumptions after the first. (rustls's default
//! would resume: a `ClientConfig` shared by every connection keeps an
//! in-memory session cache.)
//!
//! With `--tls-resume` each churn slot gets its own configuration with its
//! own in-memory session cache ([`TlsClient::for_one_client`]): a slot's
//! next connection offers what its previous one was given (a TLS 1.3
//! ticket; in TLS 1.2 a ticket or the session ID), as one client
//! reconnecting would. Whether the server took it is counted per handshake
//! (`Link::handshake_resumed`), so a server that did full handshakes anyway
//! shows.

use crate::cli::TlsVersion;
use rustls::client::Resumption;
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
    /// `--tls-resume`: [`TlsClient::for_one_client`] gives each client a
    /// session cache of its own; otherwise resumption is off.
    pub resume: bool,
}

/// Sessions a resuming client's cache holds: it only ever talks to one
/// server name (rustls keeps up to 8 TLS 1.3 tickets for it).
const SESSIONS_PER_CLIENT: usize = 4;

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
    /// server's certificate; offers `version`. Resumption is off here; with
    /// `resume`, [`TlsClient::for_one_client`] turns it on per client.
    pub fn new(
        ca_file: &Path,
        server_name: &str,
        version: TlsVersion,
        resume: bool,
    ) -> Result<TlsClient, TlsSetupError> {
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
        let versions: &[&rustls::SupportedProtocolVersion] = match version {
            TlsVersion::Auto => rustls::DEFAULT_VERSIONS,
            TlsVersion::V1_2 => &[&rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| fail(format!("--tls-version {}: {e}", version.name())))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Full handshakes only (see the module note); a resuming client
        // gets a cache of its own from `for_one_client`.
        config.resumption = Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
            resume,
        })
    }

    /// The settings for one client that reconnects again and again (a
    /// churn slot). Without `--tls-resume`: these same settings, shared,
    /// resumption off. With it: a configuration of its own whose session
    /// cache only this client fills and reads, so each connection offers
    /// the session its predecessor was given (TLS 1.3: one of its tickets,
    /// each used once; TLS 1.2: a ticket if the server gave one, else the
    /// session ID).
    pub fn for_one_client(&self) -> TlsClient {
        if !self.resume {
            return self.clone();
        }
        let mut config = ClientConfig::clone(&self.config);
        // A new store: a cloned `Resumption` would share the cache.
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_CLIENT);
        TlsClient {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
            resume: true,
        }
    }
}
