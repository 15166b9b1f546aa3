//! A key-value store on loopline's engine: the second proof that a line
//! protocol needs nothing but the `Service` trait. Every rule of the engine
//! holds for it (limits, timers, TLS and PROXY listeners, backpressure,
//! shutdown, `--threads`, metrics), with the same command line as loopline:
//!
//! ```text
//! $ cargo run --release --example kv -- --listen 127.0.0.1:7000 --threads 2
//! $ nc 127.0.0.1 7000
//! READY
//! SET greeting hello, world
//! OK
//! GET greeting
//! VALUE hello, world
//! DEL greeting
//! DELETED
//! GET greeting
//! NIL
//! QUIT
//! BYE
//! ```
//!
//! The protocol, line by line (command names in any case):
//!
//! | request | answer |
//! |---|---|
//! | `SET key value` | `OK`; `ERR store full` for a new key while 1,000,000 are stored |
//! | `GET key` | `VALUE value`, or `NIL` |
//! | `DEL key` | `DELETED`, or `NIL` |
//! | `QUIT` | `BYE`, then the close |
//! | an empty line | `ERR empty command` |
//! | anything else | `ERR unknown command` |
//!
//! A key is bytes without a space; a value is every byte after the space
//! that follows the key (spaces, and none at all, included). Their sizes
//! are bounded by the engine's line limit: a `SET` line longer than
//! `--max-line` (1024 bytes by default) gets `ERR line too long` and the
//! close, so the store holds at most 1,000,000 keys of at most that much
//! each, on top of what `--max-memory` bounds (the clients' buffers).
//!
//! The store is shared by every loop. One lock for it all would make the
//! loops take turns at every request; so it is cut in [`SHARDS`] shards,
//! each a `HashMap` behind its own `Mutex`, and a key's shard is picked by
//! a hash of the key: two loops wait for each other only when they touch
//! the same shard at the same moment. (docs/performance.md measures it
//! against one lock.)

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use loopline::service::{After, Context, Service};

/// The command line: the engine's options only.
#[derive(clap::Parser)]
#[command(
    name = "kv",
    version,
    about = "A key-value store (SET, GET, DEL, QUIT) on loopline's event loop",
    after_help = "Example:\n  kv --listen 127.0.0.1:7000 --threads 2"
)]
struct Args {}

fn main() -> ExitCode {
    loopline::serve(|_: Args| Kv::new())
}

/// The most keys stored at once: a `SET` of a new key past it answers
/// `ERR store full`. With the line limit, that bounds the store: at most
/// a million keys and values of at most `--max-line` bytes together
/// (about 1 GB at the default 1024; size `--max-line` to what the machine
/// can hold a million times).
pub const MAX_KEYS: usize = 1_000_000;

/// How many shards the store is cut in: a power of two, well above the
/// number of loops, so that two loops rarely want the same shard.
pub const SHARDS: usize = 64;

/// One shard of the store: keys and values, as bytes.
type Shard = HashMap<Box<[u8]>, Box<[u8]>>;

/// The service: the store, shared by every loop.
pub struct Kv {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a key's shard (keyed at random per process, as `HashMap`'s
    /// own hasher is, so a client cannot aim all its keys at one shard).
    pick: RandomState,
    /// Keys stored, in every shard: checked and counted under the shard's
    /// lock, so two loops cannot both store the 1,000,000th.
    keys: AtomicUsize,
    max_keys: usize,
}

impl Kv {
    pub fn new() -> Kv {
        Kv::with_capacity(MAX_KEYS)
    }

    /// A store of at most `max_keys` keys.
    pub fn with_capacity(max_keys: usize) -> Kv {
        Kv {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pick: RandomState::new(),
            keys: AtomicUsize::new(0),
            max_keys,
        }
    }

    /// The shard of `key`, locked. A shard poisoned by a panic elsewhere
    /// still holds whole entries: each change is one map call.
    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let index = self.pick.hash_one(key) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let mut shard = self.shard(key);
        if let Some(stored) = shard.get_mut(key) {
            *stored = value.into();
            out.extend_from_slice(b"OK\n");
            return;
        }
        // A new key takes a place first, or is refused.
        let place = self
            .keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            });
        if place.is_err() {
            out.extend_from_slice(b"ERR store full\n");
            return;
        }
        shard.insert(key.into(), value.into());
        out.extend_from_slice(b"OK\n");
    }

    fn get(&self, key: &[u8], out: &mut Vec<u8>) {
        match self.shard(key).get(key) {
            Some(value) => {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(value);
                out.push(b'\n');
            }
            None => out.extend_from_slice(b"NIL\n"),
        }
    }

    fn del(&self, key: &[u8], out: &mut Vec<u8>) {
        if self.shard(key).remove(key).is_some() {
            self.keys.fetch_sub(1, Ordering::Relaxed);
            out.extend_from_slice(b"DELETED\n");
        } else {
            out.extend_from_slice(b"NIL\n");
        }
    }

    /// Keys stored now.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Kv {
    fn default() -> Kv {
        Kv::new()
    }
}

/// A request, as the protocol reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Set { key: &'a [u8], value: &'a [u8] },
    Get { key: &'a [u8] },
    Del { key: &'a [u8] },
    Quit,
    Empty,
    Unknown,
}

/// Reads one request line. `SET` needs a key and the space after it (the
/// value may be empty); `GET` and `DEL` a key and nothing more; `QUIT`
/// nothing at all. Anything else is `Unknown`.
pub fn parse(line: &[u8]) -> Request<'_> {
    if line.is_empty() {
        return Request::Empty;
    }
    let (name, rest) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    let is_key = |key: &[u8]| !key.is_empty() && !key.contains(&b' ');
    // Names in any case, compared in place: no allocation per request.
    let named = |word: &[u8]| name.eq_ignore_ascii_case(word);
    match rest {
        Some(rest) if named(b"SET") => match rest.iter().position(|&b| b == b' ') {
            Some(space) if space > 0 => Request::Set {
                key: &rest[..space],
                value: &rest[space + 1..],
            },
            _ => Request::Unknown,
        },
        Some(key) if named(b"GET") && is_key(key) => Request::Get { key },
        Some(key) if named(b"DEL") && is_key(key) => Request::Del { key },
        None if named(b"QUIT") => Request::Quit,
        _ => Request::Unknown,
    }
}

// The greeting (`READY`), the engine's lines (`ERR server busy`, ...) and
// the longest response (`--max-line` + 64, which `VALUE ` and a value of at
// most a request line fit in) are the trait's defaults.
impl Service for Kv {
    /// A connection remembers nothing between its lines: the store is
    /// everyone's. (An idle connection costs the engine's bytes only.)
    type Session = ();

    fn session(&self, _: &Context) {}

    fn respond(&self, line: &[u8], _: &mut (), _: &Context, out: &mut Vec<u8>) -> After {
        match parse(line) {
            Request::Set { key, value } => self.set(key, value, out),
            Request::Get { key } => self.get(key, out),
            Request::Del { key } => self.del(key, out),
            Request::Quit => {
                out.extend_from_slice(b"BYE\n");
                return After::Close;
            }
            Request::Empty => out.extend_from_slice(b"ERR empty command\n"),
            Request::Unknown => out.extend_from_slice(b"ERR unknown command\n"),
        }
        After::KeepOpen
    }

    /// Its only last line is `BYE`.
    fn close_reason(&self, _: &()) -> &'static str {
        "client sent QUIT"
    }
}
