//! The library crate: bind in-process, read the bound address before
//! running, stop with the shutdown handle.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn embedded_server_runs_until_its_shutdown_handle_fires() {
    runs_until_its_shutdown_handle_fires(1);
}

/// The same API with several loops: `run` starts the others' threads and
/// returns once every loop has shut down; the handle stops them all.
#[test]
fn embedded_server_with_two_loops_runs_until_its_shutdown_handle_fires() {
    runs_until_its_shutdown_handle_fires(2);
}

fn runs_until_its_shutdown_handle_fires(threads: u64) {
    let config = loopline::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        threads,
        ..Default::default()
    };
    let server = loopline::Server::bind(config, loopline::protocol::Loopline).expect("bind");
    let addr = server.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    let shutdown = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());

    // Several clients, so that with two loops both are likely to hold some.
    let clients: Vec<_> = (0..8)
        .map(|_| {
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
            reader
        })
        .collect();

    shutdown.shutdown();
    for mut reader in clients {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "ERR server shutting down\n");
    }
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
    match loopline::Server::bind(config, loopline::protocol::Loopline) {
        Err(e @ loopline::StartError::Listen { .. }) => {
            assert!(e.to_string().contains(&addr.to_string()))
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("bound a taken address"),
    }
}
