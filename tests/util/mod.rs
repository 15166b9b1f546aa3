//! Shared helpers for the integration tests: start a real server process
//! (the `loopline` binary on 127.0.0.1:0, or any program that logs
//! `listening on ADDR` on stderr), find its port in that log line, talk to it
//! over loopback with bounded timeouts, and run the binary once to its exit.
//! Memory and CPU figures come from the /proc readers the tools share,
//! [`loopline_proc`].
//!
//! Behind a load balancer: [`haproxy`] starts a real HAProxy in front of the
//! server and reads its stats socket.
//!
//! A test about the protocol or the limits runs over both transports, plain
//! TCP and TLS, and with one event loop and with two (`--threads 2`): its
//! body takes a [`Transport`], starts its server with
//! [`Server::start_over`], and [`both_transports!`] makes one test of each
//! combination. [`one_and_two_loops!`] does the same for a body without a
//! transport.
#![allow(dead_code)]

pub mod haproxy;
#[cfg(feature = "tls")]
pub mod tls;

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails. Generous:
/// tests must not depend on the machine's speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How a test's connections carry the protocol: as they are, or inside TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Plain,
    /// A TLS session (a listener with the `tls` option, a rustls client).
    #[cfg(feature = "tls")]
    Tls,
}

/// Defines, for each named test body `fn NAME(transport: Transport)`, a
/// module `NAME` with the tests `plain` and `two_loops_plain`, and (with the
/// `tls` feature) `tls` and `two_loops_tls`: `cargo test` runs the body over
/// both transports, with one event loop and with two, and a failure names
/// the case it failed in (`NAME::two_loops_tls`). A module and a function
/// may share a name: they live in different namespaces.
#[allow(unused_macros)] // Test files without shared tests do not use it.
macro_rules! both_transports {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            $crate::util::transport_cases!($body);
        }
    )+};
}
// Importable as `util::both_transports` (a path, not textual scope).
#[allow(unused_imports)]
pub(crate) use both_transports;

/// The four tests of [`both_transports!`] for `super::$body`, inside the
/// module a macro opens for it; [`engine_rule!`] adds its own beside them.
#[allow(unused_macros)]
macro_rules! transport_cases {
    ($body:ident) => {
        #[test]
        fn plain() {
            super::$body($crate::util::Transport::Plain);
        }

        #[cfg(feature = "tls")]
        #[test]
        fn tls() {
            super::$body($crate::util::Transport::Tls);
        }

        #[test]
        fn two_loops_plain() {
            $crate::util::with_two_loops(|| super::$body($crate::util::Transport::Plain));
        }

        #[cfg(feature = "tls")]
        #[test]
        fn two_loops_tls() {
            $crate::util::with_two_loops(|| super::$body($crate::util::Transport::Tls));
        }
    };
}
#[allow(unused_imports)]
pub(crate) use transport_cases;

