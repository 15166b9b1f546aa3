//! A real `nc` session (OpenBSD netcat), as a person at a terminal would
//! have it. The test needs `nc` on the PATH (Debian and Ubuntu:
//! `apt-get install netcat-openbsd`; `.ci/run` installs it) and says so
//! plainly when it is missing.

mod util;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use util::{Server, PATIENCE};

/// The `nc` executable on the PATH, if there is one.
fn find_nc() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nc"))
        .find(|candidate| candidate.is_file())
}

#[test]
fn nc_session_greets_answers_and_says_bye() {
    let nc_path = find_nc().expect("nc not found: apt-get install netcat-openbsd");
    let server = Server::start(&[]);
    let mut nc = Command::new(nc_path)
        .args(["127.0.0.1", &server.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nc");
    let mut stdin = nc.stdin.take().unwrap();
    stdin.write_all(b"PING\nECHO hi\nQUIT\n").unwrap();
    // nc exits once both its input and the connection have ended: stdin
    // ends here, and the server closes the connection after BYE.
    drop(stdin);

    // Bounded: if nc never sees the server close, kill it rather than hang.
    let deadline = Instant::now() + PATIENCE;
    while nc.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = nc.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = nc.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "READY\nPONG\nOK hi\nBYE\n"
    );
    assert!(out.status.success(), "nc exited with {:?}", out.status);
}
