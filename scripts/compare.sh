#!/usr/bin/env bash
# scripts/compare.sh: loopline against Redis, driven by the same load
# generator (tools/loopline-bench) on the same scenarios, alternating between
# the two servers and repeating each run; prints a table of medians with
# loopline/Redis ratios and writes the rows to a CSV (bench-results/, not
# committed, unless --csv says otherwise) and every raw run beside it.
#
# With --tls both servers listen with TLS only, on one certificate made for
# the run (a throwaway CA and a server certificate for localhost and
# 127.0.0.1, written with openssl beside the CSV), and the scenarios are the
# TLS ones: PING at depth 1 and 32, full handshakes per second, resumed
# handshakes per second (loopline-bench --tls-resume: each of the 50 slots
# resumes its previous session; a server that does not resume fails that
# scenario, loudly), and RSS per idle TLS connection.
#
# With --kv the loopline side is the key-value example on loopline's engine
# (target/release/examples/kv, built by the build step) instead of the
# loopline server, and the scenarios are SET and GET over 100,000 keys with
# 64-byte values, 50 connections, at depth 1 and 32: kv gets `SET
# key:NNNNN <64 x v>` (answer `OK`) and `GET key:NNNNN` (`VALUE <value>`),
# Redis the same as inline commands (`+OK`; `$64` and the value: 2 lines).
# Keys are drawn uniformly per request (loopline-bench --keys, {key}); before
# each GET run loopline-bench preloads all 100,000 keys on the server
# (--preload, not measured), so every GET hits (a miss, `NIL` or `$-1`,
# counts as an error). The table, the CSV and the raw runs keep their
# format: there the "loopline" columns (and "server":"loopline") are kv's
# figures. --kv and --tls do not go together.
#
# Usage: scripts/compare.sh [--quick] [--repeats R] [--duration S] [--warmup S]
#                           [--threads T] [--idle N] [--servers "loopline redis"]
#                           [--csv PATH] [--no-build] [--tls | --kv]
#                           [--loopline-args "ARGS"]
#
# --loopline-args passes extra options to the loopline server, split on
# spaces (no quoting inside), after the script's own --listen and
# --max-connections, e.g.
#   scripts/compare.sh --loopline-args "--max-connection-rate-per-ip 60000 --max-auth-failures-per-ip 10"
# Not --listen, --tls-cert, --tls-key or --max-connections: the script
# passes those itself, and loopline refuses an option given twice. Redis is
# started as always. With --kv they go to kv, which takes loopline's options.
#
# Everything runs on loopback: both servers listen on 127.0.0.1 only and are
# stopped when the script exits. The machine this was written for has 2 cores:
# one for the server, one for the (single-threaded by default) load generator.
set -euo pipefail

REPEATS=3
DURATION=5
WARMUP=1
THREADS=1
IDLE_CONNS=""  # default: 10000, or 5000 with --tls
TLS=0
KV=0   # --kv: the loopline side is examples/kv, the scenarios SET and GET
SERVERS="loopline redis"
BUILD=1
LOOPLINE_ARGS=""  # --loopline-args: extra loopline options, split on spaces
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Results of a run go to an ignored folder; the reference results the docs
# cite (docs/results/) are written only when --csv names a path there.
CSV="$ROOT/bench-results/compare.csv"

