//! How a connection's bytes cross its socket: as they are (plain TCP), or
//! inside a TLS session (rustls), in the same edge-triggered loop.
//!
//! The connection above works in plaintext: it reads request bytes and
//! writes response bytes, and never sees a TLS record. This module turns
//! those reads and writes into socket calls, and counts the bytes that
//! really cross the socket (ciphertext, for TLS): the write-stall clock
//! compares them with the kernel's count of unacknowledged bytes.
//!
//! TLS inside a hand-rolled loop has four traps, each handled where noted:
//!
//! 1. One `read_tls` takes at most one TLS record's worth (a few KiB) from
//!    the socket. Under edge-triggered readiness, stopping there would leave
//!    bytes in the kernel with no new event to report them: [`Transport::read`]
//!    goes on until the socket says `WouldBlock` or the caller's buffer is
//!    full, so a short read still means "drained", as over plain TCP.
//! 2. rustls keeps decrypted plaintext of its own. When the connection stops
//!    taking it (the fairness budget is spent, or backpressure pauses
//!    reading), no socket event will ever come for it: the connection goes
//!    on the ready list (a full buffer means "run me again") or reads by
//!    hand when it resumes, exactly as for bytes held in the kernel.
//! 3. TLS output (handshake records, alerts, close_notify) is output like
//!    any other: [`Transport::has_unsent`] makes it count for backpressure,
//!    the write-stall timer and the lingering close.
//! 4. A short read may end in the peer's close. A client that sends its
//!    last request and its close_notify in one write has both taken by one
//!    read: the plaintext comes out, the close_notify is consumed, and no
//!    event will ever come for it (the socket is drained). So "short means
//!    drained" holds only while [`Transport::peer_has_closed`] says no: the
//!    connection asks before it goes back to `poll`, and reads on to the end
//!    of the stream when it says yes.
//!
//! And one bound: before its handshake finishes, a TLS session holds what
//! the client sent of it (rustls keeps an unfinished handshake message
//! whole, up to 64 KiB). Those bytes count as the connection's buffered
//! input ([`Transport::held_by_session`]), against `--max-memory`.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

/// The bytes of a connection on the wire.
pub enum Transport {
    /// Plain TCP: plaintext is what crosses the socket.
    Plain,
    /// A TLS session; boxed, so a plain connection does not pay for its size.
    #[cfg(feature = "tls")]
    Tls(Box<TlsSession>),
}

/// A server-side TLS session and what the connection needs to know of it.
#[cfg(feature = "tls")]
pub struct TlsSession {
    session: rustls::ServerConnection,
    /// close_notify has been queued (it is sent once).
    close_notify_queued: bool,
    /// The peer has ended its stream: its close_notify was processed, or
    /// the socket reached its end (trap 4).
    peer_closed: bool,
    /// Ciphertext read while the handshake was going on: what the session
    /// may be holding of an unfinished handshake (an upper bound: rustls
    /// frees each handshake message once it is processed, and keeps no
    /// more than the one it is joining, at most 64 KiB).
    handshake_bytes: u64,
}

/// Bytes that crossed the socket during one call (ciphertext for TLS).
#[derive(Debug, Default, Clone, Copy)]
pub struct Wire {
    /// Read from the socket.
    pub read: u64,
    /// Written to the socket.
    pub written: u64,
}

/// A TLS session failed (bad records, a failed handshake, a certificate the
/// client CA does not vouch for). The connection closes without a line; the
/// alert rustls queued, if any, is sent first, best effort.
#[derive(Debug)]
pub struct TlsFailed(pub String);

impl Transport {
    /// A TLS session for a newly accepted connection.
    #[cfg(feature = "tls")]
    pub fn tls(config: std::sync::Arc<rustls::ServerConfig>) -> Result<Transport, TlsFailed> {
        let session =
            rustls::ServerConnection::new(config).map_err(|e| TlsFailed(e.to_string()))?;
        Ok(Transport::Tls(Box::new(TlsSession {
            session,
            close_notify_queued: false,
            peer_closed: false,
            handshake_bytes: 0,
        })))
    }

