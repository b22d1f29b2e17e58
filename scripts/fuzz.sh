#!/usr/bin/env bash
# Builds Norn's cargo-fuzz targets (fuzz/, outside the workspace) and runs each for SECONDS
# (default 60), failing on the first crash, leak or timeout. Prints executions and exec/s per
# target. Runs on the pinned stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# cargo-fuzz passes (sanitizer coverage, -Zsanitizer=address); no nightly is needed.
#
# Usage: ./scripts/fuzz.sh [SECONDS]            every target
#        ./scripts/fuzz.sh SECONDS TARGET...    some targets
#        ./scripts/fuzz.sh --seeds              rewrite fuzz/corpus/ with fuzz/seedgen
# Env:   NORN_FUZZ_SANITIZER=address|none (default address)
#        NORN_FUZZ_JOBS: parallel libFuzzer workers per target (default 1; their stats are
#        not summed here, read fuzz/fuzz-*.log)
#        NORN_FUZZ_MAX_LEN: longest input libFuzzer makes (default 65536; a grown corpus of
#        64 kB inputs slows the fast decoders several times, 4096 keeps them near their rate)
#        NORN_FUZZ_RUNS: stop a target after this many executions (default: time only)
#        NORN_FUZZ_KEEP_CORPUS=1: let libFuzzer add what it finds to fuzz/corpus/ (default:
#        a scratch copy under the target dir, so the committed corpus stays small)
# Crashing inputs land in fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>   (in fuzz/)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/norn-target-fuzz}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUSTC_BOOTSTRAP=1
sanitizer="${NORN_FUZZ_SANITIZER:-address}"
jobs="${NORN_FUZZ_JOBS:-1}"
max_len="${NORN_FUZZ_MAX_LEN:-65536}"
runs=()
[ -z "${NORN_FUZZ_RUNS:-}" ] || runs=(-runs="$NORN_FUZZ_RUNS")
targets_all=(remote_write_decode promql_eval wal_replay block_read xor_chunk grpc_messages)

if [ "${1:-}" = "--seeds" ]; then
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/seedgen" cargo run --quiet \
        --manifest-path fuzz/seedgen/Cargo.toml -- "$root/fuzz/corpus"
    exit 0
fi

secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${targets_all[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd fuzz
echo "== cargo fuzz build (sanitizer: $sanitizer)"
start=$(date +%s)
one=()
[ ${#targets[@]} -ne 1 ] || one=("${targets[0]}")
cargo fuzz build -O -a --sanitizer "$sanitizer" "${one[@]}"
echo "build: $(( $(date +%s) - start )) s"

scratch="${TMPDIR:-/tmp}"
[ ! -w /dev/shm ] || scratch=/dev/shm
status=0
summary=()
par=()
# -jobs runs workers as child processes writing fuzz-N.log in the current directory.
[ "$jobs" -le 1 ] || par=(-jobs="$jobs" -workers="$jobs")
for t in "${targets[@]}"; do
    corpus="$root/fuzz/corpus/$t"
    mkdir -p "$corpus" "$root/fuzz/artifacts/$t"
    if [ "${NORN_FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
        work="$corpus"
        extra=()
    else
        work="$CARGO_TARGET_DIR/fuzz-corpus/$t"
        mkdir -p "$work"
        extra=("$corpus")
    fi
    flags=()
    # The engine's query threads outlive the last input (an idle pool): LeakSanitizer's
    # check at process exit reports their spawn closures as leaks, with an empty input.
    [ "$t" != promql_eval ] || flags=(-detect_leaks=0)
    log="$CARGO_TARGET_DIR/fuzz-$t.log"
    echo "== $t: ${secs}s"
    set +e
    # The file targets (wal_replay, block_read) rewrite a scratch directory per input:
    # in memory it is 2.5x faster than on this disk, and the disk is not what they test.
    TMPDIR="$scratch" cargo fuzz run -O -a --sanitizer "$sanitizer" "$t" "$work" "${extra[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -max_len="$max_len" \
        -print_final_stats=1 "${flags[@]}" "${par[@]}" "${runs[@]}" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | awk '{s+=$2} END {print s+0}')
    rate=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | awk '{s+=$2} END {print s+0}')
    result=ok
    if grep -q 'libFuzzer: run interrupted' "$log"; then
        # Stopped by a signal (Ctrl-C, kill -INT): libFuzzer exits 72; not a finding.
        result=interrupted
        status=1
        echo "!! $t was interrupted: its figures are up to the signal"
    elif [ "$rc" -ne 0 ]; then
        result=CRASH
        status=1
        echo "!! $t failed (exit $rc): see $log and fuzz/artifacts/$t/"
        grep -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 || true
    fi
    summary+=("$(printf '%-20s %12s execs %8s exec/s  %s' "$t" "$execs" "$rate" "$result")")
done
echo "== fuzz summary (${secs}s per target, sanitizer $sanitizer, max_len $max_len)"
printf '%s\n' "${summary[@]}"
exit "$status"
