//! Step 1: a blocking echo server, one client at a time.
//!
//! The simplest server that could possibly work: accept a connection, talk to
//! it until it goes away, then accept the next one. It greets with `READY` and
//! echoes every line back exactly as it arrived.
//!
//! Run it:   cargo run --example step1_blocking -- 127.0.0.1:9001
//! Talk:     nc 127.0.0.1 9001
//!
//! The problem it shows: while one client is connected, every other client
//! waits. The kernel completes their TCP handshake (the listen backlog), but no
//! code runs for them, so they get no `READY` until the first client leaves.
//! Step 2 fixes that with a thread per connection.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());

    // Failing to bind is the one error we do not recover from: without a
    // listening socket there is no server. Say which address and why.
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("step1_blocking: cannot listen on {addr}: {err}");
            process::exit(1);
        }
    };
    match listener.local_addr() {
        // With port 0 the kernel picks a free port: print the real one, so a
        // test (or you) can connect to it.
        Ok(local) => eprintln!("listening on {local}"),
        Err(err) => {
            eprintln!("step1_blocking: cannot read the bound address: {err}");
            process::exit(1);
        }
    }

    // `incoming()` blocks in accept(2). Only when `serve` returns do we come
    // back here, so the next client is accepted only after this one is done.
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let peer = describe_peer(&stream);
                eprintln!("client {peer} connected");
                match serve(&stream) {
                    Ok(()) => eprintln!("client {peer} disconnected"),
                    // A peer can reset the connection at any time; that ends
                    // this client, never the server.
                    Err(err) => eprintln!("client {peer} failed: {err}"),
                }
            }
            // accept(2) can fail for reasons that have nothing to do with us
            // (the peer gave up before we accepted, we ran out of descriptors).
            // Log it and keep serving.
            Err(err) => eprintln!("accept failed: {err}"),
        }
    }
}

/// Talks to one client until it closes its side of the connection.
fn serve(stream: &TcpStream) -> io::Result<()> {
    // `&TcpStream` implements both Read and Write, so one socket can be read
    // through a buffer and written directly, without duplicating the fd.
    let mut writer = stream;
    writer.write_all(b"READY\n")?;

    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // A single read(2) may return half a line or three lines: TCP is a
        // byte stream, not a message stream. `read_until` keeps reading until
        // it has seen a '\n', so we always echo whole lines.
        //
        // It also blocks the whole server while this client thinks. And it
        // has no limit: a client that never sends '\n' makes `line` grow
        // without bound. Step 4 adds a line cap.
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            // read returned 0 bytes: the client closed its writing side.
            return Ok(());
        }
        // Echo the line as-is, including its '\n' (and a '\r' if the client
        // sent CRLF). A last line without '\n' before EOF is echoed too.
        writer.write_all(&line)?;
    }
}

fn describe_peer(stream: &TcpStream) -> String {
    match stream.peer_addr() {
        Ok(addr) => addr.to_string(),
        // The peer may already be gone by the time we ask.
        Err(_) => "(unknown)".to_string(),
    }
}
