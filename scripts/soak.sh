#!/usr/bin/env bash
# Soak test: builds the release server and the soak driver
# (tools/loopline-soak), then runs a bounded mix of well-behaved, pipelining,
# slow-reading, non-reading, resetting, trickling and idle clients against
#   target/release/loopline --listen 127.0.0.1:0 --idle-timeout 5s --write-timeout 5s
# and checks the server afterwards (up, connections back to 1, clean log,
# RSS back near its post-warm-up level). Exits non-zero if a check fails.
#   usage: scripts/soak.sh [--duration DUR (180s)] [--warmup DUR (20s)]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p loopline -p loopline-soak
exec target/release/loopline-soak --binary target/release/loopline "$@"
