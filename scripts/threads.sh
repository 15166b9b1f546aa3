#!/usr/bin/env bash
# scripts/threads.sh: loopline with --threads 1, 2, ... side by side in one
# run, driven by the same load generator (tools/loopline-bench) on the same
# scenarios, alternating between loop counts round by round; prints a table
# of medians (responses/s, p99, server CPU per response) with the ratio of
# each loop count to one loop, and writes the rows to a CSV.
#
# Usage: scripts/threads.sh [--loops "1 2"] [--generator-threads G]
#                           [--repeats R] [--duration S] [--warmup S]
#                           [--csv PATH] [--no-build] [--quick]
#
# What a machine can show: N loops only help while the server has N cores
# to itself AND the load generator has cores of its own to drive them. On a
# 2-core machine the generator needs one core, so `--threads 2` competes with
# it for the second: expect about the same throughput as one loop, not
# twice it. On a bigger machine, e.g. 16 cores:
#   scripts/threads.sh --loops "1 2 4 8" --generator-threads 8
# (and pin them apart with taskset for clean figures).
#
# Everything runs on loopback; the server is stopped when the script exits.
set -euo pipefail

LOOPS="1 2"
GEN_THREADS=1
REPEATS=3
DURATION=5
WARMUP=1
BUILD=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CSV="$ROOT/bench-results/threads.csv"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --loops) LOOPS="$2"; shift ;;
        --generator-threads) GEN_THREADS="$2"; shift ;;
        --repeats) REPEATS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --csv) CSV="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --quick) REPEATS=1; DURATION=1; WARMUP=0.5 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "threads.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { echo "threads.sh: $*" >&2; }
cd "$ROOT"
BENCH="$ROOT/target/release/loopline-bench"
LOOPLINE="$ROOT/target/release/loopline"
if [ "$BUILD" = 1 ]; then cargo build --release -p loopline -p loopline-bench; fi
[ -x "$BENCH" ] && [ -x "$LOOPLINE" ] || { log "build the release binaries first"; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP="$(mktemp -d)"
LL_PID=""
LL_ADDR=""
stop_loopline() {
    if [ -n "$LL_PID" ]; then
        kill -TERM "$LL_PID" 2>/dev/null || true
        wait "$LL_PID" 2>/dev/null || true
        LL_PID=""
    fi
}
trap 'stop_loopline; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

start_loopline() { # loops
    : >"$TMP/loopline.log"
    RUST_LOG=info "$LOOPLINE" --listen 127.0.0.1:0 --threads "$1" --max-connections 20000 \
        2>"$TMP/loopline.log" &
    LL_PID=$!
    local i
    LL_ADDR=""
    for i in $(seq 100); do
        LL_ADDR="$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$TMP/loopline.log" | head -n 1)"
        if [ -n "$LL_ADDR" ]; then return 0; fi
        kill -0 "$LL_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "loopline did not report 'listening on'; its log:"; cat "$TMP/loopline.log" >&2
    exit 1
}

# name|label|generator options
SCENARIOS=(
    "ping_c50_p1|PING, 50 conns, depth 1|-c 50 -P 1"
    "ping_c1000_p1|PING, 1000 conns, depth 1|-c 1000 -P 1"
    "ping_c50_p32|PING, 50 conns, depth 32|-c 50 -P 32"
)

json_field() {
    local v
    v="$(printf '%s\n' "$1" | grep -o "\"$2\":[^,}]*" | head -n 1 | cut -d: -f2- | tr -d '"')"
    echo "${v:-}"
}

RAW="$TMP/raw.tsv" # scenario loops repeat metric value
: >"$RAW"
log "loops: $LOOPS; generator threads $GEN_THREADS; repeats $REPEATS, ${DURATION}s (+${WARMUP}s warm-up); $(nproc) cores"
for rep in $(seq "$REPEATS"); do
    order="$LOOPS"
    # alternate the order round by round
    if [ $((rep % 2)) = 0 ]; then order="$(echo "$LOOPS" | tr ' ' '\n' | tac | tr '\n' ' ')"; fi
    for loops in $order; do
        start_loopline "$loops"
        for line in "${SCENARIOS[@]}"; do
            IFS='|' read -r name label opts <<<"$line"
            # shellcheck disable=SC2086
            out="$("$BENCH" --mode load --addr "$LL_ADDR" --server-pid "$LL_PID" \
                --threads "$GEN_THREADS" --close-rst -d "$DURATION" --warmup "$WARMUP" \
                $opts --skip-greeting 1 --eol lf --request PING 2>>"$TMP/bench.err")" || true
            json="$(printf '%s\n' "$out" | grep '^{' | head -n 1)"
            printf '  --threads %-3s %-28s %s\n' "$loops" "$label" \
                "$(printf '%s\n' "$out" | grep -v '^{' | head -n 1)" >&2
            for m in rps p99_us server_cpu_us_per_resp; do
                printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$loops" "$rep" "$m" "$(json_field "$json" "$m")" >>"$RAW"
            done
        done
        stop_loopline
    done
done

median() { # scenario loops metric
    awk -F'\t' -v s="$1" -v l="$2" -v m="$3" '$1 == s && $2 == l && $4 == m && $5 != "" { print $5 }' "$RAW" |
        sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

mkdir -p "$(dirname "$CSV")"
echo "scenario,threads,rps,ratio_to_1,p99_us,server_cpu_us_per_resp,generator_threads,repeats,duration_s,cores" >"$CSV"
printf '\n%-30s %8s %12s %8s %10s %14s\n' "scenario (medians of $REPEATS)" threads "responses/s" "x 1 loop" "p99 us" "srv CPU us/op"
first="${LOOPS%% *}"
for line in "${SCENARIOS[@]}"; do
    IFS='|' read -r name label opts <<<"$line"
    base="$(median "$name" "$first" rps)"
    for loops in $LOOPS; do
        rps="$(median "$name" "$loops" rps)"
        ratio="$(awk -v a="$rps" -v b="$base" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }')"
        p99="$(median "$name" "$loops" p99_us)"
        cpu="$(median "$name" "$loops" server_cpu_us_per_resp)"
        printf '%-30s %8s %12.0f %8s %10.0f %14.2f\n' "$label" "$loops" "${rps:-0}" "$ratio" "${p99:-0}" "${cpu:-0}"
        echo "$name,$loops,$rps,$ratio,$p99,$cpu,$GEN_THREADS,$REPEATS,$DURATION,$(nproc)" >>"$CSV"
    done
done
echo
echo "CSV: $CSV"
