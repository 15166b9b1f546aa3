//! `--max-connections-per-ip`, on the real binary: N clients from one
//! address are served, the next gets its line and the close and counts in
//! `rejected`, another address is still served, and a client whose last
//! line is out (closed, or lingering) no longer counts against its address.

mod util;

use std::net::Ipv4Addr;

use util::{Client, Server, Stats};

// Each runs with one event loop and with two (`--threads 2`).
util::one_and_two_loops!(
    the_n_plus_first_from_one_address_is_turned_away_and_others_are_not,
    a_lingering_socket_no_longer_counts_against_its_address,
    busy_rejects_do_not_count_against_an_address,
    off_by_default,
);

/// A client connected from `from` (any port), greeting not yet read.
fn connect_from(from: Ipv4Addr, server: &Server) -> Client {
    Client::connect_from(from, server.addr)
}

const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// STATS, asked from OTHER (so that the asking client does not count
/// against 127.0.0.1).
fn stats_from_other(server: &Server) -> Stats {
    let mut c = connect_from(OTHER, server);
    c.expect_line("READY");
    c.send(b"STATS\n");
    Stats(c.read_line())
}

fn expect_turned_away(c: &mut Client) {
    c.expect_line("ERR too many connections from your address");
    c.expect_eof();
}

fn the_n_plus_first_from_one_address_is_turned_away_and_others_are_not() {
    let mut server = Server::start(&["--max-connections-per-ip", "2"]);
    let mut first = server.client();
    let mut second = server.client();
    let mut third = server.connect();
    expect_turned_away(&mut third);
    let line = server.wait_for_log("turned away 1 connection(s)");
    assert!(
        line.contains("too many from one address (--max-connections-per-ip 2)"),
        "{line}"
    );

    // Another address is served, and sees the refusal counted.
    let stats = stats_from_other(&server);
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    assert_eq!(stats.get("connections"), 3, "{}", stats.0);
    assert_eq!(stats.get("accepted"), 3, "{}", stats.0);

    // The two admitted ones are served as ever.
    for c in [&mut first, &mut second] {
        c.send(b"PING\n");
        c.expect_line("PONG");
    }

    // One of them leaves: its place is free at once (its last line is out
    // before the client reads the EOF).
    first.send(b"QUIT\n");
    first.expect_line("BYE");
    first.expect_eof();
    let mut again = server.client();
    again.send(b"PING\n");
    again.expect_line("PONG");
    let mut over = server.connect();
    expect_turned_away(&mut over);
    assert_eq!(stats_from_other(&server).get("rejected"), 2);
    server.assert_no_panic();
}

fn a_lingering_socket_no_longer_counts_against_its_address() {
    let server = Server::start(&["--max-connections-per-ip", "1"]);
    let mut leaving = server.client();
    // The client reads BYE but keeps its socket open: the server lingers
    // on it, waiting for the client's EOF.
    leaving.send(b"QUIT\n");
    leaving.expect_line("BYE");
    let mut next = server.client();
    next.send(b"PING\n");
    next.expect_line("PONG");
    drop(leaving);
    // The one place is taken again by `next`.
    expect_turned_away(&mut server.connect());
}

fn busy_rejects_do_not_count_against_an_address() {
    let server = Server::start(&["--max-connections", "2", "--max-connections-per-ip", "2"]);
    let mut first = server.client();
    let mut other = connect_from(OTHER, &server);
    other.expect_line("READY");
    let mut busy = server.connect();
    busy.expect_line("ERR server busy");
    busy.expect_eof();
    // The busy reject took no place of 127.0.0.1: once `other` leaves, a
    // second client from 127.0.0.1 is admitted.
    other.send(b"QUIT\n");
    other.expect_line("BYE");
    other.expect_eof();
    let mut second = server.client();
    second.send(b"STATS\n");
    let stats = Stats(second.read_line());
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    assert_eq!(stats.get("connections"), 2, "{}", stats.0);
    first.send(b"PING\n");
    first.expect_line("PONG");
}

fn off_by_default() {
    let server = Server::start(&[]);
    let clients: Vec<Client> = (0..20).map(|_| server.client()).collect();
    let stats = server.stats();
    assert_eq!(stats.get("connections"), 21, "{}", stats.0);
    assert_eq!(stats.get("rejected"), 0, "{}", stats.0);
    drop(clients);
}
