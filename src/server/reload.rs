//! Signals, and what SIGHUP reads again.
//!
//! Signals reach loop 0 only, through a pipe its `poll` watches (no work
//! is done in the handler). SIGINT and SIGTERM start a graceful shutdown of
//! every loop (a second one stops them at once); SIGHUP re-reads the files
//! (TLS certificate, key and client CA; the `--auth-file` token) and
//! publishes what it read; each loop picks it up at its next turn. Files
//! are read only if they are regular files, without blocking
//! ([`crate::files`]): a FIFO in place of the token cannot stop the loop.

use std::sync::Arc;

use log::{error, info};

use super::bind::load_token;
use super::event_loop::EventLoop;
use crate::process::Process;
use crate::protocol::AuthToken;

/// What the latest reload gave this loop: new connections use it (open TLS
/// sessions keep the configuration they started with; a connection that
/// has not authenticated is lent the current token for every line).
pub(crate) struct Current {
    /// What new TLS connections use.
    #[cfg(feature = "tls")]
    pub(super) tls_config: Option<Arc<rustls::ServerConfig>>,
    /// The `--auth-file` token, `None` when authentication is off.
    pub(super) token: Option<Arc<AuthToken>>,
    /// The reloads published by the signal loop that this loop has picked up.
    reloads_seen: u64,
}

impl Current {
    /// What the process holds now (at start: what `bind` read).
    pub(super) fn new(process: &Process) -> Current {
        // The count first: a reload published in between is then picked
        // up again next turn, never missed.
        let reloads_seen = process.reloads();
        let reloaded = process.reloadable();
        Current {
            #[cfg(feature = "tls")]
            tls_config: reloaded.tls_config,
            token: reloaded.token,
            reloads_seen,
        }
    }
}

impl EventLoop {
    /// Signals reach loop 0 only; it tells every loop (itself included)
    /// through the shared flags and their wakers.
    pub(super) fn on_signal(&mut self) {
        use signal_hook::consts::SIGHUP;
        let mut reload = false;
        if let Some(signals) = self.duties.signals.as_mut() {
            for signal in signals.pending() {
                if signal == SIGHUP {
                    // The server goes on whatever happens (the default
                    // action would kill it).
                    reload = true;
                } else if self.process.shutdown_requested() {
                    info!("received signal {signal} during the shutdown: stopping at once");
                    self.process.request_stop_at_once();
                } else {
                    info!("received signal {signal}: shutting down");
                    self.process.request_shutdown();
                }
            }
        }
        if reload {
            self.reload();
        }
    }

    /// SIGHUP: re-reads what comes from files. A file that cannot be used
    /// (missing, invalid, not a regular file) keeps the old value and is
    /// named in an error line. The files are read once, here, and what was
    /// read is published to every loop.
    fn reload(&mut self) {
        let mut reloaded = self.process.reloadable();
        let mut reloadable = false;
        #[cfg(feature = "tls")]
        if let Some(files) = super::bind::tls_files(&self.config) {
            reloadable = true;
            match crate::tls::load(&files) {
                Ok(config) => {
                    reloaded.tls_config = Some(config);
                    info!(
                        "reload: TLS certificate {} and key {} reloaded{}",
                        files.cert.display(),
                        files.key.display(),
                        files
                            .client_ca
                            .as_ref()
                            .map(|ca| format!(", client CA {}", ca.display()))
                            .unwrap_or_default()
                    );
                }
                Err(e) => error!("reload: keeping the old TLS configuration: cannot use {e}"),
            }
        }
        if let Some(path) = &self.config.auth_file {
            reloadable = true;
            match load_token(path) {
                Ok(token) => {
                    reloaded.token = Some(Arc::new(token));
                    info!("reload: token reloaded from {}", path.display());
                }
                Err(e) => error!(
                    "reload: cannot reload the token from {}: {e}; keeping the old token",
                    path.display()
                ),
            }
        }
        if !reloadable {
            info!("reload: received SIGHUP; nothing to reload (no certificate, key or token file is configured)");
            return;
        }
        self.process.publish_reload(reloaded);
        // This loop takes it now: a connection accepted later in this very
        // turn must already use it.
        self.pick_up_reload();
    }

    /// Takes what the latest SIGHUP reloaded, if this loop has not yet:
    /// one relaxed load per turn when nothing changed.
    pub(super) fn pick_up_reload(&mut self) {
        let reloads = self.process.reloads();
        if reloads != self.current.reloads_seen {
            self.current = Current::new(&self.process);
        }
    }
}
