//! Churn mode: C concurrent slots over T threads, each slot looping
//! connect -> greeting -> request (QUIT) -> reply -> close for the
//! duration; reports connections/s and the time of a whole cycle.
//!
//! Over TLS a cycle is connect -> full handshake (no resumption) ->
//! greeting -> request -> reply -> close: connections/s are full handshakes
//! per second. With `--tls-resume` each slot offers the session its
//! previous connection was given, so after a slot's first cycle they are
//! resumed handshakes per second, if the server resumes: every cycle's
//! handshake is counted as resumed or full, and a run with `--tls-resume`
//! where fewer than 90% resumed warns on stderr and fails.
//!
//! By default the slot waits for the server to close first, as a client of
//! loopline's QUIT does; `--close-first` closes right after the reply.

use crate::cli::Workload;
use crate::connect::{close_with_reset, connect_outcome, peer_closing, poll_events, Connector};
use crate::link::{ClientTls, Link};
use crate::measure::{elapsed_ns, new_latency_histogram, run_measured, MeasuredWorker};
use crate::report::{ChurnSummary, TlsHandshakes};
use crate::responses::{read_responses, Greeting, ReadOutcome, ResponseScanner};
use crate::POLL_SLICE;
use hdrhistogram::Histogram;
use mio::event::Event;
use mio::{Events, Poll, Token};
use std::io::{self, ErrorKind};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Instant;

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Phase {
    Connecting,
    Greeting,
    Sending,
    AwaitingReply,
    /// Replied; waiting for the server's close.
    AwaitingClose,
}

/// One cycle in progress.
struct Cycle {
    link: Link,
    phase: Phase,
    greeting: Greeting,
    reply_lines: usize,
    /// Offset inside the request of the next byte to write.
    write_offset: usize,
    scanner: ResponseScanner,
    started: Instant,
}

/// What one thread counted.
struct ChurnCounts {
    cycles: u64,
    cycle_time: Histogram<u64>,
    failed_cycles: u64,
    error_lines: u64,
    /// Complete cycles (over TLS) whose handshake was full, or resumed.
    handshakes_full: u64,
    handshakes_resumed: u64,
}

/// One thread's event loop over its share of the slots.
struct ChurnWorker {
    workload: Arc<Workload>,
    poll: Poll,
    slots: Vec<Option<Cycle>>,
    connector: Connector,
    /// With `--tls-resume`: each slot's TLS settings, holding the session
    /// cache only that slot uses. Empty otherwise (the connector's shared
    /// settings serve every slot).
    slot_tls: Vec<ClientTls>,
    read_buffer: Vec<u8>,
    counts: ChurnCounts,
    warmup_end: Instant,
    end: Instant,
}

impl ChurnWorker {
    /// Starts a new cycle in slot `i`, unless the run is over.
    fn start(&mut self, i: usize) {
        let now = Instant::now();
        if now >= self.end {
            return;
        }
        let registry = self.poll.registry();
        let opened = match self.slot_tls.get(i) {
            Some(tls) => self.connector.open_with(registry, Token(i), Some(tls)),
            None => self.connector.open(registry, Token(i)),
        };
        let Some(link) = opened else {
            self.counts.failed_cycles += 1;
            return;
        };
        self.slots[i] = Some(Cycle {
            link,
            phase: Phase::Connecting,
            greeting: Greeting::new(self.workload.greeting_lines),
            reply_lines: 0,
            write_offset: 0,
            scanner: ResponseScanner::default(),
            started: now,
        });
    }

    /// Ends the cycle in slot `i` (counted only inside the measured
    /// window) and starts the next one.
    fn finish(&mut self, i: usize, ok: bool) {
        if let Some(cycle) = self.slots[i].take() {
            let now = Instant::now();
            if now >= self.warmup_end && now < self.end {
                if ok {
                    self.counts.cycles += 1;
                    self.counts
                        .cycle_time
                        .saturating_record(elapsed_ns(now, cycle.started));
                    match cycle.link.handshake_resumed() {
                        Some(true) => self.counts.handshakes_resumed += 1,
                        Some(false) => self.counts.handshakes_full += 1,
                        None => {}
                    }
                } else {
                    self.counts.failed_cycles += 1;
                }
            }
            // Dropping the stream closes it.
        }
        self.start(i);
    }

