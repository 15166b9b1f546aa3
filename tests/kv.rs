//! The key-value example (`examples/kv.rs`), on the real engine: every rule
//! of its protocol byte for byte, a value written on one connection read
//! on another across both loops, pipelining, the store-full answer at
//! 1,000,000 keys, and a property test of the store against a `HashMap`
//! model. (The engine's own rules, run against kv too, are in the files
//! of each rule: `limits.rs`, `timers.rs`, `shutdown.rs`, `proxy.rs`, ...,
//! through `util::engine_rule!`.)

mod util;

#[allow(dead_code)]
#[path = "../examples/kv.rs"]
mod kv;

use std::collections::HashMap;
use std::time::Instant;

use loopline::service::{After, Context, Service};
use proptest::prelude::*;
use util::{with_kv, with_two_loops, Client, Server};

/// A kv server on 127.0.0.1:0, with `args`.
fn kv_server(args: &[&str]) -> Server {
    let mut server = None;
    with_kv(|| server = Some(Server::start(args)));
    server.expect("started")
}

/// The same, with two loops.
fn kv_server_two_loops(args: &[&str]) -> Server {
    let mut server = None;
    with_kv(|| with_two_loops(|| server = Some(Server::start(args))));
    server.expect("started")
}

/// `request` sent, its whole answer read (one line), as bytes.
fn answer(c: &mut Client, request: &[u8]) -> Vec<u8> {
    c.send(request);
    c.read_line_bytes()
}

#[test]
fn every_rule_of_the_protocol_byte_for_byte() {
    let server = kv_server(&[]);
    let mut c = server.client();
    let cases: &[(&[u8], &[u8])] = &[
        (b"GET k\n", b"NIL"),
        (b"SET k v\n", b"OK"),
        (b"GET k\n", b"VALUE v"),
        // The value is every byte after the key's space, spaces included.
        (b"SET k  two  spaces \n", b"OK"),
        (b"GET k\n", b"VALUE  two  spaces "),
        // An empty value.
        (b"SET empty \n", b"OK"),
        (b"GET empty\n", b"VALUE "),
        // Bytes, not text: any byte but LF (and a CR before it).
        (b"SET bin \x00\xff\rx\n", b"OK"),
        (b"GET bin\n", b"VALUE \x00\xff\rx"),
        // Names in any case; keys are case-sensitive.
        (b"set K upper\n", b"OK"),
        (b"gEt K\n", b"VALUE upper"),
        (b"Get k\n", b"VALUE  two  spaces "),
        (b"DEL k\n", b"DELETED"),
        (b"DEL k\n", b"NIL"),
        (b"GET k\n", b"NIL"),
        (b"SET k again\n", b"OK"),
        (b"dEl k\n", b"DELETED"),
        // CRLF line ends, as over telnet.
        (b"SET crlf yes\r\n", b"OK"),
        (b"GET crlf\r\n", b"VALUE yes"),
        (b"\n", b"ERR empty command"),
        (b"\r\n", b"ERR empty command"),
        (b"PING\n", b"ERR unknown command"),
        (b"SET\n", b"ERR unknown command"),
        (b"SET k\n", b"ERR unknown command"),
        (b"SET  v\n", b"ERR unknown command"),
        (b"GET\n", b"ERR unknown command"),
        (b"GET \n", b"ERR unknown command"),
        (b"GET a b\n", b"ERR unknown command"),
        (b"DEL\n", b"ERR unknown command"),
        (b"DEL a b\n", b"ERR unknown command"),
        (b"QUIT now\n", b"ERR unknown command"),
        (b" GET k\n", b"ERR unknown command"),
    ];
    for (request, want) in cases {
        assert_eq!(
            answer(&mut c, request),
            want.to_vec(),
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    c.send(b"QUIT\nGET k\n");
    c.expect_line("BYE");
    // Nothing after QUIT is executed.
    c.expect_eof();
    // QUIT in any case too.
    let mut lower = server.client();
    lower.send(b"quit\n");
    lower.expect_line("BYE");
    lower.expect_eof();
    server.assert_no_panic();
}

#[test]
fn a_value_written_on_one_connection_is_read_on_another_on_both_loops() {
    let server = kv_server_two_loops(&[]);
    let mut writer = server.client();
    writer.send(b"SET shared across loops\n");
    writer.expect_line("OK");
    // Enough readers that both loops hold some (the debug log says which).
    let mut readers: Vec<Client> = (0..16).map(|_| server.client()).collect();
    for reader in &mut readers {
        reader.send(b"GET shared\n");
        reader.expect_line("VALUE across loops");
    }
    // A change on one loop is seen on the other at once.
    readers[3].send(b"SET shared changed\n");
    readers[3].expect_line("OK");
    for reader in &mut readers {
        reader.send(b"GET shared\n");
        reader.expect_line("VALUE changed");
    }
    for loop_index in 0..2 {
        assert!(
            server.logged(&format!("on loop {loop_index}")),
            "no client on loop {loop_index}: {:#?}",
            server.log.lock().unwrap()
        );
    }
    server.assert_no_panic();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = kv_server(&[]);
    let mut c = server.client();
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for i in 0..500 {
        batch.extend_from_slice(format!("SET key{i} value{i}\nGET key{i}\n").as_bytes());
        want.push("OK".to_string());
        want.push(format!("VALUE value{i}"));
    }
    for i in (0..500).step_by(2) {
        batch.extend_from_slice(format!("DEL key{i}\nGET key{i}\n").as_bytes());
        want.push("DELETED".to_string());
        want.push("NIL".to_string());
    }
    c.send(&batch);
    for line in want {
        c.expect_line(&line);
    }
    server.assert_no_panic();
}

/// 1,000,000 keys, set by pipelined batches: then a new key is refused, an
/// existing one may still change, and a place freed by `DEL` is taken.
#[test]
fn a_new_key_past_a_million_gets_store_full() {
    let server = kv_server(&["--max-output", "16777216"]);
    let mut c = server.client();
    const BATCH: usize = 10_000;
    for start in (0..kv::MAX_KEYS).step_by(BATCH) {
        let mut batch = Vec::with_capacity(BATCH * 16);
        for i in start..start + BATCH {
            batch.extend_from_slice(format!("SET {i} v\n").as_bytes());
        }
        c.send(&batch);
        let answers = c.read_exact_bytes(BATCH * 3);
        assert!(
            answers.chunks(3).all(|a| a == b"OK\n"),
            "a SET below the cap was refused, in the batch from {start}"
        );
    }
    assert_eq!(answer(&mut c, b"SET one-too-many v\n"), b"ERR store full");
    assert_eq!(answer(&mut c, b"GET one-too-many\n"), b"NIL");
    assert_eq!(answer(&mut c, b"SET 17 changed\n"), b"OK");
    assert_eq!(answer(&mut c, b"GET 17\n"), b"VALUE changed");
    assert_eq!(answer(&mut c, b"DEL 42\n"), b"DELETED");
    assert_eq!(answer(&mut c, b"SET one-too-many v\n"), b"OK");
    assert_eq!(answer(&mut c, b"SET another v\n"), b"ERR store full");
    server.assert_no_panic();
}

// ---- The store against a model ----------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Vec<u8>),
    Get(u8),
    Del(u8),
}

fn op() -> impl Strategy<Value = Op> {
    // Few keys, so that sets, gets and deletes meet; values with spaces.
    let key = 0..12u8;
    let value = proptest::collection::vec(prop_oneof![Just(b' '), Just(b'x'), any::<u8>()], 0..8)
        .prop_map(|v| v.into_iter().filter(|&b| b != b'\n').collect::<Vec<u8>>());
    prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| Op::Set(k, v)),
        key.clone().prop_map(Op::Get),
        key.prop_map(Op::Del),
    ]
}