/// Defines, for each named test body `fn NAME()`, a module `NAME` with the
/// tests `one_loop` and `two_loops`: the servers the body starts run one
/// event loop, then two (`--threads 2`).
#[allow(unused_macros)]
macro_rules! one_and_two_loops {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            #[test]
            fn one_loop() {
                super::$body();
            }

            #[test]
            fn two_loops() {
                $crate::util::with_two_loops(super::$body);
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use one_and_two_loops;

/// Defines, for each named test body `fn NAME(transport: Transport)` that
/// tests a rule of the engine (not of loopline's commands), a module `NAME`
/// with the tests of [`both_transports!`], and the same body against the
/// key-value example (`examples/kv.rs`, through [`with_kv`]): `kv_plain`,
/// and `kv_two_loops_tls` (with the `tls` feature). Such a body speaks
/// through [`Protocol`]: `c.probe()` is a request with a short answer in
/// whichever protocol the server speaks.
#[allow(unused_macros)]
macro_rules! engine_rule {
    ($($body:ident),+ $(,)?) => {$(
        mod $body {
            $crate::util::transport_cases!($body);

            #[test]
            fn kv_plain() {
                $crate::util::with_kv(|| super::$body($crate::util::Transport::Plain));
            }

            #[cfg(feature = "tls")]
            #[test]
            fn kv_two_loops_tls() {
                $crate::util::with_kv(|| {
                    $crate::util::with_two_loops(|| super::$body($crate::util::Transport::Tls))
                });
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use engine_rule;

/// The protocol a server started by the harness speaks: loopline's own
/// (the `loopline` binary), or the key-value example's (`examples/kv.rs`),
/// both on the same engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Loopline,
    Kv,
}

impl Protocol {
    /// A request that changes nothing and has a short answer, and that
    /// answer: `PING` and `PONG`, or `GET` of a key nobody sets and `NIL`.
    pub fn probe(self) -> (&'static [u8], &'static str) {
        match self {
            Protocol::Loopline => (b"PING\n", "PONG"),
            Protocol::Kv => (b"GET probe\n", "NIL"),
        }
    }

    /// A request with a large answer (1,000 bytes and more), and what must
    /// be sent once before it (and its answer: one line): `ECHO` of 1,000
    /// bytes; for kv, `GET` of a 1,000-byte value set first.
    pub fn large_answer(self) -> (Option<(Vec<u8>, &'static str)>, Vec<u8>) {
        let filler = "f".repeat(1000);
        match self {
            Protocol::Loopline => (None, format!("ECHO {filler}\n").into_bytes()),
            Protocol::Kv => (
                Some((format!("SET flood {filler}\n").into_bytes(), "OK")),
                b"GET flood\n".to_vec(),
            ),
        }
    }

    /// Request number `i`, with `pad` in it, and its answer, as long as the
    /// request: `ECHO` (an answer of its own, for order checks), or for kv
    /// `GET` of the value [`Protocol::numbered_setup`] set (the same answer
    /// for every `i`: only the count tells).
    pub fn numbered(self, i: usize, pad: &str) -> (Vec<u8>, String) {
        match self {
            Protocol::Loopline => (
                format!("ECHO {i:08} {pad}\n").into_bytes(),
                format!("OK {i:08} {pad}"),
            ),
            Protocol::Kv => (b"GET numbered\n".to_vec(), format!("VALUE {pad}")),
        }
    }

    /// What must be sent once before [`Protocol::numbered`] requests with
    /// `pad`, and its answer (kv: the value they get).
    pub fn numbered_setup(self, pad: &str) -> Option<(Vec<u8>, &'static str)> {
        match self {
            Protocol::Loopline => None,
            Protocol::Kv => Some((format!("SET numbered {pad}\n").into_bytes(), "OK")),
        }
    }

    /// The binary that speaks it.
    fn program(self) -> std::path::PathBuf {
        match self {
            Protocol::Loopline => env!("CARGO_BIN_EXE_loopline").into(),
            Protocol::Kv => example_path("kv"),
        }
    }
}

/// Where cargo put example `name`: the test executable is
/// target/<profile>/deps/NAME-HASH, examples are in
/// target/<profile>/examples/ (a plain `cargo test` builds them first;
/// `cargo build --examples` does, for a run of one test file).
pub fn example_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is in target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: a plain `cargo test` builds the examples first; \
         otherwise run `cargo build --examples`",
        path.display()
    );
    path
}

thread_local! {
    /// The `--threads` of every server this test thread starts. libtest
    /// runs each test on a thread of its own, so this is per test.
    static LOOPS: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
    /// The protocol of every server this test thread starts.
    static PROTOCOL: std::cell::Cell<Protocol> = const { std::cell::Cell::new(Protocol::Loopline) };
}

/// Runs `body` with every server it starts (on this thread) being the
/// key-value example instead of `loopline`: the same engine, another
/// protocol.
pub fn with_kv(body: impl FnOnce()) {
    PROTOCOL.with(|p| p.set(Protocol::Kv));
    body();
    PROTOCOL.with(|p| p.set(Protocol::Loopline));
}

/// The protocol of servers started on this thread now.
pub fn protocol() -> Protocol {
    PROTOCOL.with(|p| p.get())
}

/// Runs `body` with every server it starts (on this thread) running two
/// event loops, `--threads 2`.
pub fn with_two_loops(body: impl FnOnce()) {
    LOOPS.with(|loops| loops.set(2));
    body();
    LOOPS.with(|loops| loops.set(1));
}

/// The `--threads` of servers started on this thread now.
pub fn loops() -> u32 {
    LOOPS.with(|loops| loops.get())
}

/// A file for one test, removed on drop. Its name is the test's own and
/// its loops': the one-loop and two-loop runs of one body run at once, in
/// one process.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// A file `name` holding `content`, readable by its owner only (a
    /// token file, say).
    pub fn new(name: &str, content: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "loopline-{name}-{}-{}",
            std::process::id(),
            loops()
        ));
        let file = TempFile(path);
        file.write(content);
        file.chmod(0o600);
        file
    }

    /// Replaces its content.
    pub fn write(&self, content: &[u8]) {
        std::fs::write(&self.0, content).unwrap();
    }

    pub fn chmod(&self, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Its path, as a command-line argument.
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory of its own under the temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopline-{what}-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real server, as a child process. Killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The same lines, for [`Server::wait_for_log`] to consume in order.
    lines: Receiver<String>,
    /// What [`Server::connect`] speaks: the transport of its listener.
    pub transport: Transport,
    /// The CA and certificate of a TLS listener; the files live as long as
    /// the server (a SIGHUP reload reads them again).
    #[cfg(feature = "tls")]
    pub pki: Option<tls::Pki>,
}

impl Server {
    /// Starts `loopline` with one listener on 127.0.0.1:0 of `transport`
    /// (for TLS, with a certificate from a CA made for this server), and
    /// `ARGS...`; waits for it to listen.
    pub fn start_over(transport: Transport, args: &[&str]) -> Server {
        match transport {
            Transport::Plain => Server::start(args),
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let pki = tls::Pki::new();
                let mut all = pki.server_args();
                all.extend(args.iter().map(|arg| arg.to_string()));
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                let mut server = Server::start_raw(&all, "debug");
                server.transport = Transport::Tls;
                server.pki = Some(pki);
                server
            }
        }
    }

    /// Like [`Server::start_over`], with the listener's `proxy` option too
    /// (a PROXY header first, before TLS): clients connect with
    /// [`Server::connect_behind_header`].
    pub fn start_proxied(transport: Transport, args: &[&str]) -> Server {
        let mut all: Vec<String> = match transport {
            Transport::Plain => vec!["--listen".into(), "127.0.0.1:0,proxy".into()],
            #[cfg(feature = "tls")]
            Transport::Tls => Vec::new(),
        };
        #[cfg(feature = "tls")]
        let pki = (transport == Transport::Tls).then(tls::Pki::new);
        #[cfg(feature = "tls")]
        if let Some(pki) = &pki {
            all = pki.server_args();
            all[1] = "127.0.0.1:0,tls,proxy".into();
        }
        all.extend(args.iter().map(|arg| arg.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut server = Server::start_raw(&all, "debug");
        server.transport = transport;
        #[cfg(feature = "tls")]
        {
            server.pki = pki;
        }
        server
    }

    /// A client of a [`Server::start_proxied`] server whose first bytes
    /// are `header` (a PROXY header, as a balancer sends), then its own
    /// transport (over TLS, the handshake); greeting not yet read.
    pub fn connect_behind_header(&self, header: &[u8]) -> Client {
        match self.transport {
            Transport::Plain => {
                let mut c = Client::connect(self.addr);
                c.send(header);
                c
            }
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let pki = self.pki.as_ref().expect("a TLS server has its PKI");
                Client::connect_tls_behind_header(self.addr, header, pki.client_config(None))
                    .expect("a TLS handshake behind a PROXY header")
            }
        }
    }

    /// Starts `loopline --listen 127.0.0.1:0 ARGS...` and waits for it to listen.
    pub fn start(args: &[&str]) -> Server {
        Server::spawn(loopline_command(args, "debug"))
    }

    /// Starts `loopline ARGS...` (no implied --listen) at log level `level`.
    pub fn start_raw(args: &[&str], level: &str) -> Server {
        Server::spawn(loopline_binary(args, level))
    }

    /// Starts a prepared command: `loopline` (see [`loopline_command`]) or
    /// any program that logs `listening on ADDR` on stderr, with its address
    /// among the arguments the caller gave it. Its stderr is piped into the
    /// log, and it must log `listening on` within PATIENCE. For tests that
    /// need more than arguments, e.g. a resource limit set with
    /// `CommandExt::pre_exec`.
    pub fn spawn(mut command: Command) -> Server {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let sink = log.clone();
        // Read stderr on a thread of its own, so the child never blocks on a
        // full pipe; it keeps draining after the test stops listening.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        // A placeholder address until the log names the real one: the
        // Server exists first so that a failed wait still kills the child.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            lines,
            transport: Transport::Plain,
            #[cfg(feature = "tls")]
            pki: None,
        };
        let line = server.wait_for_log("listening on ");
        server.addr = parse_listening(&line);
        server
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no log line with {needle:?} within {PATIENCE:?}; log: {:#?}",
                    self.log.lock().unwrap()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the server closed its stderr (exited?) before logging {needle:?}; log: {:#?}",
                    self.log.lock().unwrap()
                ),
            }
        }
    }

    /// Whether any stderr line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The metrics endpoint's address, from the `metrics on ADDR` line
    /// (waiting for it).
    pub fn metrics_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("metrics on ");
        line.split_once("metrics on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address after `metrics on` in {line:?}"))
    }

    /// Asserts the server never panicked (a panic would be in its log).
    pub fn assert_no_panic(&self) {
        let log = self.log.lock().unwrap();
        let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "the server panicked: {panics:#?}");
    }

    /// A new client speaking this server's transport (over TLS, with the
    /// handshake done); it has not read `READY` yet.
    pub fn connect(&self) -> Client {
        self.try_connect()
            .unwrap_or_else(|e| panic!("cannot connect over {:?}: {e}", self.transport))
    }

    /// Like [`Server::connect`], but a refused connection or a failed
    /// handshake is the caller's to judge.
    pub fn try_connect(&self) -> io::Result<Client> {
        match self.transport {
            Transport::Plain => Ok(Client::from_stream(TcpStream::connect_timeout(
                &self.addr, PATIENCE,
            )?)),
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let pki = self.pki.as_ref().expect("a TLS server has its PKI");
                Client::connect_tls(self.addr, pki.client_config(None))
            }
        }
    }

    /// Like [`Server::connect`], from the loopback address `from`: a client
    /// from another address, as the server's per-address counts see it.
    pub fn connect_from(&self, from: std::net::Ipv4Addr) -> Client {
        let stream = tcp_from(from.into(), self.addr);
        match self.transport {
            Transport::Plain => Client::from_stream(stream),
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let pki = self.pki.as_ref().expect("a TLS server has its PKI");
                Client::tls_over(stream, pki.client_config(None))
                    .unwrap_or_else(|e| panic!("TLS handshake from {from}: {e}"))
            }
        }
    }

    /// A client that has read its `READY`.
    pub fn client(&self) -> Client {
        let mut c = self.connect();
        c.expect_line("READY");
        c
    }

    /// The `STATS` counters, asked on a fresh connection (which counts itself).
    pub fn stats(&self) -> Stats {
        let mut c = self.client();
        c.send(b"STATS\n");
        Stats(c.read_line())
    }

    /// Waits until `STATS` reports `want` open connections (the asking one
    /// included), failing after PATIENCE. Closes are asynchronous.
    pub fn wait_for_connections(&self, want: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.stats().get("connections");
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "STATS connections stayed at {now}, expected {want}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        loopline_proc::process_rss_kib(self.pid())
            .unwrap_or_else(|| panic!("cannot read the server's RSS: {PROC_ONLY}"))
    }

    /// The most resident memory the server has had so far, in KiB (the
    /// kernel's high-water mark, `VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmHWM:")
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        loopline_proc::process_cpu_time(self.pid())
            .unwrap_or_else(|| panic!("cannot read the server's CPU time: {PROC_ONLY}"))
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the server to exit, failing after PATIENCE.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_at_most(&mut self.child, PATIENCE).expect("server did not exit")
    }
}

