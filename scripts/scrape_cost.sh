#!/usr/bin/env bash
# What a Prometheus scrape costs the event loop, with no client and with N
# idle clients (default 10,000) held open by loopline-bench in another
# process (the server and the clients each need N descriptors).
#
# For each case it runs SCRAPES scrapes (default 1000) of GET /metrics on one
# keep-alive connection and prints:
#   - the server's CPU time per scrape, from /proc/PID/schedstat (nanoseconds
#     on the CPU of the loop's thread; the loop does nothing else meanwhile,
#     so this is the loop time a scrape takes);
#   - the round-trip latency seen by the scraper (median and 99th percentile).
#
#   usage: scripts/scrape_cost.sh [CLIENTS] [SCRAPES]
# Loopback only; bounded in time (the clients are held for at most 120 s).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-10000}
scrapes=${2:-1000}
cargo build --release -p loopline -p loopline-bench >/dev/null 2>&1
out=$(mktemp -d)
target/release/loopline --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --max-connections $((clients + 100)) --idle-timeout 0 2>"$out/server.log" &
server=$!
bench=
trap 'kill "$server" ${bench:+"$bench"} 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 100); do
    grep -q 'metrics on' "$out/server.log" && break
    sleep 0.1
done
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$out/server.log")
metrics=$(sed -n 's/.*metrics on 127.0.0.1:\([0-9]*\).*/\1/p' "$out/server.log")
[[ -n $port && -n $metrics ]] || { echo "the server did not start" >&2; cat "$out/server.log" >&2; exit 1; }

measure() { # $1 = label
    python3 - "$metrics" "$scrapes" "$server" "$1" <<'PY'
import socket, sys, time
port, n, pid, label = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def cpu_ns():
    # The first field of schedstat: time on the CPU, in nanoseconds (the
    # server is one thread: its main thread is the loop).
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
def scrape():
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    length = 0
    while True:
        line = f.readline()
        if line == b"\r\n":
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return f.read(length)
body = scrape()  # warm-up, and the connection count
connections = [l for l in body.split(b"\n") if l.startswith(b"loopline_connections ")][0]
latencies = []
cpu_before = cpu_ns()
for _ in range(n):
    t = time.perf_counter()
    scrape()
    latencies.append(time.perf_counter() - t)
cpu = (cpu_ns() - cpu_before) / n
latencies.sort()
print(f"{label}: {connections.decode()}; {len(body)} bytes; server CPU per scrape {cpu/1000:.1f} us; "
      f"latency median {latencies[n//2]*1e6:.0f} us, p99 {latencies[n*99//100]*1e6:.0f} us ({n} scrapes)")
PY
}

measure "no client"
target/release/loopline-bench --mode hold --addr "127.0.0.1:$port" -c "$clients" \
    --hold 120s --connect-timeout 60s >"$out/bench.out" 2>&1 &
bench=$!
for _ in $(seq 600); do
    grep -q "held" "$out/bench.out" && break
    sleep 0.1
done
grep -q "held $clients" "$out/bench.out" || { echo "could not hold $clients clients:" >&2; cat "$out/bench.out" >&2; exit 1; }
measure "$clients idle clients"
