//! --max-line, --max-connections and --max-output (backpressure), each
//! over plain TCP and inside TLS.

mod util;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use util::{both_transports, engine_rule, protocol, Protocol, Server, Transport, PATIENCE};

// The engine's rules, over both transports, with one loop and two, and
// against the key-value example too (the same engine, another protocol).
engine_rule!(
    unfinished_line_is_refused_as_soon_as_it_cannot_fit,
    too_long_line_gets_err_after_earlier_responses,
    connections_past_the_limit_are_turned_away_and_counted,
    busy_line_survives_a_client_that_sent_requests_first,
    slow_reader_gets_everything_with_bounded_memory,
    a_client_that_said_quit_no_longer_counts,
);

both_transports!(
    line_of_exactly_max_line_with_crlf_is_accepted_at_every_split,
    memory_does_not_grow_with_the_length_of_a_line,
);

fn unfinished_line_is_refused_as_soon_as_it_cannot_fit(transport: Transport) {
    let server = Server::start_over(transport, &["--max-line", "10"]);
    let mut c = server.client();
    // No LF ever comes: the server must not wait for one.
    let (probe, answer) = protocol().probe();
    c.send(&[probe, b"ECHO 1234567"].concat());
    c.expect_line(answer);
    c.expect_line("ERR line too long");
    c.expect_eof();
}

fn too_long_line_gets_err_after_earlier_responses(transport: Transport) {
    let server = Server::start_over(transport, &["--max-line", "10"]);
    let mut c = server.client();
    let (probe, answer) = protocol().probe();
    c.send(&[probe, b"ECHO 12345678\n", probe].concat());
    assert_eq!(
        c.read_to_end(),
        format!("{answer}\nERR line too long\n").as_bytes()
    );
}

fn line_of_exactly_max_line_with_crlf_is_accepted_at_every_split(transport: Transport) {
    let server = Server::start_over(transport, &["--max-line", "10"]);
    let line = b"ECHO 12345\r\n"; // 10 bytes before CRLF
    for split in 1..line.len() {
        let mut c = server.client();
        c.stream.set_nodelay(true).unwrap();
        c.send(&line[..split]);
        thread::sleep(Duration::from_millis(5));
        c.send(&line[split..]);
        c.expect_line("OK 12345");
    }
    // One byte more is too long, whether or not the CR is there.
    let mut c = server.client();
    c.send(b"ECHO 123456\r\n");
    c.expect_line("ERR line too long");
    c.expect_eof();
}

