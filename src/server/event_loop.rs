//! One event loop (`EventLoop`): one `mio::Poll`, its listeners, the slab
//! of every socket it holds, their deadlines, and its ready list. With
//! `--threads 1` (the default) the server is exactly one of these; with
//! more, each runs the same code on its own thread and shares only
//! [`Process`] with the others. It knows nothing of commands: each socket
//! is a [`Connection`], which does the work.
//!
//! One turn of the loop:
//!
//! 1. `poll` sleeps until a socket is ready, a deadline is due, a signal
//!    arrives, or (when some connection still has work) not at all.
//! 2. Each event is handled: accept on a listener, drive a connection.
//!    Readiness is edge-triggered: an event says "something changed" once,
//!    so every handler reads or accepts until the socket is drained, or
//!    until its fairness budget is spent and it is queued to go on.
//! 3. Connections with work left (read budget spent, backpressure lifted)
//!    run again (`run_ready`): no new event will come for bytes already
//!    waiting.
//! 4. Due deadlines fire (`fire_deadlines`).
//! 5. Connections closed during the turn are deregistered and removed
//!    (`reap`). Only now, after the batch: an event later in the same batch
//!    may still name a closed connection, and must not find its slot reused.
//! 6. Listeners that spent their accept budget accept on
//!    (`run_accept_again`), after the reap, so that descriptors freed by it
//!    (lingering sockets cut short) serve the newcomers; accepting resumes
//!    after a pause for descriptor exhaustion (`resume_accepting`).
//! 7. Housekeeping: if the process fell back below three quarters of
//!    `--max-memory`, every paused connection is put on the ready list
//!    (`wake_paused`); summary lines whose 10 s window has passed are
//!    logged (`Summaries::log_due`).
//! 8. During a graceful shutdown, the loop ends once every connection is
//!    gone or the shutdown deadline has passed; a second SIGINT or SIGTERM
//!    ends it at once.
//!
//! After every call into a connection, `settle` puts it where its state
//! says: in the queue of its kind (lingering, waiting for a PROXY header,
//! idle on the metrics endpoint), each capped, the oldest closed first when
//! a cap is passed; on the ready list; or on the way out.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::event::Event;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::admission::{Accepting, Listener};
use super::reload::Current;
use super::{RunError, StartError, WhichLoop};
use crate::config::Config;
use crate::connection::{CloseReason, Connection, Lent, Next, Role, Spare, State};
use crate::limits::{Limits, MemoryPressure, MAX_LINGERING, READ_BUFFER_SIZE};
use crate::metrics::Page;
use crate::process::Process;
use crate::queue::{Queue, QueueId};
use crate::service::Service;
use crate::stats::Stats;
use crate::summaries::Kind;
use crate::systemd::Notifier;
use crate::timer::{Moment, Timers};

/// The signal pipe's token (loop 0 only).
pub(super) const SIGNAL: Token = Token(usize::MAX);
/// The waker's token: another thread asks this loop to look at the shared
/// flags.
pub(super) const WAKER: Token = Token(usize::MAX - 1);
/// Listener `i` has token `LISTENER_BASE + i`; slab keys stay far below.
pub(super) const LISTENER_BASE: usize = usize::MAX / 2;

/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// What `EventLoop::new` needs.
pub(super) struct LoopStart<S: Service> {
    pub index: usize,
    /// The protocol, shared by every loop.
    pub service: Arc<S>,
    pub poll: Poll,
    /// Its listeners, registered with `poll` (loop 0's include the metrics
    /// listener).
    pub listeners: Vec<Listener>,
    pub config: Config,
    pub limits: Limits,
    pub stats: Stats,
    pub process: Arc<Process>,
    /// What the metrics endpoint renders (loop 0, with `--metrics-listen`).
    pub page: Option<Page>,
    pub now: Instant,
}

