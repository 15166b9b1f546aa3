//! The `loopline` binary: loopline's protocol on the engine, with the
//! engine's command line (see `loopline::serve` for what that call does,
//! and the exit status).

use std::process::ExitCode;

use loopline::protocol::{Loopline, LooplineCommand};

fn main() -> ExitCode {
    loopline::serve(|_: LooplineCommand| Loopline)
}
