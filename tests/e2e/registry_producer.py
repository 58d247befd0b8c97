#!/usr/bin/env python3
"""Produces PageView events as Confluent's own Python client does with a Schema Registry.

Run by tests/e2e/registry.rs (scripts/e2e.sh installs confluent-kafka[avro] 2.16.1): a
real `SchemaRegistryClient` + `AvroSerializer` registers the writer schema under the
subject `<topic>-value` (auto-registration, TopicNameStrategy) in the registry at
--registry-url, and a real `Producer` writes the Confluent-framed records to the Kafka
broker at --bootstrap (Tansu), each to the partition given. `--evolve` writes with
schemas/PageView.avsc plus a field added with a default (`user_agent`), which the
registry gives a new schema id. Everything stays on 127.0.0.1.

Input, one JSON object per line on stdin: {"partition": P, "key": K, "event": {...}}
with the PageView fields. Output, one JSON line: {"schema_ids": [...], "produced": N}
(the ids read back from the produced bytes' framing).
"""

import argparse
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry-url", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--schema", required=True, help="schemas/PageView.avsc")
    ap.add_argument("--evolve", action="store_true", help="add a field with a default")
    args = ap.parse_args()
    for address in (args.bootstrap, args.registry_url):
        if "127.0.0.1" not in address:
            sys.exit(f"not a loopback address: {address}")

    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    if args.evolve:
        schema["fields"].append({"name": "user_agent", "type": "string", "default": "unknown"})

    registry = SchemaRegistryClient({"url": args.registry_url})
    serializer = AvroSerializer(registry, json.dumps(schema))
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    ctx = SerializationContext(args.topic, MessageField.VALUE)

    failures = []
    ids = set()

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))

    produced = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        rec = json.loads(line)
        event = rec["event"]
        if args.evolve:
            event = dict(event, user_agent="Mozilla/5.0 (X11; Linux x86_64)")
        value = serializer(event, ctx)
        if value[0] != 0:
            sys.exit(f"not Confluent-framed: {value[:5]!r}")
        ids.add(int.from_bytes(value[1:5], "big"))
        producer.produce(
            args.topic,
            key=rec["key"].encode(),
            value=value,
            partition=rec["partition"],
            on_delivery=delivered,
        )
        produced += 1
        producer.poll(0)
    left = producer.flush(30)
    if left or failures:
        sys.exit(f"{left} record(s) not delivered; errors: {failures}")
    print(json.dumps({"schema_ids": sorted(ids), "produced": produced}))


if __name__ == "__main__":
    main()
