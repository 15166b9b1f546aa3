//! Memory bounds, asserted on what the server process really holds (its
//! RSS), not on a counter that stands for it. The per-buffer capacities are
//! asserted after every call by the property tests (tests/properties.rs)
//! and the fuzz targets; here, the whole process under the traffic that
//! used to make it grow.
//!
//! Linux only: RSS comes from /proc.
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::{spawn_echo_writer, Client, EchoReplies, Server, PATIENCE};

// Each runs with one event loop and with two (`--threads 2`).
util::one_and_two_loops!(
    max_memory_caps_all_client_buffers_together,
    a_client_with_nothing_pending_is_served_while_over_max_memory,
);

/// Allowance for what the server allocates besides client buffers while a
/// test runs (allocator slack, the spare buffer, the slab), in KiB.
const SLACK_KIB: u64 = 4 * 1024;

/// Reads and checks the `lines` replies to [`spawn_echo_writer`]'s requests
/// from its own thread, 4 KiB at a time with a short pause after each read:
/// a reader slower than the server (so output waits in the server), but one
/// that never stops.
/// The pace only decides how long the test takes: the bytes sent, and so
/// what a buffer that grew with history would hold, are fixed.
fn spawn_echo_reader(mut stream: TcpStream, lines: u64) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut replies = EchoReplies::default();
        let mut chunk = vec![0u8; 4096];
        while replies.checked < lines {
            thread::sleep(Duration::from_micros(300));
            let n = stream.read(&mut chunk).expect("read responses");
            assert!(
                n > 0,
                "connection closed after {} responses",
                replies.checked
            );
            replies.check(&chunk[..n]);
        }
        replies.checked
    })
}

/// Samples the server's RSS every few milliseconds until `stop`; returns
/// the largest value seen, in KiB.
fn spawn_rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = loopline::sys::process_rss_kib(pid) {
                max = max.max(kib);
            }
            thread::sleep(Duration::from_millis(5));
        }
        max
    })
}

/// A client that keeps sending while it reads through a 4 KiB window, so
/// its pending output swings between half of `--max-output` and
/// `--max-output` and never reaches zero. Regression: the output buffer was
/// reset only when it emptied, so it grew by everything the client was
/// ever sent (+150 MiB in 10 s at the defaults). Every reply must arrive,
/// in order, and RSS must stay within about `--max-output`.
fn slow_window_reader_keeps_memory_bounded(max_output: u64) {
    const LINES: u64 = 200_000; // ~22 MB of replies
    let server = Server::start(&["--max-output", &max_output.to_string()]);
    let client = Client::connect_with_receive_buffer(server.addr, 4096);
    let mut stream = client.stream;
    let mut greeting = [0u8; 6];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"READY\n");
    let baseline = server.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_rss_sampler(server.pid(), stop.clone());
    let writer = spawn_echo_writer(stream.try_clone().unwrap(), LINES);
    let reader = spawn_echo_reader(stream, LINES);
    assert_eq!(reader.join().expect("reader"), LINES);
    writer
        .join()
        .expect("writer thread")
        .expect("write requests");
    stop.store(true, Ordering::Relaxed);
    let max_rss = sampler.join().unwrap();

    let growth = max_rss.saturating_sub(baseline);
    let bound = 2 * max_output / 1024 + SLACK_KIB;
    eprintln!("--max-output {max_output}: RSS {baseline} KiB -> at most {max_rss} KiB (+{growth} KiB, bound {bound} KiB) over {LINES} replies");
    assert!(
        growth <= bound,
        "RSS grew by {growth} KiB for a slow reader (bound {bound} KiB): output memory grows with history"
    );
    server.assert_no_panic();
}

#[test]
fn output_buffer_does_not_grow_with_what_a_slow_reader_was_sent() {
    slow_window_reader_keeps_memory_bounded(1_048_576);
}

#[test]
fn output_buffer_does_not_grow_with_what_a_slow_reader_was_sent_small_max_output() {
    slow_window_reader_keeps_memory_bounded(4096);
}

/// Per client: one `ECHO <seq>` then this many `STATS`, repeated. STATS
/// answers ~30 times more bytes than it takes, so a client's replies
/// outgrow what the kernel buffers for it quickly.
const STATS_PER_ECHO: u64 = 9;

fn pipelined_requests(rounds: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in 0..rounds {
        out.extend_from_slice(format!("ECHO {seq}\n").as_bytes());
        for _ in 0..STATS_PER_ECHO {
            out.extend_from_slice(b"STATS\n");
        }
    }
    out
}

/// Reads every reply to `pipelined_requests(rounds)`, checking order.
fn read_pipelined_replies(client: &mut Client, rounds: u64) {
    for seq in 0..rounds {
        assert_eq!(client.read_line(), format!("OK {seq}"), "round {seq}");
        for _ in 0..STATS_PER_ECHO {
            let line = client.read_line();
            assert!(line.starts_with("OK connections="), "round {seq}: {line}");
        }
    }
}

