//! Step 3: a minimal event loop with mio.
//!
//! One thread serves every client. Instead of blocking in read(2) on one
//! socket, it asks the kernel (epoll, through mio's `Poll`) "which of my
//! sockets can make progress?" and only touches those. Sockets are
//! non-blocking: an operation that would have to wait returns `WouldBlock`
//! instead. Each connection lives in a `Slab`; its slot number is its `Token`.
//!
//! It echoes raw bytes back: no `READY`, no lines yet (step 4 adds framing).
//!
//! Run it:   cargo run --example step3_mio_echo -- 127.0.0.1:9001
//! Talk:     nc 127.0.0.1 9001
//!
//! What it still gets wrong, on purpose, to keep it short:
//! - Short writes. A non-blocking write may take only part of the buffer, or
//!   nothing at all, when the client is not reading. Here we then give up on
//!   the client. Step 5 keeps the rest in a per-connection output buffer and
//!   sends it when the socket becomes writable again.
//! - Fairness. A client that sends without pause keeps the loop in its read
//!   loop; loopline reads a bounded budget per turn (docs/pitfalls.md, pitfall 3).

use std::io::{self, ErrorKind, Read, Write};
use std::process;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

// Slab keys start at 0, so the listener takes a token no slab key can be.
const LISTENER: Token = Token(usize::MAX);

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    if let Err(err) = run(&addr) {
        eprintln!("step3_mio_echo: {err}");
        process::exit(1);
    }
}

fn run(addr: &str) -> io::Result<()> {
    let addr = addr.parse().map_err(|err| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("bad address {addr}: {err}"),
        )
    })?;
    // Like std, mio listens with a backlog of 128: a burst of connects
    // beyond it waits for SYN retries. loopline uses socket2 and 4096
    // (docs/pitfalls.md, pitfall 10).
    let mut listener = TcpListener::bind(addr)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    eprintln!("listening on {}", listener.local_addr()?);

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut clients: Slab<TcpStream> = Slab::new();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;

    loop {
        // Sleep until at least one registered socket is ready.
        if let Err(err) = poll.poll(&mut events, None) {
            // A signal interrupted the wait: nothing is wrong, wait again.
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept_all(&listener, &mut poll, &mut clients),
                Token(key) => {
                    // An event for a slot we no longer hold is stale: ignore it.
                    let Some(stream) = clients.get_mut(key) else {
                        continue;
                    };
                    if !echo_until_would_block(stream) {
                        let mut stream = clients.remove(key);
                        // Dropping the stream closes it; deregister first so
                        // epoll forgets it (errors here change nothing).
                        let _ = poll.registry().deregister(&mut stream);
                    }
                }
            }
        }
    }
}

/// Accepts every pending connection. mio is edge-triggered: the listener
/// reports "readable" once, however many clients are waiting, so we must
/// accept until `WouldBlock` or the rest wait for a new arrival.
fn accept_all(listener: &TcpListener, poll: &mut Poll, clients: &mut Slab<TcpStream>) {
    loop {
        match listener.accept() {
            Ok((mut stream, _peer)) => {
                let entry = clients.vacant_entry();
                let token = Token(entry.key());
                // A slot freed earlier in this same batch may be reused here,
                // and a stale event for the old client may then reach this
                // new one. For an echo server that is harmless (it just reads
                // WouldBlock). loopline keeps a closed connection's slot until
                // the batch ends (`Server::reap`), and checks a per-connection
                // id on its ready list and timers (docs/pitfalls.md, pitfall 5).
                match poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE)
                {
                    Ok(()) => {
                        entry.insert(stream);
                    }
                    Err(err) => eprintln!("cannot register a client: {err}"),
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return,
            // The client gave up before we accepted it: skip it.
            Err(err) if err.kind() == ErrorKind::ConnectionAborted => continue,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            // Out of file descriptors, most likely. Stop for now; loopline
            // handles this properly (docs/pitfalls.md, pitfall 4).
            Err(err) => {
                eprintln!("accept failed: {err}");
                return;
            }
        }
    }
}

/// Reads whatever the client sent and writes it straight back. Returns false
/// when the connection should be closed.
fn echo_until_would_block(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    // Edge-triggered again: this event is the only notice we get for the
    // bytes waiting now. Read until WouldBlock, or they sit there unseen.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return false, // the client closed its side
            Ok(n) => {
                // write_all on a non-blocking socket fails with WouldBlock if
                // the client is not reading, after sending only part of the
                // data. We cannot keep the rest here, so we close: this is the
                // short-write bug that step 5 fixes with an output buffer.
                if let Err(err) = stream.write_all(&buf[..n]) {
                    eprintln!("write failed ({err}); dropping the client (see step 5)");
                    return false;
                }
            }
            // Drained: everything the kernel had is echoed. Wait for the next event.
            Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            // Connection reset and friends: close this client only.
            Err(_) => return false,
        }
    }
}