fn memory_does_not_grow_with_the_length_of_a_line(transport: Transport) {
    let server = Server::start_over(transport, &["--max-line", "1024"]);
    let before = server.rss_kib();
    let mut c = server.client();
    // 64 MB without an LF; the server refuses the line after 1 KiB. Our
    // writes may then fail with a reset: that is expected. (Over TLS, all
    // encrypted here first: the session stays on this thread.)
    let chunks: Vec<Vec<u8>> = (0..64).map(|_| c.wire_bytes(&[b'x'; 1 << 20])).collect();
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for chunk in &chunks {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    c.expect_line("ERR line too long");
    let _ = sender.join();
    let after = server.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

fn connections_past_the_limit_are_turned_away_and_counted(transport: Transport) {
    let server = Server::start_over(transport, &["--max-connections", "2"]);
    let mut a = server.client();
    let b = server.client();
    let mut busy = server.connect();
    busy.expect_line("ERR server busy");
    busy.expect_eof();
    // The counters are loopline's STATS (kv has none).
    if protocol() == Protocol::Loopline {
        a.send(b"STATS\n");
        let stats = util::Stats(a.read_line());
        assert_eq!(stats.get("connections"), 2);
        assert_eq!(stats.get("rejected"), 1);
        assert_eq!(stats.get("accepted"), 2);
    }
    a.probe();
    // Once one leaves, a newcomer is admitted again.
    drop(b);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut c = server.connect();
        if c.read_line() == "READY" {
            break;
        }
        assert!(Instant::now() < deadline, "never admitted again");
        thread::sleep(Duration::from_millis(20));
    }
}

fn busy_line_survives_a_client_that_sent_requests_first(transport: Transport) {
    // The rejected client pipelined requests before reading: the server must
    // still deliver its one line (lingering close, no reset).
    let server = Server::start_over(transport, &["--max-connections", "1"]);
    let _a = server.client();
    let mut busy = server.connect();
    busy.send(&protocol().probe().0.repeat(10_000));
    busy.expect_line("ERR server busy");
}

/// A client writes 50 MB of pipelined ECHO without reading. The server must
/// stop reading it (bounded memory), keep serving others, and once the
/// client reads, deliver every response, complete and in order.
fn slow_reader_gets_everything_with_bounded_memory(transport: Transport) {
    let server = Server::start_over(transport, &["--max-output", "262144"]);
    let baseline = server.rss_kib();
    let mut slow = server.client();
    let pad = "p".repeat(80);
    if let Some((setup, answer)) = protocol().numbered_setup(&pad) {
        slow.send(&setup);
        slow.expect_line(answer);
    }

    const LINES: usize = 500_000; // ~50 MB of requests (or of replies)
                                  // Batches of about 32 KiB, made (over TLS, encrypted) here: the session
                                  // stays on this thread; another writes them.
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(1 << 16);
    for i in 0..LINES {
        batch.extend_from_slice(&protocol().numbered(i, &pad).0);
        if batch.len() >= 1 << 15 || i == LINES - 1 {
            batches.push(slow.wire_bytes(&batch));
            batch.clear();
        }
    }
    let written = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut writer = slow.stream.try_clone().unwrap();
    let (w, d) = (written.clone(), done.clone());
    let sender = thread::spawn(move || {
        for batch in &batches {
            writer.write_all(batch).expect("write");
            w.fetch_add(batch.len(), Ordering::Relaxed);
        }
        d.store(true, Ordering::Relaxed);
    });

    // Wait until the writer stalls: the server has stopped reading us.
    let deadline = Instant::now() + PATIENCE;
    let mut last = 0;
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = written.load(Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        assert!(
            !done.load(Ordering::Relaxed),
            "the server read 50 MB without anyone reading the replies"
        );
        assert!(Instant::now() < deadline, "writer never stalled");
        last = now;
    }
    let stalled_at = written.load(Ordering::Relaxed);
    assert!(
        stalled_at < 40_000_000,
        "server read {stalled_at} bytes before pausing"
    );

    // Memory is bounded while paused...
    let paused_rss = server.rss_kib();
    assert!(
        paused_rss < baseline + 16 * 1024,
        "RSS {paused_rss} KiB, baseline {baseline} KiB"
    );
    // ...and another client is served meanwhile.
    let mut other = server.client();
    other.probe();

    // Now read everything: all 500,000 responses, in order.
    for i in 0..LINES {
        let line = slow.read_line_bytes();
        let want = protocol().numbered(i, &pad).1;
        assert_eq!(line, want.as_bytes(), "response {i}");
        if i % 100_000 == 0 {
            let rss = server.rss_kib();
            assert!(rss < baseline + 16 * 1024, "RSS {rss} KiB at line {i}");
        }
    }
    sender.join().unwrap();
}

/// Regression: a client that got BYE but keeps its socket open (the server
/// is lingering on it) must not count against --max-connections.
fn a_client_that_said_quit_no_longer_counts(transport: Transport) {
    let server = Server::start_over(transport, &["--max-connections", "1"]);
    let mut a = server.client();
    a.send(b"QUIT\n");
    a.expect_line("BYE");
    a.expect_eof(); // A keeps its socket open; the server lingers on it.
    let mut b = server.connect();
    b.expect_line("READY");
    if protocol() == Protocol::Loopline {
        b.send(b"STATS\n");
        assert_eq!(util::Stats(b.read_line()).get("connections"), 1);
    }
    b.probe();
}
