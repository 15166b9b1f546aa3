//! The PROXY protocol header a load balancer (HAProxy, nginx, a cloud
//! balancer) sends first on each connection it opens to a `proxy` listener,
//! to say who the client really is: version 1 (one text line) or version 2
//! (binary), told apart by their signatures.
//!
//! This module only answers one question about the bytes a connection has
//! received so far: is there a whole header at their start, a prefix of one,
//! or something that can never become one? [`parse`] is a pure function of
//! those bytes, so the answer cannot depend on how they were split into
//! reads: whatever it says of a prefix, it says of every longer input
//! (`fuzz/fuzz_targets/proxy_header.rs` checks exactly that).
//!
//! Where the header ends is worked out here (v1: the first LF, within 107
//! bytes; v2: 16 fixed bytes, then the length they announce, within
//! [`V2_MAX`]); the fields of a whole header are read by the `ppp` crate.
//! How the connection waits for the header without reading past it is in
//! `Connection::read_proxy_header`.

use std::fmt;
use std::net::SocketAddr;

use memchr::memchr;
use ppp::PartialResult;

/// A version 1 header starts with this (then `TCP4`, `TCP6` or `UNKNOWN`).
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// A version 2 header starts with these 12 bytes, chosen never to start a
/// text protocol's line.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, CR LF included: the protocol's own bound.
pub const V1_MAX: usize = 107;

/// The longest version 2 header we take: 16 fixed bytes, the addresses
/// (36 for IPv6) and the TLVs a balancer adds (HAProxy: ALPN, authority,
/// unique ID, TLS details; a few hundred bytes at most). The protocol would
/// allow 64 KiB; a header announcing more than this is refused at once.
pub const V2_MAX: usize = 4096;

/// The most bytes a connection must look at to find the end of any header
/// it accepts.
pub const HEADER_MAX: usize = V2_MAX;

/// The fixed part of a version 2 header: signature, version and command,
/// family and protocol, the length of the rest (big-endian).
const V2_FIXED: usize = 16;

/// What the bytes received so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header (possibly empty): wait for more bytes.
    Incomplete,
    /// A whole header, the first `len` bytes. `client` is the address it
    /// carries; `None` for `LOCAL` (v2), `UNKNOWN` (v1) or an address family
    /// other than IPv4 and IPv6: the socket's own peer is the client then.
    Header {
        /// Bytes of the header; what follows is the client's own stream.
        len: usize,
        /// The client's address and port, as the balancer saw them.
        client: Option<SocketAddr>,
    },
}

