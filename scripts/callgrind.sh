# Sourced by instructions.sh and connection-instructions.sh: the release
# loopline run under callgrind on 127.0.0.1, and the user-space instructions
# it ran in all (start-up and shutdown included: the callers difference two
# runs to cancel them).

# Installs valgrind if missing and builds the release binary.
callgrind_prepare() {
    command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
    cargo build --release --bin loopline >/dev/null 2>&1
}

# callgrind_start OUT LOG [LOOPLINE OPTIONS...]: starts the server, its
# callgrind output to OUT and its log to LOG; sets CG_PID and CG_PORT once
# it listens.
callgrind_start() {
    local cg=$1 log=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$cg" \
        target/release/loopline --listen 127.0.0.1:0 "$@" 2>"$log" &
    CG_PID=$!
    CG_PORT=""
    for _ in $(seq 200); do
        CG_PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2) && [ -n "$CG_PORT" ] && break
        sleep 0.1
    done
}

# callgrind_total OUT: stops the server (SIGTERM, a graceful shutdown) and
# prints the instructions it ran.
callgrind_total() {
    kill -TERM "$CG_PID"
    wait "$CG_PID" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$1"
}
