//! Slowloris: thousands of connections that trickle one byte a second and
//! never finish a line. The idle timer counts from the last *complete*
//! request, so a trickle does not keep a connection alive: every one of them
//! gets `ERR idle timeout` and is closed, the server's memory stays bounded
//! while they hang on, and a normal client is served promptly meanwhile.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use util::{Server, PATIENCE};

const CONNECTIONS: usize = 5_000;
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How much the server's resident memory may grow with 5,000 slow clients
/// (each holds an unfinished line of a few bytes).
const RSS_MARGIN_KIB: u64 = 20 * 1024;
/// Generous bound on a normal client's round trip meanwhile.
const MAX_ROUND_TRIP: Duration = Duration::from_secs(2);

/// One trickling connection.
struct Slow {
    stream: TcpStream,
    connected: Instant,
    received: Vec<u8>,
    /// When we read EOF (or the connection failed).
    closed: Option<Instant>,
    error: Option<ErrorKind>,
}

impl Slow {
    /// Reads whatever the server sent, without blocking.
    fn poll_read(&mut self, now: Instant) {
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = Some(now);
                    return;
                }
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e.kind());
                    self.closed = Some(now);
                    return;
                }
            }
        }
    }

    /// One more byte of a line that never ends.
    fn trickle(&mut self, now: Instant) {
        match self.stream.write(b"x") {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // The server closed while we were not looking; the read tells.
            Err(_) => self.poll_read(now),
        }
    }
}

#[test]
fn trickling_connections_are_closed_by_the_idle_timeout_with_bounded_memory() {
    let server = Server::start(&["--idle-timeout", "3s", "--max-connections", "6000"]);
    let mut warm = server.client();
    warm.send(b"PING\n");
    warm.expect_line("PONG");
    drop(warm);
    let baseline = server.rss_kib();

    // A normal client, pinging every 100 ms from its own thread.
    let stop = Arc::new(AtomicBool::new(false));
    let mut probe = server.client();
    let stop_probe = stop.clone();
    let prober = thread::spawn(move || {
        let mut times = Vec::new();
        while !stop_probe.load(Ordering::Relaxed) {
            let t = Instant::now();
            probe.send(b"PING\n");
            assert_eq!(probe.read_line(), "PONG", "probe");
            times.push((t, t.elapsed()));
            thread::sleep(Duration::from_millis(100));
        }
        times
    });

    let started = Instant::now();
    let mut slow: Vec<Slow> = (0..CONNECTIONS)
        .map(|i| {
            let stream =
                TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                connected: Instant::now(),
                received: Vec::new(),
                closed: None,
                error: None,
            }
        })
        .collect();
    let connect_time = started.elapsed();
    let last_connect = Instant::now();

    // Trickle a byte on every open connection about once a second, read
    // what the server says, until all are closed.
    let deadline = last_connect + IDLE_TIMEOUT + PATIENCE;
    let mut peak = baseline;
    let mut open_at_peak = 0;
    loop {
        let now = Instant::now();
        let mut open = 0;
        for s in slow.iter_mut().filter(|s| s.closed.is_none()) {
            s.poll_read(now);
            if s.closed.is_none() {
                s.trickle(now);
                open += 1;
            }
        }
        let rss = server.rss_kib();
        if rss > peak {
            peak = rss;
            open_at_peak = open;
        }
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} trickling connections still open {:?} after the last connect",
            last_connect.elapsed()
        );
        thread::sleep(Duration::from_millis(
            if now.duration_since(last_connect) > IDLE_TIMEOUT {
                50
            } else {
                1000
            },
        ));
    }
    let all_closed = last_connect.elapsed();
    stop.store(true, Ordering::Relaxed);
    let times = prober.join().expect("probe thread");

    // Every one was told and closed, and not before its idle timeout.
    let mut told = 0;
    for (i, s) in slow.iter().enumerate() {
        let closed = s.closed.unwrap();
        assert!(
            closed >= s.connected + IDLE_TIMEOUT,
            "connection {i} closed {:?} after connecting, before the idle timeout",
            closed - s.connected
        );
        let text = String::from_utf8_lossy(&s.received);
        assert!(
            text == "READY\nERR idle timeout\n"
                || (s.error.is_some() && "READY\nERR idle timeout\n".starts_with(&*text)),
            "connection {i} got {text:?} (error {:?})",
            s.error
        );
        if text.ends_with("ERR idle timeout\n") {
            told += 1;
        }
    }
    drop(slow);
    server.wait_for_connections(1);
    let after = server.rss_kib();

    // Round trips while the 5,000 connected, and afterwards while they
    // trickled and timed out. (A connect flood is fairness.rs's concern.)
    let (mut during_connects, mut trickling): (Vec<_>, Vec<_>) =
        times.iter().partition(|(at, _)| *at < last_connect);
    during_connects.sort_by_key(|&(_, rtt)| rtt);
    trickling.sort_by_key(|&(_, rtt)| rtt);
    let worst_connecting = during_connects
        .last()
        .map_or(Duration::ZERO, |&(_, rtt)| rtt);
    let median = trickling[trickling.len() / 2].1;
    let max = trickling.last().unwrap().1;
    eprintln!(
        "{CONNECTIONS} trickling connections made in {connect_time:?}; all closed {all_closed:?} after the last \
         connect; {told} got ERR idle timeout. Server RSS: baseline {baseline} KiB, peak {peak} KiB \
         (+{} KiB with {open_at_peak} open), after {after} KiB. Probe: {} round trips while trickling, median \
         {median:?}, max {max:?}; worst while connecting {worst_connecting:?}",
        peak - baseline,
        trickling.len()
    );
    assert_eq!(
        told, CONNECTIONS,
        "every trickling connection gets ERR idle timeout"
    );
    assert!(
        peak < baseline + RSS_MARGIN_KIB,
        "RSS went from {baseline} KiB to {peak} KiB"
    );
    assert!(
        max < MAX_ROUND_TRIP,
        "a normal client waited {max:?} for PONG (median {median:?})"
    );
    assert!(worst_connecting < PATIENCE);
    server.assert_no_panic();
}
