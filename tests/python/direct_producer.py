"""A business system producing to Chorus's `ingress` topic directly, with standard clients only
(confluent-kafka, fastavro) and the wire format of docs/protocol.md:

  value = C3 01 | CRC-64-AVRO fingerprint of the self-contained IngressEvent schema (8 bytes,
          little-endian) | Avro binary datum;  key = conversation id;  partitioner = murmur2
          (the Java client's default, which Chorus uses).

Usage: direct_producer.py <schemas dir> <bootstrap> <topic prefix> <conversation>

Produces one valid message and one corrupt record, then reads `<prefix>dead-letter` until the
corrupt record appears and prints a JSON summary of what it found on stdout.
"""

import io
import json
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from fastavro import schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form


def ingress_schema(schemas_dir: Path) -> dict:
    """The envelope with the event records inlined, as Chorus fingerprints it."""
    events = {}
    for path in schemas_dir.glob("*.avsc"):
        schema = json.loads(path.read_text())
        if schema["name"] not in ("IngressEvent", "TimelineEvent"):
            events[f"{schema['namespace']}.{schema['name']}"] = schema
    envelope = json.loads((schemas_dir / "ingress_event.avsc").read_text())
    for field in envelope["fields"]:
        if isinstance(field["type"], list):
            field["type"] = [events.get(branch, branch) if isinstance(branch, str) else branch
                             for branch in field["type"]]
    return envelope


def main() -> None:
    schemas_dir, bootstrap, prefix, conversation = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    schema = parse_schema(ingress_schema(schemas_dir))
    header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    event = {
        "event_id": str(uuid.uuid4()),
        "conversation": conversation,
        "sender": "crm",
        "client_msg_id": "crm-1",
        "ts_ms": int(time.time() * 1000),
        "origin_cluster": "local",
        "origin_node": None,
        "origin_session": None,
        "trusted": True,
        "body": ("chorus.MessageSent", {"text": "your parcel shipped"}),
    }
    datum = io.BytesIO()
    schemaless_writer(datum, schema, event)

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "acks": "all"})
    delivered = []
    report = lambda error, message: delivered.append(error)  # noqa: E731
    producer.produce(f"{prefix}ingress", key=conversation, value=header + datum.getvalue(), on_delivery=report)
    producer.produce(f"{prefix}ingress", key=conversation, value=b"this is not avro", on_delivery=report)
    producer.flush(30)
    if len(delivered) != 2 or any(delivered):
        raise SystemExit(f"produce failed: {delivered}")

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dlq-reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([f"{prefix}dead-letter"])
    found = None
    deadline = time.time() + 60
    while found is None and time.time() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        headers = {name: value.decode() for name, value in (message.headers() or [])}
        if message.value() == b"this is not avro":
            found = {"reason": headers.get("reason"), "source_topic": headers.get("source_topic"),
                     "key": message.key().decode()}
    consumer.close()
    print(json.dumps({"dead_letter": found}))


if __name__ == "__main__":
    main()
