//! What the event loops of one process share. With `--threads N` the
//! server runs N loops, each on its own thread with its own `Poll`,
//! connections, timers and listeners (see [`crate::server`]); this is all
//! they have in common:
//!
//! * the counters `STATS` reports and the admission limits that must hold
//!   for the whole process ([`crate::stats::Counters`]);
//! * the `--max-memory` cap ([`MemoryCap`]);
//! * the socket budget: descriptors are a process-wide resource;
//! * the rate-limited summary lines ([`SharedSummaries`]): at most one line
//!   per kind per window for the whole process, not per loop;
//! * what SIGHUP reloads (certificates, the token), published by the loop
//!   that handles signals and picked up by each loop at its next turn;
//! * the shutdown: one signal or [`crate::ShutdownHandle`] call stops every
//!   loop, through each loop's `Waker`.
//!
//! Nothing here is touched per request but the counters, which are per
//! loop (no shared cache line is written); the rest is read once per loop
//! turn (a relaxed atomic load) or changed on rare events, under a mutex.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use log::error;
use mio::Waker;

use crate::guard::Guards;
use crate::limits::MemoryCap;
use crate::stats::Counters;
use crate::summaries::{Kind, Summaries};
use crate::token::AuthToken;

/// What SIGHUP reloads: new connections use the latest.
#[derive(Clone, Default)]
pub struct Reloadable {
    /// The TLS configuration of `tls` listeners.
    #[cfg(feature = "tls")]
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    /// The `--auth-file` token, `None` when authentication is off.
    pub token: Option<Arc<AuthToken>>,
    /// The `--metrics-token-file` token, `None` when scrapes need none.
    pub metrics_token: Option<Arc<AuthToken>>,
}

/// The summary lines of the whole process, shared by the loops. A flag in
/// front of the mutex keeps the common case (nothing waiting to be logged)
/// to one relaxed load per loop turn.
pub struct SharedSummaries {
    /// Some count is waiting for its window to pass.
    waiting: AtomicBool,
    summaries: Mutex<Summaries>,
}

