//! A real `nc` session (netcat-openbsd), as a person at a terminal would
//! have it. `.ci/run` installs nc.

mod util;

use std::io::Write;
use std::process::{Command, Stdio};
use util::Server;

#[test]
fn nc_session_greets_answers_and_says_bye() {
    let server = Server::start(&[]);
    let mut nc = Command::new("timeout")
        .args(["20", "nc", "127.0.0.1", &server.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run nc (apt-get install netcat-openbsd)");
    nc.stdin
        .take()
        .unwrap()
        .write_all(b"PING\nECHO hi\nQUIT\n")
        .unwrap();
    let out = nc.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "READY\nPONG\nOK hi\nBYE\n"
    );
    assert!(out.status.success(), "nc exited with {:?}", out.status);
}