usage() {
    # the header comment, up to the first line that is not a comment
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    cat <<'EOF'

Options:
  --quick            short runs (1 s measured, 0.5 s warm-up), 1 repeat: a smoke test
  --repeats R        runs per scenario and server, medians reported (default 3)
  --duration S       measured seconds per load/churn run (default 5)
  --warmup S         warm-up seconds before measuring (default 1)
  --threads T        loopline-bench event-loop threads (default 1)
  --idle N           connections for the idle-connection scenario (default 10000,
                     5000 with --tls)
  --servers LIST     which servers, e.g. "redis" alone (default "loopline redis")
  --csv PATH         where the table goes as CSV (default bench-results/compare.csv);
                     the raw runs go beside it, as PATH without .csv plus -runs.jsonl
  --no-build         do not build the release binaries
  --tls              the TLS scenarios, both servers on one fresh certificate
                     (written beside the CSV, in PATH without .csv plus -tls/);
                     churn runs both full and resumed handshakes
  --kv               SET/GET scenarios, the loopline side being target/release/examples/kv
                     (the key-value example; built with --example kv); 100,000 keys,
                     64-byte values, GETs after a preload of every key; the CSV's
                     "loopline" columns hold kv's figures. Not with --tls.
  --loopline-args "ARGS"
                     extra options for the loopline server (split on spaces),
                     e.g. "--max-connection-rate-per-ip 60000 --max-auth-failures-per-ip 10"
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) REPEATS=1; DURATION=1; WARMUP=0.5 ;;
        --repeats) REPEATS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --idle) IDLE_CONNS="$2"; shift ;;
        --servers) SERVERS="$2"; shift ;;
        --csv) CSV="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --tls) TLS=1 ;;
        --kv) KV=1 ;;
        --loopline-args) LOOPLINE_ARGS="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$TLS" = 1 ] && [ "$KV" = 1 ]; then
    echo "compare.sh: --kv and --tls do not go together" >&2; exit 2
fi

# --loopline-args as words (plain words only, no quoting inside)
read -r -a LL_EXTRA <<<"$LOOPLINE_ARGS"

if [ -z "$IDLE_CONNS" ]; then
    if [ "$TLS" = 1 ]; then IDLE_CONNS=5000; else IDLE_CONNS=10000; fi
fi

has_server() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
log() { echo "compare.sh: $*" >&2; }

cd "$ROOT"
BENCH="$ROOT/target/release/loopline-bench"
LOOPLINE="$ROOT/target/release/loopline"
# What the loopline side is called in the logs and the printed table
# (the CSV keeps "loopline" as its column names either way).
LL_NAME=loopline
if [ "$KV" = 1 ]; then
    LOOPLINE="$ROOT/target/release/examples/kv"
    LL_NAME=kv
fi

# --- prerequisites --------------------------------------------------------
if has_server redis && ! command -v redis-server >/dev/null 2>&1; then
    log "redis-server not found: installing it with apt-get"
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    # the package may start a system instance on 6379; we never use it
fi
if [ "$BUILD" = 1 ]; then
    if has_server loopline && [ "$KV" = 1 ]; then
        cargo build --release -p loopline-bench
        cargo build --release -p loopline --example kv
    elif has_server loopline; then
        cargo build --release -p loopline -p loopline-bench
    else
        cargo build --release -p loopline-bench
    fi
fi
[ -x "$BENCH" ] || { log "missing $BENCH (build it first)"; exit 1; }
if has_server loopline && [ ! -x "$LOOPLINE" ]; then
    log "missing $LOOPLINE (build it first)"; exit 1
fi

# --- TLS: one CA and one server certificate for both servers --------------
TLS_DIR="${CSV%.csv}-tls"
if [ "$TLS" = 1 ]; then
    command -v openssl >/dev/null 2>&1 || { log "--tls needs the openssl command"; exit 1; }
    mkdir -p "$TLS_DIR"
    new_key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${new_key[@]}" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
        -days 7 -subj "/CN=compare.sh throwaway CA" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
        "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >"$TLS_DIR/server.ext"
    openssl req -new "${new_key[@]}" -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/server.csr" \
        -subj /CN=localhost 2>/dev/null
    openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 7 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/cert.pem" 2>/dev/null
    log "TLS: CA and server certificate (localhost, 127.0.0.1) in $TLS_DIR"
fi

# both servers and the generator may hold 10k+ sockets
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP="$(mktemp -d)"
REDIS_PID=""
REDIS_PORT=""
LL_PID=""
LL_ADDR=""