    /// Whether the TLS handshake is still going on (never, for plain TCP).
    pub fn is_handshaking(&self) -> bool {
        match self {
            Transport::Plain => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.session.is_handshaking(),
        }
    }

    /// Whether TLS records (handshake, alerts, data already encrypted,
    /// close_notify) wait to be written to the socket.
    pub fn has_unsent(&self) -> bool {
        match self {
            Transport::Plain => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.session.wants_write(),
        }
    }

    /// Whether the peer has ended its stream (TLS: its close_notify was
    /// processed, or the socket reached its end) while plaintext may still
    /// be waiting: a read shorter than the buffer does not mean "drained"
    /// then, the next read returns the end of the stream (trap 4). Never,
    /// for plain TCP, whose end of stream comes with its own event.
    pub fn peer_has_closed(&self) -> bool {
        match self {
            Transport::Plain => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.peer_closed,
        }
    }

    /// Bytes the session holds for the connection beyond its own buffers:
    /// until the handshake is done, what the client sent of it (see
    /// `TlsSession::handshake_bytes`); none after, and none over plain TCP.
    pub fn held_by_session(&self) -> u64 {
        match self {
            Transport::Plain => 0,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) if tls.session.is_handshaking() => tls.handshake_bytes,
            #[cfg(feature = "tls")]
            Transport::Tls(_) => 0,
        }
    }

    /// Moves the handshake on: reads from the socket, at most `budget`
    /// bytes (give or take one `read_tls`, at most 4 KiB), and lets the
    /// session process them. Returns where the handshake stands; the
    /// caller then writes what the session has to say (`write` with no
    /// data).
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub fn advance_handshake(
        &mut self,
        stream: &mut TcpStream,
        budget: usize,
        wire: &mut Wire,
    ) -> Result<Handshake, HandshakeError> {
        match self {
            Transport::Plain => Ok(Handshake::Done),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.advance_handshake(stream, budget, wire),
        }
    }

    /// Reads plaintext into `buf`. `Ok(0)` is the end of the stream (a TCP
    /// EOF, or a TLS close_notify); `WouldBlock` means the socket is
    /// drained and nothing is buffered. A result shorter than `buf` also
    /// means the socket is drained: for TLS this reads on, record after
    /// record, until the socket says `WouldBlock` or `buf` is full (trap 1).
    pub fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        wire: &mut Wire,
    ) -> io::Result<usize> {
        match self {
            Transport::Plain => {
                let n = stream.read(buf)?;
                wire.read += n as u64;
                Ok(n)
            }
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.read(stream, buf, wire),
        }
    }

    /// Sends what it can: first the TLS records the session holds, then
    /// `data`. Returns how many bytes of `data` were taken (for TLS:
    /// encrypted into the session, within its buffer limit, and sent as far
    /// as the socket took them). `WouldBlock` when nothing could be taken.
    pub fn write(
        &mut self,
        stream: &mut TcpStream,
        data: &[u8],
        wire: &mut Wire,
    ) -> io::Result<usize> {
        match self {
            Transport::Plain => {
                let n = stream.write(data)?;
                wire.written += n as u64;
                Ok(n)
            }
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write(stream, data, wire),
        }
    }

    /// Queues the end of the session (TLS close_notify, once), to be sent
    /// by the following writes before the write side is shut.
    pub fn queue_close(&mut self) {
        match self {
            Transport::Plain => {}
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => {
                if !tls.close_notify_queued {
                    tls.close_notify_queued = true;
                    tls.session.send_close_notify();
                }
            }
        }
    }
}

/// Where a handshake stands after [`Transport::advance_handshake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Finished: the session carries plaintext now (and may already hold
    /// the first request, which came with the client's last flight).
    Done,
    /// The socket is drained: the next readable edge goes on.
    Waiting,
    /// The read budget was spent with bytes maybe still in the socket: no
    /// edge will come for them, so the caller must come back by itself.
    BudgetSpent,
}