/// `--max-memory` caps the bytes held in all client buffers together. 120
/// clients pipeline without reading against a 2 MiB cap (at the default
/// `--max-output` of 1 MiB they could hold 120 MiB): STATS `buffered` stays
/// within the cap plus one read and one reply, RSS within the cap plus a
/// stated slack, a fresh client is served all along, and once the clients
/// read, every reply arrives complete and in order.
fn max_memory_caps_all_client_buffers_together() {
    const CLIENTS: usize = 120;
    const ROUNDS: u64 = 4_000; // 40,000 requests, ~7 MB of replies per client
    const CAP: u64 = 2 * 1024 * 1024;
    // Past the cap: one read (the server's 64 KiB read buffer) and a reply,
    // the read during which the total crossed it; and, per client, the
    // small read it may still make over the cap while it has nothing
    // pending (1 KiB) and a reply.
    const ONE_READ: u64 = 64 * 1024 + 1024;
    const OVER_CAP: u64 = ONE_READ + CLIENTS as u64 * (1024 + 512);
    let server = Server::start(&["--max-memory", &CAP.to_string()]);
    let requests = Arc::new(pipelined_requests(ROUNDS));

    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = Client::connect_with_receive_buffer(server.addr, 4096);
            c.expect_line("READY");
            c
        })
        .collect();
    let baseline = server.rss_kib();
    let writers: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut stream = c.stream.try_clone().unwrap();
            let requests = requests.clone();
            // Blocks once the server stops reading us; released when we read.
            thread::spawn(move || stream.write_all(&requests).expect("write requests"))
        })
        .collect();

    // Watch the server while the clients do not read: STATS from a fresh
    // client each time (so it is served meanwhile), and RSS.
    let max_buffered = AtomicU64::new(0);
    let mut max_rss = 0;
    let mut max_paused = 0;
    let mut last_buffered = u64::MAX;
    let mut steady = 0;
    let deadline = Instant::now() + PATIENCE;
    while steady < 10 {
        assert!(
            Instant::now() < deadline,
            "the clients' buffers never settled"
        );
        let stats = server.stats();
        let buffered = stats.get("buffered");
        max_buffered.fetch_max(buffered, Ordering::Relaxed);
        max_paused = max_paused.max(stats.get("paused"));
        max_rss = max_rss.max(server.rss_kib());
        steady = if buffered == last_buffered {
            steady + 1
        } else {
            0
        };
        last_buffered = buffered;
        thread::sleep(Duration::from_millis(50));
    }
    let max_buffered = max_buffered.into_inner();
    let growth = max_rss.saturating_sub(baseline);
    eprintln!(
        "{CLIENTS} clients not reading, --max-memory {CAP}: buffered at most {max_buffered}, \
         paused at most {max_paused}, RSS {baseline} KiB -> {max_rss} KiB (+{growth} KiB)"
    );
    assert!(
        max_paused > 0,
        "no connection was ever paused: the test never reached the cap"
    );
    assert!(
        max_buffered > CAP / 2,
        "buffered reached only {max_buffered}: the test never approached the cap"
    );
    assert!(
        max_buffered <= CAP + OVER_CAP,
        "STATS buffered {max_buffered} passed --max-memory {CAP} by more than {OVER_CAP}"
    );
    let bound = (CAP + OVER_CAP) / 1024 + SLACK_KIB;
    assert!(
        growth <= bound,
        "RSS grew by {growth} KiB with --max-memory {CAP} (bound {bound} KiB)"
    );

    // Now every client reads: all replies, complete and in order.
    let readers: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            thread::spawn(move || {
                read_pipelined_replies(&mut c, ROUNDS);
                c
            })
        })
        .collect();
    for reader in readers {
        let mut c = reader.join().expect("reader");
        c.send(b"PING\n");
        c.expect_line("PONG");
    }
    for writer in writers {
        writer.join().expect("writer");
    }
    let stats = server.stats();
    assert_eq!(stats.get("paused"), 0);
    server.assert_no_panic();
}

/// A connection with no pending output is served even while the process is
/// over `--max-memory`, and the clients that hold memory are paused, not
/// closed (backpressure, not eviction).
fn a_client_with_nothing_pending_is_served_while_over_max_memory() {
    const CAP: u64 = 256 * 1024;
    // ~13 MB of replies: more than the kernel buffers for one connection
    // (on loopback, megabytes), so output really waits in the server.
    const ROUNDS: u64 = 8_000;
    let server = Server::start(&["--max-memory", &CAP.to_string()]);
    let requests = pipelined_requests(ROUNDS);
    let mut hog = Client::connect_with_receive_buffer(server.addr, 4096);
    hog.expect_line("READY");
    let mut stream = hog.stream.try_clone().unwrap();
    let writer = thread::spawn(move || stream.write_all(&requests).expect("write"));
    // Wait until the hog is paused over the cap.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = server.stats();
        if stats.get("paused") >= 1 && stats.get("buffered") > CAP / 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the hog was never paused");
        thread::sleep(Duration::from_millis(20));
    }
    let mut fresh = server.client();
    for _ in 0..100 {
        fresh.send(b"PING\n");
        fresh.expect_line("PONG");
    }
    read_pipelined_replies(&mut hog, ROUNDS);
    writer.join().unwrap();
}