proptest! {
    /// Whatever the operations, the store answers as a `HashMap` with a
    /// cap on its size would, and its count of keys is the model's.
    #[test]
    fn the_store_answers_as_a_map_with_a_cap(ops in proptest::collection::vec(op(), 0..200), cap in 1..8usize) {
        let store = kv::Kv::with_capacity(cap);
        let stats = loopline::stats::Stats::new(Instant::now());
        let cx = Context::new(&stats, Instant::now());
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for op in ops {
            let mut out = Vec::new();
            let (line, want) = match op {
                Op::Set(k, v) => {
                    let key = format!("k{k}").into_bytes();
                    let mut line = b"SET ".to_vec();
                    line.extend_from_slice(&key);
                    line.push(b' ');
                    line.extend_from_slice(&v);
                    let want = if model.contains_key(&key) || model.len() < cap {
                        model.insert(key, v);
                        b"OK\n".to_vec()
                    } else {
                        b"ERR store full\n".to_vec()
                    };
                    (line, want)
                }
                Op::Get(k) => {
                    let key = format!("k{k}").into_bytes();
                    let want = match model.get(&key) {
                        Some(v) => [b"VALUE ".as_slice(), v, b"\n"].concat(),
                        None => b"NIL\n".to_vec(),
                    };
                    ([b"GET ".as_slice(), &key].concat(), want)
                }
                Op::Del(k) => {
                    let key = format!("k{k}").into_bytes();
                    let want = if model.remove(&key).is_some() { b"DELETED\n".to_vec() } else { b"NIL\n".to_vec() };
                    ([b"DEL ".as_slice(), &key].concat(), want)
                }
            };
            let after = store.respond(&line, &mut (), &cx, &mut out);
            prop_assert_eq!(after, After::KeepOpen);
            prop_assert_eq!(&out, &want, "{:?}", String::from_utf8_lossy(&line));
            prop_assert_eq!(store.len(), model.len());
        }
    }
}
