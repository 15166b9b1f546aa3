//! The `proxy` listener option: a PROXY protocol header (v1 or v2) comes
//! first, and the address it carries is the client's. First through a real
//! HAProxy (`send-proxy`, `send-proxy-v2`, TLS passed through, a `tcp-check`
//! health check, the per-address limit), then on raw sockets, for the cases
//! a balancer never sends: headers split anyhow, LOCAL and UNKNOWN, no
//! header, garbage, overlong, unfinished headers, and a plain listener
//! meeting a PROXY-looking line.

mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use util::haproxy::Haproxy;
use util::{Client, Server, Stats, PATIENCE};

// Each runs with one event loop and with two (`--threads 2`): the
// client's address is counted process-wide once its header is read.
util::one_and_two_loops!(
    haproxy_send_proxy_v1_and_v2_reach_a_proxy_listener,
    haproxy_per_address_limit_counts_the_client_address,
    haproxy_from_a_trusted_address_is_served_and_a_forged_header_from_elsewhere_is_closed,
    a_header_byte_by_byte_then_a_request_with_its_last_byte_loses_nothing,
    a_busy_proxy_listener_reads_the_header_then_says_busy,
);

/// A server with one `proxy` listener on 127.0.0.1:0, at debug level.
fn proxy_server(args: &[&str]) -> Server {
    let mut all = vec!["--listen", "127.0.0.1:0,proxy"];
    all.extend_from_slice(args);
    Server::start_raw(&all, "debug")
}