cleanup() {
    stop_redis
    stop_loopline
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local p
    for p in $(seq "$1" $(($1 + 200))); do
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

start_redis() {
    REDIS_PORT="$(free_port 6399)"
    # with --tls: the TLS port only (--port 0 turns plain TCP off), no
    # client certificates asked for
    local listen=(--port "$REDIS_PORT")
    if [ "$TLS" = 1 ]; then
        listen=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$TLS_DIR/cert.pem"
            --tls-key-file "$TLS_DIR/key.pem" --tls-ca-cert-file "$TLS_DIR/ca.pem"
            --tls-auth-clients no)
    fi
    redis-server "${listen[@]}" --bind 127.0.0.1 --protected-mode yes \
        --save '' --appendonly no --maxclients 20000 --daemonize no \
        --dir "$TMP" --logfile "$TMP/redis.log" &
    REDIS_PID=$!
    local i
    for i in $(seq 100); do
        if port_in_use "$REDIS_PORT"; then return 0; fi
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "redis-server did not start; its log:"; cat "$TMP/redis.log" >&2 || true
    exit 1
}

stop_redis() {
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
}

start_loopline() {
    : >"$TMP/loopline.log"
    local listen=(--listen 127.0.0.1:0)
    if [ "$TLS" = 1 ]; then
        listen=(--listen 127.0.0.1:0,tls --tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
    fi
    RUST_LOG=info "$LOOPLINE" "${listen[@]}" --max-connections 20000 \
        ${LL_EXTRA[@]+"${LL_EXTRA[@]}"} 2>"$TMP/loopline.log" &
    LL_PID=$!
    local i
    LL_ADDR=""
    for i in $(seq 100); do
        LL_ADDR="$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/loopline.log" |
            sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' | head -n 1)"
        if [ -n "$LL_ADDR" ]; then return 0; fi
        kill -0 "$LL_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "$LL_NAME did not report 'listening on'; its log:"; cat "$TMP/loopline.log" >&2 || true
    exit 1
}

stop_loopline() {
    if [ -n "$LL_PID" ]; then
        kill -TERM "$LL_PID" 2>/dev/null || true
        wait "$LL_PID" 2>/dev/null || true
        LL_PID=""
    fi
}

# --- scenarios ------------------------------------------------------------
# name|kind|label|generator options (the request and greeting are per server)
KV_KEYS=100000
KV_VALUE=64
if [ "$KV" = 1 ]; then
    # every request's key drawn uniformly from 0..KV_KEYS-1 (zero-padded,
    # so key:00000 to key:99999); the get_ scenarios preload every key
    # first (server_opts)
    keyed="--keys $KV_KEYS --value-size $KV_VALUE"
    SCENARIOS=(
        "set_c50_p1|load|SET 64 B, 50 conns, depth 1|-c 50 -P 1 $keyed"
        "get_c50_p1|load|GET 64 B, 50 conns, depth 1|-c 50 -P 1 $keyed"
        "set_c50_p32|load|SET 64 B, 50 conns, depth 32|-c 50 -P 32 $keyed"
        "get_c50_p32|load|GET 64 B, 50 conns, depth 32|-c 50 -P 32 $keyed"
    )
elif [ "$TLS" = 0 ]; then
    SCENARIOS=(
        "ping_c1_p1|load|PING, 1 conn, depth 1|-c 1 -P 1"
        "ping_c50_p1|load|PING, 50 conns, depth 1|-c 50 -P 1"
        "ping_c1000_p1|load|PING, 1000 conns, depth 1|-c 1000 -P 1"
        "ping_c50_p32|load|PING, 50 conns, depth 32|-c 50 -P 32"
        "echo512_c50_p16|load|ECHO 512 B, 50 conns, depth 16|-c 50 -P 16"
        "idle_${IDLE_CONNS}|hold|${IDLE_CONNS} idle conns|-c ${IDLE_CONNS}"
        "churn_c50|churn|connect+QUIT churn, 50 at once|-c 50"
    )
else
    # churn counts handshakes per second: full ones (the generator's
    # default: resumption off, every connection a full handshake), and
    # resumed ones (--tls-resume: each slot offers the session its previous
    # connection got; the generator counts how many the server resumed)
    SCENARIOS=(
        "ping_tls_c50_p1|load|TLS PING, 50 conns, depth 1|-c 50 -P 1"
        "ping_tls_c50_p32|load|TLS PING, 50 conns, depth 32|-c 50 -P 32"
        "churn_tls_c50|churn|TLS handshake+QUIT, 50 at once|-c 50"
        "churn_tls_resumed_c50|churn|TLS resumed hs+QUIT, 50 at once|-c 50 --tls-resume"
        "idle_tls_${IDLE_CONNS}|hold|${IDLE_CONNS} idle TLS conns|-c ${IDLE_CONNS}"
    )
fi

# Options that differ between the servers for a scenario, into SOPTS.
server_opts() { # server scenario-name
    local server="$1" name="$2"
    if [ "$KV" = 1 ]; then
        # {key}: a key index per request; {value}: KV_VALUE bytes of `v`.
        # GET runs preload every key first (answers: one line on both
        # servers), so every GET hits: a miss (kv's NIL, Redis's $-1) is
        # counted as an error line.
        local set='SET key:{key} {value}' get='GET key:{key}'
        if [ "$server" = loopline ]; then
            # kv: READY greeting; LF-ended lines; one-line answers
            # (OK, VALUE <value>)
            SOPTS=(--skip-greeting 1 --eol lf)
            case "$name" in
                set*) SOPTS+=(--request "$set") ;;
                get*) SOPTS+=(--request "$get" --preload "$set" --error-prefix=ERR,NIL) ;;
            esac
        else
            # Redis inline commands: +OK; a GET hit is `$64` and the value
            SOPTS=(--skip-greeting 0)
            case "$name" in
                set*) SOPTS+=(--request "$set") ;;
                get*) SOPTS+=(--request "$get" --lines-per-response 2 --preload "$set" '--error-prefix=-ERR,$-1') ;;
            esac
        fi
        return 0
    fi
    if [ "$server" = loopline ]; then
        # READY greeting; LF-ended lines; one-line responses
        SOPTS=(--skip-greeting 1 --eol lf)
        case "$name" in
            echo*) SOPTS+=(--request 'ECHO ' --payload 512) ;;
            churn*) SOPTS+=(--request QUIT) ;;
            *) SOPTS+=(--request PING) ;;
        esac
    else
        # no greeting; inline PING and QUIT as redis-benchmark's ping_inline
        # does; ECHO as a RESP array (what clients send: Redis parses long
        # inline arguments byte by byte, ~8x slower), answered by `$512` and
        # the data: 2 lines. The final \r\n is the line ending the payload
        # goes before.
        SOPTS=(--skip-greeting 0)
        case "$name" in
            echo*) SOPTS+=(--request '*2\r\n$4\r\nECHO\r\n$512\r\n\r\n' --payload 512 --lines-per-response 2) ;;
            churn*) SOPTS+=(--request QUIT) ;;
            *) SOPTS+=(--request PING) ;;
        esac
    fi
}

