//! Keyed requests end to end: `loopline-bench --request 'GET key:{key}'
//! --preload 'SET key:{key} {value}'` against a tiny in-test key-value
//! server that answers as Redis does (`+OK`; a GET hit is `$N` and the
//! value, two lines; a miss `$-1`, one line). The server checks every
//! request it gets (key format and range, the value), so a wrongly
//! rendered request fails the test; the store afterwards shows that the
//! preload set every key. Every run is short and guarded by a watchdog.

mod common;

use common::{bench, field};

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the server saw, shared by its connection threads.
#[derive(Default)]
struct Seen {
    store: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys asked for by GET.
    got: HashSet<Vec<u8>>,
    /// Requests that were not as expected, for the failure message.
    bad: Vec<String>,
}

struct KvServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

/// A request's key must be `key:` and `width` digits below `keys`; a SET's
/// value `value_size` bytes of `v`.
#[derive(Clone, Copy)]
struct Expect {
    keys: u64,
    width: usize,
    value_size: usize,
}

impl Expect {
    fn key_ok(&self, key: &[u8]) -> bool {
        let Some(digits) = key.strip_prefix(b"key:") else {
            return false;
        };
        digits.len() == self.width
            && digits.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .is_some_and(|k| k < self.keys)
    }
}

fn answer(line: &[u8], expect: Expect, seen: &Mutex<Seen>, out: &mut Vec<u8>) {
    let mut seen = seen.lock().unwrap();
    let mut words = line.splitn(3, |&b| b == b' ');
    match (words.next(), words.next(), words.next()) {
        (Some(b"SET"), Some(key), Some(value))
            if expect.key_ok(key)
                && value.len() == expect.value_size
                && value.iter().all(|&b| b == b'v') =>
        {
            seen.store.insert(key.to_vec(), value.to_vec());
            out.extend_from_slice(b"+OK\r\n");
        }
        (Some(b"GET"), Some(key), None) if expect.key_ok(key) => {
            seen.got.insert(key.to_vec());
            match seen.store.get(key) {
                Some(value) => {
                    out.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
                    out.extend_from_slice(value);
                    out.extend_from_slice(b"\r\n");
                }
                None => out.extend_from_slice(b"$-1\r\n"),
            }
        }
        _ => {
            seen.bad.push(String::from_utf8_lossy(line).into_owned());
            out.extend_from_slice(b"-ERR bad request\r\n");
        }
    }
}

fn serve(stream: TcpStream, expect: Expect, seen: Arc<Mutex<Seen>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(stream);
    let (mut line, mut out) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let request = line.strip_suffix(b"\n").unwrap_or(&line);
        let request = request.strip_suffix(b"\r").unwrap_or(request);
        out.clear();
        answer(request, expect, &seen, &mut out);
        if writer.write_all(&out).is_err() {
            return;
        }
        // answer pipelined requests in one write
        if reader.buffer().is_empty() && writer.flush().is_err() {
            return;
        }
    }
}

fn start_server(expect: Expect) -> KvServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let seen = Arc::clone(&shared);
            thread::spawn(move || serve(s, expect, seen));
        }
    });
    KvServer { addr, seen }
}

#[test]
fn preloaded_gets_all_hit_and_two_line_answers_are_counted_exactly() {
    let expect = Expect {
        keys: 1000,
        width: 3,
        value_size: 100,
    };
    let server = start_server(expect);
    let addr = server.addr.to_string();
    let (ok, out) = bench(&[
        "--addr",
        &addr,
        "--skip-greeting",
        "0",
        "-c",
        "5",
        "-t",
        "2",
        "-P",
        "7",
        "-d",
        "0.5",
        "--warmup",
        "0.1",
        "--keys",
        "1000",
        "--value-size",
        "100",
        "--request",
        "GET key:{key}",
        "--lines-per-response",
        "2",
        "--preload",
        "SET key:{key} {value}",
        "--error-prefix=-ERR,$-1",
    ]);
    assert!(ok, "loopline-bench failed:\n{out}");
    let seen = server.seen.lock().unwrap();
    assert!(
        seen.bad.is_empty(),
        "bad requests: {:?}",
        &seen.bad[..seen.bad.len().min(5)]
    );
    // The preload set every key, once per key, over both threads.
    assert_eq!(seen.store.len(), 1000);
    assert_eq!(field(&out, "preload_keys"), 1000.0);
    assert_eq!(field(&out, "preloaded"), 1000.0);
    assert_eq!(field(&out, "preload_err_lines"), 0.0);
    // Every GET hit ($-1 would be an error line) and every answer of two
    // lines was one response: a miscount stalls the pipeline or shows up
    // as unexpected responses, both errors here.
    assert_eq!(field(&out, "errors"), 0.0, "{out}");
    assert!(field(&out, "responses") > 100.0, "{out}");
    // Keys are drawn over the whole range.
    assert!(
        seen.got.len() > 900,
        "only {} distinct keys",
        seen.got.len()
    );
}

#[test]
fn keyed_sets_are_rendered_right_when_pipelined_deep() {
    // Long requests at depth 64 fill the socket: partial writes of rendered
    // requests must still put whole requests on the wire.
    let expect = Expect {
        keys: 100_000,
        width: 5,
        value_size: 3000,
    };
    let server = start_server(expect);
    let addr = server.addr.to_string();
    let (ok, out) = bench(&[
        "--addr",
        &addr,
        "--skip-greeting",
        "0",
        "-c",
        "3",
        "-P",
        "64",
        "-d",
        "0.4",
        "--warmup",
        "0",
        "--value-size",
        "3000",
        "--request",
        "SET key:{key} {value}",
    ]);
    assert!(ok, "loopline-bench failed:\n{out}");
    let seen = server.seen.lock().unwrap();
    assert!(
        seen.bad.is_empty(),
        "bad requests: {:?}",
        &seen.bad[..seen.bad.len().min(5)]
    );
    assert_eq!(field(&out, "errors"), 0.0, "{out}");
    assert!(field(&out, "responses") > 100.0, "{out}");
    assert!(seen.store.len() > 100, "only {} keys set", seen.store.len());
    // No preload asked for: no preload fields.
    assert!(!out.contains("preload"), "{out}");
}

#[test]
fn gets_without_a_preload_miss_and_say_so() {
    let expect = Expect {
        keys: 50,
        width: 2,
        value_size: 64,
    };
    let server = start_server(expect);
    let addr = server.addr.to_string();
    // A miss is one line ($-1): counted with one line per response, each
    // one an error line.
    let (_, out) = bench(&[
        "--addr",
        &addr,
        "--skip-greeting",
        "0",
        "-c",
        "2",
        "-P",
        "4",
        "-d",
        "0.3",
        "--warmup",
        "0",
        "--keys",
        "50",
        "--request",
        "GET key:{key}",
        "--error-prefix=$-1",
    ]);
    assert!(field(&out, "err_lines") > 0.0, "{out}");
    assert!(server.seen.lock().unwrap().bad.is_empty());
}
