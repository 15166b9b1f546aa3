//! Under systemd: sockets passed by socket activation (through Debian's
//! `systemd-socket-activate`, and by hand as systemd passes them), a
//! restart on the same socket that turns no client away, descriptors that
//! are not listeners, and readiness notification over `NOTIFY_SOCKET`.

mod service;
mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use service::{lines_with, loopline, passing_descriptor, run_to_exit, ListenPid};
use util::{Client, Server, PATIENCE};

// Each runs with one event loop and with two (`--threads 2`): passed
// sockets are shared by the loops, and loop 0 speaks for the process.
util::one_and_two_loops!(
    systemd_socket_activate_passes_the_listener,
    a_restart_on_the_same_socket_turns_no_client_away,
    systemd_hears_ready_the_connection_count_and_stopping,
);

/// Debian's `systemd` package installs it (see .ci/run).
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Connects to `addr` until something accepts (a socket that is not bound
/// yet refuses), failing after PATIENCE.
fn connect_when_listening(addr: SocketAddr) -> Client {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect_timeout(&addr, PATIENCE) {
            Ok(stream) => return Client::from_stream(stream),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("nothing listens on {addr} after {PATIENCE:?}: {e}"),
        }
    }
}

fn systemd_socket_activate_passes_the_listener() {
    assert!(
        std::path::Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing: install Debian's systemd package"
    );
    // The port is picked free, then released: another process may take it
    // in between. Then systemd-socket-activate fails to bind: try another.
    for _attempt in 0..5 {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(SOCKET_ACTIVATE);
        service::clean_environment(&mut command);
        command
            .args(["-l", &addr.to_string(), "-E", "RUST_LOG=info"])
            .arg(env!("CARGO_BIN_EXE_loopline"));
        if util::loops() > 1 {
            command.args(["--threads", &util::loops().to_string()]);
        }
        // systemd-socket-activate binds, then starts the server only when a
        // first client connects: that client comes from a thread.
        let first_client = thread::spawn(move || {
            let mut client = connect_when_listening(addr);
            client.expect_line("READY");
            client.send(b"PING\n");
            client.expect_line("PONG");
        });
        let started =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Server::spawn(command)));
        let mut server = match started {
            Ok(server) => server,
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                if message.contains("Address already in use") {
                    continue;
                }
                std::panic::resume_unwind(panic);
            }
        };
        first_client.join().expect("the first client was served");
        assert_eq!(server.addr, addr);
        let mut client = server.client();
        client.send(b"PING\n");
        client.expect_line("PONG");
        server.signal("TERM");
        server.wait_for_log("shutdown complete");
        let log = server.log.lock().unwrap();
        let listening = lines_with(&log, "listening on ");
        assert_eq!(listening.len(), 1, "{log:#?}");
        assert!(
            listening[0].contains(&format!("listening on {addr} (from systemd)")),
            "{listening:?}"
        );
        return;
    }
    panic!("every port tried was taken");
}

/// A listening socket the test holds, as systemd holds a `.socket` unit's.
fn held_socket() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

#[test]
fn a_passed_socket_replaces_the_default_listener_and_adds_to_explicit_ones() {
    let socket = held_socket();
    let addr = socket.local_addr().unwrap();
    let command = passing_descriptor(&socket, ListenPid::Server, &[], "info");
    let mut server = Server::spawn(command);
    assert_eq!(server.addr, addr, "the passed socket is announced");
    server.client();
    server.signal("TERM");
    server.wait_for_log("shutdown complete");
    let listening = lines_with(&server.log.lock().unwrap(), "listening on ");
    assert_eq!(listening.len(), 1, "{listening:#?}");

    let socket = held_socket();
    let args = ["--listen", "127.0.0.1:0"];
    let mut server = Server::spawn(passing_descriptor(
        &socket,
        ListenPid::Server,
        &args,
        "info",
    ));
    let explicit = util::parse_listening(&server.wait_for_log("listening on "));
    assert_ne!(explicit, server.addr);
    for addr in [server.addr, explicit] {
        let mut client = Client::connect(addr);
        client.expect_line("READY");
    }
}

#[test]
fn listen_pid_of_another_process_is_ignored() {
    let socket = held_socket();
    let args = ["--listen", "127.0.0.1:0"];
    let mut server = Server::spawn(passing_descriptor(&socket, ListenPid::Other, &args, "info"));
    assert_ne!(server.addr, socket.local_addr().unwrap());
    server.client();
    server.signal("TERM");
    server.wait_for_log("shutdown complete");
    let log = server.log.lock().unwrap();
    let listening = lines_with(&log, "listening on ");
    assert_eq!(listening.len(), 1, "{log:#?}");
    assert!(!listening[0].contains("systemd"), "{log:#?}");
}

