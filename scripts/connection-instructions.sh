#!/usr/bin/env bash
# User-space instructions per connection (connect, READY, [AUTH,] QUIT, BYE,
# close), counted by callgrind: what admission costs, with whatever options
# are given, repeatably (instructions, not seconds). Two runs with different
# connection counts; the difference cancels start-up and shutdown.
#   usage: scripts/connection-instructions.sh [--auth FILE] [LOOPLINE OPTIONS...]
# --auth FILE passes --auth-file FILE and sends `AUTH <its first line>` on
# each connection. For example, the per-address tables off and on:
#   scripts/connection-instructions.sh
#   scripts/connection-instructions.sh --max-connection-rate-per-ip 65535
#   scripts/connection-instructions.sh --auth token.txt --max-auth-failures-per-ip 0
#   scripts/connection-instructions.sh --auth token.txt --max-auth-failures-per-ip 10
set -euo pipefail
cd "$(dirname "$0")/.."
token=""
options=()
if [ "${1:-}" = --auth ]; then
    token=$(head -n 1 "$2")
    options+=(--auth-file "$2")
    shift 2
fi
options+=("$@")
# shellcheck source=scripts/callgrind.sh
. scripts/callgrind.sh
callgrind_prepare
out=$(mktemp -d)
run() { # $1 = number of connections
    local n=$1
    callgrind_start "$out/cg.$n" "$out/log.$n" "${options[@]}"
    python3 - "$CG_PORT" "$n" "$token" <<'PY'
import socket, sys
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
request = (f"AUTH {token}\nQUIT\n" if token else "QUIT\n").encode()
answer = b"OK\nBYE\n" if token else b"BYE\n"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    assert f.readline() == b"READY\n"
    s.sendall(request)
    got = f.read()  # up to the server's close
    assert got == answer, got
    f.close()
    s.close()
PY
    callgrind_total "$out/cg.$n"
}
small=$(run 1000); large=$(run 5000)
per=$(( (large - small) / (5000 - 1000) ))
echo "instructions: ${small} for 1000 connections, ${large} for 5000 (options: ${options[*]:-none})"
echo "user-space instructions per connection: $per"
rm -rf "$out"
