//! Step 5: partial writes, write readiness and backpressure.
//!
//! Step 4 wrote replies with `write_all` and dropped the client when the
//! socket would not take them. A non-blocking write may take only part of
//! the bytes (a short write), or none (`WouldBlock`), whenever the client is
//! slower to read than we are to answer. So now:
//!
//! 1. Each connection has an output buffer. Replies are appended to it and
//!    written until `WouldBlock`; whatever the socket did not take stays
//!    there, to be sent when the socket reports it is writable again.
//! 2. A client that sends requests but does not read the replies would make
//!    that buffer grow without end. When more than MAX_OUTPUT bytes are
//!    pending, we stop reading from that client. Its requests then wait in
//!    the kernel, TCP flow control soon stops the client's writes, and our
//!    memory per client stays bounded. Nothing is lost, only delayed.
//! 3. When the output drains below the cap, we resume reading *by hand*.
//!    mio is edge-triggered: the kernel announced the waiting bytes once,
//!    while we were paused and ignored it, and it will not announce them
//!    again. If we waited for a new READABLE event, the connection would hang.
//!
//! How do we learn that the socket takes bytes again? Two ways:
//!
//! - Register once (the default here, and what loopline does): register
//!   READABLE | WRITABLE when the client connects and never change it. Under
//!   edge-triggered readiness a WRITABLE event only comes when room appears,
//!   and when nothing is pending we ignore it without an extra system call.
//!   One `epoll_ctl` at accept, one at close, none in between, however many
//!   requests are served.
//!
//! - Toggle (run with `--toggle`): ask for WRITABLE only while output is
//!   pending and READABLE only while reading is not paused, re-registering
//!   whenever that changes. A level-triggered loop (poll(2), select(2), epoll
//!   without EPOLLET) *must* do this, or it wakes up at once, again and again,
//!   for a socket that is writable but has nothing to write. Every change is
//!   an `epoll_ctl` system call: typically two (add WRITABLE, drop it again)
//!   each time the replies do not fit into the socket at once, for every
//!   connection, which is common with many slow clients.
//!
//! loopline chose register-once: no `epoll_ctl` on the request path. The
//! price is an occasional wakeup to ignore (a WRITABLE event with nothing
//! pending, a READABLE one while reading is paused).
//!
//! Run it:   cargo run --example step5_backpressure -- 127.0.0.1:9001 [--toggle]
//! Talk:     nc 127.0.0.1 9001
//!
//! Left out here, handled in loopline: a per-turn read budget so one flooding
//! client cannot starve the rest, timeouts, lingering close, signals.

use std::io::{self, ErrorKind, Read, Write};
use std::process;

use memchr::memchr;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

/// Longest request line, CR and LF not counted.
const MAX_LINE: usize = 1024;
/// Pending output above which we stop reading from a client. Small, so you
/// can watch it happen; loopline's default is 1 MiB.
const MAX_OUTPUT: usize = 64 * 1024;
/// Bytes read per read(2). One read can add at most about 4 times this much
/// output (an empty line "\n" is answered with "OK \n"), so pending output
/// never exceeds MAX_OUTPUT + 4 * READ_CHUNK.
const READ_CHUNK: usize = 4096;

struct Client {
    stream: TcpStream,
    /// The unfinished request line, as in step 4.
    input: Vec<u8>,
    /// Replies not yet taken by the socket: `output[written..]` is pending.
    output: Vec<u8>,
    written: usize,
    /// The last write hit `WouldBlock`: don't try again before a WRITABLE
    /// event says there is room (it would only fail again).
    socket_full: bool,
    /// We stopped reading because too much output is pending.
    reading_paused: bool,
    /// No more reading: the client closed its side, or we sent an error.
    /// Once the output is flushed, the connection is closed.
    done_reading: bool,
    /// What the socket is registered for (only changes with `--toggle`).
    interest: Interest,
}