#[test]
fn a_passed_descriptor_that_is_no_listener_fails_the_start_naming_it() {
    let not_listening =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let file = std::fs::File::open("/dev/null").unwrap();
    let datagram = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cases = [
        (file.as_fd(), "not a socket"),
        (not_listening.as_fd(), "not listening"),
        (datagram.as_fd(), "not a stream socket"),
    ];
    for (descriptor, problem) in cases {
        let command = passing_descriptor(&descriptor, ListenPid::Server, &[], "info");
        let out = run_to_exit(command);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{problem}: {err}");
        assert!(err.contains("descriptor 3"), "{err}");
        assert!(err.contains(problem), "{err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}

/// The outcome of one client's visit during the restart.
enum Visit {
    /// READY, then PONG to its PING.
    Served,
    /// The old server's graceful shutdown reached it between READY and
    /// PONG: polite, and the client comes again.
    ToldToComeBack,
}

/// Connects, expects READY, sends PING, expects PONG. Anything else (a
/// refused connect, a reset, an early close, a timeout) is an error.
fn visit(addr: SocketAddr) -> Result<Visit, String> {
    let stream =
        TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<String, String> {
        line.clear();
        match reader.read_line(line) {
            Ok(0) => Err("closed without a line".into()),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    match read_line(&mut line)?.as_str() {
        "READY" => {}
        other => return Err(format!("{other:?} instead of READY")),
    }
    (&stream)
        .write_all(b"PING\n")
        .map_err(|e| format!("write: {e}"))?;
    match read_line(&mut line)?.as_str() {
        "PONG" => Ok(Visit::Served),
        "ERR server shutting down" => Ok(Visit::ToldToComeBack),
        other => Err(format!("{other:?} instead of PONG")),
    }
}

fn a_restart_on_the_same_socket_turns_no_client_away() {
    const CLIENTS: usize = 200;
    let socket = held_socket();
    let addr = socket.local_addr().unwrap();
    let start = || Server::spawn(passing_descriptor(&socket, ListenPid::Server, &[], "info"));
    let mut old = start();

    let served = Arc::new(AtomicUsize::new(0));
    let clients = {
        let served = served.clone();
        thread::spawn(move || -> Result<usize, String> {
            let mut comebacks = 0;
            while served.load(Ordering::SeqCst) < CLIENTS {
                match visit(addr)? {
                    Visit::Served => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Visit::ToldToComeBack => comebacks += 1,
                }
            }
            Ok(comebacks)
        })
    };
    let wait_for_served = |want: usize| {
        let deadline = Instant::now() + PATIENCE;
        while served.load(Ordering::SeqCst) < want {
            assert!(
                Instant::now() < deadline && !clients.is_finished(),
                "{} of {want} clients served",
                served.load(Ordering::SeqCst)
            );
            thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_served(CLIENTS / 4);
    // The old server stops; clients go on connecting, into the backlog of
    // the socket the test (as systemd) holds.
    old.signal("TERM");
    assert_eq!(old.wait_exit().code(), Some(0));
    let during_the_gap = served.load(Ordering::SeqCst);
    let mut new = start();
    wait_for_served(CLIENTS);
    let comebacks = clients
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("a client was turned away during the restart: {e}"));
    assert!(
        during_the_gap < CLIENTS,
        "the restart came after every client"
    );
    assert!(comebacks <= 1, "{comebacks} clients told to come back");
    new.signal("TERM");
    assert_eq!(new.wait_exit().code(), Some(0));
}

/// A datagram socket in a fresh directory, as systemd's notify socket.
struct NotifySocket {
    dir: PathBuf,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new(name: &str) -> NotifySocket {
        let dir = std::env::temp_dir().join(format!("loopline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket { dir, path, socket }
    }

    /// The next message, failing after PATIENCE.
    fn next(&self) -> String {
        let mut buf = [0; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {PATIENCE:?}: {e}"));
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Reads messages until one holds `needle`; returns it.
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let message = self.next();
            if message.lines().any(|l| l == needle) {
                return message;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn systemd_hears_ready_the_connection_count_and_stopping() {
    // One directory per case: the one-loop and two-loop cases run at once.
    let notify = NotifySocket::new(&format!("notify-{}-loops", util::loops()));
    let mut command = loopline(&["--listen", "127.0.0.1:0"], "info");
    command.env("NOTIFY_SOCKET", &notify.path);
    let mut server = Server::spawn(command);
    let ready = notify.next();
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(
        lines,
        ["READY=1", "STATUS=0 connection(s) open"],
        "{ready:?}"
    );
    // A client arrives, and the count follows (within a second).
    let _client = server.client();
    notify.wait_for("STATUS=1 connection(s) open");
    server.signal("TERM");
    let stopping = notify.wait_for("STOPPING=1");
    assert!(stopping.contains("STATUS=shutting down"), "{stopping:?}");
    assert!(server.logged("listening on"));
    drop(_client);
    assert_eq!(server.wait_exit().code(), Some(0));
}

/// Abstract socket names exist on Linux only.
#[cfg(target_os = "linux")]
#[test]
fn notify_socket_may_be_an_abstract_name() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("loopline-test-notify-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let socket = UnixDatagram::bind_addr(&address).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut command = loopline(&["--listen", "127.0.0.1:0"], "info");
    command.env("NOTIFY_SOCKET", format!("@{name}"));
    let _server = Server::spawn(command);
    let mut buf = [0; 4096];
    let n = socket.recv(&mut buf).expect("READY=1 within PATIENCE");
    assert!(
        buf[..n].starts_with(b"READY=1\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[test]
fn an_unusable_notify_socket_is_a_warning_not_a_failure() {
    let mut command = loopline(&["--listen", "127.0.0.1:0"], "info");
    command.env("NOTIFY_SOCKET", "relative/path");
    let mut server = Server::spawn(command);
    server.client();
    server.signal("TERM");
    server.wait_for_log("shutdown complete");
    assert!(server.logged("cannot notify systemd at NOTIFY_SOCKET"));
}