json_field() { # json key -> value (flat JSON; "null" when absent)
    local v
    v="$(printf '%s\n' "$1" | grep -o "\"$2\":[^,}]*" | head -n 1 | cut -d: -f2- | tr -d '"')"
    echo "${v:-null}"
}

RAW="$TMP/raw.tsv"     # scenario server repeat metric value
FAILED=()              # runs whose handshakes were not of the kind asked for
JSONL="${CSV%.csv}-runs.jsonl"
mkdir -p "$(dirname "$CSV")" "$(dirname "$JSONL")"
: >"$RAW"
: >"$JSONL"

record() { # scenario server repeat json metric...
    local sc="$1" sv="$2" rep="$3" json="$4" m
    shift 4
    for m in "$@"; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$sc" "$sv" "$rep" "$m" "$(json_field "$json" "$m")" >>"$RAW"
    done
    printf '{"scenario":"%s","server":"%s","repeat":%s,%s\n' "$sc" "$sv" "$rep" "${json#\{}" >>"$JSONL"
}

record_fields() { # scenario server repeat json metric...: into RAW only
    local sc="$1" sv="$2" rep="$3" json="$4" m
    shift 4
    for m in "$@"; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$sc" "$sv" "$rep" "$m" "$(json_field "$json" "$m")" >>"$RAW"
    done
}

