#!/usr/bin/env bash
# Throughput and latency of loopline against connections and pipeline depth.
# Writes bench/results/sweep.csv, then draws docs/performance.png with
# bench/plot.py.   usage: bench/sweep.sh [SECONDS_PER_POINT]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
cargo build --release --bins >/dev/null 2>&1
log=$(mktemp)
target/release/loopline --listen 127.0.0.1:0 --max-connections 20000 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [0-9.:]*' "$log" | head -1 | awk '{print $3}')
out=bench/results/sweep.csv
echo "connections,depth,rps,p50_us,p99_us,p999_us,server_cpu_us_per_op" > "$out"
for depth in 1 8 32; do
    for conns in 1 10 50 200 1000; do
        json=$(target/release/loopline-bench --addr "$addr" -c "$conns" -P "$depth" -d "$secs" --warmup 1 \
            --threads 1 --skip-greeting 1 --server-pid "$pid" --close-rst | grep '^{')
        python3 - "$conns" "$depth" "$json" >> "$out" <<'PY'
import json, sys
c, d, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(f"{c},{d},{j['rps']:.0f},{j['p50_us']},{j['p99_us']},{j['p999_us']},{j.get('server_cpu_us_per_resp', '')}")
PY
        tail -1 "$out"
    done
done
python3 bench/plot.py "$out" docs/performance.png
