//! Hold mode: opens N idle connections (spilling onto 127.0.0.2, .3, ...
//! when one source address runs out of ephemeral ports), waits for each
//! greeting, prints `held N connections` and, with `--server-pid`, the
//! server's RSS growth per connection; then holds them for `--hold` (or
//! until stdin closes) and closes them. One thread, one event loop.
//!
//! Over TLS a connection is held once its handshake is over and its
//! greeting read; RSS per connection then includes the server's TLS session.
//!
//! The server's RSS comes from `loopline_proc::process_rss_kib` (Linux
//! only; elsewhere the JSON fields are `null`).

use crate::cli::Workload;
use crate::connect::{close_with_reset, connect_outcome, peer_closing, poll_events, Connector};
use crate::link::Link;
use crate::report::{print_result, HoldSummary};
use crate::responses::{read_responses, Greeting, ReadOutcome, ResponseScanner};
use crate::POLL_SLICE;
use loopline_proc::process_rss_kib;
use mio::{Events, Poll, Token};
use std::io::{self, Read};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Phase {
    Connecting,
    Greeting,
    Held,
}

struct HeldConnection {
    link: Link,
    phase: Phase,
    greeting: Greeting,
    scanner: ResponseScanner,
}

/// The connections and their counts; one event loop drives them while they
/// open and while they are held.
struct HoldSession<'a> {
    workload: &'a Workload,
    poll: Poll,
    events: Events,
    connector: Connector,
    read_buffer: Vec<u8>,
    connections: Vec<Option<HeldConnection>>,
    next_to_open: usize,
    /// Connecting or reading their greeting.
    in_setup: usize,
    /// Open and greeted.
    held: usize,
    /// Failed before they were held.
    failed: usize,
    /// Closed by the server while held.
    dropped: usize,
}

impl<'a> HoldSession<'a> {
    fn new(workload: &'a Workload) -> io::Result<HoldSession<'a>> {
        Ok(HoldSession {
            workload,
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            // Nothing is sent, so Nagle's algorithm never delays anything.
            connector: Connector::new(workload, 0).without_nodelay(),
            read_buffer: vec![0; 64 * 1024],
            connections: (0..workload.connections).map(|_| None).collect(),
            next_to_open: 0,
            in_setup: 0,
            held: 0,
            failed: 0,
            dropped: 0,
        })
    }

    /// Connections that are held, failed or dropped: no longer in the making.
    fn settled(&self) -> usize {
        self.held + self.failed + self.dropped
    }

    /// Opens connections until `--connect-window` are in set-up.
    fn open_more(&mut self) {
        let n = self.connections.len();
        while self.next_to_open < n && self.in_setup < self.workload.connect_window {
            let i = self.next_to_open;
            self.next_to_open += 1;
            let Some(link) = self.connector.open(self.poll.registry(), Token(i)) else {
                self.failed += 1;
                continue;
            };
            self.connections[i] = Some(HeldConnection {
                link,
                phase: Phase::Connecting,
                greeting: Greeting::new(self.workload.greeting_lines),
                scanner: ResponseScanner::default(),
            });
            self.in_setup += 1;
        }
    }

    /// One poll and its events: connects finish, greetings are read, closes
    /// by the server are counted.
    fn poll_once(&mut self, timeout: Duration) {
        if !poll_events(&mut self.poll, &mut self.events, timeout) {
            return;
        }
        for event in self.events.iter() {
            let i = event.token().0;
            let Some(connection) = self.connections[i].as_mut() else {
                continue;
            };
            let mut dead = false;
            if connection.phase == Phase::Connecting {
                match connect_outcome(&mut connection.link, event) {
                    None => continue,
                    Some(Err(_)) => dead = true,
                    // Even with no greeting to wait for: the read below
                    // finds it done and holds the connection.
                    Some(Ok(())) => connection.phase = Phase::Greeting,
                }
            }
            if !dead && event.is_writable() {
                // TLS output the socket did not take earlier.
                dead = connection.link.send_pending().is_err();
            }
            if !dead {
                // Error prefixes do not matter here: only lines are counted.
                let read = read_responses(
                    &mut connection.link,
                    &mut self.read_buffer,
                    &mut connection.scanner,
                    &[],
                    peer_closing(event),
                );
                if connection.phase == Phase::Greeting {
                    // Lines after the greeting are not counted: nothing was asked.
                    connection.greeting.consume(read.lines);
                    if connection.greeting.is_done() && !connection.link.is_handshaking() {
                        connection.phase = Phase::Held;
                        self.in_setup -= 1;
                        self.held += 1;
                    }
                }
                dead = !matches!(read.outcome, ReadOutcome::Open);
            }
            if dead {
                let was_held = connection.phase == Phase::Held;
                self.connections[i] = None;
                if was_held {
                    self.held -= 1;
                    self.dropped += 1;
                } else {
                    self.in_setup -= 1;
                    self.failed += 1;
                }
            }
        }
    }

    /// Polls until `deadline` (the events keep being served meanwhile).
    fn poll_until(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.poll_once(left.min(POLL_SLICE));
        }
    }
}

pub fn run(workload: &Workload) -> ExitCode {
    let mut session = match HoldSession::new(workload) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("loopline-bench: poll: {e}");
            return ExitCode::FAILURE;
        }
    };
    let n = workload.connections;
    let rss_before_kib = workload.server_pid.and_then(process_rss_kib);
    let opening = Instant::now();
    let deadline = opening + workload.connect_timeout;
    while session.settled() < n {
        session.open_more();
        let now = Instant::now();
        if now >= deadline {
            eprintln!(
                "loopline-bench: connect timeout with {} held, {} not ready",
                session.held,
                n - session.settled()
            );
            break;
        }
        session.poll_once(POLL_SLICE.min(deadline - now));
    }
    let open_secs = opening.elapsed().as_secs_f64();
    // Without a greeting there is no sign the server has taken the
    // connections in yet: give it a moment before reading its RSS.
    let settle = if workload.greeting_lines == 0 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(100)
    };
    session.poll_until(Instant::now() + settle);
    HoldSummary {
        target: workload.target,
        connections: n,
        held: session.held,
        errors: session.failed + session.dropped,
        open_secs,
        rss_before_kib,
        rss_after_kib: workload.server_pid.and_then(process_rss_kib),
    }
    .print();

    let stdin_closed = Arc::new(AtomicBool::new(false));
    let hold_until = match workload.hold {
        Some(hold) => Some(Instant::now() + hold),
        None => {
            eprintln!("loopline-bench: holding until stdin closes (or a signal)");
            let flag = Arc::clone(&stdin_closed);
            thread::spawn(move || {
                let mut sink = [0u8; 512];
                let mut stdin = io::stdin().lock();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                flag.store(true, Ordering::SeqCst);
            });
            None
        }
    };
    while !stdin_closed.load(Ordering::SeqCst) {
        let timeout = match hold_until {
            Some(until) => {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                POLL_SLICE.min(until - now)
            }
            None => POLL_SLICE,
        };
        session.poll_once(timeout);
    }
    let (still_held, dropped) = (session.held, session.dropped);
    close_with_reset(
        workload.close_with_reset,
        session.connections.iter().flatten().map(|c| &c.link),
    );
    drop(session);
    print_result(format_args!(
        "closed {still_held} connections ({dropped} dropped by the server while held)"
    ));
    if still_held == 0 && n > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