    fn send(&mut self, i: usize) {
        let Some(cycle) = self.slots[i].as_mut() else {
            return;
        };
        let request = &self.workload.request;
        while cycle.write_offset < request.len() {
            match cycle.link.write(&request[cycle.write_offset..]) {
                Ok(n) => cycle.write_offset += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.finish(i, false);
                    return;
                }
            }
        }
        cycle.phase = Phase::AwaitingReply;
    }

    fn on_event(&mut self, event: &Event) {
        let i = event.token().0;
        let Some(cycle) = self.slots[i].as_mut() else {
            return;
        };
        if cycle.phase == Phase::Connecting {
            match connect_outcome(&mut cycle.link, event) {
                None => return,
                Some(Err(_)) => {
                    self.finish(i, false);
                    return;
                }
                // Requests wait for the TLS handshake, too.
                Some(Ok(())) if !cycle.greeting.is_done() || cycle.link.is_handshaking() => {
                    cycle.phase = Phase::Greeting
                }
                Some(Ok(())) => {
                    cycle.phase = Phase::Sending;
                    self.send(i);
                }
            }
        } else if event.is_writable() {
            // TLS output the socket did not take earlier.
            if cycle.link.send_pending().is_err() {
                self.finish(i, false);
                return;
            }
            if cycle.phase == Phase::Sending {
                self.send(i);
            }
        }
        // `send` may have ended the cycle (and started another in the slot).
        let Some(cycle) = self.slots[i].as_mut() else {
            return;
        };
        let read = read_responses(
            &mut cycle.link,
            &mut self.read_buffer,
            &mut cycle.scanner,
            &self.workload.error_prefixes,
            peer_closing(event),
        );
        self.counts.error_lines += read.error_lines as u64;
        let lines = cycle.greeting.consume(read.lines);
        if cycle.phase == Phase::Greeting
            && cycle.greeting.is_done()
            && !cycle.link.is_handshaking()
        {
            cycle.phase = Phase::Sending;
            self.send(i);
        }
        let Some(cycle) = self.slots[i].as_mut() else {
            return;
        };
        if cycle.phase == Phase::AwaitingReply {
            cycle.reply_lines += lines;
            if cycle.reply_lines >= self.workload.lines_per_response {
                cycle.phase = Phase::AwaitingClose;
                if self.workload.close_first {
                    self.finish(i, true);
                    return;
                }
            }
        }
        let replied = cycle.phase == Phase::AwaitingClose;
        match read.outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof => self.finish(i, replied),
            ReadOutcome::Failed => self.finish(i, false),
        }
    }
}

impl MeasuredWorker for ChurnWorker {
    type Counts = ChurnCounts;

    fn new(workload: Arc<Workload>, share: usize, thread_index: usize) -> io::Result<ChurnWorker> {
        let now = Instant::now();
        let slot_tls = match &workload.tls {
            Some(tls) if workload.tls_resume => (0..share).map(|_| tls.for_one_client()).collect(),
            _ => Vec::new(),
        };
        Ok(ChurnWorker {
            poll: Poll::new()?,
            slot_tls,
            slots: (0..share).map(|_| None).collect(),
            // A slot reconnects all the time: only thread 0 reports its
            // first failed connect, so a refused target costs one line.
            connector: Connector::new(&workload, thread_index)
                .reporting_failures(thread_index == 0),
            read_buffer: vec![0; 16 * 1024],
            counts: ChurnCounts {
                cycles: 0,
                cycle_time: new_latency_histogram(),
                failed_cycles: 0,
                error_lines: 0,
                handshakes_full: 0,
                handshakes_resumed: 0,
            },
            warmup_end: now,
            end: now,
            workload,
        })
    }