/// A server with one `tls,proxy` listener on `pki`'s certificate, and `args`.
#[cfg(feature = "tls")]
fn tls_proxy_server(pki: &util::tls::Pki, args: &[&str]) -> Server {
    let (cert, key) = (util::tls::path(&pki.cert), util::tls::path(&pki.key));
    let mut all = vec![
        "--listen",
        "127.0.0.1:0,tls,proxy",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    all.extend_from_slice(args);
    Server::start_raw(&all, "debug")
}

/// A v1 header naming `client` (to the server's own address).
fn v1(client: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let to = if client.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!(
        "PROXY {family} {} {to} {} 9000\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` 0 (LOCAL) or 1 (PROXY), `family` byte (0x11
/// TCP over IPv4, 0x21 over IPv6, 0x00 UNSPEC), then `rest` (addresses and
/// TLVs).
fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(rest.len()).unwrap().to_be_bytes());
    h.extend_from_slice(rest);
    h
}

/// A v2 PROXY header for an IPv6 client.
fn v2_tcp6(client: std::net::SocketAddrV6) -> Vec<u8> {
    let mut rest = client.ip().octets().to_vec();
    rest.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    rest.extend_from_slice(&client.port().to_be_bytes());
    rest.extend_from_slice(&9000u16.to_be_bytes());
    v2(1, 0x21, &rest)
}

/// A raw client of `server` with `nodelay` (each write its own segment).
fn raw_client(server: &Server) -> Client {
    let c = Client::connect(server.addr);
    c.stream.set_nodelay(true).unwrap();
    c
}

/// A client that sent `header` whole and read its READY.
fn proxied_client(server: &Server, header: &[u8]) -> Client {
    let mut c = raw_client(server);
    c.send(header);
    c.expect_line("READY");
    c
}

/// STATS, asked behind a header naming `from` (so it counts there).
fn stats_from(server: &Server, from: SocketAddr) -> Stats {
    let mut c = proxied_client(server, &v1(from));
    c.send(b"STATS\n");
    Stats(c.read_line())
}

fn serves_ping_and_echo(c: &mut Client, tag: &str) {
    c.send(b"PING\n");
    c.expect_line("PONG");
    c.send(format!("ECHO {tag}\n").as_bytes());
    c.expect_line(&format!("OK {tag}"));
}

/// Waits until some log line (in any order) contains `needle`.
fn wait_logged(server: &Server, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !server.logged(needle) {
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}; log: {:#?}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn local_port(c: &Client) -> u16 {
    c.stream.local_addr().unwrap().port()
}

// ---- Through HAProxy -------------------------------------------------

fn haproxy_send_proxy_v1_and_v2_reach_a_proxy_listener() {
    let server = proxy_server(&[]);
    let backend = server.addr;
    let haproxy = Haproxy::start(2, |ports| {
        format!(
            "frontend via_v1
    bind 127.0.0.1:{}
    default_backend loopline_v1

frontend via_v2
    bind 127.0.0.1:{}
    default_backend loopline_v2

backend loopline_v1
    server loopline {backend} send-proxy

backend loopline_v2
    server loopline {backend} send-proxy-v2
",
            ports[0], ports[1]
        )
    });
    for (frontend, version) in [(0, "v1"), (1, "v2")] {
        // Several clients at once, each served as if it were alone.
        let mut clients: Vec<Client> = (0..3)
            .map(|_| Client::connect(haproxy.addr(frontend)))
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.expect_line("READY");
            serves_ping_and_echo(c, &format!("{version} client {i}"));
        }
        // The server knows each by the address HAProxy saw, not by
        // HAProxy's own connection.
        for c in &clients {
            wait_logged(
                &server,
                &format!("proxied 127.0.0.1:{} via 127.0.0.1:", local_port(c)),
            );
        }
        for mut c in clients {
            c.send(b"QUIT\n");
            c.expect_line("BYE");
            c.expect_eof();
        }
    }
    server.assert_no_panic();
}

#[cfg(feature = "tls")]
#[test]
fn haproxy_passes_tls_through_to_a_tls_proxy_listener() {
    let pki = util::tls::Pki::new();
    let mut server = tls_proxy_server(&pki, &[]);
    let backend = server.addr;
    // mode tcp: HAProxy sends the header, then passes the TLS bytes as
    // they are; the session is between the client and loopline.
    let haproxy = Haproxy::start(1, |ports| {
        format!(
            "frontend tls_through
    bind 127.0.0.1:{}
    default_backend loopline_tls

backend loopline_tls
    server loopline {backend} send-proxy-v2
",
            ports[0]
        )
    });
    let mut c =
        Client::connect_tls(haproxy.addr(0), pki.client_config(None)).expect("TLS through HAProxy");
    c.expect_line("READY");
    serves_ping_and_echo(&mut c, "inside TLS");
    server.wait_for_log(&format!("proxied 127.0.0.1:{} via", local_port(&c)));
    c.send(b"QUIT\n");
    c.expect_line("BYE");
    c.expect_eof();
    server.assert_no_panic();
}

#[test]
fn haproxy_tcp_check_sees_the_server_up_and_a_check_without_header_fails() {
    let mut server = proxy_server(&["--handshake-timeout", "30s"]);
    let backend = server.addr;
    let haproxy = Haproxy::start(1, |ports| {
        format!(
            "frontend checked
    bind 127.0.0.1:{}
    default_backend loopline_checked

backend loopline_checked
    option tcp-check
    tcp-check expect string READY
    server with_header {backend} send-proxy check check-send-proxy inter 200ms
    server without_header {backend} check inter 200ms
",
            ports[0]
        )
    });
    // The check that sends its header is answered READY...
    haproxy.wait_for_server("loopline_checked", "with_header", "check_status", "L7OK");
    haproxy.wait_for_server("loopline_checked", "with_header", "status", "UP");
    // ...while one that sends none gets nothing: the server waits for a
    // header, and HAProxy's check times out. (The control that shows the
    // expect rule is really applied.)
    haproxy.wait_for_server("loopline_checked", "without_header", "status", "DOWN");
    server.wait_for_log("proxied 127.0.0.1:");
    // Traffic goes to the server that is up.
    let mut c = Client::connect(haproxy.addr(0));
    c.expect_line("READY");
    serves_ping_and_echo(&mut c, "checked");
    server.assert_no_panic();
}

fn haproxy_per_address_limit_counts_the_client_address() {
    let mut server = proxy_server(&["--max-connections-per-ip", "1"]);
    let backend = server.addr;
    let haproxy = Haproxy::start(1, |ports| {
        format!(
            "frontend per_address
    bind 127.0.0.1:{}
    default_backend loopline

backend loopline
    server loopline {backend} send-proxy-v2
",
            ports[0]
        )
    });
    let front = haproxy.addr(0);
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let three = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    let mut first = Client::connect_from(two, front);
    first.expect_line("READY");
    server.wait_for_log(&format!("proxied 127.0.0.2:{} via", local_port(&first)));
    // Every connection reaches the server from HAProxy's address: only
    // the header tells them apart.
    let mut second = Client::connect_from(two, front);
    second.expect_line("ERR too many connections from your address");
    second.expect_eof();
    let line = server.wait_for_log("turned away 1 connection(s)");
    assert!(line.contains("--max-connections-per-ip 1"), "{line}");
    // The balancer's address says nothing: the summary names the client
    // its header carried.
    assert!(
        line.ends_with("; the last from 127.0.0.2, by its PROXY header"),
        "{line}"
    );
    let mut other = Client::connect_from(three, front);
    other.expect_line("READY");
    serves_ping_and_echo(&mut other, "from 127.0.0.3");

    // The first leaves: its address is free again (counted out under the
    // address it was counted in under).
    first.send(b"QUIT\n");
    first.expect_line("BYE");
    first.expect_eof();
    let mut again = Client::connect_from(two, front);
    again.expect_line("READY");

    let stats = stats_from(&server, "192.0.2.50:1000".parse().unwrap());
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    // `other`, `again` and the asking one.
    assert_eq!(stats.get("connections"), 3, "{}", stats.0);
    server.assert_no_panic();
}

fn haproxy_from_a_trusted_address_is_served_and_a_forged_header_from_elsewhere_is_closed() {
    // HAProxy connects to the server from 127.0.0.9, the one address
    // --proxy-from trusts.
    let mut server = proxy_server(&["--proxy-from", "127.0.0.9/32"]);
    let backend = server.addr;
    let haproxy = Haproxy::start(1, |ports| {
        format!(
            "frontend trusted
    bind 127.0.0.1:{}
    default_backend loopline

backend loopline
    server loopline {backend} send-proxy-v2 source 127.0.0.9
",
            ports[0]
        )
    });
    let mut through = Client::connect(haproxy.addr(0));
    through.expect_line("READY");
    serves_ping_and_echo(&mut through, "through the balancer");

    // A peer that is not the balancer sends a well-formed header claiming
    // another address: closed at once, without a line.
    let mut forger = raw_client(&server);
    forger.send(&v1("203.0.113.5:4000".parse().unwrap()));
    forger.expect_eof_or_reset();
    let line = server.wait_for_log("not a trusted balancer");
    assert!(
        line.contains(&format!("turned away 127.0.0.1:{}", local_port(&forger))),
        "{line}"
    );
    let summary = server.wait_for_log("turned away 1 connection(s)");
    assert!(
        summary.ends_with("untrusted balancer (--proxy-from 127.0.0.9/32)"),
        "{summary}"
    );
    through.send(b"STATS\n");
    let stats = Stats(through.read_line());
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    assert_eq!(stats.get("connections"), 1, "{}", stats.0);
    server.assert_no_panic();
}

/// A `proxy` listener that other hosts can reach, with no --proxy-from:
/// any of them could claim any address, and the start says so, once per
/// such listener. A loopback one, or one with --proxy-from, is quiet.
#[test]
fn a_reachable_proxy_listener_without_proxy_from_is_warned_about() {
    let warning = "may send a PROXY header and claim any client address";
    let open = Server::start_raw(&["--listen", "0.0.0.0:0,proxy"], "info");
    let line = open
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(warning))
        .cloned()
        .unwrap_or_else(|| panic!("no warning in {:#?}", open.log.lock().unwrap()));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("--listen 0.0.0.0:0,proxy"), "{line}");
    assert!(line.contains("--proxy-from"), "{line}");
    for args in [
        &["--listen", "127.0.0.1:0,proxy"][..],
        &["--listen", "0.0.0.0:0,proxy", "--proxy-from", "10.0.0.0/8"],
    ] {
        let quiet = Server::start_raw(args, "info");
        assert!(!quiet.logged(warning), "{args:?}");
    }
}

