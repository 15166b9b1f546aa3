//! A client connection's bytes on the wire: as they are (plain TCP), or
//! inside a TLS session (`--tls`, a rustls client), in the same
//! edge-triggered event loop. The modes read and write plaintext through a
//! [`Link`] and never see a TLS record; the handshake runs underneath, moved
//! on by every read and by [`Link::send_pending`].
//!
//! TLS in an edge-triggered loop has three traps, each handled where noted:
//!
//! 1. One `read_tls` takes only part of what the socket holds. Stopping
//!    there would leave bytes in the kernel with no new event to announce
//!    them: [`Link::read`] goes on until the socket says `WouldBlock` or the
//!    caller's buffer is full, so a short read still means "drained", as
//!    over plain TCP (the response reader relies on that).
//! 2. rustls keeps decrypted plaintext of its own, which no socket event
//!    will announce: [`Link::read`] hands that out first, before reading the
//!    socket again.
//! 3. TLS output (handshake records, alerts, encrypted requests the socket
//!    did not take) waits in the session: [`Link::send_pending`] writes it,
//!    and the modes call it on every writable event.
//!
//! A server that closes without close_notify ends the stream like one that
//! sends it: a benchmark only needs to know the server closed.

use mio::net::TcpStream;
#[cfg(feature = "tls")]
use std::io::ErrorKind;
use std::io::{self, Read, Write};
#[cfg(feature = "tls")]
use std::sync::atomic::{AtomicBool, Ordering};

/// The TLS settings of a run: [`crate::tls::TlsClient`] with the `tls`
/// feature; without it, a type with no values, so `Option<ClientTls>` is
/// always `None` and the TLS paths compile away.
#[cfg(feature = "tls")]
pub type ClientTls = crate::tls::TlsClient;

/// Without the `tls` feature no TLS settings can exist.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub enum ClientTls {}

#[cfg(not(feature = "tls"))]
impl ClientTls {
    /// As `crate::tls::TlsClient::for_one_client`; never called, as no
    /// value exists.
    pub fn for_one_client(&self) -> ClientTls {
        match *self {}
    }
}

/// One connection: the socket, and the TLS session over it with `--tls`.
pub struct Link {
    stream: TcpStream,
    /// Boxed, so a plain connection does not pay for its size.
    #[cfg(feature = "tls")]
    session: Option<Box<rustls::ClientConnection>>,
}

impl Link {
    /// A link over a socket that is still connecting; with `tls`, the TLS
    /// session starts with its ClientHello queued, sent by
    /// [`Link::send_pending`] once the connect has finished.
    pub fn new(stream: TcpStream, tls: Option<&ClientTls>) -> io::Result<Link> {
        #[cfg(feature = "tls")]
        {
            let session = match tls {
                None => None,
                Some(tls) => Some(Box::new(
                    rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                        .map_err(io::Error::other)?,
                )),
            };
            Ok(Link { stream, session })
        }
        #[cfg(not(feature = "tls"))]
        {
            // No value of `ClientTls` exists without the feature.
            if let Some(never) = tls {
                match *never {}
            }
            Ok(Link { stream })
        }
    }

    /// The socket, for connect checks and the closing linger option.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket, to register it with the event loop.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Whether the TLS handshake is still going on (never, for plain TCP).
    pub fn is_handshaking(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(session) = &self.session {
            return session.is_handshaking();
        }
        false
    }

    /// How the TLS handshake went: `Some(true)` resumed a session,
    /// `Some(false)` was a full handshake; `None` for plain TCP, or while
    /// it is too early to tell.
    pub fn handshake_resumed(&self) -> Option<bool> {
        #[cfg(feature = "tls")]
        if let Some(session) = &self.session {
            return session
                .handshake_kind()
                .map(|kind| kind == rustls::HandshakeKind::Resumed);
        }
        None
    }

    /// Writes the TLS output waiting in the session (trap 3) until it is
    /// all out or the socket is full; the next writable event resumes it.
    /// Nothing to do for plain TCP, whose bytes never wait here.
    pub fn send_pending(&mut self) -> io::Result<()> {
        self.send_tls().map(|_| ())
    }

    /// [`Link::send_pending`], telling whether everything went out (false:
    /// the socket is full).
    fn send_tls(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Some(session) = &mut self.session {
            while session.wants_write() {
                match session.write_tls(&mut self.stream) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// Writes plaintext; like a socket write, it takes what it can
    /// (`WouldBlock` when nothing), and a short count means the socket is
    /// full, so a writable event will follow. Over TLS the bytes are
    /// encrypted into the session and sent from there; the session's output
    /// buffer is bounded, so this alternates between the two until the
    /// data is taken or the socket is full.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if self.session.is_some() {
            return self.write_tls(data);
        }
        self.stream.write(data)
    }

    #[cfg(feature = "tls")]
    fn write_tls(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        while let Some(session) = self.session.as_mut() {
            let n = session.writer().write(&data[taken..])?;
            taken += n;
            let all_out = self.send_tls()?;
            // Stop when all is taken, when the socket is full, or when the
            // session took nothing although its output went out (no
            // progress is possible before the handshake is over).
            if taken == data.len() || !all_out || n == 0 {
                break;
            }
        }
        if taken == 0 && !data.is_empty() {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(taken)
        }
    }

    /// Reads plaintext; `Ok(0)` is the end of the stream. Over TLS it
    /// fills `buf` from the session's plaintext (trap 2) and from the
    /// socket's records until the socket says `WouldBlock` (trap 1); the
    /// handshake and its replies happen on the way.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if self.session.is_some() {
            return self.read_tls(buf);
        }
        self.stream.read(buf)
    }

    #[cfg(feature = "tls")]
    fn read_tls(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            let Some(session) = self.session.as_mut() else {
                return Ok(filled);
            };
            // Plaintext the session holds first: the socket may have
            // nothing more to say about it.
            match session.reader().read(&mut buf[filled..]) {
                // close_notify, and no plaintext left: the end.
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: the end too.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            // No plaintext left: records from the socket, one batch.
            match session.read_tls(&mut self.stream) {
                // End of the socket: the reader above now says which end.
                Ok(0) => {}
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return if filled > 0 {
                        Ok(filled)
                    } else {
                        Err(ErrorKind::WouldBlock.into())
                    };
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let processed = session.process_new_packets();
            // Handshake replies, or the alert rustls queued on an error:
            // out now, or on the next writable event.
            self.send_tls()?;
            if let Err(e) = processed {
                report_first_tls_failure(&e);
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Says on stderr why the first TLS session of the run failed (a
/// certificate the CA does not vouch for, a wrong `--tls-name`); the
/// others only count as errors, so a bad setup costs one line.
#[cfg(feature = "tls")]
fn report_first_tls_failure(error: &rustls::Error) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        eprintln!("loopline-bench: TLS: {error}");
    }
}
