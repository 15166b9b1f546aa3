//! Step 2: one thread per connection.
//!
//! Same behaviour as step 1 (greet with `READY`, echo every line back as-is),
//! but each accepted connection gets its own OS thread, so a slow or idle
//! client no longer holds up everybody else.
//!
//! Run it:   cargo run --example step2_threads -- 127.0.0.1:9001
//! Talk:     nc 127.0.0.1 9001   (in two terminals at once)
//!
//! What it costs: every connection is a thread with its own stack (2 MiB of
//! address space by default, a few pages of it actually touched), its own
//! kernel task, and a context switch whenever it wakes. A thousand idle
//! clients are a thousand sleeping threads. See
//! docs/tutorial.md for measured figures, and step 3 for the
//! alternative: one thread that waits on all sockets at once.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process;
use std::thread;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());

    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("step2_threads: cannot listen on {addr}: {err}");
            process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(local) => eprintln!("listening on {local}"),
        Err(err) => {
            eprintln!("step2_threads: cannot read the bound address: {err}");
            process::exit(1);
        }
    }

    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
        };
        // The accept loop only hands the socket over and goes straight back
        // to accept(2); the conversation happens on the new thread.
        let spawned = thread::Builder::new()
            .name("client".to_string())
            .spawn(move || {
                if let Err(err) = serve(&stream) {
                    eprintln!("client failed: {err}");
                }
                // `stream` is dropped here, which closes the socket.
            });
        // Creating a thread can fail (memory, the process or system thread
        // limit). Then the closure, and with it the socket, is dropped: that
        // one client is disconnected and the server carries on.
        if let Err(err) = spawned {
            eprintln!("cannot start a thread for a client: {err}");
        }
    }
}

/// Talks to one client until it closes its side. Identical to step 1: the
/// blocking calls are fine now, because they block only this client's thread.
fn serve(stream: &TcpStream) -> io::Result<()> {
    let mut writer = stream;
    writer.write_all(b"READY\n")?;

    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read up to and including '\n', however many reads that takes.
        // (Still no line cap here: see step 4.)
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        writer.write_all(&line)?;
    }
}
