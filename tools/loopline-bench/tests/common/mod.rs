//! What the tests of loopline-bench share: running it under a watchdog,
//! and reading the JSON line it prints.
#![allow(dead_code)] // Each test file uses its own part.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The longest a single loopline-bench run may take in a test.
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// Runs loopline-bench with `args`, killing it if it outlives the watchdog.
pub fn bench(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopline-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start loopline-bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("loopline-bench {args:?} ran longer than {WATCHDOG:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().expect("reader"))
}

/// A minimal parser for the flat JSON object loopline-bench prints: string,
/// number and null values only. Panics on anything else.
pub fn parse_flat_json(line: &str) -> HashMap<String, String> {
    let body = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON object: {line}"));
    let mut map = HashMap::new();
    for pair in body.split(',') {
        let (k, v) = pair
            .split_once(':')
            .unwrap_or_else(|| panic!("bad pair `{pair}` in {line}"));
        let k = k
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or_else(|| panic!("bad key `{k}` in {line}"));
        let ok = v == "null"
            || v.parse::<f64>().is_ok()
            || (v.len() >= 2
                && v.starts_with('"')
                && v.ends_with('"')
                && !v[1..v.len() - 1].contains('"'));
        assert!(ok, "bad value `{v}` for `{k}` in {line}");
        assert!(
            map.insert(k.to_string(), v.trim_matches('"').to_string())
                .is_none(),
            "duplicate key {k}"
        );
    }
    map
}

/// The JSON line among loopline-bench's output, parsed.
pub fn json_line(out: &str) -> HashMap<String, String> {
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in output:\n{out}"));
    parse_flat_json(line)
}

/// The numeric field `k` of a parsed JSON line.
pub fn num(m: &HashMap<String, String>, k: &str) -> f64 {
    m.get(k)
        .unwrap_or_else(|| panic!("missing {k} in {m:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number in {m:?}"))
}

/// The JSON line's numeric field `key`.
pub fn field(out: &str, key: &str) -> f64 {
    num(&json_line(out), key)
}