// ---- The engine's rule, whatever the protocol ------------------------

// Over both transports (a header, then the TLS handshake), with one loop
// and two, and against the key-value example too.
util::engine_rule!(behind_a_header_a_client_is_served_and_counted_under_its_address);

/// The client a header names is the one the limits count: two
/// connections naming the same client are one too many under
/// `--max-connections-per-ip 1`, one naming another is served.
fn behind_a_header_a_client_is_served_and_counted_under_its_address(transport: util::Transport) {
    let server = Server::start_proxied(transport, &["--max-connections-per-ip", "1"]);
    let header = v1("203.0.113.9:4000".parse().unwrap());
    let mut first = server.connect_behind_header(&header);
    first.expect_line("READY");
    first.probe();
    let mut second = server.connect_behind_header(&header);
    second.expect_line("ERR too many connections from your address");
    second.expect_eof();
    let mut other = server.connect_behind_header(&v1("203.0.113.10:4000".parse().unwrap()));
    other.expect_line("READY");
    other.probe();
    first.probe();
    server.assert_no_panic();
}

// ---- Raw sockets -----------------------------------------------------

fn a_header_byte_by_byte_then_a_request_with_its_last_byte_loses_nothing() {
    let mut server = proxy_server(&[]);
    let v4_client: SocketAddr = "192.0.2.1:5555".parse().unwrap();
    let v6_client: std::net::SocketAddrV6 = "[2001:db8::7]:6666".parse().unwrap();
    for (header, shown) in [
        (v1(v4_client), "proxied 192.0.2.1:5555 via 127.0.0.1:"),
        (
            v2_tcp6(v6_client),
            "proxied [2001:db8::7]:6666 via 127.0.0.1:",
        ),
    ] {
        let mut c = raw_client(&server);
        let (head, last) = header.split_at(header.len() - 1);
        for byte in head {
            c.send(&[*byte]);
            // Separate segments, most likely; the outcome must not
            // depend on it either way.
            std::thread::sleep(Duration::from_millis(2));
        }
        // Nothing is said before the header is whole.
        c.expect_silence(Duration::from_millis(100));
        let mut rest = last.to_vec();
        rest.extend_from_slice(b"PING\nECHO after\n");
        c.send(&rest);
        c.expect_line("READY");
        c.expect_line("PONG");
        c.expect_line("OK after");
        server.wait_for_log(shown);
    }
    server.assert_no_panic();
}

