//! A real HAProxy in front of the server under test (Debian's `haproxy`,
//! which `.ci/run` installs): started in the foreground (`-db`) from a
//! config written into a directory of its own, on loopback ports picked
//! free, killed on drop. Its runtime API (the `stats socket`, a unix
//! socket) tells the tests what HAProxy thinks of the server: `show stat`.
//!
//! Also the clients the PROXY tests need: one bound to a chosen loopback
//! address before it connects (HAProxy then names that address in the
//! header), and a TLS client whose first write carries a PROXY header in
//! front of its ClientHello.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{Client, PATIENCE};

/// A running HAProxy. Killed (and its directory removed) on drop.
pub struct Haproxy {
    child: Child,
    /// Its config, its stats socket and its stderr.
    pub dir: PathBuf,
    /// The ports the caller's config listens on, in the order asked for.
    pub ports: Vec<u16>,
}

/// What every test config starts with: the stats socket the harness waits
/// on and reads, and plain TCP proxying with bounded timeouts.
fn common_sections(stats_socket: &str) -> String {
    format!(
        "global
    maxconn 256
    stats socket {stats_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"
    )
}

impl Haproxy {
    /// Starts HAProxy with the common sections and then what `sections`
    /// writes, given `ports` free loopback ports for its frontends. Waits
    /// until it answers on its stats socket: it has bound every frontend by
    /// then. A port taken in between (another test got it first) makes
    /// HAProxy exit at once: it is tried again with other ports.
    pub fn start(ports: usize, sections: impl Fn(&[u16]) -> String) -> Haproxy {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopline-haproxy-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("stats.sock");
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let ports = free_ports(ports);
            let config = common_sections(socket.to_str().expect("utf-8 path")) + &sections(&ports);
            let config_path = dir.join("haproxy.cfg");
            std::fs::write(&config_path, &config).expect("write the HAProxy config");
            let stderr = std::fs::File::create(dir.join("stderr.log")).expect("log file");
            let child = Command::new(program())
                .arg("-f")
                .arg(&config_path)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start haproxy ({e}): apt-get install haproxy"));
            let mut haproxy = Haproxy {
                child,
                dir: dir.clone(),
                ports,
            };
            if haproxy.wait_until_up() {
                return haproxy;
            }
            last_error = haproxy.stderr();
            // Dropping it kills it and removes the directory: make it anew.
            drop(haproxy);
            std::fs::create_dir_all(&dir).expect("temp dir");
        }
        panic!("HAProxy did not start: {last_error}");
    }

    /// Waits until the stats socket answers, or HAProxy has exited.
    fn wait_until_up(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.command("show info").contains("Pid:") {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends one command on the stats socket and returns its answer (empty
    /// if the socket does not answer).
    pub fn command(&self, command: &str) -> String {
        let Ok(mut socket) = UnixStream::connect(self.dir.join("stats.sock")) else {
            return String::new();
        };
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        if socket.write_all(format!("{command}\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        answer
    }

    /// The fields of `show stat` for server `server` of backend `backend`,
    /// by column name (`status`, `check_status`, ...).
    pub fn server_stat(&self, backend: &str, server: &str) -> Option<Vec<(String, String)>> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header = lines.next()?.trim_start_matches("# ");
        let names: Vec<&str> = header.split(',').collect();
        lines.find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.first() == Some(&backend) && fields.get(1) == Some(&server)).then(|| {
                names
                    .iter()
                    .zip(fields)
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
        })
    }

    /// Waits until `show stat` says `field` is `want` for that server;
    /// panics with the last line seen after PATIENCE.
    pub fn wait_for_server(&self, backend: &str, server: &str, field: &str, want: &str) {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = None;
        while Instant::now() < deadline {
            seen = self.server_stat(backend, server);
            let value = seen
                .as_ref()
                .and_then(|s| s.iter().find(|(n, _)| n == field).map(|(_, v)| v.clone()));
            if value.as_deref() == Some(want) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("{backend}/{server}: {field} never became {want}; last seen: {seen:?}");
    }

    /// The loopback address of the `index`th port asked for.
    pub fn addr(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[index]))
    }

    /// What HAProxy wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The haproxy binary: on the PATH, or where Debian puts it (/usr/sbin,
/// which a non-root PATH may lack).
fn program() -> &'static str {
    const SBIN: &str = "/usr/sbin/haproxy";
    if std::path::Path::new(SBIN).exists() {
        SBIN
    } else {
        "haproxy"
    }
}

/// `n` loopback ports that were free a moment ago: bound to port 0, noted,
/// released together just before HAProxy starts.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Client {
    /// A TLS client of `addr` whose first write is `header` and its
    /// ClientHello together, one segment: the server must keep the
    /// ClientHello it finds behind the header. Completes the handshake.
    #[cfg(feature = "tls")]
    pub fn connect_tls_behind_header(
        addr: SocketAddr,
        header: &[u8],
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Client> {
        Client::connect_tls_after_header(addr, header, None, config)
    }

    /// A TLS client of `addr` that sends `header`, then, after `pause` (or
    /// in the same write, with none), its ClientHello, and completes the
    /// handshake.
    #[cfg(feature = "tls")]
    pub fn connect_tls_after_header(
        addr: SocketAddr,
        header: &[u8],
        pause: Option<std::time::Duration>,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Client> {
        let stream = std::net::TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_nodelay(true)?;
        let mut client = Client::from_stream(stream);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
        let mut session =
            rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        session.set_buffer_limit(None);
        let mut first = header.to_vec();
        if let Some(pause) = pause {
            client.stream.write_all(&first)?;
            std::thread::sleep(pause);
            first.clear();
        }
        first.extend_from_slice(&super::tls::take_records(&mut session));
        client.stream.write_all(&first)?;
        while session.is_handshaking() {
            session.complete_io(&mut client.stream)?;
        }
        client
            .stream
            .write_all(&super::tls::take_records(&mut session))?;
        client.session = Some(Box::new(session));
        Ok(client)
    }
}
