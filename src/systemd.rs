//! Running as a systemd service: the listening sockets systemd passes
//! (socket activation), telling systemd how the server is doing (readiness
//! notification), and log lines the journal understands.
//!
//! Each follows systemd's documented protocol, written out here in a few
//! lines rather than through libsystemd, so that the server links no C
//! library and builds unchanged where systemd does not exist (FreeBSD,
//! macOS): there the variables are simply never set.
//!
//! * **Socket activation.** systemd binds the sockets of a `.socket` unit
//!   itself, starts the service with them open from descriptor 3 on, and
//!   sets `LISTEN_PID` (the PID they are meant for) and `LISTEN_FDS` (how
//!   many). [`take_passed_listeners`] checks and takes them.
//! * **Notification.** With `Type=notify`, systemd sets `NOTIFY_SOCKET` to
//!   a Unix datagram socket and waits for `READY=1` there before it counts
//!   the service as started. [`Notifier`] sends that, `STOPPING=1`, and a
//!   `STATUS=` line that `systemctl status` shows.
//! * **Journal.** systemd sets `JOURNAL_STREAM` when stderr goes to the
//!   journal, which reads a `<N>` prefix on each line as its syslog priority
//!   and stamps the time itself ([`logs_to_journal`], [`syslog_priority`]).

use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::warn;

/// The descriptor of the first socket systemd passes (`SD_LISTEN_FDS_START`).
pub const FIRST_PASSED_DESCRIPTOR: RawFd = 3;

/// Why the sockets systemd passed cannot be used: a failure at start.
#[derive(Debug)]
pub enum ActivationError {
    /// `LISTEN_FDS` (set for this process) is not a count of descriptors.
    BadCount(String),
    /// A passed descriptor is not a listening TCP socket.
    NotAListener {
        /// The descriptor's number (3 and up).
        descriptor: RawFd,
        /// What it is instead, or the error that asking gave.
        problem: String,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::BadCount(value) => write!(
                f,
                "LISTEN_FDS={value:?} from systemd is not a number of descriptors"
            ),
            ActivationError::NotAListener {
                descriptor,
                problem,
            } => write!(
                f,
                "descriptor {descriptor} passed by systemd (LISTEN_FDS) is not a listening TCP socket: {problem}"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

/// Takes the listening sockets systemd passed to this process: none unless
/// `LISTEN_PID` is this process's PID and `LISTEN_FDS` is set. Each is
/// checked (a listening TCP socket), made non-blocking and close-on-exec.
/// Only the first call takes them; later ones get none (a descriptor has
/// one owner).
///
/// The variables stay in the environment: removing one while another
/// thread reads the environment is a data race in the C library (why
/// `remove_var` is `unsafe` in the 2024 edition), and they need no
/// removing: a child has another PID, so `LISTEN_PID` tells it they are
/// not its own, and the sockets themselves are close-on-exec.
///
/// Call it before anything in the process opens a descriptor: from 3 on,
/// the passed ones become owned here.
pub fn take_passed_listeners() -> Result<Vec<TcpListener>, ActivationError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Ok(Vec::new());
    }
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    // Meant for another process (say, a shell that exec'd a wrapper that
    // then forked): not ours to take.
    let ours = pid.and_then(|pid| pid.trim().parse::<u32>().ok()) == Some(std::process::id());
    let Some(count) = count.filter(|_| ours) else {
        return Ok(Vec::new());
    };
    let count: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=65536).contains(n))
        .ok_or_else(|| ActivationError::BadCount(count.clone()))?;
    (FIRST_PASSED_DESCRIPTOR..FIRST_PASSED_DESCRIPTOR + count)
        .map(|descriptor| {
            take_listener(descriptor).map_err(|problem| ActivationError::NotAListener {
                descriptor,
                problem,
            })
        })
        .collect()
}