/// One event loop (see the module documentation).
pub(super) struct EventLoop<S: Service> {
    /// Its place among the loops (0 handles the signals).
    pub(super) index: usize,
    /// The protocol its connections speak, shared by every loop.
    pub(super) service: Arc<S>,
    pub(super) poll: Poll,
    /// Every socket it holds, keyed by its `Token`.
    pub(super) conns: Slab<Connection<S>>,
    /// One deadline per slab entry at most.
    pub(super) timers: Timers,
    /// This turn's time and the buffers and lists of a turn.
    pub(super) turn: Turn,
    /// Its listeners, and the state of accepting on them.
    pub(super) accepting: Accepting,
    /// How many sockets of each capped kind it holds, and the queues that
    /// say which is oldest.
    pub(super) census: Census,
    pub(super) config: Config,
    pub(super) limits: Limits,
    /// Its handle onto the process's counters.
    pub(super) stats: Stats,
    /// Its view of the process-wide cap on client buffer memory.
    pub(super) memory: Memory,
    /// What the loops share: counters, limits, shutdown, reloads.
    pub(super) process: Arc<Process>,
    /// What the latest reload gave this loop (TLS configuration, token).
    pub(super) current: Current,
    /// A graceful shutdown, once begun.
    pub(super) stopping: Stopping,
    /// What loop 0 does for the whole process.
    pub(super) duties: Duties,
}

/// What one turn of the loop works with.
pub(super) struct Turn {
    /// The time of this turn: one clock read per turn, after `poll`.
    pub(super) now: Instant,
    /// The same time in the unit of the deadline heap.
    moment: Moment,
    /// The one read buffer of the loop; its size is every connection's
    /// read budget per call.
    read_buf: Box<[u8]>,
    /// The spare buffers, lent to a connection that holds nothing.
    pub(super) spare: Spare,
    /// Keys of connections to run again before the next poll. A key whose
    /// connection is no longer queued (closed, and its slot maybe reused)
    /// is skipped: each connection knows whether it is queued.
    ready: Vec<usize>,
    ready_spare: Vec<usize>,
    /// Connections closed during this turn, removed at its end.
    closing: Vec<usize>,
}

/// The capped kinds of socket a loop holds, counted where their state
/// changes (never in a side list that could drift).
pub(super) struct Census {
    /// Waiting for their PROXY header, oldest first.
    pub(super) awaiting_header: Queue,
    /// Lingering after their last line, oldest first.
    pub(super) lingering: Queue,
    /// Metrics connections idle between requests, least recently active
    /// first.
    pub(super) idle_metrics: Queue,
    /// Connections being turned away now (`Role::Refused`).
    pub(super) refusing: usize,
    /// Metrics connections open now.
    pub(super) metrics: usize,
}

impl Census {
    fn queue(&mut self, id: QueueId) -> &mut Queue {
        match id {
            QueueId::AwaitingHeader => &mut self.awaiting_header,
            QueueId::Lingering => &mut self.lingering,
            QueueId::IdleMetrics => &mut self.idle_metrics,
        }
    }

    /// A connection with `role` joins (or leaves: `sign` -1) the counts.
    pub(super) fn count(&mut self, role: Role, joins: bool) {
        let count = match role {
            Role::Refused(_) => &mut self.refusing,
            Role::Metrics => &mut self.metrics,
            Role::Client | Role::Undecided => return,
        };
        if joins {
            *count += 1;
        } else {
            *count -= 1;
        }
    }
}

/// This loop's view of the memory cap, and the lifts it has acted on.
pub(super) struct Memory {
    pub(super) pressure: MemoryPressure,
    /// The lifts of memory pressure this loop has acted on (see
    /// `wake_paused`).
    lifts_seen: u64,
}

/// A graceful shutdown, once begun.
#[derive(Default)]
pub(super) struct Stopping {
    /// When it must end.
    pub(super) deadline: Option<Instant>,
    /// A second SIGINT or SIGTERM came during the shutdown.
    pub(super) at_once: bool,
}