/// Why a handshake ended without a session.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed first.
    Closed,
    /// A socket error.
    Io(io::Error),
    /// The TLS exchange failed (garbage instead of a ClientHello, no
    /// common version, a client certificate refused...).
    Tls(TlsFailed),
}

#[cfg(feature = "tls")]
impl TlsSession {
    fn advance_handshake(
        &mut self,
        stream: &mut TcpStream,
        budget: usize,
        wire: &mut Wire,
    ) -> Result<Handshake, HandshakeError> {
        let mut read = 0;
        let outcome = loop {
            if read >= budget {
                break Handshake::BudgetSpent;
            }
            match self.session.read_tls(stream) {
                // The peer closed before the handshake finished.
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(n) => {
                    read += n;
                    wire.read += n as u64;
                    self.handshake_bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Handshake::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            self.process()
                .map_err(|e| HandshakeError::Tls(TlsFailed(e.to_string())))?;
            if !self.session.is_handshaking() {
                // Done. Records that came with the last flight (the first
                // request, say) stay in the session and the socket, for
                // the first read.
                break Handshake::Done;
            }
        };
        if outcome != Handshake::Done {
            self.process()
                .map_err(|e| HandshakeError::Tls(TlsFailed(e.to_string())))?;
            if !self.session.is_handshaking() {
                return Ok(Handshake::Done);
            }
        }
        Ok(outcome)
    }

    /// Lets the session process the records it has read, and notes whether
    /// the peer's close_notify was among them.
    fn process(&mut self) -> Result<(), rustls::Error> {
        let state = self.session.process_new_packets()?;
        self.peer_closed |= state.peer_has_closed();
        Ok(())
    }

    fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        wire: &mut Wire,
    ) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            // Plaintext the session already holds comes first (trap 2).
            match self.session.reader().read(&mut buf[filled..]) {
                Ok(0) if filled == 0 && !buf.is_empty() => return Ok(0), // close_notify
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify: to us, the
                // end of the stream all the same (a half-close).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            if filled == buf.len() {
                // Budget full; more may be buffered: the caller runs again.
                return Ok(filled);
            }
            // Then the socket, one read_tls at a time, until WouldBlock
            // (trap 1).
            match self.session.read_tls(stream) {
                Ok(0) => {
                    // TCP EOF (or a close_notify processed earlier): the
                    // session turns it into Ok(0) or UnexpectedEof on the
                    // next reader().read above.
                    self.peer_closed = true;
                    let _ = self.process();
                    if filled > 0 {
                        return Ok(filled);
                    }
                    continue;
                }
                Ok(n) => wire.read += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.process() {
                // Bad records: the session has queued an alert, which the
                // caller's next write sends; the stream is unusable.
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn write(&mut self, stream: &mut TcpStream, data: &[u8], wire: &mut Wire) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            // Records already encrypted go first, in order.
            while self.session.wants_write() {
                match self.session.write_tls(stream) {
                    Ok(n) => wire.written += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && taken > 0 => {
                        return Ok(taken);
                    }
                    Err(e) => return Err(e),
                }
            }
            if taken == data.len() {
                return Ok(taken);
            }
            // Encrypt more: the session takes up to its buffer limit
            // (64 KiB by default), so what it holds stays bounded.
            let n = self.session.writer().write(&data[taken..])?;
            if n == 0 {
                // Limit reached and nothing could be sent: wait for the
                // writable edge.
                return if taken > 0 {
                    Ok(taken)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            taken += n;
        }
    }
}

/// `--tls-min-version`: the lowest TLS version a `tls` listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

impl std::str::FromStr for TlsVersion {
    type Err = String;
    fn from_str(text: &str) -> Result<TlsVersion, String> {
        match text {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(format!("{text:?} is not a TLS version: use 1.2 or 1.3")),
        }
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}
