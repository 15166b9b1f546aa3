//! Signals, and what SIGHUP reads again.
//!
//! Signals reach loop 0 only, through a pipe its `poll` watches (no work
//! is done in the handler). SIGINT and SIGTERM start a graceful shutdown of
//! every loop (a second one stops them at once); SIGHUP re-reads the files
//! (TLS certificate, key, client CA and OCSP response; the `--auth-file`
//! and `--metrics-token-file` tokens) and
//! publishes what it read; each loop picks it up at its next turn. Files
//! are read only if they are regular files, without blocking
//! ([`crate::files`]): a FIFO in place of the token cannot stop the loop.

use std::path::Path;
use std::sync::Arc;

use log::{error, info};

use super::bind::load_token;
use super::event_loop::EventLoop;
use crate::process::Process;
use crate::service::Service;
use crate::token::AuthToken;

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

impl<S: Service> EventLoop<S> {
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
        #[cfg(feature = "tls")]
        let tls = self.reload_tls(&mut reloaded);
        #[cfg(not(feature = "tls"))]
        let tls = false;
        let auth = reload_token(
            ("token", "--auth-file"),
            self.config.auth_file.as_deref(),
            &mut reloaded.token,
        );
        let metrics = reload_token(
            ("metrics token", "--metrics-token-file"),
            self.config.metrics_token_file.as_deref(),
            &mut reloaded.metrics_token,
        );
        if !(tls || auth || metrics) {
            info!("reload: received SIGHUP; nothing to reload (no certificate, key or token file is configured)");
            return;
        }
        self.process.publish_reload(reloaded);
        // This loop takes it now: a connection accepted later in this very
        // turn must already use it.
        self.pick_up_reload();
    }

    /// The TLS files, if any listener serves TLS: returns whether there
    /// are any.
    #[cfg(feature = "tls")]
    fn reload_tls(&self, reloaded: &mut crate::process::Reloadable) -> bool {
        let Some(files) = super::bind::tls_files(&self.config) else {
            return false;
        };
        match crate::tls::load(&files) {
            Ok(config) => {
                reloaded.tls_config = Some(config);
                let also = [
                    ("client CA", files.client_ca.as_ref()),
                    ("OCSP response", files.ocsp.as_ref()),
                ]
                .into_iter()
                .filter_map(|(what, file)| file.map(|f| format!(", {what} {}", f.display())))
                .collect::<String>();
                info!(
                    "reload: TLS certificate {} and key {} reloaded{also}",
                    files.cert.display(),
                    files.key.display(),
                );
            }
            Err(e) => error!("reload: keeping the old TLS configuration: cannot use {e}"),
        }
        true
    }

    /// Takes what the latest SIGHUP reloaded, if this loop has not yet:
    /// one relaxed load per turn when nothing changed.
    pub(super) fn pick_up_reload(&mut self) {
        let reloads = self.process.reloads();
        if reloads != self.current.reloads_seen {
            self.current = Current::new(&self.process);
            if let Some(page) = self.duties.page.as_mut() {
                page.token = self.process.reloadable().metrics_token;
            }
        }
    }
}

/// Reads a token file again, if one is configured: returns whether one
/// is. `what` and `option` name it. A file that cannot be used keeps the
/// old token.
fn reload_token(
    (what, option): (&str, &str),
    path: Option<&Path>,
    token: &mut Option<Arc<AuthToken>>,
) -> bool {
    let Some(path) = path else {
        return false;
    };
    match load_token(option, path) {
        Ok(new) => {
            *token = Some(Arc::new(new));
            info!("reload: {what} reloaded from {}", path.display());
        }
        Err(e) => error!(
            "reload: cannot reload the {what} from {}: {e}; keeping the old {what}",
            path.display()
        ),
    }
    true
}
