//! 2,000 concurrent connections, each greeted and answered.

mod util;

use std::io::Write;
use util::{Client, Server};

#[test]
fn two_thousand_concurrent_connections() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..2000).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.expect_line("READY");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        writeln!(c.stream, "ECHO {i}").unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.read_line(), format!("OK {i}"));
    }
    let stats = server.stats();
    assert_eq!(stats.get("connections"), 2001);
    assert_eq!(stats.get("accepted"), 2001);
}