#[test]
fn local_and_unknown_mean_the_socket_peer() {
    let mut server = proxy_server(&[]);
    for header in [v2(0, 0x00, &[]), b"PROXY UNKNOWN\r\n".to_vec()] {
        let mut c = raw_client(&server);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"PING\n");
        c.send(&bytes);
        c.expect_line("READY");
        c.expect_line("PONG");
        server.wait_for_log(&format!("proxied 127.0.0.1:{} (LOCAL", local_port(&c)));
    }
    // A v2 LOCAL header may carry addresses (a health check's): ignored.
    let mut rest = vec![10, 9, 9, 9, 127, 0, 0, 1, 0, 1, 0, 2];
    rest.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a NOOP TLV
    let mut c = raw_client(&server);
    c.send(&v2(0, 0x11, &rest));
    c.expect_line("READY");
    server.wait_for_log(&format!("proxied 127.0.0.1:{} (LOCAL", local_port(&c)));
    server.assert_no_panic();
}

#[cfg(feature = "tls")]
#[test]
fn a_client_hello_in_the_same_write_as_the_header_is_kept_and_refusals_travel_inside_tls() {
    let pki = util::tls::Pki::new();
    let mut server = tls_proxy_server(&pki, &["--max-connections-per-ip", "1"]);
    let header = v1("198.51.100.7:4242".parse().unwrap());
    let mut c = Client::connect_tls_behind_header(server.addr, &header, pki.client_config(None))
        .expect("the handshake behind the header");
    c.expect_line("READY");
    serves_ping_and_echo(&mut c, "tls");
    server.wait_for_log("proxied 198.51.100.7:4242 via 127.0.0.1:");
    // A second client from the same address hears why, inside TLS.
    let same_address = v1("198.51.100.7:4343".parse().unwrap());
    let mut second =
        Client::connect_tls_behind_header(server.addr, &same_address, pki.client_config(None))
            .expect("the handshake of a client turned away");
    second.expect_line("ERR too many connections from your address");
    second.expect_eof();
    // No header at all: the ClientHello is not one, so no handshake.
    let refused = Client::connect_tls(server.addr, pki.client_config(None));
    assert!(refused.is_err(), "a TLS client without header was served");
    server.assert_no_panic();
}