/// What loop 0 does for the whole process (the other loops' are empty).
#[derive(Default)]
pub(super) struct Duties {
    /// SIGINT, SIGTERM and SIGHUP, through a pipe `poll` watches.
    pub(super) signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Tells systemd the server is ready, stopping, and how many
    /// connections it holds.
    notifier: Option<Notifier>,
    /// What the metrics endpoint renders, lent to metrics connections.
    pub(super) page: Option<Page>,
}

impl<S: Service> EventLoop<S> {
    pub(super) fn new(start: LoopStart<S>) -> EventLoop<S> {
        let current = Current::new(&start.process);
        let memory = Memory {
            pressure: MemoryPressure::new(start.process.memory.clone()),
            lifts_seen: 0,
        };
        EventLoop {
            index: start.index,
            service: start.service,
            poll: start.poll,
            conns: Slab::new(),
            timers: Timers::new(start.now),
            turn: Turn {
                now: start.now,
                moment: Moment::default(),
                read_buf: vec![0; READ_BUFFER_SIZE].into_boxed_slice(),
                spare: Spare::default(),
                ready: Vec::new(),
                ready_spare: Vec::new(),
                closing: Vec::new(),
            },
            accepting: Accepting::new(start.listeners),
            census: Census {
                awaiting_header: Queue::new(QueueId::AwaitingHeader),
                lingering: Queue::new(QueueId::Lingering),
                idle_metrics: Queue::new(QueueId::IdleMetrics),
                refusing: 0,
                metrics: 0,
            },
            config: start.config,
            limits: start.limits,
            stats: start.stats,
            memory,
            process: start.process,
            current,
            stopping: Stopping::default(),
            duties: Duties {
                page: start.page,
                ..Duties::default()
            },
        }
    }

    /// Its place among the loops.
    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// See `Server::handle_signals` (loop 0 only).
    pub(super) fn handle_signals(&mut self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let setup = |source| StartError::Setup {
            what: "signal handling",
            source,
        };
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(setup)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(setup)?;
        self.duties.signals = Some(signals);
        Ok(())
    }

    /// See `Server::notify_systemd` (loop 0 only).
    pub(super) fn notify_systemd(&mut self, notifier: Notifier) {
        self.duties.notifier = Some(notifier);
    }

    /// `READY=1`, once every loop runs.
    pub(super) fn tell_systemd_ready(&mut self) {
        if let Some(notifier) = self.duties.notifier.as_mut() {
            notifier.ready(self.turn.now, self.stats.connections());
        }
    }

    /// Runs the loop, and if it fails or panics, shuts the other loops down.
    pub(super) fn run_guarded(self) -> Result<(), RunError> {
        let index = self.index;
        let process = self.process.clone();
        // The loop's state is dropped with the panic and not looked at
        // again: nothing half-updated can be seen.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()))
            .unwrap_or(Err(RunError::LoopPanicked { index }));
        if result.is_err() && !process.stop_at_once() {
            process.request_shutdown();
        }
        process.loop_stopped();
        result
    }

