"""The ``raw`` baseline: a plain confluent-kafka loop, orjson and a dict.

What a hand-written consumer does with no framework at all: one process
assigned the input topic's partitions (no consumer-group join), decode with
orjson, keep a per-user 60 s tumbling window (event time) of count and sum in a
dict, publish one JSON output per event without awaiting each send. No offset
commits and no persistent state: this is the ceiling streamscore's hot path
is compared with.

Run by the harness as ``python -m benchmarks.raw --broker ... --expected N``;
it writes its progress to ``--status`` and, once ``N`` outputs are delivered,
waits for SIGTERM (so the harness can read its /proc counters first).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks.status import write_status
from streams.settings import Settings

WINDOW_MS = 60_000
COUNT_NAME = "amount_count_60s_by_user"
MEAN_NAME = "amount_mean_60s_by_user"


def run(broker: str, topic: str, out_topic: str, partitions: int, expected: int, status: str,
        group: str) -> int:
    settings = Settings(broker=broker)
    # the worker's fetch settings (fetch.wait.max.ms = fetch_wait_ms): the same latency floor
    consumer = Consumer(settings.consumer_config(group=group, **{"fetch.wait.max.ms": settings.fetch_wait_ms}))
    producer = Producer(settings.producer_config(**{"enable.idempotence": False}))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    state: dict[str, list[float]] = {}    # user -> [window start, count, sum]
    loads, dumps = orjson.loads, orjson.dumps
    produce = producer.produce
    n = 0
    write_status(status, "ready", 0)
    last_status = time.monotonic()
    reported = False
    while n < expected:
        # what is fetched already, at once; else wait for the first record only (as the worker
        # does): consume(n, timeout) would hold a partial batch until n records or the timeout
        msgs = consumer.consume(10_000, 0)
        if not msgs:
            first = consumer.poll(0.05)
            msgs = [first] if first is not None else []
        for m in msgs:
            if m.error():
                continue
            ev = loads(m.value())
            ts = ev["ts"]
            user = ev["user"]
            start = ts - ts % WINDOW_MS
            st = state.get(user)
            if st is None or start > st[0]:
                st = state[user] = [start, 0, 0.0]
            if start == st[0]:                      # an event older than the window is late: not applied
                st[1] += 1
                st[2] += ev["amount"]
            c = st[1]
            out = dumps({
                "event_id": ev["event_id"],
                "key": user,
                "ts": ts,
                "features": {COUNT_NAME: float(c), MEAN_NAME: st[2] / c if c else 0.0},
                "latency_ms": round(time.time() * 1000.0 - m.timestamp()[1], 3),
            })
            try:
                produce(out_topic, out, m.key(), partition=m.partition())
            except BufferError:
                producer.poll(0.1)
                produce(out_topic, out, m.key(), partition=m.partition())
            n += 1
        producer.poll(0)
        now = time.monotonic()
        if now - last_status >= 1.0 or (n and not reported):   # and right after the first batch
            write_status(status, "running", n)
            last_status = now
            reported = True
    left = producer.flush(60)
    consumer.close()
    write_status(status, "done" if left == 0 else "failed", n, undelivered=left)
    return 0 if left == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.raw", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out-topic", required=True)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--expected", type=int, required=True, help="Stop after this many outputs.")
    ap.add_argument("--status", required=True, help="Status file the harness polls.")
    ap.add_argument("--group", default="bench-raw")
    args = ap.parse_args(argv)
    rc = run(args.broker, args.topic, args.out_topic, args.partitions, args.expected, args.status, args.group)
    wait_for_stop()
    return rc


def wait_for_stop(timeout: float = 600.0) -> None:
    """Stay alive until the harness has read /proc/<pid> and sends SIGTERM (or ``timeout``)."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    signal.sigtimedwait(sigs, timeout)


if __name__ == "__main__":
    sys.exit(main())
