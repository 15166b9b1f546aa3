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
    a_paused_client_whose_output_drains_is_served_while_over_max_memory,
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
            if let Some(kib) = loopline_proc::process_rss_kib(pid) {
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
    // Past the cap: per loop, one read (the server's 64 KiB read buffer)
    // and a reply, the read during which the total crossed it (each loop
    // may be in one); and, per client, the small read it may still make
    // over the cap while it has nothing pending (1 KiB) and a reply.
    const ONE_READ: u64 = 64 * 1024 + 1024;
    let over_cap: u64 = u64::from(util::loops()) * ONE_READ + CLIENTS as u64 * (1024 + 512);
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
        max_buffered <= CAP + over_cap,
        "STATS buffered {max_buffered} passed --max-memory {CAP} by more than {over_cap}"
    );
    let bound = (CAP + over_cap) / 1024 + SLACK_KIB;
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

/// Pipelines requests from `client` without reading its replies, in a
/// thread of its own (it blocks once the server stops reading it), until
/// the server counts at least `paused` paused connections and `buffered`
/// bytes held.
fn hog_until_paused(
    server: &Server,
    client: &Client,
    rounds: u64,
    paused: u64,
    buffered: u64,
) -> thread::JoinHandle<()> {
    let requests = pipelined_requests(rounds);
    let mut stream = client.stream.try_clone().unwrap();
    let writer = thread::spawn(move || stream.write_all(&requests).expect("write"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = server.stats();
        if stats.get("paused") >= paused && stats.get("buffered") > buffered {
            return writer;
        }
        assert!(
            Instant::now() < deadline,
            "never {paused} paused with {buffered} bytes held: {}",
            stats.0
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Regression (a mutant no test caught): a connection paused while the
/// process was over `--max-memory`, whose output then drained to nothing,
/// stayed paused as long as the process was over the cap; the contract
/// says a connection with no pending output is still served. One client
/// (the hog) keeps the process over the cap with output it never reads;
/// another is paused with output pending, then reads it all: it must be
/// served again, every held line answered, while the hog still holds the
/// process over the cap.
fn a_paused_client_whose_output_drains_is_served_while_over_max_memory() {
    const CAP: u64 = 256 * 1024;
    let server = Server::start(&["--max-memory", &CAP.to_string()]);
    let mut hog = Client::connect_with_receive_buffer(server.addr, 4096);
    hog.expect_line("READY");
    let hog_writer = hog_until_paused(&server, &hog, 8_000, 1, CAP);
    // Paused too: its replies (megabytes, more than the kernel buffers on
    // loopback) wait in the server while the process is over the cap.
    const ROUNDS: u64 = 3_000;
    let mut paused = Client::connect_with_receive_buffer(server.addr, 4096);
    paused.expect_line("READY");
    let writer = hog_until_paused(&server, &paused, ROUNDS, 2, CAP);
    // Every reply arrives: once its output has drained, it is served again
    // though the hog still holds the process over the cap.
    read_pipelined_replies(&mut paused, ROUNDS);
    writer.join().unwrap();
    let stats = server.stats();
    assert!(
        stats.get("buffered") > CAP,
        "the hog no longer holds the process over the cap: {}",
        stats.0
    );
    paused.send(b"PING\n");
    paused.expect_line("PONG");
    read_pipelined_replies(&mut hog, 8_000);
    hog_writer.join().unwrap();
}

/// A ClientHello that announces a handshake message of 65,531 bytes, of
/// which only the first `sent` are sent, in records of 16 KiB: a handshake
/// that never finishes, whose bytes a TLS session keeps while it waits.
#[cfg(feature = "tls")]
fn unfinished_client_hello(sent: usize) -> Vec<u8> {
    let mut message = vec![0x01, 0x00, 0xff, 0xfb];
    message.resize(sent, 0x41);
    let mut records = Vec::new();
    for chunk in message.chunks(16 * 1024) {
        records.extend_from_slice(&[0x16, 0x03, 0x01]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}

/// Regression: 400 clients that each sent 48 KiB of an unfinished
/// handshake and waited grew the server by 23 MiB under `--max-memory` of
/// 1 KiB, while STATS showed `buffered=0`: the TLS sessions held the bytes
/// and nothing counted them. They count now, against `--max-memory`, and
/// handshakes stop reading while the total is above it: the server grows
/// by at most the cap plus 16 KiB per connection.
#[cfg(feature = "tls")]
#[test]
fn unfinished_handshakes_count_against_max_memory() {
    const CLIENTS: usize = 400;
    const SENT: usize = 48 * 1024;
    const CAP: u64 = 1024 * 1024;
    const PER_CONNECTION_KIB: u64 = 16;
    let pki = util::tls::Pki::new();
    let mut args = pki.server_args();
    args.extend([
        "--max-memory".into(),
        CAP.to_string(),
        "--handshake-timeout".into(),
        "60s".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_raw(&args, "info");
    let mut watcher = Client::connect_tls(server.addr, pki.client_config(None)).unwrap();
    watcher.expect_line("READY");
    let stats = |watcher: &mut Client| {
        watcher.send(b"STATS\n");
        util::Stats(watcher.read_line())
    };
    let baseline = server.rss_kib();
    let hello = unfinished_client_hello(SENT);
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            s.write_all(&hello).expect("send the unfinished handshake");
            s
        })
        .collect();
    // Until what the server holds settles.
    let (mut last, mut steady, mut max_buffered) = (u64::MAX, 0, 0);
    let deadline = Instant::now() + PATIENCE;
    while steady < 10 {
        assert!(
            Instant::now() < deadline,
            "the handshakes' bytes never settled"
        );
        let buffered = stats(&mut watcher).get("buffered");
        max_buffered = max_buffered.max(buffered);
        steady = if buffered == last { steady + 1 } else { 0 };
        last = buffered;
        thread::sleep(Duration::from_millis(50));
    }
    let growth = server.rss_kib().saturating_sub(baseline);
    let bound = CAP / 1024 + PER_CONNECTION_KIB * CLIENTS as u64;
    eprintln!(
        "{CLIENTS} unfinished handshakes of {SENT} bytes, --max-memory {CAP}: buffered at most \
         {max_buffered}, RSS +{growth} KiB (bound {bound} KiB)"
    );
    assert!(
        max_buffered > CAP / 2,
        "the handshakes' bytes are not counted in buffered: at most {max_buffered}"
    );
    assert!(
        max_buffered <= CAP + 64 * 1024 + 4096,
        "buffered {max_buffered} passed --max-memory {CAP} by more than one read"
    );
    assert!(
        growth <= bound,
        "RSS grew by {growth} KiB (bound {bound} KiB)"
    );
    // The watcher, with nothing pending, is served all along.
    watcher.send(b"PING\n");
    watcher.expect_line("PONG");
    drop(clients);
}
