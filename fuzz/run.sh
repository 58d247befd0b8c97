#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 15) from its seed corpus, with
# the limits that catch what the decoder must never do: panic, allocate more than
# 64 MiB at once (the targets' own allocator guard; libFuzzer's -malloc_limit_mb
# needs a sanitizer), hold more than 512 MiB, or overflow the stack.
#
# Works on a stable toolchain: no sanitizer (`-s none`), so nothing needs nightly.
# What a run adds to the corpus goes to a scratch directory: fuzz/corpus/ keeps
# only the committed seeds. A crash fails the script and leaves its input in
# fuzz/artifacts/<target>/. CI runs `fuzz/run.sh 15` (.ci/run).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-15}
shift || true
# Under target/, so that a cached target/ keeps the fuzz build too.
target_dir=target/fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

max_len() {
    case "$1" in
        container) echo 16384 ;;
        writer_schema) echo 4096 ;;
        *) echo 512 ;;
    esac
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build -s none --target-dir "$target_dir"
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! cargo fuzz run -s none --target-dir "$target_dir" "$target" \
        "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=64 \
        -max_len="$(max_len "$target")" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        echo "fuzz target $target failed (input kept in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    speed=$(grep -m1 '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
    echo "fuzz target $target: ${runs:-?} executions in ${seconds}s (${speed:-?}/s), no crash"
done
