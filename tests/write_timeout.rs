//! `--write-timeout` means the peer took no bytes. Both directions: a slow
//! but live reader is never closed, however long its output waits; a peer
//! that stops taking bytes is closed once the timeout has passed since the
//! last byte it took.
//!
//! Why this needs care: after a WouldBlock the writable edge comes only
//! once the kernel's send buffer (megabytes on loopback) has drained by a
//! large share, so a clock that moved only on the server's own successful
//! writes closed live readers slower than that. The server now asks the
//! kernel how many written bytes are still unacknowledged.

mod util;

use std::io::{ErrorKind, Read};
use std::thread;
use std::time::{Duration, Instant};

use util::{spawn_echo_writer, Client, EchoReplies, Server, PATIENCE};

/// Regression: a client reading steadily at about 1 MB/s while it keeps
/// sending was closed after 1.2 s with `--write-timeout 1s` ("peer took no
/// bytes"). It must stay connected and get every reply, in order.
#[test]
fn a_slow_live_reader_is_never_closed_by_the_write_timeout() {
    const LINES: u64 = 50_000; // ~5.5 MB of replies: about 5 s at 1 MB/s
    let server = Server::start(&["--write-timeout", "1s"]);
    let mut client = Client::connect_with_receive_buffer(server.addr, 64 * 1024);
    client.expect_line("READY");
    let writer = spawn_echo_writer(client.stream.try_clone().unwrap(), LINES);

    // 16 KiB every 15 ms: at most ~1 MB/s, slower than the server can
    // produce, so output waits in the server for the whole run.
    let mut stream = client.stream.try_clone().unwrap();
    let mut replies = EchoReplies::default();
    let mut chunk = vec![0u8; 16 * 1024];
    let started = Instant::now();
    while replies.checked < LINES {
        thread::sleep(Duration::from_millis(15));
        let n = stream.read(&mut chunk).expect("read replies");
        assert!(
            n > 0,
            "closed after {} replies and {:?}: a live reader was taken for a stalled one",
            replies.checked,
            started.elapsed()
        );
        replies.check(&chunk[..n]);
    }
    writer
        .join()
        .expect("writer thread")
        .expect("send requests");
    eprintln!("{LINES} replies read slowly in {:?}", started.elapsed());
    assert!(!server.logged("write timeout"));
    client.send(b"PING\n");
    client.expect_line("PONG");
}

/// A peer that reads for a while, then stops taking bytes, is closed once
/// the timeout has passed since it stopped (and not before), without a
/// further line.
#[test]
fn a_reader_that_stops_is_closed_after_the_timeout() {
    let mut server = Server::start(&["--write-timeout", "1s"]);
    let mut client = Client::connect_with_receive_buffer(server.addr, 64 * 1024);
    client.expect_line("READY");
    let writer = spawn_echo_writer(client.stream.try_clone().unwrap(), 200_000);

    // Read for a while, a little at a time...
    let mut stream = client.stream.try_clone().unwrap();
    let mut replies = EchoReplies::default();
    let mut chunk = vec![0u8; 16 * 1024];
    let reading_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < reading_until {
        thread::sleep(Duration::from_millis(15));
        let n = stream.read(&mut chunk).expect("read replies");
        assert!(n > 0, "closed while reading");
        replies.check(&chunk[..n]);
    }
    // ...then stop taking bytes. The clock starts before a last read that
    // drains everything the socket holds: a read of 16 KiB out of a 64 KiB
    // buffer may not open the window enough for the kernel to tell the
    // server (no window update is sent for a small opening), so the peer's
    // last visible progress could come before its last read; a full drain
    // opens the whole window, so every byte the peer takes from the server
    // is taken after `stopped`.
    let stopped = Instant::now();
    stream.set_nonblocking(true).unwrap();
    loop {
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => replies.check(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    stream.set_nonblocking(false).unwrap();
    server.wait_for_log("write timeout");
    let after = stopped.elapsed();
    eprintln!(
        "closed {after:?} after the reader stopped, {} replies read",
        replies.checked
    );
    assert!(
        after >= Duration::from_secs(1),
        "closed {after:?} after the peer stopped reading, before --write-timeout 1s"
    );
    assert!(
        after < PATIENCE,
        "closed only {after:?} after the peer stopped"
    );
    // The connection is gone: reading on ends (EOF or reset), and the
    // writer's sends fail.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => assert!(Instant::now() < deadline, "still receiving"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(Instant::now() < deadline, "neither EOF nor reset")
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    let _ = client.stream.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}
