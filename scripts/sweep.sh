#!/usr/bin/env bash
# Throughput and latency of loopline against connections and pipeline depth:
# 15 points (depth 1, 8, 32 x 1 to 1000 connections), then a plot of them.
#
#   usage: scripts/sweep.sh [SECONDS_PER_POINT (3)] [--csv PATH] [--png PATH]
#
# By default the table goes to bench-results/sweep.csv and the plot to
# bench-results/sweep.png (not committed). The reference figures the docs
# cite are written only when asked, e.g.
#   scripts/sweep.sh 3 --csv docs/results/sweep-$(date -u +%F).csv --png docs/performance.png
set -euo pipefail
cd "$(dirname "$0")/.."
secs=3
out=bench-results/sweep.csv
png=bench-results/sweep.png
while [ $# -gt 0 ]; do
    case "$1" in
        --csv) out="$2"; shift ;;
        --png) png="$2"; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        [0-9]*) secs="$1" ;;
        *) echo "sweep.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$(dirname "$out")" "$(dirname "$png")"
cargo build --release -p loopline -p loopline-bench >/dev/null 2>&1
log=$(mktemp)
target/release/loopline --listen 127.0.0.1:0 --max-connections 20000 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [0-9.:]*' "$log" | head -1 | awk '{print $3}')
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
python3 scripts/plot.py "$out" "$png"
