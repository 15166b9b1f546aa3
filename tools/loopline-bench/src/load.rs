//! Load mode: C connections spread over T threads, each thread its own mio
//! event loop (edge-triggered); every connection keeps DEPTH requests in
//! flight, and every response's latency goes into an HDR histogram.
//!
//! How it stays out of the server's way: no locks or channels while
//! running; the DEPTH requests (or the ones a read batch freed) go out in
//! one `write` from a prebuilt buffer; responses are counted, not kept; one
//! clock read per read batch; no allocation per request.
//!
//! Latency is closed-loop round-trip time: a request's clock starts when it
//! is queued, which is right when its predecessor's response is read.
//!
//! Keyed requests (`{key}` in `--request`): each queued request is rendered
//! with a key drawn uniformly ([`crate::template`]) into the connection's
//! output buffer, which is reused (sized for DEPTH requests at the start):
//! still one `write` per batch and no allocation per request. `--preload`
//! runs before the start line: each thread sends the preload request for
//! its share of the keys, in order, over its connections, pipelined
//! (depth at least [`PRELOAD_MIN_DEPTH`]), and waits for every answer.

use crate::cli::Workload;
use crate::connect::{close_with_reset, connect_outcome, peer_closing, poll_events, Connector};
use crate::link::Link;
use crate::measure::{elapsed_ns, new_latency_histogram, run_measured, MeasuredWorker};
use crate::report::{LoadSummary, PreloadSummary};
use crate::responses::{read_responses, Greeting, ReadOutcome, ResponseScanner};
use crate::template::KeyChooser;
use crate::POLL_SLICE;
use hdrhistogram::Histogram;
use mio::event::Event;
use mio::{Events, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// Read buffer per thread; responses are only counted, never kept.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Requests in flight per connection during `--preload`, at least (more
/// with a deeper `--pipeline`).
pub const PRELOAD_MIN_DEPTH: usize = 32;

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Phase {
    /// The non-blocking connect has not finished.
    Connecting,
    /// Connected; skipping the server's greeting lines.
    Greeting,
    /// Greeting done, waiting for the measured run to start.
    Ready,
    /// Sending requests and counting responses.
    Running,
}

struct LoadConnection {
    link: Link,
    phase: Phase,
    greeting: Greeting,
    /// Lines read towards the next response, when one response is several
    /// lines.
    partial_response_lines: usize,
    scanner: ResponseScanner,
    /// Send instants of the requests in flight, oldest first (capacity DEPTH).
    send_times: VecDeque<Instant>,
    /// Request bytes queued but not yet written.
    unsent_bytes: usize,
    /// Offset inside the request of the next byte to write (requests that
    /// are all the same, sent from the worker's `request_run`).
    write_offset: usize,
    /// Rendered requests (keyed ones, or the preload's), the unsent ones
    /// from `out_start` on; its capacity, set at the start, holds the
    /// most that can be queued at once.
    out: Vec<u8>,
    out_start: usize,
}

impl LoadConnection {
    /// Moves the unsent rendered bytes to the front of `out`, so new ones
    /// can follow them without growing it.
    fn compact_output(&mut self) {
        if self.out_start > 0 {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
    }
}

/// What one thread counted.
struct LoadCounts {
    responses: u64,
    latency: Histogram<u64>,
    connection_errors: u64,
    error_lines: u64,
    connected: u64,
    unexpected: u64,
    /// `--preload`: keys this thread was to preload, those answered, the
    /// error lines among the answers, and how long it took.
    preload_keys: u64,
    preloaded: u64,
    preload_error_lines: u64,
    preload_secs: f64,
}

/// One thread's event loop over its share of the connections.
struct LoadWorker {
    workload: Arc<Workload>,
    poll: Poll,
    connections: Vec<Option<LoadConnection>>,
    connector: Connector,
    read_buffer: Vec<u8>,
    /// The request repeated DEPTH+1 times: any queued run of requests,
    /// starting at any offset, is one contiguous slice of it.
    request_run: Vec<u8>,
    counts: LoadCounts,
    started: bool,
    warmup_end: Instant,
    end: Instant,
    /// Connections connecting or reading their greeting.
    in_setup: usize,
    /// Index of the next connection to open.
    next_to_open: usize,
    thread_index: usize,
    /// Draws the key of each keyed request.
    chooser: KeyChooser,
    /// Sending the `--preload` requests (before the start line).
    preloading: bool,
    /// The next key to preload, and the end of this thread's share.
    preload_next: u64,
    preload_end: u64,
    /// Requests in flight per connection while preloading.
    preload_depth: usize,
}

impl LoadWorker {
    /// Opens connections until `--connect-window` are in set-up.
    fn open_more(&mut self) {
        while self.next_to_open < self.connections.len()
            && self.in_setup < self.workload.connect_window
        {
            let i = self.next_to_open;
            self.next_to_open += 1;
            let Some(link) = self.connector.open(self.poll.registry(), Token(i)) else {
                self.counts.connection_errors += 1;
                continue;
            };
            // Room for the most requests ever in flight, and for the
            // rendered ones among them, so the run never grows these.
            let workload = &*self.workload;
            let (mut in_flight, mut out_bytes) = (workload.pipeline_depth, 0);
            if workload.request_template.is_keyed() {
                out_bytes = workload.pipeline_depth * workload.request_template.len();
            }
            if let Some(preload) = &workload.preload {
                in_flight = in_flight.max(self.preload_depth);
                out_bytes = out_bytes.max(self.preload_depth * preload.len());
            }
            self.connections[i] = Some(LoadConnection {
                link,
                phase: Phase::Connecting,
                greeting: Greeting::new(workload.greeting_lines),
                partial_response_lines: 0,
                scanner: ResponseScanner::default(),
                send_times: VecDeque::with_capacity(in_flight),
                unsent_bytes: 0,
                write_offset: 0,
                out: Vec::with_capacity(out_bytes),
                out_start: 0,
            });
            self.in_setup += 1;
        }
    }

    /// Drops a failed or closed connection and counts it as an error.
    fn close_failed(&mut self, i: usize) {
        if let Some(connection) = self.connections[i].take() {
            if matches!(connection.phase, Phase::Connecting | Phase::Greeting) {
                self.in_setup -= 1;
            }
            self.counts.connection_errors += 1;
            // Dropping the stream closes it, which also removes it from the poll.
        }
    }

    /// Greets the connection once it is ready for requests: TLS handshake
    /// over (if any) and greeting lines read. Without a greeting to read,
    /// the end of the handshake is the only sign, so this is asked after
    /// each read as well as after each greeting line.
    fn greeted_if_ready(&mut self, i: usize) {
        let Some(connection) = self.connections[i].as_ref() else {
            return;
        };
        if connection.phase == Phase::Greeting
            && connection.greeting.is_done()
            && !connection.link.is_handshaking()
        {
            self.greeted(i);
        }
    }

    /// The connection finished its greeting.
    fn greeted(&mut self, i: usize) {
        self.in_setup -= 1;
        self.counts.connected += 1;
        if let Some(connection) = self.connections[i].as_mut() {
            connection.phase = Phase::Ready;
        }
        if self.started {
            self.start_requests(i);
        }
    }

    /// Starts a ready connection: queues DEPTH requests (the preload's
    /// depth while preloading) and writes them.
    fn start_requests(&mut self, i: usize) {
        let Some(connection) = self.connections[i].as_mut() else {
            return;
        };
        if connection.phase != Phase::Ready {
            return;
        }
        connection.phase = Phase::Running;
        let depth = if self.preloading {
            self.preload_depth
        } else {
            self.workload.pipeline_depth
        };
        self.queue_requests(i, depth, Instant::now());
    }

    /// Whether the requests being sent are rendered one by one into the
    /// connections' output buffers (keyed ones, or the preload's) rather
    /// than sent from `request_run`.
    fn renders_requests(&self) -> bool {
        self.preloading || self.workload.request_template.is_keyed()
    }

    /// Queues `n` more requests on connection `i`, sent at `now` (while
    /// preloading: as many of the keys left, up to `n`), and writes them.
    fn queue_requests(&mut self, i: usize, n: usize, now: Instant) {
        let renders = self.renders_requests();
        let Some(connection) = self.connections[i].as_mut() else {
            return;
        };
        let workload = &*self.workload;
        let mut queued = n;
        if renders {
            connection.compact_output();
            match (&workload.preload, self.preloading) {
                (Some(preload), true) => {
                    let left = self.preload_end - self.preload_next;
                    queued = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                    for _ in 0..queued {
                        preload.render_into(self.preload_next, &mut connection.out);
                        self.preload_next += 1;
                    }
                }
                _ => {
                    for _ in 0..queued {
                        let key = self.chooser.next_key();
                        workload
                            .request_template
                            .render_into(key, &mut connection.out);
                    }
                }
            }
            connection.unsent_bytes = connection.out.len() - connection.out_start;
        } else {
            connection.unsent_bytes += queued * workload.request.len();
        }
        connection
            .send_times
            .extend(std::iter::repeat_n(now, queued));
        self.write_queued(i);
    }

    /// Writes queued requests until they are all out or the socket is full.
    fn write_queued(&mut self, i: usize) {
        let renders = self.renders_requests();
        let Some(connection) = self.connections[i].as_mut() else {
            return;
        };
        let request_len = self.workload.request.len();
        let mut failed = false;
        while connection.unsent_bytes > 0 {
            let slice = if renders {
                &connection.out[connection.out_start..]
            } else {
                let start = connection.write_offset;
                &self.request_run[start..start + connection.unsent_bytes]
            };
            let wanted = slice.len();
            match connection.link.write(slice) {
                Ok(n) => {
                    connection.unsent_bytes -= n;
                    if renders {
                        connection.out_start += n;
                        if connection.out_start == connection.out.len() {
                            connection.out.clear();
                            connection.out_start = 0;
                        }
                    } else {
                        connection.write_offset = (connection.write_offset + n) % request_len;
                    }
                    if n < wanted {
                        break; // send buffer full: wait for the writable edge
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close_failed(i);
        }
    }

    fn on_event(&mut self, event: &Event) {
        let i = event.token().0;
        let Some(connection) = self.connections[i].as_mut() else {
            return;
        };
        if connection.phase == Phase::Connecting {
            match connect_outcome(&mut connection.link, event) {
                None => return,
                Some(Err(_)) => {
                    self.close_failed(i);
                    return;
                }
                Some(Ok(())) => {
                    connection.phase = Phase::Greeting;
                    self.greeted_if_ready(i);
                }
            }
            // The greeting may have arrived with the connect edge.
            self.on_readable(i, peer_closing(event));
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.on_readable(i, peer_closing(event));
        }
        if event.is_writable() {
            if let Some(connection) = self.connections[i].as_mut() {
                // TLS output the socket did not take earlier (handshake
                // records, encrypted requests).
                if connection.link.send_pending().is_err() {
                    self.close_failed(i);
                    return;
                }
                if connection.phase == Phase::Running && connection.unsent_bytes > 0 {
                    self.write_queued(i);
                }
            }
        }
    }

    fn on_readable(&mut self, i: usize, to_end: bool) {
        let Some(connection) = self.connections[i].as_mut() else {
            return;
        };
        let read = read_responses(
            &mut connection.link,
            &mut self.read_buffer,
            &mut connection.scanner,
            &self.workload.error_prefixes,
            to_end,
        );
        if self.preloading {
            self.counts.preload_error_lines += read.error_lines as u64;
        } else {
            self.counts.error_lines += read.error_lines as u64;
        }
        if read.lines > 0 {
            self.on_lines(i, read.lines);
        }
        // The read may have finished a TLS handshake.
        self.greeted_if_ready(i);
        match read.outcome {
            ReadOutcome::Open => {}
            ReadOutcome::Eof | ReadOutcome::Failed => self.close_failed(i),
        }
    }

    /// `lines` response lines arrived: stamp the answered requests'
    /// latencies and queue as many new requests in their place.
    fn on_lines(&mut self, i: usize, lines: usize) {
        let Some(connection) = self.connections[i].as_mut() else {
            return;
        };
        let lines = connection.greeting.consume(lines);
        if connection.phase == Phase::Greeting {
            self.greeted_if_ready(i);
            // Lines after the greeting, before any request was sent, are noise.
            return;
        }
        if connection.phase != Phase::Running || lines == 0 {
            return;
        }
        let lines_per_response = if self.preloading {
            self.workload.preload_lines_per_response
        } else {
            self.workload.lines_per_response
        };
        let total = connection.partial_response_lines + lines;
        let responses = total / lines_per_response;
        connection.partial_response_lines = total % lines_per_response;
        if responses == 0 {
            return;
        }
        let now = Instant::now();
        if self.preloading {
            // Not measured: count the answers, send the next keys.
            for _ in 0..responses {
                match connection.send_times.pop_front() {
                    Some(_) => self.counts.preloaded += 1,
                    None => self.counts.unexpected += 1,
                }
            }
            let refill = self.preload_depth - connection.send_times.len();
            self.queue_requests(i, refill, now);
            return;
        }
        let in_window = now >= self.warmup_end;
        let latency = &mut self.counts.latency;
        // Requests queued together share one send instant: record each run
        // of equal instants with one histogram call.
        let mut run: Option<(Instant, u64)> = None;
        let mut answered = 0u64;
        for _ in 0..responses {
            match connection.send_times.pop_front() {
                Some(sent) => {
                    answered += 1;
                    if in_window {
                        run = match run {
                            Some((run_sent, n)) if run_sent == sent => Some((run_sent, n + 1)),
                            Some((run_sent, n)) => {
                                latency.saturating_record_n(elapsed_ns(now, run_sent), n);
                                Some((sent, 1))
                            }
                            None => Some((sent, 1)),
                        };
                    }
                }
                None => self.counts.unexpected += 1,
            }
        }
        if let Some((run_sent, n)) = run {
            latency.saturating_record_n(elapsed_ns(now, run_sent), n);
        }
        if in_window {
            self.counts.responses += answered;
        }
        if now < self.end {
            let refill = self.workload.pipeline_depth - connection.send_times.len();
            self.queue_requests(i, refill, now);
        }
    }

    /// `--preload`: sends the preload request for this thread's share of
    /// the keys over its ready connections, pipelined, and waits for every
    /// answer (or `--preload-timeout`, which closes the connections still
    /// waiting). The connections are ready for the measured run after it.
    fn preload(&mut self, events: &mut Events) {
        if self.workload.preload.is_none() {
            return;
        }
        // Thread t of T takes keys [N*t/T, N*(t+1)/T).
        let share = |t: usize| {
            let (keys, threads) = (
                u128::from(self.workload.keys),
                self.workload.threads as u128,
            );
            // At most keys: fits in a u64.
            (keys * t as u128 / threads) as u64
        };
        self.preload_next = share(self.thread_index);
        self.preload_end = share(self.thread_index + 1);
        self.counts.preload_keys = self.preload_end - self.preload_next;
        self.preloading = true;
        let started = Instant::now();
        let deadline = started + self.workload.preload_timeout;
        for i in 0..self.connections.len() {
            self.start_requests(i);
        }
        loop {
            let waiting = self
                .connections
                .iter()
                .flatten()
                .any(|c| !c.send_times.is_empty());
            if !waiting {
                if self.preload_next < self.preload_end {
                    eprintln!(
                        "loopline-bench: preload: no connection left to send {} key(s) on",
                        self.preload_end - self.preload_next
                    );
                }
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                eprintln!(
                    "loopline-bench: preload timeout: {} of {} key(s) answered; closing the connections still waiting",
                    self.counts.preloaded, self.counts.preload_keys
                );
                for i in 0..self.connections.len() {
                    if self.connections[i]
                        .as_ref()
                        .is_some_and(|c| !c.send_times.is_empty())
                    {
                        self.close_failed(i);
                    }
                }
                break;
            }
            if !self.poll_once(events, POLL_SLICE.min(deadline - now)) {
                break;
            }
        }
        self.counts.preload_secs = started.elapsed().as_secs_f64();
        self.preloading = false;
        for connection in self.connections.iter_mut().flatten() {
            if connection.phase == Phase::Running {
                connection.phase = Phase::Ready;
                connection.partial_response_lines = 0;
                connection.send_times.clear();
                connection.unsent_bytes = 0;
                connection.write_offset = 0;
                connection.out.clear();
                connection.out_start = 0;
            }
        }
    }

    /// One poll and its events. False when polling failed for good.
    fn poll_once(&mut self, events: &mut Events, timeout: std::time::Duration) -> bool {
        if !poll_events(&mut self.poll, events, timeout) {
            return false;
        }
        for event in events.iter() {
            self.on_event(event);
        }
        true
    }
}

impl MeasuredWorker for LoadWorker {
    type Counts = LoadCounts;

    fn new(workload: Arc<Workload>, share: usize, thread_index: usize) -> io::Result<LoadWorker> {
        let now = Instant::now();
        Ok(LoadWorker {
            poll: Poll::new()?,
            connections: (0..share).map(|_| None).collect(),
            // Every thread reports its own first failed connect.
            connector: Connector::new(&workload, thread_index),
            read_buffer: vec![0; READ_BUFFER_BYTES],
            request_run: workload.request.repeat(workload.pipeline_depth + 1),
            counts: LoadCounts {
                responses: 0,
                latency: new_latency_histogram(),
                connection_errors: 0,
                error_lines: 0,
                connected: 0,
                unexpected: 0,
                preload_keys: 0,
                preloaded: 0,
                preload_error_lines: 0,
                preload_secs: 0.0,
            },
            started: false,
            warmup_end: now,
            end: now,
            in_setup: 0,
            next_to_open: 0,
            thread_index,
            // A fixed sequence per thread: runs draw the same keys.
            chooser: KeyChooser::new(
                workload.keys,
                (thread_index as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
            ),
            preloading: false,
            preload_next: 0,
            preload_end: 0,
            preload_depth: workload.pipeline_depth.max(PRELOAD_MIN_DEPTH),
            workload,
        })
    }

    /// Opens every connection and waits for its greeting, then (after the
    /// start line shared with the other threads) runs the measured window.
    fn run(mut self, start_line: &Barrier) -> LoadCounts {
        let mut events = Events::with_capacity(1024);
        let deadline = Instant::now() + self.workload.connect_timeout;
        self.open_more();
        while self.in_setup > 0 || self.next_to_open < self.connections.len() {
            let now = Instant::now();
            if now >= deadline {
                eprintln!(
                    "loopline-bench: connect timeout: {} connection(s) still not ready",
                    self.in_setup + self.connections.len() - self.next_to_open
                );
                break;
            }
            if !self.poll_once(&mut events, POLL_SLICE.min(deadline - now)) {
                break;
            }
            self.open_more();
        }
        self.preload(&mut events);
        start_line.wait();

        let start = Instant::now();
        self.warmup_end = start + self.workload.warmup;
        self.end = self.warmup_end + self.workload.duration;
        self.started = true;
        for i in 0..self.connections.len() {
            self.start_requests(i);
        }
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            if !self.poll_once(&mut events, POLL_SLICE.min(self.end - now)) {
                break;
            }
        }
        close_with_reset(
            self.workload.close_with_reset,
            self.connections.iter().flatten().map(|c| &c.link),
        );
        self.counts
    }
}

pub fn run(workload: Workload) -> ExitCode {
    let pipeline_depth = workload.pipeline_depth;
    let connections = workload.connections;
    // Every key counts, even those of a thread that could not start.
    let preload = workload.preload.is_some().then(|| PreloadSummary {
        keys: workload.keys,
        ..PreloadSummary::default()
    });
    let (run, per_thread) = run_measured::<LoadWorker>(workload);
    let mut summary = LoadSummary {
        run,
        connections,
        connected: 0,
        pipeline_depth,
        responses: 0,
        latency: new_latency_histogram(),
        connection_errors: 0,
        error_lines: 0,
        unexpected: 0,
        preload,
    };
    for counts in per_thread {
        let Some(counts) = counts else {
            // A thread that could not start counts as one failed connection.
            summary.connection_errors += 1;
            continue;
        };
        // Same bounds on every histogram, so adding cannot fail.
        summary.latency.add(&counts.latency).ok();
        summary.responses += counts.responses;
        summary.connection_errors += counts.connection_errors;
        summary.error_lines += counts.error_lines;
        summary.connected += counts.connected;
        summary.unexpected += counts.unexpected;
        if let Some(preload) = summary.preload.as_mut() {
            preload.answered += counts.preloaded;
            preload.error_lines += counts.preload_error_lines;
            // The threads preload at the same time: the slowest one's.
            preload.secs = preload.secs.max(counts.preload_secs);
        }
    }
    summary.print();
    if summary.responses == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
