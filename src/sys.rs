//! The few operating-system calls that differ between Linux, macOS and
//! FreeBSD, each behind `cfg` with a stated fallback. Everything else the
//! server does goes through mio (epoll on Linux, kqueue on macOS and BSD),
//! socket2 and std, which hide the differences already.
//!
//! | call | Linux | macOS | FreeBSD | elsewhere |
//! |---|---|---|---|---|
//! | [`raise_descriptor_limit`] | soft limit to hard | to `min(hard, OPEN_MAX)` (the hard limit is often infinite, which `setrlimit` refuses) | soft to hard | soft to hard |
//! | [`unsent_bytes`] | `ioctl(SIOCOUTQ)` | `getsockopt(SO_NWRITE)` | `ioctl(FIONWRITE)` | unsupported: the write-stall clock only sees our own writes |
//! | [`spread_accepts`] | `SO_REUSEPORT`: one listener per loop, the kernel spreads connections by a hash of their addresses | no: `SO_REUSEPORT` lets several sockets bind but does not balance; the loops share one listening socket | `SO_REUSEPORT_LB`, as Linux | no, as macOS |

use std::io;

/// Sets the soft RLIMIT_NOFILE as high as the platform allows (the hard
/// limit, or `OPEN_MAX` on macOS) and returns the soft limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = highest_soft_limit(limit.rlim_max);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // `rlim_t` is unsigned on Linux and macOS, signed on FreeBSD (where
    // RLIM_INFINITY is i64::MAX); a negative value never happens.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(u64::try_from(limit.rlim_cur as i128).unwrap_or(u64::MAX))
}

/// macOS reports an infinite hard limit but refuses a soft limit above
/// `OPEN_MAX` (10240, from `<sys/syslimits.h>`).
#[cfg(target_os = "macos")]
fn highest_soft_limit(hard: libc::rlim_t) -> libc::rlim_t {
    const OPEN_MAX: libc::rlim_t = 10240;
    hard.min(OPEN_MAX)
}

#[cfg(not(target_os = "macos"))]
fn highest_soft_limit(hard: libc::rlim_t) -> libc::rlim_t {
    hard
}

/// Bytes written to a TCP socket that the peer has not acknowledged yet
/// (still queued in the kernel's send buffer). The write-stall timer uses it
/// to tell a slow reader (the count falls) from a stalled one (it does not).
#[cfg(target_os = "linux")]
pub fn unsent_bytes(fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int into `queued`.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// See the Linux version.
#[cfg(any(target_os = "macos", target_os = "ios"))]
pub fn unsent_bytes(fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_NWRITE writes one int into `queued`, `len` says its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NWRITE,
            (&mut queued as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// See the Linux version.
#[cfg(target_os = "freebsd")]
pub fn unsent_bytes(fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONWRITE writes one int into `queued`.
    if unsafe { libc::ioctl(fd, libc::FIONWRITE, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Fallback: not measurable here, so the write-stall clock counts only the
/// server's own successful writes.
#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
)))]
pub fn unsent_bytes(_fd: std::os::fd::RawFd) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Errors of `accept` that concern only the connection being accepted: skip
/// it, the next one in the queue may be fine.
pub fn is_per_connection_accept_error(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) {
        return true;
    }
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    // ENONET exists on Linux only.
    #[cfg(target_os = "linux")]
    if code == libc::ENONET {
        return true;
    }
    matches!(
        code,
        libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
    )
}

/// Whether the kernel spreads the connections of one address over several
/// listening sockets, one per event loop (`--threads`).
pub const SPREADS_ACCEPTS: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
));

/// Lets `socket`, before it binds, share its address with the listeners of
/// the other event loops, with the kernel spreading new connections over
/// them. Only where [`SPREADS_ACCEPTS`]; elsewhere the loops share one
/// listening socket instead, and this is never called.
pub fn spread_accepts(socket: &socket2::Socket) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return socket.set_reuse_port(true);
    #[cfg(target_os = "freebsd")]
    return socket.set_reuse_port_lb(true);
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = socket;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this platform does not spread connections over listeners",
        ))
    }
}

/// Whether `accept` failed for want of a descriptor or kernel memory.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_limit_can_be_read_and_raised() {
        let limit = raise_descriptor_limit().expect("getrlimit");
        assert!(limit >= 64, "{limit}");
    }

    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    #[test]
    fn unsent_bytes_counts_what_the_peer_has_not_taken() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        assert_eq!(unsent_bytes(client.as_raw_fd()).unwrap(), 0);
        // The peer never reads: fill its receive window and our send buffer.
        client.set_nonblocking(true).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        while client.write(&chunk).is_ok() {}
        assert!(unsent_bytes(client.as_raw_fd()).unwrap() > 0);
        drop(server_side);
    }
}