fn main() {
    let mut addr = None;
    let mut toggle = false;
    for arg in std::env::args().skip(1) {
        if arg == "--toggle" {
            toggle = true;
        } else if addr.is_none() {
            addr = Some(arg);
        } else {
            eprintln!("usage: step5_backpressure [ADDR] [--toggle]");
            process::exit(2);
        }
    }
    let addr = addr.unwrap_or_else(|| "127.0.0.1:0".to_string());
    if let Err(err) = run(&addr, toggle) {
        eprintln!("step5_backpressure: {err}");
        process::exit(1);
    }
}

fn run(addr: &str, toggle: bool) -> io::Result<()> {
    let addr = addr.parse().map_err(|err| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("bad address {addr}: {err}"),
        )
    })?;
    let mut listener = TcpListener::bind(addr)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    let mode = if toggle { "toggle" } else { "register-once" };
    eprintln!("listening on {} ({mode} mode)", listener.local_addr()?);

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut clients: Slab<Client> = Slab::new();
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;

    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept_all(&listener, poll.registry(), &mut clients, toggle),
                Token(key) => {
                    let Some(client) = clients.get_mut(key) else {
                        continue;
                    };
                    // Closed and error flags are only hints; the next read
                    // or write is what reports the error, so let both run.
                    let trouble =
                        event.is_read_closed() || event.is_write_closed() || event.is_error();
                    let readable = event.is_readable() || trouble;
                    let writable = event.is_writable() || trouble;
                    let keep = match client.on_event(key, readable, writable) {
                        Ok(keep) => keep,
                        Err(err) => {
                            // Reset, broken pipe: this client is gone, the
                            // server is fine. (Rust ignores SIGPIPE for us.)
                            eprintln!("client {key}: {err}");
                            false
                        }
                    };
                    if !keep {
                        let mut client = clients.remove(key);
                        let _ = poll.registry().deregister(&mut client.stream);
                    } else if toggle {
                        if let Err(err) = client.update_interest(poll.registry(), Token(key)) {
                            eprintln!("client {key}: cannot reregister: {err}");
                            let mut client = clients.remove(key);
                            let _ = poll.registry().deregister(&mut client.stream);
                        }
                    }
                }
            }
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    registry: &Registry,
    clients: &mut Slab<Client>,
    toggle: bool,
) {
    loop {
        match listener.accept() {
            Ok((mut stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let entry = clients.vacant_entry();
                // Register-once: both directions, for the whole connection.
                // Toggle: only what we want now, which is to read.
                let interest = if toggle {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                match registry.register(&mut stream, Token(entry.key()), interest) {
                    Ok(()) => {
                        entry.insert(Client {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                            socket_full: false,
                            reading_paused: false,
                            done_reading: false,
                            interest,
                        });
                    }
                    Err(err) => eprintln!("cannot register a client: {err}"),
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == ErrorKind::ConnectionAborted => continue,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => {
                eprintln!("accept failed: {err}");
                return;
            }
        }
    }
}

impl Client {
    fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    /// Handles one readiness event. Returns Ok(false) when the connection is
    /// finished and should be closed.
    fn on_event(&mut self, key: usize, readable: bool, writable: bool) -> io::Result<bool> {
        if writable {
            // Room in the socket buffer again: send what is pending. With
            // nothing pending this costs nothing, which is why registering
            // WRITABLE for good is cheap under edge-triggered readiness.
            self.socket_full = false;
            self.flush()?;
        }

        let mut read_now = readable;
        if self.reading_paused && self.pending() <= MAX_OUTPUT {
            // The client took its replies; take its requests again. Do it
            // now, by hand: the bytes it sent while we were paused raised
            // their READABLE edge back then, and no new event will come.
            self.reading_paused = false;
            eprintln!(
                "client {key}: output drained to {} bytes, resuming reads",
                self.pending()
            );
            read_now = true;
        }
        if read_now {
            self.read_until_blocked(key)?;
        }

        // Finished: nothing more to read and every reply delivered.
        Ok(!(self.done_reading && self.pending() == 0))
    }

    /// Reads and answers until `WouldBlock`, EOF, or too much output pending.
    fn read_until_blocked(&mut self, key: usize) -> io::Result<()> {
        let mut buf = [0u8; READ_CHUNK];
        while !self.done_reading && !self.reading_paused {
            if self.pending() > MAX_OUTPUT {
                // Backpressure: stop reading. New requests wait in the
                // kernel's receive buffer; once that is full the client's
                // writes block. Our memory stays bounded.
                self.reading_paused = true;
                eprintln!(
                    "client {key}: {} bytes pending, pausing reads",
                    self.pending()
                );
                return Ok(());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // The client closed its writing side, but may still be
                    // reading: answer a last line without LF, and the loop
                    // closes the connection only once the output is flushed.
                    self.done_reading = true;
                    if !self.input.is_empty() {
                        let line = std::mem::take(&mut self.input);
                        answer_line(&line, &mut self.output);
                    }
                }
                Ok(n) => {
                    let searched = self.input.len();
                    self.input.extend_from_slice(&buf[..n]);
                    self.answer_complete_lines(searched);
                }
                // Drained: the next READABLE event will bring more.
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            // Send as we go, so a client that does read keeps the buffer small.
            self.flush()?;
        }
        Ok(())
    }

    /// Step 4's framing, but replies go into the output buffer.
    fn answer_complete_lines(&mut self, searched: usize) {
        let mut line_start = 0;
        let mut search_from = searched;
        while let Some(offset) = memchr(b'\n', &self.input[search_from..]) {
            let line_end = search_from + offset;
            if !answer_line(&self.input[line_start..line_end], &mut self.output) {
                self.stop_reading_after_error();
                return;
            }
            line_start = line_end + 1;
            search_from = line_start;
        }
        self.input.drain(..line_start);

        let rest = &self.input;
        if rest.len() > MAX_LINE + 1 || (rest.len() == MAX_LINE + 1 && rest.last() != Some(&b'\r'))
        {
            self.output.extend_from_slice(b"ERR line too long\n");
            self.stop_reading_after_error();
        }
    }

    /// After `ERR line too long`: read nothing more, flush, then close. (A
    /// close with unread input sends a reset that can destroy the last
    /// replies; loopline drains briefly first: docs/pitfalls.md, pitfall 8.)
    fn stop_reading_after_error(&mut self) {
        self.done_reading = true;
        self.input = Vec::new();
    }

    /// Writes pending output until it is all sent or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while self.pending() > 0 && !self.socket_full {
            match self.stream.write(&self.output[self.written..]) {
                // A short write is normal: the socket buffer had room for only
                // n bytes. Keep the rest; a WRITABLE event says when to go on.
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    // Full. Edge-triggered: a WRITABLE event will come once
                    // the client has read enough to make room.
                    self.socket_full = true;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
        // Drop the bytes already sent, so the buffer holds only pending ones.
        self.output.drain(..self.written);
        self.written = 0;
        Ok(())
    }

    /// `--toggle` only: make the registration match what we want right now.
    /// Each change is one epoll_ctl(EPOLL_CTL_MOD) system call.
    fn update_interest(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let want_read = !self.reading_paused && !self.done_reading;
        let want_write = self.pending() > 0;
        let wanted = match (want_read, want_write) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            // mio has no "nothing"; (false, false) lasts only until close.
            _ => Interest::READABLE,
        };
        if wanted != self.interest {
            registry.reregister(&mut self.stream, token, wanted)?;
            self.interest = wanted;
        }
        Ok(())
    }
}

/// Appends the reply to one request line (without its LF) to `replies`.
/// Returns false if the line was too long (the reply is then the error).
fn answer_line(line: &[u8], replies: &mut Vec<u8>) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        replies.extend_from_slice(b"ERR line too long\n");
        return false;
    }
    replies.extend_from_slice(b"OK ");
    replies.extend_from_slice(line);
    replies.push(b'\n');
    true
}
