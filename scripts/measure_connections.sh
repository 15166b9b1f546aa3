#!/usr/bin/env bash
# What does an idle connection cost a server? Starts one of the teaching
# examples on 127.0.0.1:0, opens N idle connections to it from this shell
# (bash's /dev/tcp, no other tools), and prints the server's resident memory
# (VmRSS), peak memory (VmHWM), thread count and open descriptors from
# /proc/<pid>/status, before and after.
#
# Usage:  cargo build --examples
#         bash scripts/measure_connections.sh step2_threads 1000
#         bash scripts/measure_connections.sh step5_backpressure 1000
# Set BIN_DIR=target/release/examples to measure a release build (BIN_DIR is
# relative to the repository root, where the script runs).
#
# Loopback only; the connections are closed when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

name=${1:?usage: $0 EXAMPLE [CONNECTIONS]}
n=${2:-1000}
bin=${BIN_DIR:-target/debug/examples}/$name
[[ -x $bin ]] || { echo "$bin not found: run cargo build --examples" >&2; exit 1; }

# Both this shell and the server (which inherits the limit) hold N sockets.
ulimit -n $((n + 1024))

log=$(mktemp)
"$bin" 127.0.0.1:0 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

port=
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on [^ ]*:\([0-9]*\).*/\1/p' "$log")
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n $port ]] || { echo "$name did not print 'listening on'" >&2; exit 1; }

report() {
  local fds
  fds=$(ls "/proc/$pid/fd" | wc -l)
  printf '%-8s %s' "$1" "$(grep -E '^(VmSize|VmRSS|VmHWM|Threads):' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
  # Thread stacks in the kernel are not in VmRSS; this is system-wide, so
  # other activity on the machine shows up in it too.
  printf 'fds: %s %s\n' "$fds" "$(grep -E '^KernelStack:' /proc/meminfo | tr -s ' ')"
}

fds_before=$(ls "/proc/$pid/fd" | wc -l)
report idle

start=$(date +%s.%N)
for _ in $(seq "$n"); do
  exec {fd}<>"/dev/tcp/127.0.0.1/$port"
done
connected=$(date +%s.%N)
# connect() returns once the kernel has queued the connection; wait (bounded)
# until the server has accepted all of them.
for _ in $(seq 300); do
  (( $(ls "/proc/$pid/fd" | wc -l) >= fds_before + n )) && break
  sleep 0.1
done
end=$(date +%s.%N)
report "$n conns"
echo "connect loop $(echo "$connected - $start" | bc) s, all accepted after $(echo "$end - $start" | bc) s"