/// Why the bytes can never start a header: the connection closes without
/// a line (behind a balancer, any line would go to the wrong party).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The first bytes are no PROXY signature: a client that reached the
    /// listener directly, or a balancer not set to send the header.
    NoSignature,
    /// Longer than [`V1_MAX`] without its LF, or announcing more than
    /// [`V2_MAX`].
    TooLong,
    /// The signature is right but the header is not (`version` 1 or 2).
    Malformed {
        /// Which version's signature it had.
        version: u8,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NoSignature => f.write_str("no PROXY header"),
            HeaderError::TooLong => write!(
                f,
                "PROXY header too long (v1 at most {V1_MAX} bytes, v2 at most {V2_MAX})"
            ),
            HeaderError::Malformed { version } => write!(f, "malformed PROXY v{version} header"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Looks for a header at the start of `received` (every byte the
/// connection has received, or the first [`HEADER_MAX`] of them).
pub fn parse(received: &[u8]) -> Result<Parsed, HeaderError> {
    match received.first() {
        None => Ok(Parsed::Incomplete),
        Some(&first) if first == V1_SIGNATURE[0] => parse_v1(received),
        Some(&first) if first == V2_SIGNATURE[0] => parse_v2(received),
        Some(_) => Err(HeaderError::NoSignature),
    }
}

/// Whether `received` agrees with `signature` as far as both go: a prefix of
/// a signature may still become a header, anything else never will.
fn starts_like(received: &[u8], signature: &[u8]) -> bool {
    let n = received.len().min(signature.len());
    received[..n] == signature[..n]
}

fn parse_v1(received: &[u8]) -> Result<Parsed, HeaderError> {
    if !starts_like(received, V1_SIGNATURE) {
        return Err(HeaderError::NoSignature);
    }
    let window = &received[..received.len().min(V1_MAX)];
    let Some(lf) = memchr(b'\n', window) else {
        return if received.len() >= V1_MAX {
            Err(HeaderError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let header = &received[..=lf];
    let malformed = HeaderError::Malformed { version: 1 };
    // The line must end in CR LF, and ppp must have read all of it (it cuts
    // at the first CR: a stray CR earlier would leave bytes unread).
    if !header.ends_with(b"\r\n") {
        return Err(malformed);
    }
    let parsed = ppp::v1::Header::try_from(header).map_err(|_| malformed)?;
    if parsed.header.len() != header.len() {
        return Err(malformed);
    }
    let client = match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    };
    Ok(Parsed::Header {
        len: header.len(),
        client,
    })
}

fn parse_v2(received: &[u8]) -> Result<Parsed, HeaderError> {
    if !starts_like(received, V2_SIGNATURE) {
        return Err(HeaderError::NoSignature);
    }
    if received.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([received[14], received[15]]));
    if len > V2_MAX {
        return Err(HeaderError::TooLong);
    }
    // Given a prefix, ppp checks the fixed bytes (version, command, family,
    // protocol, a length too short for the family) and then says "partial":
    // a bad fixed byte is refused as soon as it arrives, not at the end.
    let available = &received[..received.len().min(len)];
    let parsed = match ppp::v2::Header::try_from(available) {
        Ok(parsed) => parsed,
        Err(e) if e.is_incomplete() => return Ok(Parsed::Incomplete),
        Err(_) => return Err(HeaderError::Malformed { version: 2 }),
    };
    let client = match (parsed.command, parsed.addresses) {
        // LOCAL: the balancer's own connection (a health check, say).
        (ppp::v2::Command::Local, _) => None,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        // UNSPEC or a unix socket: no address of ours to use.
        (ppp::v2::Command::Proxy, _) => None,
    };
    Ok(Parsed::Header { len, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    #[test]
    fn v1_tcp4_gives_the_client_and_leaves_what_follows() {
        let bytes = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 9000\r\nPING\n";
        let want = Parsed::Header {
            len: bytes.len() - 5,
            client: Some("192.0.2.7:40000".parse().unwrap()),
        };
        assert_eq!(parse(bytes), Ok(want));
        // Every proper prefix of the header is only incomplete.
        for n in 0..bytes.len() - 5 {
            assert_eq!(parse(&bytes[..n]), Ok(Parsed::Incomplete), "prefix {n}");
        }
    }

    #[test]
    fn a_v1_prefix_that_ppp_alone_would_refuse_is_only_incomplete() {
        // Ends on a space: the destination port is still empty. Asked
        // about this prefix, ppp says "invalid port", not "partial"; which
        // is why it only ever sees whole lines.
        let prefix = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 ";
        let ppp_alone = ppp::v1::Header::try_from(&prefix[..]);
        assert!(
            ppp_alone.is_complete() && ppp_alone.is_err(),
            "{ppp_alone:?}"
        );
        assert_eq!(parse(prefix), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let tcp6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 5 6\r\n";
        assert_eq!(
            parse(tcp6),
            Ok(Parsed::Header {
                len: tcp6.len(),
                client: Some("[2001:db8::1]:5".parse().unwrap())
            })
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Ok(Parsed::Header {
                len: unknown.len(),
                client: None
            })
        );
    }

    #[test]
    fn v1_bad_lines_are_refused() {
        assert_eq!(parse(b"PING\n"), Err(HeaderError::NoSignature));
        assert_eq!(parse(b"PROXZ"), Err(HeaderError::NoSignature));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
            Err(HeaderError::Malformed { version: 1 }),
            "LF without CR"
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"),
            Err(HeaderError::Malformed { version: 1 })
        );
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
        // 107 bytes with its CR LF is still a header.
        long.truncate(V1_MAX - 2);
        long.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse(&long),
            Ok(Parsed::Header { len: V1_MAX, .. })
        ));
    }

    #[test]
    fn v2_proxy_local_and_other_families() {
        let mut addresses = vec![10, 0, 0, 1, 10, 0, 0, 2];
        addresses.extend_from_slice(&1234u16.to_be_bytes());
        addresses.extend_from_slice(&9000u16.to_be_bytes());
        let proxied = v2(1, 0x11, &addresses);
        assert_eq!(
            parse(&proxied),
            Ok(Parsed::Header {
                len: proxied.len(),
                client: Some("10.0.0.1:1234".parse().unwrap())
            })
        );
        for n in 0..proxied.len() {
            assert_eq!(parse(&proxied[..n]), Ok(Parsed::Incomplete), "prefix {n}");
        }
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Header {
                len: 16,
                client: None
            })
        );
        let unspec = v2(1, 0x00, &[1, 2, 3]);
        assert_eq!(
            parse(&unspec),
            Ok(Parsed::Header {
                len: 19,
                client: None
            })
        );
    }

    #[test]
    fn v2_bad_headers_are_refused_as_soon_as_they_show() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x31;
        assert_eq!(
            parse(&bad_version[..16]),
            Err(HeaderError::Malformed { version: 2 })
        );
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Err(HeaderError::TooLong));
        assert_eq!(parse(b"\r\n\r\nX"), Err(HeaderError::NoSignature));
        // An IPv4 header too short for its addresses.
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 4])),
            Err(HeaderError::Malformed { version: 2 })
        );
    }
}