    /// Runs the event loop until a graceful shutdown has finished.
    fn run(mut self) -> Result<(), RunError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                // A signal landed during epoll_wait: not an error, poll again.
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RunError::Poll(e));
            }
            // One clock read per turn: every deadline and idle time this turn uses it.
            self.turn.now = Instant::now();
            self.turn.moment = self.timers.moment(self.turn.now);
            self.pick_up_reload();
            for event in events.iter() {
                self.on_event(event);
            }
            self.run_ready();
            self.fire_deadlines();
            self.reap();
            self.run_accept_again();
            self.resume_accepting();
            self.wake_paused();
            self.process.summaries.log_due(self.turn.now);
            if let Some(notifier) = self.duties.notifier.as_mut() {
                notifier.connections_now(self.turn.now, self.stats.connections());
            }
            if let Some(done) = self.done() {
                return done;
            }
        }
    }

    /// One readiness event.
    fn on_event(&mut self, event: &Event) {
        match event.token() {
            SIGNAL => self.on_signal(),
            WAKER => self.on_wake(),
            Token(t) if t >= LISTENER_BASE => self.accept_within_budget(t - LISTENER_BASE),
            Token(key) => {
                // Closed and error flags are hints: a read tells for sure.
                // A hang-up without EPOLLIN must still be read: only the
                // read reports the EOF or the error.
                let hangup = event.is_read_closed() || event.is_error();
                if event.is_writable() {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.writable_again();
                    }
                }
                self.on_connection_event(key, event.is_readable() || hangup, hangup);
            }
        }
    }

    /// Whether the loop is done: after a second signal (every connection
    /// closed at once), or at the end of a graceful shutdown.
    fn done(&mut self) -> Option<Result<(), RunError>> {
        if self.stopping.at_once {
            info!(
                "stopping at once: closing {} connection(s)",
                self.conns.len()
            );
            self.close_all_now();
            return Some(Err(RunError::StoppedAtOnce));
        }
        let deadline = self.stopping.deadline?;
        // Loop 0 holds the signal handlers, the metrics endpoint and
        // systemd's notifier: it leaves last, so that a second signal is
        // heard while any loop still drains.
        let others_done = self.index != 0 || self.process.loops_running() <= 1;
        if self.conns.is_empty() && others_done {
            debug!("loop {}: every connection finished", self.index);
            return Some(Ok(()));
        }
        if self.turn.now >= deadline {
            info!(
                "shutdown timeout: closing {} connection(s) that did not finish",
                self.conns.len()
            );
            self.close_all_now();
            return Some(Ok(()));
        }
        None
    }

    /// The loop's waker rang: another thread asked every loop to shut down
    /// or stop at once, published a reload (picked up at the top of each
    /// turn), or lifted memory pressure (see `wake_paused`).
    fn on_wake(&mut self) {
        if self.process.stop_at_once() {
            self.stopping.at_once = true;
        } else if self.process.shutdown_requested() {
            self.begin_shutdown();
        }
    }

    /// Closes and removes every connection now.
    fn close_all_now(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key);
        }
        self.reap();
    }

    /// How long `poll` may sleep: not at all when a connection has work
    /// left (or a closed one still holds its socket, or a listener its
    /// accept budget), else until the nearest deadline, else forever.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.turn.ready.is_empty()
            || !self.turn.closing.is_empty()
            || self.accepting.wants_to_run()
        {
            return Some(Duration::ZERO);
        }
        let now = self.turn.now;
        let other = [
            self.stopping.deadline,
            self.accepting.paused_until,
            self.process.summaries.next_due(),
            // A changed connection count waits for its status line. With
            // several loops, the others change it without waking this one:
            // look again within the status interval.
            self.duties.notifier.as_ref().and_then(|n| {
                n.status_due(self.stats.connections())
                    .or((self.process.loops() > 1).then(|| now + crate::systemd::STATUS_INTERVAL))
            }),
        ]
        .into_iter()
        .flatten()
        .min()
        // Measured from the time read at the top of this turn: one clock
        // read per turn; a deadline is at most one turn late.
        .map(|at| at.saturating_duration_since(now));
        // The sockets' deadlines, in the heap's unit: no conversion per turn
        // beyond the one of the clock.
        let sockets = self.timers.time_to_next(self.turn.moment);
        [sockets, other].into_iter().flatten().min()
    }

    /// Splits the borrows: the slab on one side, what the connection at
    /// `key` is lent on the other.
    pub(super) fn lend(&mut self, key: usize) -> (&mut Slab<Connection<S>>, Lent<'_, S>) {
        let lent = Lent {
            service: &*self.service,
            now: self.turn.now,
            key,
            limits: &self.limits,
            stats: &self.stats,
            token: self.current.token.as_deref(),
            guards: &self.process.guards,
            timers: &mut self.timers,
            read_buf: &mut self.turn.read_buf,
            spare: &mut self.turn.spare,
            memory: &mut self.memory.pressure,
            metrics: self.duties.page.as_mut(),
        };
        (&mut self.conns, lent)
    }

    fn on_connection_event(&mut self, key: usize, readable: bool, hangup: bool) {
        let (conns, mut lent) = self.lend(key);
        // An event for a token we no longer hold, or for a connection closed
        // earlier in this batch, is stale: ignore it.
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.state() == State::Closed {
            return;
        }
        let next = conn.drive(readable, hangup, &mut lent);
        // Only a readable event completes a PROXY header: the loop admits
        // the connection before anything else happens to it.
        if conn.state() == State::Admitting {
            self.admit_proxied(key);
            return;
        }
        self.settle(key, next);
    }

    /// Runs the connections that had work left at the end of their turn.
    fn run_ready(&mut self) {
        // Swap in the spare list: connections that ask to run again during
        // this pass go to the next one. Both lists keep their memory.
        let mut ready = std::mem::take(&mut self.turn.ready_spare);
        std::mem::swap(&mut ready, &mut self.turn.ready);
        for &key in &ready {
            let (conns, mut lent) = self.lend(key);
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if !conn.unqueue() || conn.state() == State::Closed {
                continue;
            }
            let next = conn.drive(true, false, &mut lent);
            self.settle(key, next);
        }
        ready.clear();
        self.turn.ready_spare = ready;
    }

    /// Every deadline due at this turn's time. A deadline is taken off the
    /// heap when it fires; the connection sets its next one.
    fn fire_deadlines(&mut self) {
        while let Some(key) = self.timers.pop_due(self.turn.moment) {
            let (conns, mut lent) = self.lend(key);
            // Deadlines are cancelled when a connection closes: an entry
            // always names a live one.
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let next = conn.on_deadline(&mut lent);
            self.settle(key, next);
        }
    }

    /// After a call into the connection at `key`: puts it in the queue its
    /// state calls for (closing the oldest of that queue past its cap), and
    /// acts on what it asked for.
    pub(super) fn settle(&mut self, key: usize, next: Next) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let wanted = queue_for(conn);
        let have = conn.queue();
        if wanted != have {
            if let Some(id) = have {
                self.census.queue(id).remove(&mut self.conns, key);
            }
            if let Some(id) = wanted {
                self.census.queue(id).push(&mut self.conns, key);
                if id == QueueId::Lingering {
                    self.bound_lingering();
                }
            }
        }
        match next {
            Next::Wait => {}
            // Once on the list is enough: a connection that asks again
            // while queued would otherwise get several reads per turn.
            Next::Again => {
                if self.conns.get_mut(key).is_some_and(|c| c.mark_queued()) {
                    self.turn.ready.push(key);
                }
            }
            Next::Close => self.close(key),
        }
    }

    /// At most `MAX_LINGERING` sockets linger: past that, the oldest are
    /// closed at once (their replies were all written).
    fn bound_lingering(&mut self) {
        while self.census.lingering.len() > MAX_LINGERING {
            if self.cut_oldest(QueueId::Lingering) == 0 {
                break;
            }
        }
    }

    /// Closes the oldest connection of a queue to make room; returns how
    /// many it closed (0 or 1). A lingering one's descriptor comes back at
    /// the end of this turn, in `reap`.
    pub(super) fn cut_oldest(&mut self, id: QueueId) -> usize {
        let Some(key) = self.census.queue(id).oldest() else {
            return 0;
        };
        let cut = self.conns.get_mut(key).map(Connection::cut_short);
        if cut == Some(Next::Close) {
            self.close(key);
            1
        } else {
            // Not what the queue says it is: take it out rather than loop.
            self.census.queue(id).remove(&mut self.conns, key);
            0
        }
    }

    /// Closes up to `wanted` of the oldest lingering sockets, to free their
    /// descriptors. Returns how many were closed.
    pub(super) fn evict_lingering(&mut self, wanted: usize) -> usize {
        let mut evicted = 0;
        while evicted < wanted && !self.census.lingering.is_empty() {
            evicted += self.cut_oldest(QueueId::Lingering);
        }
        evicted
    }

    /// The one close path. The connection is only marked here; it is
    /// removed by `reap` after the batch, so its slab slot cannot be reused
    /// while events that name it may still follow. It leaves its queue and
    /// its counts now, and its deadline with them.
    pub(super) fn close(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.state() == State::Closed {
            return;
        }
        let (role, queue) = (conn.role(), conn.queue());
        if let Some(id) = queue {
            self.census.queue(id).remove(&mut self.conns, key);
        }
        self.census.count(role, false);
        if role != Role::Metrics {
            // Metrics connections have descriptors of their own, out of
            // the clients' budget.
            self.process.socket_given_back();
        }
        let (conns, mut lent) = self.lend(key);
        conns[key].mark_closed(&mut lent);
        self.turn.closing.push(key);
    }

    /// Removes the connections closed during this turn.
    pub(super) fn reap(&mut self) {
        let now = self.turn.now;
        for key in self.turn.closing.drain(..) {
            let mut conn = self.conns.remove(key);
            // Dropping the socket closes it (and so removes it from epoll),
            // but mio asks for an explicit deregister first.
            let _ = self.poll.registry().deregister(conn.stream_mut());
            if conn.counts_as_client() {
                self.stats.client_left(conn.client());
            }
            if conn.role() != Role::Metrics {
                if let Some(kind) = conn.reason().and_then(limit_kind) {
                    self.stats.count_limit_hit(kind);
                    self.process.summaries.note(kind, now);
                }
            }
            log_close(&*self.service, &conn, now);
        }
    }

    /// The process fell back below three quarters of `--max-memory`: every
    /// connection paused for it may read again. No socket event will come
    /// for what they hold, so they go on the ready list. The loop that
    /// lifted the pressure wakes the others, which see the count of lifts
    /// change (one relaxed load per turn when nothing changed).
    fn wake_paused(&mut self) {
        if std::mem::take(&mut self.memory.pressure.lifted) {
            self.process.memory_lifted(self.index);
        }
        let lifts = self.process.memory.lifts();
        if lifts == self.memory.lifts_seen {
            return;
        }
        self.memory.lifts_seen = lifts;
        for (key, conn) in self.conns.iter_mut() {
            if conn.is_paused() && conn.mark_queued() {
                self.turn.ready.push(key);
            }
        }
    }

    /// ` on loop N` in log lines when there is more than one loop.
    pub(super) fn which_loop(&self) -> WhichLoop {
        WhichLoop {
            index: self.index,
            loops: self.process.loops(),
        }
    }

    /// Graceful shutdown: stop accepting, then give every connection its
    /// due responses and `ERR server shutting down`.
    ///
    /// Every loop begins it on the same request, and so closes its
    /// listeners at the same moment. On Linux, connections the kernel has
    /// queued on a `SO_REUSEPORT` listener are reset when that listener
    /// closes: one loop must never close its listeners while the others go
    /// on accepting (a loop that fails shuts every loop down, in
    /// `run_guarded`).
    pub(super) fn begin_shutdown(&mut self) {
        if self.stopping.deadline.is_some() {
            return;
        }
        let now = self.turn.now;
        if self.index == 0 {
            info!(
                "shutting down: {} connection(s) open",
                self.stats.connections()
            );
        }
        self.stopping.deadline = Some(now + self.config.shutdown_timeout);
        if let Some(notifier) = self.duties.notifier.as_mut() {
            notifier.stopping(now, self.stats.connections());
        }
        self.accepting.close_all(self.poll.registry());
        if let Some(page) = self.duties.page.as_mut() {
            page.shutting_down = true;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let (conns, mut lent) = self.lend(key);
            let next = conns[key].shut_down(&mut lent);
            self.settle(key, next);
        }
    }
}