/// Descriptor limits: a server started with few descriptors, its limit
/// lowered while it runs, and the descriptors it holds (from /proc, hence
/// Linux only).
#[cfg(target_os = "linux")]
impl Server {
    /// Starts `loopline --listen 127.0.0.1:0 ARGS...` at log level `level`
    /// with RLIMIT_NOFILE `nofile`, soft and hard (set between fork and
    /// exec), so the server cannot raise it itself.
    pub fn start_with_descriptor_limit(args: &[&str], level: &str, nofile: libc::rlim_t) -> Server {
        use std::os::unix::process::CommandExt;
        let mut command = loopline_command(args, level);
        // SAFETY: the closure runs in the child between fork and exec; it only
        // calls setrlimit, which is async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server::spawn(command)
    }

    /// Sets the soft open file limit of the running server, keeping its hard
    /// limit (so the soft one can be raised back up to it). Descriptors
    /// already open stay open; only new ones fail with EMFILE, when no
    /// number below the limit is free.
    pub fn set_soft_descriptor_limit(&self, soft: libc::rlim_t) {
        let pid = self.pid() as libc::pid_t;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: with no new limit, prlimit only writes the current one
        // into `limit`, which lives for the whole call.
        let failed =
            unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) } != 0;
        assert!(!failed, "prlimit (read): {}", io::Error::last_os_error());
        limit.rlim_cur = soft;
        // SAFETY: prlimit reads `limit` and writes nothing (no old-limit pointer).
        let failed =
            unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) } != 0;
        assert!(!failed, "prlimit (set): {}", io::Error::last_os_error());
    }

    /// The number of descriptors the server holds now.
    pub fn open_descriptors(&self) -> usize {
        self.descriptors_in_use().len()
    }

    /// The descriptor the server's next `open` or `accept` would get: the
    /// lowest number not in use (not the count: it may have inherited one
    /// high up, and a low one may be free). A soft limit equal to it makes
    /// the next `accept` fail with EMFILE.
    pub fn next_descriptor(&self) -> usize {
        let in_use = self.descriptors_in_use();
        (0..)
            .find(|fd| !in_use.contains(fd))
            .expect("a free number")
    }

    /// The numbers of the descriptors the server holds now, from /proc/PID/fd.
    fn descriptors_in_use(&self) -> std::collections::HashSet<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap_or_else(|e| panic!("cannot list the server's descriptors: {e}: {PROC_ONLY}"))
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a /proc figure may be missing, for the panics that report it.
const PROC_ONLY: &str = "/proc is Linux-only, and the process must still be running";

