//! Step 4: line framing on top of the event loop.
//!
//! TCP delivers a byte stream, not messages. One read may hold half a line,
//! or three lines and the start of a fourth; the split depends on timing, not
//! on what the client meant. So each connection keeps the bytes of its
//! unfinished line in an input buffer, and every read appends to it and cuts
//! out whatever complete lines it now holds. For each line `X` the server
//! answers `OK X`.
//!
//! Framing rules (the same as loopline's):
//! - a line ends at LF; one CR directly before the LF is removed;
//! - a line longer than MAX_LINE bytes gets `ERR line too long` and the
//!   connection is closed, as soon as the unfinished line can no longer fit,
//!   without waiting for an LF that may never come;
//! - when the client closes its side, a last line without LF is answered too.
//!
//! Run it:   cargo run --example step4_framing -- 127.0.0.1:9001
//! Talk:     nc 127.0.0.1 9001
//!
//! Still missing: writes are done as in step 3, so a client that does not
//! read its replies gets dropped. Step 5 fixes that.

use std::io::{self, ErrorKind, Read, Write};
use std::process;

use memchr::memchr;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

/// Longest request line, CR and LF not counted.
const MAX_LINE: usize = 1024;

struct Client {
    stream: TcpStream,
    /// Bytes of the line that has started but not ended yet. Never longer
    /// than MAX_LINE + 1 between reads, so a client cannot make it grow.
    input: Vec<u8>,
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    if let Err(err) = run(&addr) {
        eprintln!("step4_framing: {err}");
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
    let mut listener = TcpListener::bind(addr)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    eprintln!("listening on {}", listener.local_addr()?);

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
                LISTENER => accept_all(&listener, &mut poll, &mut clients),
                Token(key) => {
                    let Some(client) = clients.get_mut(key) else {
                        continue;
                    };
                    if !client.read_and_answer() {
                        let mut client = clients.remove(key);
                        let _ = poll.registry().deregister(&mut client.stream);
                    }
                }
            }
        }
    }
}

/// Accepts until `WouldBlock`, exactly as in step 3.
fn accept_all(listener: &TcpListener, poll: &mut Poll, clients: &mut Slab<Client>) {
    loop {
        match listener.accept() {
            Ok((mut stream, _peer)) => {
                // Replies are small; without TCP_NODELAY the kernel may hold
                // one back for up to 40 ms waiting for an ACK (Nagle).
                let _ = stream.set_nodelay(true);
                let entry = clients.vacant_entry();
                let token = Token(entry.key());
                match poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE)
                {
                    Ok(()) => {
                        entry.insert(Client {
                            stream,
                            input: Vec::new(),
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
    /// Reads until `WouldBlock`, answering every complete line. Returns false
    /// when the connection should be closed.
    fn read_and_answer(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // The client closed its writing side. A read of 0 bytes
                    // is the only way we learn that, and it is also the only
                    // moment a last line without LF becomes complete.
                    if !self.input.is_empty() {
                        let mut replies = Vec::new();
                        let line = std::mem::take(&mut self.input);
                        answer_line(&line, &mut replies);
                        let _ = self.send(&replies);
                    }
                    return false;
                }
                Ok(n) => {
                    // A read of n bytes is not a message: it is whatever had
                    // arrived. Append it and see which lines are complete now.
                    let searched = self.input.len();
                    self.input.extend_from_slice(&buf[..n]);
                    if !self.answer_complete_lines(searched) {
                        return false;
                    }
                }
                // Drained until the next event (see step 3).
                Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Cuts every complete line out of `self.input` and answers it. The
    /// first `searched` bytes are known to hold no LF (they are the rest of
    /// the last read), so the search starts after them: feeding a line one
    /// byte at a time then costs O(length), not O(length squared).
    fn answer_complete_lines(&mut self, searched: usize) -> bool {
        let mut replies = Vec::new();
        let mut line_start = 0;
        let mut search_from = searched;
        // Several lines may have arrived in one read: answer each in order.
        while let Some(offset) = memchr(b'\n', &self.input[search_from..]) {
            let line_end = search_from + offset;
            if !answer_line(&self.input[line_start..line_end], &mut replies) {
                // Replies to the earlier lines, then the error, then close.
                let _ = self.send(&replies);
                return false;
            }
            line_start = line_end + 1;
            search_from = line_start;
        }
        // Keep only the unfinished line (possibly empty) for the next read.
        self.input.drain(..line_start);

        // Refuse an unfinished line as soon as it can no longer fit, rather
        // than buffering until an LF that may never come. The longest one that
        // may still turn out fine is MAX_LINE bytes plus the CR of a CRLF.
        let rest = &self.input;
        let cannot_fit = rest.len() > MAX_LINE + 1
            || (rest.len() == MAX_LINE + 1 && rest.last() != Some(&b'\r'));
        if cannot_fit {
            replies.extend_from_slice(b"ERR line too long\n");
            // The caller closes the socket. If unread input is still queued
            // then, the kernel sends a reset that can destroy these replies
            // in flight; loopline drains briefly before closing (docs/pitfalls.md,
            // pitfall 8).
            let _ = self.send(&replies);
            return false;
        }
        // One write for all the replies of this read, not one per line.
        self.send(&replies).is_ok()
    }

    /// Writes `bytes` at once. Still step 3's shortcut: if the socket does not
    /// take everything now, this fails and the client is dropped (step 5).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.stream.write_all(bytes)
    }
}

/// Appends the reply to one request line (without its LF) to `replies`.
/// Returns false if the line is too long: the reply is then the error, and
/// the caller closes the connection after sending it.
fn answer_line(line: &[u8], replies: &mut Vec<u8>) -> bool {
    // One CR right before the LF belongs to the line ending, not the line.
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
