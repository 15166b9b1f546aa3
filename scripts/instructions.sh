#!/usr/bin/env bash
# User-space instructions per pipelined PING, counted by callgrind (repeatable:
# instructions, not seconds). Two runs with different request counts; the
# difference cancels start-up and shutdown.
#   usage: scripts/instructions.sh [DEPTH]   (default 32)
set -euo pipefail
cd "$(dirname "$0")/.."
depth=${1:-32}
# shellcheck source=scripts/callgrind.sh
. scripts/callgrind.sh
callgrind_prepare
out=$(mktemp -d)
run() { # $1 = number of requests
    local n=$1
    callgrind_start "$out/cg.$n" "$out/log.$n"
    python3 - "$CG_PORT" "$n" "$depth" <<'PY'
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
    callgrind_total "$out/cg.$n"
}
small=$(run 32000); large=$(run 320000)
per=$(( (large - small) / (320000 - 32000) ))
echo "instructions: ${small} for 32000 PINGs, ${large} for 320000 PINGs (depth $depth)"
echo "user-space instructions per pipelined PING: $per"
rm -rf "$out"
