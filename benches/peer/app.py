"""The peer: a Quix Streams application doing the core of strata's job.

Per customer, from the same three input topics strata reads (JSON, keyed by
customer_id): purchase count and spend over the last 365 days (event time),
last purchase day, the RFM segment against fixed thresholds (strata's
`segments.thresholds = "fixed"`: recency 30 days, frequency 4, monetary 1000),
and a `tier_changed`-like record to an output topic whenever the segment
changes. Interactions and complaints are consumed and dropped (strata keeps
windows of them too; the peer does less per event). State lives in Quix's
RocksDB state store, commits every 0.5 s, at-least-once.

    python app.py BROKERS GROUP STATE_DIR

benches/kafka_run.rs runs it on the same broker and pre-filled topics as
`strata run`, after strata, and stops it once GROUP's committed offsets reach
the ends.
"""

import datetime
import sys

from quixstreams import Application

WINDOW_DAYS = 365
RECENCY_DAYS = 30
FREQUENCY = 4
MONETARY = 1000.0
SEGMENTS = {
    (True, True, True): "important_value",
    (True, False, True): "important_develop",
    (False, True, True): "important_keep",
    (False, False, True): "important_retain",
    (True, True, False): "general_value",
    (True, False, False): "general_develop",
    (False, True, False): "general_keep",
    (False, False, False): "general_retain",
}
EPOCH = datetime.date(1970, 1, 1)


def day_of(ts: str) -> int:
    return (datetime.date.fromisoformat(ts[:10]) - EPOCH).days


def update(value, state):
    """Apply one purchase to its customer's state; the change record, if any."""
    day = day_of(value["ts"])
    days = state.get("days", {})  # day (str) -> [purchases, spend]
    k = str(day)
    entry = days.get(k, [0, 0.0])
    entry[0] += 1
    entry[1] += float(value["amount"])
    days[k] = entry
    clock = max(day, state.get("clock", day))
    horizon = clock - WINDOW_DAYS + 1
    days = {d: v for d, v in days.items() if int(d) >= horizon}
    count = sum(v[0] for v in days.values())
    spend = sum(v[1] for v in days.values())
    last = max(day, state.get("last", day))
    segment = SEGMENTS[
        (clock - last <= RECENCY_DAYS, count >= FREQUENCY, spend >= MONETARY)
    ]
    before = state.get("segment", None)
    state.set("days", days)
    state.set("clock", clock)
    state.set("last", last)
    state.set("segment", segment)
    if segment == before:
        return None
    return {
        "type": "tier_changed",
        "customer_id": value["customer_id"],
        "cause_event_id": value["event_id"],
        "from": before,
        "to": segment,
        "window_purchases": count,
        "window_spend": round(spend, 2),
    }


def main():
    brokers, group, state_dir = sys.argv[1:4]
    app = Application(
        broker_address=brokers,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        commit_interval=0.5,
        processing_guarantee="at-least-once",
        auto_create_topics=True,
        use_changelog_topics=True,
    )
    out = app.topic("peer_tier_changes", value_serializer="json")
    purchases = app.dataframe(app.topic("purchases", value_deserializer="json"))
    purchases = purchases.apply(update, stateful=True).filter(lambda v: v is not None)
    purchases.to_topic(out)
    for name in ("interactions", "complaints"):
        sdf = app.dataframe(app.topic(name, value_deserializer="json"))
        sdf.filter(lambda v: False)
    app.run()


if __name__ == "__main__":
    main()