#[test]
fn no_header_garbage_or_a_malformed_header_closes_without_a_line() {
    // A long deadline: these must close on their bytes, not on the timer.
    let mut server = proxy_server(&["--handshake-timeout", "60s"]);
    let cases: [(&[u8], &str); 5] = [
        (b"PING\n", "no PROXY header"),
        (b"\x16\x03\x01\x02\x00garbage", "no PROXY header"),
        (
            b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
            "malformed PROXY v1 header",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            "malformed PROXY v1 header",
        ),
        (
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
            "malformed PROXY v2 header",
        ),
    ];
    for (bytes, why) in cases {
        let started = Instant::now();
        let mut c = raw_client(&server);
        c.send(bytes);
        c.expect_eof_or_reset();
        assert!(
            started.elapsed() < PATIENCE,
            "{bytes:?} waited for the timer"
        );
        server.wait_for_log(why);
    }
    let stats = stats_from(&server, "192.0.2.3:3".parse().unwrap());
    assert_eq!(stats.get("accepted"), 1, "{}", stats.0);
    assert_eq!(stats.get("connections"), 1, "{}", stats.0);
    server.assert_no_panic();
}

#[test]
fn a_header_over_the_maximum_closes_without_a_line() {
    let mut server = proxy_server(&["--handshake-timeout", "60s"]);
    // v1: 107 bytes at most, CR LF included; here 200 and no LF.
    let mut long_v1 = b"PROXY UNKNOWN ".to_vec();
    long_v1.resize(200, b'x');
    // v2: announcing 5000 bytes of addresses and TLVs (over 4 KiB).
    let mut long_v2 = v2(1, 0x11, &[]);
    long_v2[14..16].copy_from_slice(&5000u16.to_be_bytes());
    for bytes in [long_v1, long_v2] {
        let mut c = raw_client(&server);
        c.send(&bytes);
        c.expect_eof_or_reset();
        server.wait_for_log("PROXY header too long");
    }
    // Exactly 107 bytes is still a header.
    let mut max_v1 = b"PROXY UNKNOWN ".to_vec();
    max_v1.resize(105, b'x');
    max_v1.extend_from_slice(b"\r\n");
    proxied_client(&server, &max_v1);
    server.assert_no_panic();
}

#[test]
fn an_unfinished_header_is_closed_at_the_handshake_timeout() {
    let mut server = proxy_server(&["--handshake-timeout", "1s"]);
    // Before the connects: the server's clock for each starts later.
    let started = Instant::now();
    let mut half = raw_client(&server);
    let mut none = raw_client(&server);
    half.send(b"PROXY TCP4 192.0.2.1 ");
    half.expect_eof_or_reset();
    none.expect_eof_or_reset();
    // The timer cannot fire early; how late it fires is the machine's
    // business (the read timeout, PATIENCE, bounds it).
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.wait_for_log("handshake timeout (--handshake-timeout 1s)");
    // Neither ever counted as a client.
    let stats = stats_from(&server, "192.0.2.4:4".parse().unwrap());
    assert_eq!(stats.get("accepted"), 1, "{}", stats.0);
    server.assert_no_panic();
}

/// Regression: with `--handshake-timeout 0` on a `tls,proxy` listener, the
/// TLS handshake was still cut at 10 s: one deadline, set at the accept for
/// the header's sake, served both. The header alone keeps its 10 s limit;
/// the handshake after it has none.
#[cfg(feature = "tls")]
#[test]
fn with_no_handshake_timeout_a_handshake_after_the_header_has_no_deadline() {
    const HEADER_LIMIT: Duration = Duration::from_secs(10);
    let pki = util::tls::Pki::new();
    let server = tls_proxy_server(&pki, &["--handshake-timeout", "0"]);
    let header = v1("192.0.2.40:40".parse().unwrap());
    let mut c = Client::connect_tls_after_header(
        server.addr,
        &header,
        Some(HEADER_LIMIT + Duration::from_secs(1)),
        pki.client_config(None),
    )
    .expect("a handshake begun 11 s after the header");
    c.expect_line("READY");
    serves_ping_and_echo(&mut c, "a handshake slower than the header's limit");
}