/// Checks that `descriptor` is an open, listening TCP socket, then owns it.
fn take_listener(descriptor: RawFd) -> Result<TcpListener, String> {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a number that
    // is not open it fails with EBADF and touches nothing.
    if unsafe { libc::fcntl(descriptor, libc::F_GETFD) } == -1 {
        return Err(format!("it is not open ({})", io::Error::last_os_error()));
    }
    // SAFETY: the descriptor is open, and by the socket activation protocol
    // it is this process's, taken once (`TAKEN`), before the program opened
    // anything of its own (the documented call order).
    let owned = unsafe { OwnedFd::from_raw_fd(descriptor) };
    let socket = socket2::Socket::from(owned);
    let kind = socket.r#type().map_err(|e| format!("not a socket ({e})"))?;
    if kind != socket2::Type::STREAM {
        return Err("it is not a stream socket (ListenDatagram?)".to_string());
    }
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    if local.as_socket().is_none() {
        return Err("it is not an IP socket (a Unix socket? use ListenStream=HOST:PORT)".into());
    }
    if !is_listening(descriptor).map_err(|e| e.to_string())? {
        return Err("it is not listening (Accept=yes passes connections: use Accept=no)".into());
    }
    // The event loop never blocks on a socket; systemd passes them blocking.
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    // Not inherited by any program the server might start (passed sockets
    // come without close-on-exec).
    socket.set_cloexec(true).map_err(|e| e.to_string())?;
    Ok(TcpListener::from(socket))
}

/// SO_ACCEPTCONN: whether `listen` was called on the socket. (socket2 asks
/// it only on Linux and FreeBSD; the option itself exists on macOS too.)
fn is_listening(descriptor: RawFd) -> io::Result<bool> {
    let mut value: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `size` bytes into `value`, which
    // lives for the whole call.
    let failed = unsafe {
        libc::getsockopt(
            descriptor,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut size,
        )
    } != 0;
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(value != 0)
}

/// Least time between two `STATUS=` messages: each is a system call, so
/// the count of connections is sent when it changed, at most once a second.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends systemd `READY=1`, `STOPPING=1` and `STATUS=...` over
/// `NOTIFY_SOCKET` (a Unix datagram socket, by path or, on Linux, by an
/// abstract name written `@name`). Each message is one datagram of
/// `KEY=VALUE` lines. Sending never blocks: a message systemd has no room
/// for is dropped (a status line is worth less than a stalled loop).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: UnixAddr,
    /// The connection count last sent in a `STATUS=` line, and when.
    last_status: Option<(u64, Instant)>,
    /// `STOPPING=1` was sent: the status line says so from then on.
    stopping: bool,
    /// A send failed and was logged: later failures are not (they would
    /// repeat once a second).
    failure_logged: bool,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, if set. A value that cannot be used
    /// is logged as a warning and gives `None`: the server still serves
    /// (systemd will say the start timed out).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&path.to_string_lossy()) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                warn!("cannot notify systemd at NOTIFY_SOCKET={path:?}: {e}");
                None
            }
        }
    }

    /// A notifier sending to `path` (`/run/systemd/notify`, or `@name`).
    pub fn new(path: &str) -> io::Result<Notifier> {
        let address = notify_address(path)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            address,
            last_status: None,
            stopping: false,
            failure_logged: false,
        })
    }

    /// Every listener is announced: `READY=1`, with the first status line.
    pub fn ready(&mut self, now: Instant, connections: u64) {
        let status = self.status_line(connections);
        self.send(&format!("READY=1\n{status}"));
        self.last_status = Some((connections, now));
    }

    /// A graceful shutdown begins: `STOPPING=1`, and a status line saying so.
    pub fn stopping(&mut self, now: Instant, connections: u64) {
        self.stopping = true;
        let status = self.status_line(connections);
        self.send(&format!("STOPPING=1\n{status}"));
        self.last_status = Some((connections, now));
    }

    /// Sends the count of open connections if it changed since the last
    /// status line and that line is at least [`STATUS_INTERVAL`] old.
    /// Called once per turn of the loop.
    pub fn connections_now(&mut self, now: Instant, connections: u64) {
        if self.status_due(connections).is_some_and(|due| due <= now) {
            let status = self.status_line(connections);
            self.send(&status);
            self.last_status = Some((connections, now));
        }
    }

    /// When a status line for `connections` will be due, if one is: the
    /// loop must wake then, or a count that changed just before a quiet
    /// spell would never be sent.
    pub fn status_due(&self, connections: u64) -> Option<Instant> {
        match self.last_status {
            Some((sent, _)) if sent == connections => None,
            Some((_, at)) => Some(at + STATUS_INTERVAL),
            // Before READY=1 nothing is sent.
            None => None,
        }
    }

    fn status_line(&self, connections: u64) -> String {
        let doing = if self.stopping { "shutting down: " } else { "" };
        format!("STATUS={doing}{connections} connection(s) open")
    }

    fn send(&mut self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            if !self.failure_logged {
                self.failure_logged = true;
                warn!("cannot notify systemd: {e} (later failures are not logged)");
            }
        }
    }
}

