//! Step 6: your own protocol, on loopline's engine.
//!
//! Steps 1 to 5 built an event loop by hand; loopline is that loop with
//! every gap filled. This step keeps the loop and throws the commands away:
//! a protocol of your own is a type that implements `loopline::Service`,
//! and `loopline::serve` runs it with everything else (every limit, timers,
//! backpressure, TLS and PROXY listeners, `--threads`, metrics, systemd,
//! the whole command line).
//!
//! The protocol here is a tally:
//!
//! | request | answer |
//! |---|---|
//! | `ADD word` | `OK n`: the word has now been added n times, by anyone; `ERR tally full` for a new word once `--max-words` are counted |
//! | `COUNT word` | `OK n`: how many times it was added |
//! | `MINE` | `OK n`: how many `ADD`s this connection made |
//! | `QUIT` | `BYE`, then the close |
//! | anything else | `ERR unknown command` |
//!
//! Run it:   cargo run --example step6_tally -- --listen 127.0.0.1:9006
//! Talk:     nc 127.0.0.1 9006

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;

use loopline::service::{After, Context, Service};

/// The shared state: every loop's connections add to the same counts.
/// `Service` must be `Send + Sync`, so the map sits behind a lock.
struct Tally {
    counts: Mutex<HashMap<Vec<u8>, u64>>,
    /// The most distinct words kept. The engine bounds what each
    /// connection holds; what the service keeps is the service's to bound,
    /// or a client adding new words forever would take all memory.
    max_words: usize,
}

impl Service for Tally {
    /// What one connection remembers between its lines: its own `ADD`s.
    /// It lives inside the connection's slot in the loop, so keep it small.
    type Session = u64;

    /// A connection starts with nothing added.
    fn session(&self, _: &Context) -> u64 {
        0
    }

    /// One line in (LF and CR removed, at most `--max-line` bytes), one
    /// line out, appended to `out`: the engine's buffer, lent for the call.
    fn respond(&self, line: &[u8], mine: &mut u64, _: &Context, out: &mut Vec<u8>) -> After {
        let (name, word) = match line.iter().position(|&b| b == b' ') {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &b""[..]),
        };
        // Writing into a Vec cannot fail.
        if name.eq_ignore_ascii_case(b"ADD") && !word.is_empty() {
            match self.add(word) {
                Some(n) => {
                    *mine += 1;
                    let _ = writeln!(out, "OK {n}");
                }
                None => out.extend_from_slice(b"ERR tally full\n"),
            }
        } else if name.eq_ignore_ascii_case(b"COUNT") && !word.is_empty() {
            let n = self.count(word);
            let _ = writeln!(out, "OK {n}");
        } else if line.eq_ignore_ascii_case(b"MINE") {
            let _ = writeln!(out, "OK {mine}");
        } else if line.eq_ignore_ascii_case(b"QUIT") {
            out.extend_from_slice(b"BYE\n");
            // The engine sends BYE, then closes carefully.
            return After::Close;
        } else {
            out.extend_from_slice(b"ERR unknown command\n");
        }
        After::KeepOpen
    }
}

impl Tally {
    /// The word's new count, or `None` for a new word with the tally full.
    fn add(&self, word: &[u8]) -> Option<u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // A word already counted costs no allocation.
        if let Some(n) = counts.get_mut(word) {
            *n += 1;
            return Some(*n);
        }
        if counts.len() >= self.max_words {
            return None;
        }
        counts.insert(word.to_vec(), 1);
        Some(1)
    }

    fn count(&self, word: &[u8]) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(word).copied().unwrap_or(0)
    }
}

/// The program's own command line: its name, about and one option of its
/// own. Every engine option (`--listen`, `--threads`, `--idle-timeout`,
/// ...) is added to it.
#[derive(clap::Parser)]
#[command(name = "tally", version, about = "Counts words, on loopline's engine")]
struct Args {
    /// The most distinct words counted: an ADD of a new word past them
    /// gets ERR tally full.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_words: usize,
}

fn main() -> ExitCode {
    loopline::serve(|args: Args| Tally {
        counts: Mutex::new(HashMap::new()),
        max_words: args.max_words,
    })
}