/// The queue a connection's state puts it in, if any.
fn queue_for<S: Service>(conn: &Connection<S>) -> Option<QueueId> {
    match conn.state() {
        State::AwaitingHeader => Some(QueueId::AwaitingHeader),
        State::Lingering => Some(QueueId::Lingering),
        _ if conn.is_idle_metrics() => Some(QueueId::IdleMetrics),
        _ => None,
    }
}

/// The summary line a close by a limit or a timer is counted in.
fn limit_kind(reason: CloseReason) -> Option<Kind> {
    match reason {
        CloseReason::LineTooLong => Some(Kind::LineTooLong),
        CloseReason::IdleTimeout => Some(Kind::IdleTimeout),
        CloseReason::WriteTimeout => Some(Kind::WriteTimeout),
        CloseReason::HandshakeTimeout => Some(Kind::HandshakeTimeout),
        _ => None,
    }
}

/// The debug line of a close: the peer, why, how long, how much.
fn log_close<S: Service>(service: &S, conn: &Connection<S>, now: Instant) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let totals = conn.totals();
    let reason = match conn.reason() {
        // The service's words, from the session it leaves behind.
        Some(CloseReason::Service) => service.close_reason(conn.session()).to_string(),
        Some(reason) => reason.to_string(),
        None => "closed".to_string(),
    };
    let what = if conn.role() == Role::Metrics {
        "metrics: closed"
    } else {
        "closed"
    };
    debug!(
        "{what} {}: {reason}; open {:.3} s, {} bytes in, {} bytes out, {} command(s)",
        conn.peer(),
        now.saturating_duration_since(totals.opened).as_secs_f64(),
        totals.bytes_in,
        totals.bytes_out,
        totals.commands
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Loopline;
    use crate::server::Server;
    use std::io::Read;
    use std::net::TcpStream as StdStream;

    /// The one loop of a server bound on a free port, driven by hand.
    fn server() -> EventLoop<Loopline> {
        let config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        };
        Server::bind(config, Loopline)
            .expect("bind")
            .loops
            .remove(0)
    }

    /// Connects a client and accepts it, as a listener event would.
    fn connect(server: &mut EventLoop<Loopline>) -> (StdStream, usize) {
        let addr = server.accepting.local_addr(0);
        let client = StdStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let before: Vec<usize> = server.conns.iter().map(|(k, _)| k).collect();
        server.accept_within_budget(0);
        let key = server
            .conns
            .iter()
            .map(|(k, _)| k)
            .find(|k| !before.contains(k))
            .expect("accepted");
        (client, key)
    }

    fn read_some(client: &mut StdStream) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// Regression guard for stale events after slot reuse
    /// (docs/pitfalls.md): a connection closed in a batch keeps its slot
    /// until the batch ends, so a later event of the same batch that names
    /// it can neither reach it nor a newcomer; and its deadline goes with
    /// it, so once the slot is reused nothing of it can reach the new one.
    #[test]
    fn stale_events_and_deadlines_never_reach_a_reused_slot() {
        let mut server = server();
        let (mut a, key_a) = connect(&mut server);
        assert_eq!(read_some(&mut a), b"READY\n");
        assert!(server.timers.deadline(key_a).is_some(), "no idle deadline");

        // In one batch: A is closed, then B arrives, then a stale event for A.
        server.close(key_a);
        assert_eq!(
            server.timers.deadline(key_a),
            None,
            "a closed connection kept its deadline"
        );
        let (mut b, key_b) = connect(&mut server);
        assert_ne!(key_b, key_a, "slot reused inside the batch");
        assert_eq!(read_some(&mut b), b"READY\n");
        server.on_connection_event(key_a, true, false);
        assert_eq!(server.conns[key_a].state(), State::Closed);

        // End of batch: A is removed; C may now reuse A's slot, with a
        // deadline of its own.
        server.reap();
        assert!(server.conns.get(key_a).is_none());
        let (mut c, key_c) = connect(&mut server);
        assert_eq!(key_c, key_a, "slab reuses the freed slot");
        assert_eq!(read_some(&mut c), b"READY\n");
        assert_eq!(server.timers.len(), 2, "one deadline per connection");

        // C is still served.
        std::io::Write::write_all(&mut c, b"PING\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            assert!(Instant::now() < deadline);
            server.on_connection_event(key_c, true, false);
            c.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            c.set_nonblocking(false).unwrap();
        }
        assert_eq!(got, b"PONG\n");
    }

    /// Regression: the loop's spare output buffer kept the capacity of the
    /// largest burst until exit. A read of 64 KiB of `STATS` lines makes
    /// about 1.5 MiB of replies in one call; afterwards the spare is back
    /// to its resting size, and the connection keeps only what is pending.
    #[test]
    fn the_spare_output_buffer_gives_a_burst_back() {
        let mut server = server();
        let (mut client, key) = connect(&mut server);
        assert_eq!(read_some(&mut client), b"READY\n");
        let burst = b"STATS\n".repeat(READ_BUFFER_SIZE / 6);
        std::io::Write::write_all(&mut client, &burst).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.stats.snapshot().commands < (READ_BUFFER_SIZE / 6) as u64 {
            assert!(Instant::now() < deadline, "burst never answered");
            server.on_connection_event(key, true, false);
            server.run_ready();
        }
        assert!(
            server.stats.snapshot().bytes_out + server.conns[key].pending_output() as u64 > 1 << 20,
            "the burst was too small to test anything"
        );
        assert!(
            server.turn.spare.capacity() <= crate::limits::SPARE_OUTPUT_KEEP,
            "spare kept {} bytes",
            server.turn.spare.capacity()
        );
        let (_, output_capacity) = server.conns[key].buffer_capacities();
        assert!(
            output_capacity <= crate::limits::output_capacity_bound(&server.limits),
            "connection kept {output_capacity} bytes"
        );
    }

    /// A client whose read fills the whole shared buffer is put on the ready
    /// list instead of being read to the end: the rest waits for the next
    /// turn, and other connections get theirs first (one client must not
    /// starve the rest: docs/pitfalls.md).
    #[test]
    fn a_flooding_client_is_served_one_buffer_per_turn() {
        let mut server = server();
        let (mut flood, key) = connect(&mut server);
        assert_eq!(read_some(&mut flood), b"READY\n");
        let requests = b"PING\n".repeat(3 * READ_BUFFER_SIZE / 5);
        std::io::Write::write_all(&mut flood, &requests).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Wait until the kernel holds more than one buffer's worth for us.
        let mut turns = 0;
        loop {
            server.on_connection_event(key, true, false);
            turns += 1;
            if !server.turn.ready.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "never hit the read budget");
        }
        let commands = server.stats.snapshot().commands;
        assert!(
            commands <= (turns * READ_BUFFER_SIZE / 5) as u64,
            "read more than the budget: {commands}"
        );
        assert_eq!(server.turn.ready[0], key);
        // More events in the same turn do not queue it twice (regression:
        // duplicates gave a flooding client several reads per turn).
        server.on_connection_event(key, true, false);
        server.on_connection_event(key, true, false);
        assert_eq!(server.turn.ready.len(), 1);
        // The ready list is served before the next poll, one buffer at a time.
        while server.stats.snapshot().commands < (3 * READ_BUFFER_SIZE / 5) as u64 {
            assert!(Instant::now() < deadline);
            if server.turn.ready.is_empty() {
                server.on_connection_event(key, true, false);
            }
            server.run_ready();
        }
    }
}