/// The socket address `NOTIFY_SOCKET` names: a path, or (Linux) `@name`
/// for the abstract name `name`.
fn notify_address(path: &str) -> io::Result<UnixAddr> {
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt;
            return UnixAddr::from_abstract_name(name);
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract socket names exist on Linux only",
            ));
        }
    }
    if !path.starts_with('/') {
        // systemd also knows `vsock:` addresses (for virtual machines).
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        ));
    }
    UnixAddr::from_pathname(path)
}

/// Whether stderr goes to the journal: systemd sets `JOURNAL_STREAM` for a
/// service whose stderr it connects there. (systemd's documentation allows
/// comparing its `DEVICE:INODE` with stderr's own, to tell a program that
/// inherited the variable but writes elsewhere; a server started by its
/// unit file writes where the unit says, so the variable alone decides.)
pub fn logs_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// The syslog priority journald reads from a `<N>` line prefix: 3 error,
/// 4 warning, 6 info, 7 debug (trace too: syslog has nothing below).
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_follow_the_count_at_most_once_a_second() {
        let dir = std::env::temp_dir().join(format!("loopline-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd.set_nonblocking(true).unwrap();
        let received = || {
            let mut buf = [0; 256];
            let mut all = Vec::new();
            while let Ok(n) = systemd.recv(&mut buf) {
                all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            all
        };
        let mut notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        let start = Instant::now();
        assert_eq!(notifier.status_due(0), None, "nothing before READY");
        notifier.ready(start, 0);
        assert_eq!(received(), ["READY=1\nSTATUS=0 connection(s) open"]);
        // Unchanged: nothing due. Changed: due a second after the last line.
        assert_eq!(notifier.status_due(0), None);
        assert_eq!(notifier.status_due(3), Some(start + STATUS_INTERVAL));
        notifier.connections_now(start + Duration::from_millis(500), 3);
        assert!(received().is_empty(), "sent within the interval");
        notifier.connections_now(start + STATUS_INTERVAL, 3);
        assert_eq!(received(), ["STATUS=3 connection(s) open"]);
        notifier.stopping(start + STATUS_INTERVAL, 3);
        assert_eq!(
            received(),
            ["STOPPING=1\nSTATUS=shutting down: 3 connection(s) open"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn notify_addresses_are_paths_or_abstract_names() {
        assert!(notify_address("/run/systemd/notify").is_ok());
        assert!(notify_address("relative/path").is_err());
        assert!(notify_address("vsock:2:1234").is_err());
        assert_eq!(
            notify_address("@loopline").is_ok(),
            cfg!(any(target_os = "linux", target_os = "android"))
        );
    }

    #[test]
    fn priorities_are_syslog_numbers() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Debug), 7);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