# A TLS churn run measured what its scenario is about: with --tls-resume,
# at least 90% of the handshakes resumed (loopline-bench's resume_shortfall
# is 0); without, none did. Otherwise says so loudly and returns 1.
handshakes_as_asked() { # server scenario-name opts json
    local server="$1" name="$2" opts="$3" json="$4" fraction shortfall resumed full
    fraction="$(json_field "$json" resumed_fraction)"
    shortfall="$(json_field "$json" resume_shortfall)"
    resumed="$(json_field "$json" handshakes_resumed)"
    full="$(json_field "$json" handshakes_full)"
    case " $opts " in
        *" --tls-resume "*)
            if [ "$shortfall" = 0 ] && awk -v f="$fraction" 'BEGIN { exit !(f != "null" && f + 0 >= 0.9) }'; then
                return 0
            fi
            log "FAILED: $server did not resume TLS sessions in $name: $resumed resumed, $full full (resumed fraction $fraction, need 0.9); its rate is full handshakes and is left out"
            ;;
        *)
            if [ "$resumed" = 0 ] || [ "$resumed" = null ]; then return 0; fi
            log "FAILED: $name should be full handshakes, but $server resumed $resumed of $((resumed + full)); its rate is left out"
            ;;
    esac
    FAILED+=("$server/$name")
    return 1
}

run_one() { # server scenario-line repeat
    local server="$1" line="$2" rep="$3"
    local name kind label opts addr pid out json
    IFS='|' read -r name kind label opts <<<"$line"
    if [ "$kind" = hold ]; then
        # a fresh server, so the RSS growth is not hidden by memory kept
        # from earlier runs
        if [ "$server" = redis ]; then stop_redis; start_redis; else stop_loopline; start_loopline; fi
    fi
    if [ "$server" = redis ]; then addr="127.0.0.1:$REDIS_PORT"; pid="$REDIS_PID"; else addr="$LL_ADDR"; pid="$LL_PID"; fi
    local common=(--addr "$addr" --server-pid "$pid" --threads "$THREADS" --close-rst)
    if [ "$TLS" = 1 ]; then common+=(--tls --tls-ca "$TLS_DIR/ca.pem"); fi
    server_opts "$server" "$name"
    # $opts holds plain words (-c 50 -P 32): split on purpose
    # shellcheck disable=SC2086
    case "$kind" in
        load | churn) out="$("$BENCH" --mode "$kind" "${common[@]}" -d "$DURATION" --warmup "$WARMUP" $opts "${SOPTS[@]}" 2>>"$TMP/bench.err")" || true ;;
        hold) out="$("$BENCH" --mode hold "${common[@]}" --hold 0 $opts "${SOPTS[@]}" 2>>"$TMP/bench.err" </dev/null)" || true ;;
    esac
    json="$(printf '%s\n' "$out" | grep '^{' | head -n 1)"
    printf '  %-8s %-34s %s\n' "$([ "$server" = loopline ] && echo "$LL_NAME" || echo "$server")" "$label" "$(printf '%s\n' "$out" | grep -v '^{' | head -n 1)" >&2
    if [ -z "$json" ]; then
        log "no result from loopline-bench for $server/$name; its stderr:"
        tail -n 5 "$TMP/bench.err" >&2
        return 0
    fi
    case "$kind" in
        load) record "$name" "$server" "$rep" "$json" rps p50_us p99_us p999_us server_cpu_us_per_resp errors ;;
        churn)
            if [ "$TLS" = 1 ] && ! handshakes_as_asked "$server" "$name" "$opts" "$json"; then
                # not the handshakes this scenario measures: everything but
                # the rate is kept (the raw run too), the rate is left out
                record "$name" "$server" "$rep" "$json" p50_us p99_us p999_us server_cpu_us_per_conn errors \
                    handshakes_full handshakes_resumed resumed_fraction
                printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$server" "$rep" cps null >>"$RAW"
            else
                record "$name" "$server" "$rep" "$json" cps p50_us p99_us p999_us server_cpu_us_per_conn errors
                if [ "$TLS" = 1 ]; then
                    record_fields "$name" "$server" "$rep" "$json" handshakes_full handshakes_resumed resumed_fraction
                fi
            fi
            ;;
        hold) record "$name" "$server" "$rep" "$json" bytes_per_conn held errors ;;
    esac
    if [ "$kind" = hold ]; then
        # back to a fresh server for the scenarios after this one
        if [ "$server" = redis ]; then stop_redis; start_redis; else stop_loopline; start_loopline; fi
    fi
}

