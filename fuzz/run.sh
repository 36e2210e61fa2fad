#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable toolchain (LLVM's
# sanitizer-coverage pass, no nightly) and runs each for SECONDS (default 20) from the checked-in seed
# corpus. Fails on a crash, a panic, an input slower than 10 s (a hang) or one over 2 GiB of memory.
# LeakSanitizer needs -Zsanitizer (nightly): not available here, so leaks are not checked.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# An explicit target keeps the flags off build scripts (they run on the host, without libFuzzer).
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release -q --target "$triple" --bin superblock --bin segment --bin checkpoint --bin recovery --bin durable_log --bin capi
bin="$CARGO_TARGET_DIR/$triple/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in superblock segment checkpoint recovery durable_log capi; do
    mkdir -p "$work/$t"
    cp -r "corpus/$t/." "$work/$t/"
    log="$work/$t.log"
    if ! "$bin/$t" "$work/$t" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $t FAILED (the crashing input is in $work/$t's crash-* file, shown above)"
        cp "$work"/crash-* "$work"/timeout-* "$work"/oom-* . 2>/dev/null || true
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || echo 'cov: ?')
    echo "fuzz: $t: $runs executions in $secs s, $cov, corpus $(ls "$work/$t" | wc -l) inputs, no crash"
done