#[test]
fn a_graceful_shutdown_closes_a_connection_still_waiting_for_its_header() {
    let mut server = proxy_server(&["--handshake-timeout", "60s"]);
    let mut served = proxied_client(&server, &v1("192.0.2.20:20".parse().unwrap()));
    let mut waiting = raw_client(&server);
    waiting.send(b"PROXY TCP4 192.0.2.21 ");
    // Seen by the server before the signal: it is past the accept.
    wait_logged(
        &server,
        &format!(
            "accepted 127.0.0.1:{} (proxy listener: waiting",
            local_port(&waiting)
        ),
    );
    server.signal("TERM");
    served.expect_line("ERR server shutting down");
    served.expect_eof();
    // No line for it: there is no client yet to tell.
    waiting.expect_eof_or_reset();
    assert!(server.wait_exit().success());
}

fn a_busy_proxy_listener_reads_the_header_then_says_busy() {
    let server = proxy_server(&["--max-connections", "1"]);
    let mut first = proxied_client(&server, &v1("192.0.2.10:10".parse().unwrap()));
    let mut busy = raw_client(&server);
    busy.send(&v1("192.0.2.11:11".parse().unwrap()));
    busy.expect_line("ERR server busy");
    busy.expect_eof();
    wait_logged(&server, "proxied 192.0.2.11:11 via 127.0.0.1:");
    wait_logged(&server, "turned away 1 connection(s) in");
    assert!(server.logged("server busy (--max-connections 1)"));
    first.send(b"STATS\n");
    let stats = Stats(first.read_line());
    assert_eq!(stats.get("rejected"), 1, "{}", stats.0);
    assert_eq!(stats.get("connections"), 1, "{}", stats.0);
    server.assert_no_panic();
}

#[test]
fn a_listener_without_proxy_takes_a_proxy_line_as_a_request() {
    let mut server = Server::start(&[]);
    let mut c = server.client();
    c.send(&v1("192.0.2.1:1".parse().unwrap()));
    c.expect_line("ERR unknown command");
    c.send(b"PING\n");
    c.expect_line("PONG");
    assert!(!server.logged("proxied"));
    server.wait_for_log(&format!("accepted 127.0.0.1:{}", local_port(&c)));
    server.assert_no_panic();
}

/// Regression: connections waiting for their PROXY header were capped at
/// `--max-connections`, process-wide, and a newcomer past the cap was
/// reset: five header-less sockets from anyone locked the balancer out at
/// `--max-connections 5`. They count as no client (so they fill no client
/// place), and their own cap makes room by closing the one waiting longest.
#[test]
fn header_less_sockets_cannot_lock_the_balancer_out() {
    let mut server = proxy_server(&["--max-connections", "5"]);
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let silent: Vec<Client> = (0..5)
        .map(|_| Client::connect_from(other, server.addr))
        .collect();
    server.wait_for_log("127.0.0.2");
    let mut balancer = proxied_client(&server, &v1("192.0.2.30:30".parse().unwrap()));
    serves_ping_and_echo(&mut balancer, "the balancer's connection");
    let mut second = proxied_client(&server, &v1("192.0.2.31:31".parse().unwrap()));
    second.send(b"STATS\n");
    let stats = Stats(second.read_line());
    assert_eq!(stats.get("connections"), 2, "{}", stats.0);
    assert_eq!(stats.get("rejected"), 0, "{}", stats.0);
    drop(silent);
}

/// Past `MAX_AWAITING_HEADER` (1,024 per loop) connections waiting for a
/// header, a newcomer takes the place of the one that has waited longest:
/// it is closed without a line, and the newcomer is served.
#[test]
fn past_the_cap_of_waiting_connections_the_oldest_makes_room() {
    const CAP: usize = 1024;
    let mut server = proxy_server(&[]);
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut oldest = Client::connect_from(other, server.addr);
    server.wait_for_log("127.0.0.2");
    let waiting: Vec<Client> = (1..CAP)
        .map(|_| Client::connect_from(other, server.addr))
        .collect();
    // One more: the loop holds its cap, so the oldest goes.
    let mut balancer = raw_client(&server);
    oldest.expect_eof();
    balancer.send(&v1("192.0.2.32:32".parse().unwrap()));
    balancer.expect_line("READY");
    serves_ping_and_echo(&mut balancer, "after the cap");
    wait_logged(
        &server,
        "closed while waiting for its PROXY header, to make room",
    );
    drop(waiting);
}