# --- run ------------------------------------------------------------------
has_server redis && start_redis
has_server loopline && start_loopline
log "servers: ${SERVERS}$([ "$KV" = 1 ] && echo " (loopline side: $LOOPLINE)"); redis $(has_server redis && echo "127.0.0.1:$REDIS_PORT pid $REDIS_PID" || echo -), $LL_NAME $(has_server loopline && echo "$LL_ADDR pid $LL_PID${LOOPLINE_ARGS:+ (extra options: $LOOPLINE_ARGS)}" || echo -)"
log "$([ "$TLS" = 1 ] && echo "over TLS; ")repeats $REPEATS, duration ${DURATION}s, warm-up ${WARMUP}s, generator threads $THREADS"

for rep in $(seq "$REPEATS"); do
    log "round $rep/$REPEATS"
    for line in "${SCENARIOS[@]}"; do
        # alternate which server goes first, round by round
        if [ $((rep % 2)) = 1 ]; then order="loopline redis"; else order="redis loopline"; fi
        for server in $order; do
            has_server "$server" || continue
            run_one "$server" "$line" "$rep"
        done
    done
done

# --- table ----------------------------------------------------------------
median() { # scenario server metric
    awk -F'\t' -v s="$1" -v v="$2" -v m="$3" \
        '$1 == s && $2 == v && $4 == m && $5 != "null" && $5 != "" { print $5 }' "$RAW" |
        sort -g |
        awk '{ a[NR] = $1 } END {
            if (NR == 0) print "";
            else if (NR % 2) print a[(NR + 1) / 2];
            else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.2f", a / b }'; }
fmt() { # value decimals
    awk -v v="$1" -v d="$2" 'BEGIN { if (v == "") print "-"; else printf "%.*f", d, v }'
}

# The CSV's columns are the same in every mode: with --kv, "loopline" (and
# every loopline_* column) is kv.
echo "scenario,metric,loopline,redis,ratio,loopline_p50_us,redis_p50_us,loopline_p99_us,redis_p99_us,loopline_p999_us,redis_p999_us,loopline_server_cpu_us_per_op,redis_server_cpu_us_per_op,cpu_ratio,loopline_errors,redis_errors,repeats,duration_s" >"$CSV"

short=ll
if [ "$KV" = 1 ]; then
    short=kv
    printf '\n(--kv: the "kv" column is %s; in the CSV it is the "loopline" column)' "$LOOPLINE"
fi
printf '\n%-32s %-12s %12s %12s %6s | %16s | %16s | %18s %5s | %s\n' \
    "scenario (medians of $REPEATS)" metric "$LL_NAME" redis ratio "p50 us $short/redis" "p99 us $short/redis" "srv CPU us/op ${short:0:1}/r" ratio "errors ${short:0:1}/r"
for line in "${SCENARIOS[@]}"; do
    IFS='|' read -r name kind label opts <<<"$line"
    case "$kind" in
        load) metric=rps; cpu=server_cpu_us_per_resp; unit="responses/s" ;;
        churn) metric=cps; cpu=server_cpu_us_per_conn; unit="conns/s"
            # over TLS each connection is one full handshake
            if [ "$TLS" = 1 ]; then unit="handshakes/s"; fi ;;
        hold) metric=bytes_per_conn; cpu=""; unit="RSS B/conn" ;;
    esac
    declare -A v=()
    for server in loopline redis; do
        v[$server.m]="$(median "$name" "$server" "$metric")"
        v[$server.p50]="$(median "$name" "$server" p50_us)"
        v[$server.p99]="$(median "$name" "$server" p99_us)"
        v[$server.p999]="$(median "$name" "$server" p999_us)"
        v[$server.cpu]="$([ -n "$cpu" ] && median "$name" "$server" "$cpu" || true)"
        v[$server.err]="$(median "$name" "$server" errors)"
    done
    r="$(ratio "${v[loopline.m]}" "${v[redis.m]}")"
    rc="$(ratio "${v[loopline.cpu]}" "${v[redis.cpu]}")"
    printf '%-32s %-12s %12s %12s %6s | %7s / %-6s | %7s / %-6s | %8s / %-7s %5s | %s / %s\n' \
        "$label" "$unit" "$(fmt "${v[loopline.m]}" 0)" "$(fmt "${v[redis.m]}" 0)" "${r:--}" \
        "$(fmt "${v[loopline.p50]}" 0)" "$(fmt "${v[redis.p50]}" 0)" \
        "$(fmt "${v[loopline.p99]}" 0)" "$(fmt "${v[redis.p99]}" 0)" \
        "$(fmt "${v[loopline.cpu]}" 2)" "$(fmt "${v[redis.cpu]}" 2)" "${rc:--}" \
        "$(fmt "${v[loopline.err]}" 0)" "$(fmt "${v[redis.err]}" 0)"
    echo "$name,$unit,${v[loopline.m]},${v[redis.m]},$r,${v[loopline.p50]},${v[redis.p50]},${v[loopline.p99]},${v[redis.p99]},${v[loopline.p999]},${v[redis.p999]},${v[loopline.cpu]},${v[redis.cpu]},$rc,${v[loopline.err]},${v[redis.err]},$REPEATS,$DURATION" >>"$CSV"
    unset v
done
echo
echo "ratio = $LL_NAME / Redis (for responses/s and conns/s higher is better; for RSS and CPU lower is better)."
if [ "$TLS" = 1 ]; then
    echo "TLS: both servers on the same certificate (ECDSA P-256, $TLS_DIR); every connection a full handshake,"
    echo "     except in churn_tls_resumed_c50 (each slot resumes its previous session; TLS 1.3 tickets unless the server picks 1.2)."
    for name in churn_tls_c50 churn_tls_resumed_c50; do
        printf '     %s: resumed fraction (median) loopline %s, Redis %s\n' "$name" \
            "$(fmt "$(median "$name" loopline resumed_fraction)" 3)" "$(fmt "$(median "$name" redis resumed_fraction)" 3)"
    done
fi
echo "server CPU = utime+stime of the server process over the measured window, per response (per connection for churn)."
echo "CSV: $CSV   raw runs: $JSONL"
if [ "${#FAILED[@]}" -gt 0 ]; then
    log "FAILED: ${#FAILED[@]} run(s) did not make the handshakes their scenario measures (rate left out): ${FAILED[*]}"
    exit 1
fi