/// Reads a `Name:   value kB` field of /proc/PID/status; `field` includes
/// its colon (`"VmRSS:"`).
pub fn proc_status_field(pid: u32, field: &str) -> u64 {
    loopline_proc::proc_status_field(pid, field)
        .unwrap_or_else(|| panic!("cannot read {field} of process {pid}: {PROC_ONLY}"))
}

/// Parses the address out of a `listening on ADDR` line.
pub fn parse_listening(line: &str) -> SocketAddr {
    line.split_once("listening on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address after `listening on` in {line:?}"))
}

/// `loopline ARGS...` with RUST_LOG=`level`: the one place the tests name
/// the binary.
fn loopline_binary(args: &[&str], level: &str) -> Command {
    let mut command = Command::new(protocol().program());
    command.args(args).env("RUST_LOG", level);
    // Inside `with_two_loops`, every server runs two loops.
    if loops() > 1 {
        command.args(["--threads", &loops().to_string()]);
    }
    command
}

/// A TCP connection to `addr` from the loopback address `from` (any port).
fn tcp_from(from: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("bind the client to its address");
    socket
        .connect_timeout(&addr.into(), PATIENCE)
        .expect("connect");
    socket.into()
}

/// Puts a FIFO (a named pipe) at `path`, in place of whatever was there:
/// a file whose plain `open` blocks until some process opens it to write.
pub fn make_fifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().expect("utf-8 path")).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        made,
        0,
        "mkfifo {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Waits until the server closes `stream` (an EOF, or a reset) and