impl SharedSummaries {
    /// The process's summaries.
    pub fn new(summaries: Summaries) -> SharedSummaries {
        SharedSummaries {
            waiting: AtomicBool::new(false),
            summaries: Mutex::new(summaries),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Summaries> {
        // A tally is a few integers, updated in one step: a panic elsewhere
        // cannot leave it half-changed.
        self.summaries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one event (see [`Summaries::note`]).
    pub fn note(&self, kind: Kind, now: Instant) {
        let mut summaries = self.lock();
        summaries.note(kind, now);
        self.waiting.store(summaries.waiting(), Ordering::Relaxed);
    }

    /// Counts one event for `client` (see [`Summaries::note_client`]).
    pub fn note_client(&self, kind: Kind, client: std::net::SocketAddr, now: Instant) {
        let mut summaries = self.lock();
        summaries.note_client(kind, client, now);
        self.waiting.store(summaries.waiting(), Ordering::Relaxed);
    }

    /// When the next line is due, if any count waits.
    pub fn next_due(&self) -> Option<Instant> {
        if !self.waiting.load(Ordering::Relaxed) {
            return None;
        }
        self.lock().next_due()
    }

    /// Logs the counts whose window has passed.
    pub fn log_due(&self, now: Instant) {
        if !self.waiting.load(Ordering::Relaxed) {
            return;
        }
        let mut summaries = self.lock();
        summaries.log_due(now);
        self.waiting.store(summaries.waiting(), Ordering::Relaxed);
    }

    /// Logs every waiting count: the server is stopping.
    pub fn log_all(&self, now: Instant) {
        let mut summaries = self.lock();
        summaries.log_all(now);
        self.waiting.store(false, Ordering::Relaxed);
    }
}

/// What the loops of one process share (see the module documentation).
pub struct Process {
    /// Every loop's counters, and the admission counts.
    pub counters: Arc<Counters>,
    /// The `--max-memory` cap.
    pub memory: Arc<MemoryCap>,
    /// The summary lines.
    pub summaries: SharedSummaries,
    /// The per-address rules: connection rate, `AUTH` failures.
    pub guards: Guards,
    /// Sockets held by every loop together (clients, openings, refusals,
    /// lingering ones; not metrics connections, which have descriptors of
    /// their own): a loop admits one more only below `socket_budget`.
    sockets: AtomicUsize,
    /// The open file limit less what the process needs besides sockets.
    pub socket_budget: usize,
    /// One `Waker` per loop, by loop index.
    wakers: Vec<Arc<Waker>>,
    /// A graceful shutdown was asked for.
    shutdown_requested: AtomicBool,
    /// A second SIGINT or SIGTERM came during the shutdown.
    stop_at_once: AtomicBool,
    /// What SIGHUP reloaded last.
    reloadable: Mutex<Reloadable>,
    /// How many reloads were published: a loop whose count differs picks
    /// up `reloadable` at its next turn.
    reloads: AtomicU64,
    /// Loops still running. Loop 0 holds the signal handlers (and the
    /// metrics endpoint, and systemd's notifier): during a shutdown it is
    /// the last to leave, so a second signal is heard until the end.
    loops_running: AtomicUsize,
}

impl Process {
    /// The shared state of a process whose loops have these wakers.
    pub fn new(
        counters: Arc<Counters>,
        summaries: Summaries,
        socket_budget: usize,
        wakers: Vec<Arc<Waker>>,
        reloadable: Reloadable,
        guards: Guards,
    ) -> Process {
        Process {
            counters,
            memory: Arc::new(MemoryCap::default()),
            summaries: SharedSummaries::new(summaries),
            guards,
            sockets: AtomicUsize::new(0),
            socket_budget,
            wakers,
            shutdown_requested: AtomicBool::new(false),
            stop_at_once: AtomicBool::new(false),
            reloadable: Mutex::new(reloadable),
            reloads: AtomicU64::new(0),
            loops_running: AtomicUsize::new(0),
        }
    }

    /// How many loops the process runs.
    pub fn loops(&self) -> usize {
        self.wakers.len()
    }

    /// Wakes every loop's `poll`: each then looks at the shared flags.
    pub fn wake_all(&self) {
        for waker in &self.wakers {
            if let Err(e) = waker.wake() {
                error!("cannot wake an event loop: {e}");
            }
        }
    }

    /// Starts a graceful shutdown of every loop.
    pub fn request_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Whether a graceful shutdown was asked for.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.load(Ordering::SeqCst)
    }

    /// Stops every loop at once, closing every connection.
    pub fn request_stop_at_once(&self) {
        self.stop_at_once.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Whether every loop must stop at once.
    pub fn stop_at_once(&self) -> bool {
        self.stop_at_once.load(Ordering::SeqCst)
    }

    /// A loop turned memory pressure off: every other loop may hold paused
    /// connections, which no socket event will wake. Wake those loops; each
    /// sees [`MemoryCap::lifts`] change and runs its paused connections.
    pub fn memory_lifted(&self, by_loop: usize) {
        for (index, waker) in self.wakers.iter().enumerate() {
            if index != by_loop {
                let _ = waker.wake();
            }
        }
    }

    /// A loop starts running.
    pub fn loop_started(&self) {
        self.loops_running.fetch_add(1, Ordering::SeqCst);
    }

    /// A loop has stopped: loop 0, which waits for the others before it
    /// leaves, is woken to look.
    pub fn loop_stopped(&self) {
        self.loops_running.fetch_sub(1, Ordering::SeqCst);
        if let Some(first) = self.wakers.first() {
            let _ = first.wake();
        }
    }

    /// Loops still running.
    pub fn loops_running(&self) -> usize {
        self.loops_running.load(Ordering::SeqCst)
    }

    /// Sockets held by every loop now.
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Whether the process holds its whole budget of sockets.
    pub fn out_of_sockets(&self) -> bool {
        self.sockets() >= self.socket_budget
    }

    /// A loop took a socket (it holds a descriptor until closed).
    pub fn socket_taken(&self) {
        self.sockets.fetch_add(1, Ordering::Relaxed);
    }

    /// A loop closed a socket (its descriptor is freed by the end of the turn).
    pub fn socket_given_back(&self) {
        self.sockets.fetch_sub(1, Ordering::Relaxed);
    }

    /// Publishes what SIGHUP reloaded; every loop picks it up at its next turn.
    pub fn publish_reload(&self, reloaded: Reloadable) {
        *self.lock_reloadable() = reloaded;
        self.reloads.fetch_add(1, Ordering::SeqCst);
        self.wake_all();
    }

    /// Reloads published so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// What the latest reload published.
    pub fn reloadable(&self) -> Reloadable {
        self.lock_reloadable().clone()
    }

    fn lock_reloadable(&self) -> MutexGuard<'_, Reloadable> {
        self.reloadable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
