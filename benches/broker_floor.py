"""The broker's share of event-to-output latency (BENCHMARKS.md, issue 19).

`strata run`'s latency bench (benches/kafka_run.rs, phase 5) measures two broker
hops plus strata: the bench's producer → input topic → strata → output topic →
the bench's consumer. This measures one hop at a steady rate with no strata in
between, twice — with the bench producer's settings (linger 0) and with strata's
output producer's (idempotent, acks=all, linger 5) — each read by a consumer with
`fetch.wait.max.ms` 10 as strata's and the bench's are, and estimates the two-hop
floor by adding a latency drawn from each (the hops are independent).

    tansu broker --listener-url tcp://127.0.0.1:19092 \
        --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine sqlite://floor.db &
    benches/peer/.venv/bin/python benches/broker_floor.py 127.0.0.1:19092 [RATE] [SECONDS]

(`benches/peer/setup` makes the venv; it has confluent_kafka.) The first second of
each hop is left out: it is the clients connecting (p99 400+ ms over the whole
run), not the broker's steady state.
"""

import random
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 8


def hop(brokers, topic, rate, seconds, producer_conf):
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        try:
            f.result()
        except Exception as e:  # already there from an earlier run
            print(f"{topic}: {e}", file=sys.stderr)
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "floor-" + topic,
            "fetch.wait.max.ms": "10",
            "auto.offset.reset": "latest",
        }
    )
    consumer.assign([TopicPartition(topic, p, -1) for p in range(PARTITIONS)])
    warm = time.monotonic()
    while time.monotonic() - warm < 3:
        consumer.poll(0.1)
    total = rate * seconds
    sent, got = {}, []

    def read():
        last = time.monotonic()
        while len(got) < total and time.monotonic() - last < 10:
            m = consumer.poll(0.1)
            if m is None or m.error():
                continue
            now = time.monotonic()
            at = sent.pop(m.key().decode(), None)
            if at is not None:
                got.append((at, now - at))
                last = now

    reader = threading.Thread(target=read)
    reader.start()
    producer = Producer(dict(producer_conf, **{"bootstrap.servers": brokers}))
    start = time.monotonic()
    for i in range(total):
        d = start + i / rate - time.monotonic()
        if d > 0:
            time.sleep(d)
        key = f"k{i}"
        sent[key] = time.monotonic()
        producer.produce(topic, key=key, value=b"x" * 200)
        producer.poll(0)
    producer.flush(30)
    reader.join()
    consumer.close()
    return sorted(l for at, l in got if at - start > 1.0), len(got), total


def q(sorted_ms, x):
    return sorted_ms[min(int(len(sorted_ms) * x), len(sorted_ms) - 1)] * 1000


def main():
    brokers = sys.argv[1]
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    tag = str(int(time.time()))
    hops = []
    for name, conf in [
        ("bench producer (linger 0)", {"linger.ms": "0", "partitioner": "murmur2_random"}),
        (
            "strata's output producer (idempotent, acks=all, linger 5)",
            {"linger.ms": "5", "acks": "all", "enable.idempotence": "true"},
        ),
    ]:
        lat, n, total = hop(brokers, f"floor-{tag}-{len(hops)}", rate, seconds, conf)
        hops.append(lat)
        print(
            f"one hop, {name}: {n} of {total} at {rate}/s; after the first second "
            f"p50 {q(lat, 0.5):.1f} ms, p90 {q(lat, 0.9):.1f}, p99 {q(lat, 0.99):.1f}, "
            f"max {q(lat, 1.0):.1f}"
        )
    rnd = random.Random(1)
    both = sorted(rnd.choice(hops[0]) + rnd.choice(hops[1]) for _ in range(200_000))
    print(
        f"two hops (sum of independent draws): p50 {q(both, 0.5):.1f} ms, "
        f"p90 {q(both, 0.9):.1f}, p99 {q(both, 0.99):.1f}"
    )


if __name__ == "__main__":
    main()
