//! The library crate: bind in-process, read the bound address before
//! running, stop with the shutdown handle.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn embedded_server_runs_until_its_shutdown_handle_fires() {
    let config = loopline::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    let server = loopline::Server::bind(config).expect("bind");
    let addr = server.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    let shutdown = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());

    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "READY\n");
    (&stream).write_all(b"PING\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\n");

    shutdown.shutdown();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "ERR server shutting down\n");
    running
        .join()
        .unwrap()
        .expect("run returns Ok after a graceful shutdown");
}

#[test]
fn binding_a_taken_address_is_a_typed_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = loopline::Config {
        listen: vec![addr.into()],
        ..Default::default()
    };
    match loopline::Server::bind(config) {
        Err(e @ loopline::StartError::Listen { .. }) => {
            assert!(e.to_string().contains(&addr.to_string()))
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("bound a taken address"),
    }
}
