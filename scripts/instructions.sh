#!/usr/bin/env bash
# User-space instructions per pipelined PING, counted by callgrind (repeatable:
# instructions, not seconds). Two runs with different request counts; the
# difference cancels start-up and shutdown.
#   usage: scripts/instructions.sh [DEPTH]   (default 32)
set -euo pipefail
cd "$(dirname "$0")/.."
depth=${1:-32}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --bin loopline >/dev/null 2>&1
out=$(mktemp -d)
run() { # $1 = number of requests
    local n=$1 log=$out/log.$1
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$n" \
        target/release/loopline --listen 127.0.0.1:0 2>"$log" &
    local pid=$!
    local port=""
    for _ in $(seq 200); do
        port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2) && [ -n "$port" ] && break
        sleep 0.1
    done
    python3 - "$port" "$n" "$depth" <<'PY'
import socket, sys
port, n, depth = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
assert f.readline() == b"READY\n"
batch = b"PING\n" * depth
for _ in range(n // depth):
    s.sendall(batch)
    for _ in range(depth):
        assert f.readline() == b"PONG\n"
s.close()
PY
    kill -TERM "$pid"; wait "$pid" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out/cg.$n"
}
small=$(run 32000); large=$(run 320000)
per=$(( (large - small) / (320000 - 32000) ))
echo "instructions: ${small} for 32000 PINGs, ${large} for 320000 PINGs (depth $depth)"
echo "user-space instructions per pipelined PING: $per"
rm -rf "$out"