/// returns what it had sent on it, retrying interrupted reads and failing
/// after PATIENCE. For raw sockets: a closed connection that was never a
/// client (a handshake never finished, a header never sent).
pub fn wait_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// `loopline --listen 127.0.0.1:0 ARGS...` with RUST_LOG=`level`, ready for
/// [`Server::spawn`].
pub fn loopline_command(args: &[&str], level: &str) -> Command {
    let mut command = loopline_binary(&["--listen", "127.0.0.1:0"], level);
    command.args(args);
    command
}

/// Runs `loopline ARGS...` (no implied --listen) at log level `level` to its
/// exit and returns its status and everything it printed: for runs that must
/// end on their own (--help, --version, usage errors, failures at start). A
/// run still going after PATIENCE (a server that started serving instead) is
/// killed and fails the test rather than hang it.
pub fn run_loopline(args: &[&str], level: &str) -> Output {
    let mut child = loopline_binary(args, level)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loopline");
    // Both pipes are drained while we wait, so a full one cannot block the
    // child (and so hide its exit).
    let stdout = read_all_in_background(child.stdout.take().expect("stdout is piped"));
    let stderr = read_all_in_background(child.stderr.take().expect("stderr is piped"));
    let status = wait_at_most(&mut child, PATIENCE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The pipes close when the child is gone, which ends both readers.
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let Some(status) = status else {
        panic!(
            "loopline {args:?} was still running after {PATIENCE:?}; stderr: {}",
            String::from_utf8_lossy(&stderr)
        )
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all_in_background(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only cuts the capture short; the test sees what came.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The child's exit status, or None if it is still running after `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed `STATS` reply.
pub struct Stats(pub String);

impl Stats {
    pub fn get(&self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.0))
            .parse()
            .unwrap()
    }
}

/// A blocking client with bounded connects, reads and writes, over plain
/// TCP or inside a TLS session (see [`Server::connect`]). Its methods speak
/// the protocol whatever the transport: they encrypt and decrypt as needed.
pub struct Client {
    /// The socket. Over plain TCP, bytes written on it are requests; over
    /// TLS it carries records, so a test that writes on it directly must
    /// write what [`Client::wire_bytes`] made. Options (`set_nodelay`, buffer
    /// sizes) and `try_clone` for a writer thread work over both.
    pub stream: TcpStream,
    /// The client side of the TLS session, for a TLS client. Boxed: a
    /// session is large, and plain clients do not need one.
    #[cfg(feature = "tls")]
    session: Option<Box<rustls::ClientConnection>>,
    /// Bytes received (decrypted) but not yet returned by a read method.
    buf: Vec<u8>,
}

impl Client {
    /// A plain TCP client of `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, PATIENCE).expect("connect"))
    }

    /// A plain client connected to `addr` from the loopback address `from`
    /// (any port; all of 127.0.0.0/8 is loopback), greeting not yet read:
    /// the server (or HAProxy) sees that address.
    pub fn connect_from(from: impl Into<std::net::IpAddr>, addr: SocketAddr) -> Client {
        Client::from_stream(tcp_from(from.into(), addr))
    }

    /// A plain client whose kernel receive buffer is `bytes` (set before the
    /// connect, so the window it advertises is small from the start): a
    /// reader that can only take a little at a time.
    pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), PATIENCE)
            .expect("connect");
        Client::from_stream(socket.into())
    }

    /// Wraps a connected stream as a plain client, with the usual bounded
    /// timeouts.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        Client {
            stream,
            #[cfg(feature = "tls")]
            session: None,
            buf: Vec::new(),
        }
    }

    /// What to write on the socket to send `bytes`: the bytes themselves
    /// over plain TCP; over TLS, the records that carry them (and any TLS
    /// output the session had waiting). Records are numbered: the result
    /// must go on the socket, whole and in order, before anything else is
    /// sent. For tests that write on the socket themselves, from a thread
    /// of their own or in pieces of their choosing.
    pub fn wire_bytes(&mut self, bytes: &[u8]) -> Vec<u8> {
        #[cfg(feature = "tls")]
        if let Some(session) = self.session.as_deref_mut() {
            // The session has no buffer limit (see `connect_tls`): it
            // takes all the plaintext at once.
            session
                .writer()
                .write_all(bytes)
                .expect("the session takes plaintext");
            return tls::take_records(session);
        }
        bytes.to_vec()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("send");
    }

    /// Like [`Client::send`], but a failed write (the server closed) is the
    /// caller's to judge.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let wire = self.wire_bytes(bytes);
        self.stream.write_all(&wire)
    }

    /// Sends `bytes` one at a time, each in a write of its own. Over TLS
    /// each byte is a record of its own, and each record goes out a byte at
    /// a time: the server meets a split of every kind, in the records and
    /// in the lines they carry. Set `nodelay` on the socket first, or the
    /// kernel may join the writes again.
    pub fn send_byte_by_byte(&mut self, bytes: &[u8]) {
        for byte in bytes {
            for wire_byte in self.wire_bytes(std::slice::from_ref(byte)) {
                self.stream.write_all(&[wire_byte]).expect("send");
            }
        }
    }

    /// Reads one line (without its LF) as raw bytes; panics on EOF or timeout.
    pub fn read_line_bytes(&mut self) -> Vec<u8> {
        self.try_read_line().unwrap_or_else(|| {
            panic!(
                "connection closed; had {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    /// Reads one line, or None at EOF. Panics on a timeout or error.
    pub fn try_read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..lf].to_vec();
                self.buf.drain(..=lf);
                return Some(line);
            }
            if !self.receive() {
                return None;
            }
        }
    }

    pub fn read_line(&mut self) -> String {
        String::from_utf8(self.read_line_bytes()).expect("utf-8 line")
    }

    pub fn expect_line(&mut self, want: &str) {
        assert_eq!(self.read_line(), want);
    }

    /// Sends the probe of the protocol servers speak on this thread
    /// ([`Protocol::probe`]) and reads its answer.
    pub fn probe(&mut self) {
        let (request, answer) = protocol().probe();
        self.send(request);
        self.expect_line(answer);
    }

    /// Reads exactly `n` bytes, whatever lines they hold; panics on EOF or
    /// timeout. For servers that answer in raw bytes, not lines.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.receive(),
                "connection closed after {} of {n} bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    /// One read through the transport, bypassing the line buffer: Ok(0) is
    /// the end of the stream (over TLS, a close_notify; a TCP close without
    /// one is an `UnexpectedEof` error).
    pub fn read_some(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(session) = self.session.as_deref_mut() {
            return tls::read_plaintext(session, &mut self.stream, chunk);
        }
        self.stream.read(chunk)
    }

    /// Appends one read's worth of bytes to `buf`; false at EOF (over TLS,
    /// close_notify). Panics on a timeout or error, a TCP close without
    /// close_notify among them.
    fn receive(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.read_some(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "read failed: {e} (had {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads until the server closes, returning everything not yet read.
    /// Over TLS the end must be a close_notify (a clean end of the session),
    /// not a bare TCP close.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        while self.receive() {}
        std::mem::take(&mut self.buf)
    }

    /// Asserts the server closes the connection with nothing more to say
    /// (over TLS: with close_notify).
    pub fn expect_eof(&mut self) {
        let rest = self.read_to_end();
        assert!(
            rest.is_empty(),
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Like [`Client::expect_eof`], but a reset also counts as the close:
    /// for servers that close without lingering (the tutorial examples),
    /// where a close with our bytes still unread makes the kernel send a
    /// reset instead of a FIN.
    pub fn expect_eof_or_reset(&mut self) {
        let mut chunk = [0u8; 65536];
        loop {
            match self.read_some(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("expected EOF, got {e}"),
            }
        }
        assert!(
            self.buf.is_empty(),
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Ends our writing side and keeps reading: over plain TCP a
    /// half-close (`shutdown(Write)`), over TLS a close_notify (the socket
    /// stays open both ways; the session's end is what the server sees).
    pub fn shutdown_write(&mut self) {
        #[cfg(feature = "tls")]
        if let Some(session) = self.session.as_deref_mut() {
            session.send_close_notify();
            let wire = tls::take_records(session);
            self.stream.write_all(&wire).expect("send close_notify");
            return;
        }
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Sends `bytes` and ends the client's writing side in the same write:
    /// over TLS, the records that carry `bytes` and the close_notify, in
    /// one `write` (so one read on the server takes both); over plain TCP,
    /// the bytes, then `shutdown(Write)`.
    pub fn send_and_end(&mut self, bytes: &[u8]) {
        #[cfg(feature = "tls")]
        if let Some(session) = self.session.as_deref_mut() {
            session
                .writer()
                .write_all(bytes)
                .expect("the session takes plaintext");
            session.send_close_notify();
            let wire = tls::take_records(session);
            self.stream.write_all(&wire).expect("send the last records");
            return;
        }
        self.stream.write_all(bytes).expect("send");
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Floods the server without ever reading, until it has stopped
    /// reading this client: STATS counts at least `paused` connections it
    /// stopped reading (this one among them). Panics if the server closes
    /// the connection instead: this is for clients it must keep, paused.
    pub fn flood_until_paused(&mut self, server: &Server, paused: u64) {
        self.flood_without_reading(|| server.stats().get("paused") >= paused)
            .unwrap_or_else(|e| panic!("the server closed a client that only pipelined: {e}"));
    }

    /// Floods the server without ever reading, until a write blocks (the
    /// server has stopped reading this client) or fails (it has closed it,
    /// say for a write timeout: it stopped reading for good).
    pub fn flood_until_blocked(&mut self) {
        // Either end will do, so the error of a close is not needed.
        let _ = self.flood_without_reading(|| true);
    }

    /// Shrinks this client's receive window, then pipelines requests with
    /// 1,000-byte answers ([`Protocol::large_answer`]: `ECHO <1000 bytes>`,
    /// under the default 1024-byte line limit) and never reads, so replies
    /// pile up in the server until it stops reading.
    /// Returns Ok once a write has blocked for 200 ms and `stopped_reading`
    /// agrees, or the error of a write that failed (the server closed the
    /// connection). Panics if neither happens within PATIENCE.
    fn flood_without_reading(
        &mut self,
        mut stopped_reading: impl FnMut() -> bool,
    ) -> io::Result<()> {
        socket2::SockRef::from(&self.stream)
            .set_recv_buffer_size(4096)
            .expect("SO_RCVBUF");
        // A write that blocks this long suggests the server stopped reading;
        // `stopped_reading` may then ask it (a busy machine may just be slow).
        self.stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (setup, request) = protocol().large_answer();
        if let Some((setup, answer)) = setup {
            self.send(&setup);
            self.expect_line(answer);
        }
        let requests = request.repeat(64);
        // The wire bytes of one round of `requests`, and where we are in
        // them: a write cut short by the timeout goes on mid-line (over
        // TLS, mid-record), never starts anew. A round used up, the next
        // is made (over TLS, new records: they cannot be sent twice).
        let mut wire = Vec::new();
        let mut at = 0;
        let deadline = Instant::now() + PATIENCE;
        let end = loop {
            assert!(
                Instant::now() < deadline,
                "the server never stopped reading"
            );
            if at == wire.len() {
                wire = self.wire_bytes(&requests);
                at = 0;
            }
            match self.stream.write(&wire[at..]) {
                Ok(n) => at += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stopped_reading() {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.stream.set_write_timeout(Some(PATIENCE)).unwrap();
        end
    }

    /// Asserts nothing arrives within `wait` (over TLS: no plaintext; a
    /// record the session handles itself, if any, does not count).
    pub fn expect_silence(&mut self, wait: Duration) {
        assert!(
            self.buf.is_empty(),
            "expected silence, but {:?} had arrived already",
            String::from_utf8_lossy(&self.buf)
        );
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        match self.read_some(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
}

/// 100 bytes of payload in each request of [`spawn_echo_writer`]: replies
/// large enough that the reader, not the server, sets the pace.
const ECHO_PAD: &str = "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp";

/// Writes `ECHO <seq> <pad>` for seq in 0..lines, in batches of about
/// 16 KiB, from its own thread. Stops at the first write that fails (the
/// server closed the connection) and returns its error: whether that is a
/// failure is the caller's to say.
pub fn spawn_echo_writer(mut stream: TcpStream, lines: u64) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut batch = Vec::with_capacity(1 << 15);
        for seq in 0..lines {
            batch.extend_from_slice(format!("ECHO {seq} {ECHO_PAD}\n").as_bytes());
            if batch.len() >= 1 << 14 || seq + 1 == lines {
                stream.write_all(&batch)?;
                batch.clear();
            }
        }
        Ok(())
    })
}

/// Checks the replies to [`spawn_echo_writer`]'s requests, `OK <seq>
/// <pad>` in order, as they arrive, in pieces of any size.
#[derive(Default)]
pub struct EchoReplies {
    /// The start of a reply whose end has not arrived yet.
    unfinished: Vec<u8>,
    /// Replies checked so far, which is also the next one's sequence number.
    pub checked: u64,
}

impl EchoReplies {
    /// Checks every reply that `bytes` completes; keeps the start of an
    /// unfinished one for the next call.
    pub fn check(&mut self, bytes: &[u8]) {
        self.unfinished.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(lf) = self.unfinished[start..].iter().position(|&b| b == b'\n') {
            let want = format!("OK {} {ECHO_PAD}", self.checked);
            assert_eq!(
                &self.unfinished[start..start + lf],
                want.as_bytes(),
                "reply {}",
                self.checked
            );
            self.checked += 1;
            start += lf + 1;
        }
        self.unfinished.drain(..start);
    }
}

/// The responses the server gives to `input` sent in one write, then a
/// half-close: the reference for every split test.
pub fn responses_to(server: &Server, input: &[u8]) -> Vec<u8> {
    let mut c = server.client();
    c.send(input);
    c.shutdown_write();
    c.read_to_end()
}

/// A small deterministic PRNG (xorshift64*), so split tests repeat exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