    /// Starts every slot's first cycle at the start line shared with the
    /// other threads, and keeps them cycling to the end of the window.
    fn run(mut self, start_line: &Barrier) -> ChurnCounts {
        let mut events = Events::with_capacity(1024);
        start_line.wait();
        let start = Instant::now();
        self.warmup_end = start + self.workload.warmup;
        self.end = self.warmup_end + self.workload.duration;
        for i in 0..self.slots.len() {
            self.start(i);
        }
        let mut next_sweep = start + POLL_SLICE;
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            // Every poll slice: fail cycles that are stuck, and retry slots
            // whose connect failed outright.
            if now >= next_sweep {
                next_sweep = now + POLL_SLICE;
                for i in 0..self.slots.len() {
                    let stuck = match &self.slots[i] {
                        Some(cycle) => {
                            now.duration_since(cycle.started) > self.workload.cycle_timeout
                        }
                        None => true,
                    };
                    if stuck {
                        self.finish(i, false);
                    }
                }
            }
            if !poll_events(&mut self.poll, &mut events, POLL_SLICE.min(self.end - now)) {
                break;
            }
            for event in events.iter() {
                self.on_event(event);
            }
        }
        close_with_reset(
            self.workload.close_with_reset,
            self.slots.iter().flatten().map(|cycle| &cycle.link),
        );
        self.counts
    }
}

pub fn run(workload: Workload) -> ExitCode {
    let slots = workload.connections;
    let tls = workload.tls.is_some().then_some(TlsHandshakes {
        version: workload.tls_version,
        resume: workload.tls_resume,
        full: 0,
        resumed: 0,
    });
    let (run, per_thread) = run_measured::<ChurnWorker>(workload);
    let mut summary = ChurnSummary {
        run,
        slots,
        cycles: 0,
        cycle_time: new_latency_histogram(),
        errors: 0,
        tls,
    };
    for counts in per_thread {
        let Some(counts) = counts else {
            // A thread that could not start counts as one error.
            summary.errors += 1;
            continue;
        };
        // Same bounds on every histogram, so adding cannot fail.
        summary.cycle_time.add(&counts.cycle_time).ok();
        summary.cycles += counts.cycles;
        summary.errors += counts.failed_cycles + counts.error_lines;
        if let Some(tls) = &mut summary.tls {
            tls.full += counts.handshakes_full;
            tls.resumed += counts.handshakes_resumed;
        }
    }
    summary.print();
    let shortfall = summary.tls.as_ref().map_or(0, warn_about_handshakes);
    if summary.cycles == 0 || shortfall > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Says loudly on stderr when the handshakes were not of the kind asked
/// for: with `--tls-resume`, fewer than 90% resumed (the figures are then
/// mostly full handshakes); without, any that resumed. Returns the
/// shortfall (see [`TlsHandshakes::shortfall`]).
fn warn_about_handshakes(tls: &TlsHandshakes) -> u64 {
    let total = tls.full + tls.resumed;
    let percent = tls.resumed_fraction().map_or(0.0, |f| f * 100.0);
    let shortfall = tls.shortfall();
    if shortfall > 0 {
        eprintln!(
            "loopline-bench: WARNING: --tls-resume, but only {} of {total} handshakes resumed ({percent:.1}%, under {:.0}%): the server did {} full handshakes; these are NOT resumed-handshake figures",
            tls.resumed,
            TlsHandshakes::RESUMED_ENOUGH * 100.0,
            tls.full,
        );
    } else if !tls.resume && tls.resumed > 0 {
        eprintln!(
            "loopline-bench: WARNING: resumption is off, yet {} of {total} handshakes resumed ({percent:.1}%): these are NOT full-handshake figures",
            tls.resumed
        );
    }
    shortfall
}
