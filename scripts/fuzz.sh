#!/usr/bin/env bash
# Coverage-guided fuzzing of loopline: libFuzzer through
# cargo-fuzz, on the stable toolchain (RUSTC_BOOTSTRAP=1 lets stable rustc
# take the -Z sanitizer and coverage flags cargo-fuzz passes).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to all of them:
# framing protocol session connection proxy_header (see fuzz/fuzz_targets/). Each run
# starts from the committed seeds in fuzz/corpus/TARGET and grows a working
# corpus in fuzz/work/TARGET (not committed); its log is fuzz/work/TARGET.log.
# A crash, or an input that runs over 10 s (a hang), leaves its input in
# fuzz/artifacts/TARGET/ and makes the script exit 1 (2 if the build fails). FUZZ_NO_SHUTDOWN=1 in the environment makes
# the connection target skip graceful shutdowns.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 [SECONDS] [TARGET...]   (SECONDS a whole number > 0, default 60)" >&2
    exit 2
fi
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(framing protocol session connection proxy_header)

# What a fresh machine lacks: cargo-fuzz from crates.io, and a C++ compiler
# for libFuzzer itself (libfuzzer-sys builds it from source).
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 2
fi
if ! command -v c++ >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null || exit 2
fi

export RUSTC_BOOTSTRAP=1
# Release build with debug assertions and overflow checks; AddressSanitizer
# is cargo-fuzz's default.
flags=(--fuzz-dir fuzz -O -a)
echo "== building ${targets[*]}"
for t in "${targets[@]}"; do
    cargo fuzz build "${flags[@]}" "$t" || exit 2
done

status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
    log="fuzz/work/$t.log"
    echo "== $t: ${secs}s (log: $log)"
    cargo fuzz run "${flags[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" | tail -2 | sed 's/^/   /'
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" | sed 's/^/   /'
    if [ $rc -ne 0 ]; then
        status=1
        echo "   CRASH (exit $rc):"
        grep -E "panicked at|^ *(got|want|left|right):|SUMMARY|Reproduce with|artifacts/" "$log" | head -12 | cut -c1-300 | sed 's/^/   /'
    else
        echo "   no crash"
    fi
done
exit $status
