//! Helpers for the tests of running as a service (tests/environment.rs,
//! tests/systemd.rs, tests/journald.rs): the binary with a clean service
//! environment, a run to its exit, and a listening socket handed to the
//! server as systemd hands it (descriptor 3, `LISTEN_PID`, `LISTEN_FDS`).
#![allow(dead_code)]

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::PATIENCE;

/// Every variable through which systemd, or an operator, changes how the
/// server runs: removed from each test's server unless the test sets it,
/// so that the environment the tests themselves run in cannot leak in.
const SERVICE_VARIABLES: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
];

/// `loopline ARGS...` (no implied --listen) at log level `level`, without
/// the service variables and without any `LOOPLINE_*` one.
pub fn loopline(args: &[&str], level: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loopline"));
    clean_environment(&mut command);
    command.args(args).env("RUST_LOG", level);
    // Inside `util::with_two_loops`, the server runs two loops.
    if crate::util::loops() > 1 {
        command.args(["--threads", &crate::util::loops().to_string()]);
    }
    command
}

/// Removes the service variables and every `LOOPLINE_*` one from what
/// `command` passes on.
pub fn clean_environment(command: &mut Command) {
    for variable in SERVICE_VARIABLES {
        command.env_remove(variable);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOOPLINE_") {
            command.env_remove(name);
        }
    }
}

/// Whether `LISTEN_PID` names the server, as systemd sets it, or another
/// process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ListenPid {
    Server,
    Other,
}

/// `loopline ARGS...` at log level `level`, started as systemd starts a
/// socket-activated service: `descriptor` (any open descriptor of the test)
/// becomes the server's descriptor 3, `LISTEN_FDS=1`, and `LISTEN_PID` the
/// server's own PID (`$$` of a shell that then `exec`s the server, keeping
/// its PID) or that of `init` for [`ListenPid::Other`].
pub fn passing_descriptor(
    descriptor: &impl AsRawFd,
    listen_pid: ListenPid,
    args: &[&str],
    level: &str,
) -> Command {
    let pid = match listen_pid {
        ListenPid::Server => "$$",
        ListenPid::Other => "1",
    };
    let mut command = Command::new("sh");
    clean_environment(&mut command);
    command
        .arg("-c")
        .arg(format!(
            "export LISTEN_PID={pid} LISTEN_FDS=1; exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_loopline"))
        .args(args)
        .env("RUST_LOG", level);
    let from: RawFd = descriptor.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, and only
    // calls dup2 and fcntl (async-signal-safe), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if from == 3 {
                // dup2 onto itself would keep close-on-exec: clear it instead.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(from, 3) == -1 {
                // dup2 leaves the copy without close-on-exec: it survives
                // both execs (the shell's and the server's).
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Runs `command` to its exit and returns its status and output; a run
/// still going after PATIENCE (a server that started serving instead) is
/// killed and fails the test.
pub fn run_to_exit(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} was still running after {PATIENCE:?}: stderr {:?}",
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The lines of the log containing `needle`.
pub fn lines_with(log: &[String], needle: &str) -> Vec<String> {
    log.iter().filter(|l| l.contains(needle)).cloned().collect()
}
