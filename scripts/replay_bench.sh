#!/usr/bin/env bash
# `engaged replay` throughput and peak memory on large generated Avro files.
#
# Builds the release binary, writes two object container files with
# `benches/replay_files.rs` into target/replay-bench/ (kept between runs; delete
# them to regenerate):
#   mixed-<N>.avro       the demo generator's traffic, REPLAY_BENCH_MIXED_EVENTS events
#                        (default 550000)
#   customers-<N>.avro   REPLAY_BENCH_CUSTOMERS customers (default 1000000): two views,
#                        one ORDER, 70% one email event each (~3.7 events per customer)
# then runs `target/release/engaged replay --no-progress FILE` under `/usr/bin/time -v`
# REPLAY_BENCH_RUNS times (default 1) per file and prints one table row per run:
# events, wall seconds, events/s, CPU seconds, max RSS (and RSS per customer for the
# customer file). Wall time covers the whole command: decoding and applying every
# event, the churn-model fit and the final snapshots. It fails unless every record
# was accepted. Replay's stdout (JSON snapshots) and stderr go to
# target/replay-bench/<file>.{snapshots.jsonl,stderr}. REPLAY_BENCH_CODEC=deflate
# writes deflate-compressed files (default: null codec, so the figures are engaged's
# own cost, not inflate's).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

MIXED_EVENTS=${REPLAY_BENCH_MIXED_EVENTS:-550000}
CUSTOMERS=${REPLAY_BENCH_CUSTOMERS:-1000000}
RUNS=${REPLAY_BENCH_RUNS:-1}
CODEC=${REPLAY_BENCH_CODEC:-null}
DIR=target/replay-bench

if [ ! -x /usr/bin/time ]; then
    log "installing GNU time (apt)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq time >/dev/null
fi

log "building release"
cargo build --release --quiet
mkdir -p "$DIR"

suffix=""
[ "$CODEC" = null ] || suffix="-$CODEC"
MIXED="$DIR/mixed-$MIXED_EVENTS$suffix.avro"
CUST="$DIR/customers-$CUSTOMERS$suffix.avro"

# generate FILE ARGS...: writes FILE (and FILE.gen.txt, the generator's summary) unless present.
generate() {
    local file=$1
    shift
    if [ -s "$file" ] && [ -s "$file.gen.txt" ]; then
        log "$file present, not regenerated"
    else
        log "generating $file"
        cargo bench --quiet --bench replay_files -- "$@" --codec "$CODEC" | tee "$file.gen.txt" >&2
    fi
}
generate "$MIXED" mixed "$MIXED" --events "$MIXED_EVENTS"
generate "$CUST" customers "$CUST" --customers "$CUSTOMERS"

# Events in a file, from the generator's summary line ("FILE: N events (...").
events_of() { sed -n 's/^[^ ]*: \([0-9]*\) events .*/\1/p' "$1.gen.txt"; }

# "h:mm:ss" or "m:ss.xx" to seconds.
to_seconds() { awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.2f", s }' <<<"$1"; }

rows=()
# measure FILE LABEL CUSTOMERS(0 = none)
measure() {
    local file=$1 label=$2 customers=$3 base run
    base="$DIR/$(basename "$file" .avro)"
    local events
    events=$(events_of "$file")
    for run in $(seq 1 "$RUNS"); do
        log "replaying $file (run $run/$RUNS)"
        /usr/bin/time -v -o "$base.time" target/release/engaged replay --no-progress "$file" \
            >"$base.snapshots.jsonl" 2>"$base.stderr"
        local summary consumed accepted wall user sys rss_kb
        summary=$(grep '^replayed ' "$base.stderr" | tail -1)
        consumed=$(sed -n 's/^replayed \([0-9]*\) records.*/\1/p' <<<"$summary")
        accepted=$(sed -n 's/.*: \([0-9]*\) accepted.*/\1/p' <<<"$summary")
        if [ "$consumed" != "$events" ] || [ "$accepted" != "$events" ]; then
            echo "$file: $events events written, but: $summary" >&2
            exit 1
        fi
        wall=$(to_seconds "$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$base.time")")
        user=$(sed -n 's/.*User time (seconds): //p' "$base.time")
        sys=$(sed -n 's/.*System time (seconds): //p' "$base.time")
        rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$base.time")
        rows+=("$(awk -v l="$label" -v e="$events" -v w="$wall" -v u="$user" -v s="$sys" \
            -v r="$rss_kb" -v c="$customers" 'BEGIN {
                per = c > 0 ? sprintf("%.0f", r * 1024 / c) : "-"
                printf "%-28s %10d %8.2f %12.0f %8.2f %10.1f %12s\n",
                    l, e, w, e / w, u + s, r / 1024, per }')")
    done
}
measure "$MIXED" "$(basename "$MIXED")" 0
measure "$CUST" "$(basename "$CUST")" "$CUSTOMERS"

printf '%-28s %10s %8s %12s %8s %10s %12s\n' \
    file events wall_s events/s cpu_s maxrss_MiB B/customer
printf '%s\n' "${rows[@]}"
