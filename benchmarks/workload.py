"""The benchmark workload: deterministic synthetic events, produced once per topic set.

Events are JSON objects ``{"event_id", "ts", "user", "merchant", "country",
"amount", "quantity"}``; ``ts`` is event time, ``EPOCH_MS + i`` for the i-th
event (1 ms apart, strictly increasing); users, merchants and countries are
drawn Zipf-like from fixed pools with a seeded generator, so the same
arguments always give the same bytes. Records are keyed by user and sent to
partition ``crc32(user) % partitions`` explicitly, so the reference
computation knows which partition (and therefore which worker state) saw
which event.

The ``full`` workload also carries an inline label record
``{"event_id", "ts", "label"}`` right after each labelled event, on the events
topic, with the same key.

The brute-force reference (:func:`reference_windows`) groups the events by
(entity, window start) and recomputes, for every event, the count and mean of
the field over the events of its group up to and including itself.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from confluent_kafka import Producer

#: Event time of event 0 (2023-11-14T22:13:20Z); fixed so runs are comparable.
EPOCH_MS = 1_700_000_000_000


class Record(NamedTuple):
    """One record of the events topic (an event or an inline label)."""

    key: bytes
    value: bytes
    partition: int
    event_index: int          # index of the event (a label carries its event's index)
    is_label: bool = False


@dataclass
class Workload:
    """Events (decoded, for the reference) and the records to produce."""

    events: list[dict[str, Any]]
    partitions: list[int]                    # partition of each event
    records: list[Record]
    labels: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return len(self.events)

    def without_labels(self) -> Workload:
        """The same events, no label records."""
        return Workload(self.events, self.partitions, [r for r in self.records if not r.is_label], 0,
                        {**self.meta, "labels": False, "label_ratio": 0.0})

    def prefix(self, n_events: int) -> Workload:
        """The first ``n_events`` events (and their labels), same bytes."""
        n = min(n_events, self.n_events)
        recs = [r for r in self.records if r.event_index < n]
        return Workload(self.events[:n], self.partitions[:n], recs,
                        sum(r.is_label for r in recs), {**self.meta, "events": n})


def _zipf_cum_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (r ** s) for r in range(1, n + 1)))


def partition_of(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def make_workload(n_events: int, *, partitions: int = 4, users: int = 10_000, merchants: int = 500,
                  countries: int = 20, seed: int = 42, labels: bool = False,
                  label_ratio: float = 1.0) -> Workload:
    """Generate ``n_events`` events (and inline labels when ``labels``), deterministically."""
    rng = random.Random(seed)
    label_rng = random.Random(seed + 1)   # the events do not depend on whether labels are made
    user_w = _zipf_cum_weights(users, 1.05)
    merch_w = _zipf_cum_weights(merchants, 1.1)
    country_w = _zipf_cum_weights(countries, 1.3)
    user_ids = [f"u{i:05d}" for i in range(users)]
    merchant_ids = [f"m{i:04d}" for i in range(merchants)]
    country_ids = [f"c{i:02d}" for i in range(countries)]
    user_part = {u: partition_of(u.encode(), partitions) for u in user_ids}

    def pick(ids: list[str], cum: list[float]) -> str:
        return ids[bisect.bisect_left(cum, rng.random() * cum[-1])]

    events: list[dict[str, Any]] = []
    parts: list[int] = []
    records: list[Record] = []
    n_labels = 0
    for i in range(n_events):
        user = pick(user_ids, user_w)
        amount = round(min(rng.lognormvariate(3.0, 1.0), 50_000.0), 2)
        quantity = rng.randint(1, 10)
        ev = {
            "event_id": f"e{i:07d}",
            "ts": EPOCH_MS + i,
            "user": user,
            "merchant": pick(merchant_ids, merch_w),
            "country": pick(country_ids, country_w),
            "amount": amount,
            "quantity": quantity,
        }
        p = user_part[user]
        key = user.encode()
        events.append(ev)
        parts.append(p)
        records.append(Record(key, orjson.dumps(ev), p, i))
        if labels and label_rng.random() < label_ratio:
            # a learnable rule with 10% noise
            y = int((amount * (1.0 + 0.05 * quantity) > 40.0) != (label_rng.random() < 0.1))
            records.append(Record(key, orjson.dumps({"event_id": ev["event_id"], "ts": ev["ts"], "label": y}),
                                  p, i, is_label=True))
            n_labels += 1
    meta = {"events": n_events, "partitions": partitions, "users": users, "merchants": merchants,
            "countries": countries, "seed": seed, "labels": labels, "label_ratio": label_ratio if labels else 0.0}
    return Workload(events, parts, records, n_labels, meta)


def produce(producer_config: dict[str, Any], topic: str, records: Iterable[Record],
            timeout: float = 120.0) -> int:
    """Produce ``records`` as fast as possible and wait until all are delivered."""
    p = Producer({**producer_config, "enable.idempotence": False})
    errors: list[str] = []

    def cb(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    n = 0
    for r in records:
        while True:
            try:
                p.produce(topic, r.value, r.key, partition=r.partition, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
    left = p.flush(timeout)
    if left or errors:
        raise RuntimeError(f"producing to {topic}: {left} undelivered, errors: {errors[:3]}")
    return n


def produce_paced(producer_config: dict[str, Any], topic: str, records: Sequence[Record], rate: float,
                  timeout: float = 120.0) -> dict[int, int]:
    """Produce events at ``rate`` events/s (a label goes right after its event).

    Each record carries an explicit Kafka timestamp, taken when the burst it
    belongs to began (the records due at that moment, produced within a
    fraction of a millisecond: a timestamp no later than the produce call);
    returns ``{event_index: that timestamp in ms}`` for events.

    The generator's own cost matters on a shared 2-core machine: with a clock
    read and a delivery callback per record and a wake-up every 0.2 ms it
    took ~17 % of a core at 17,500 events/s (5,300 context switches a second),
    CPU the worker and the broker under test then lacked (``full``'s p99 at
    half of peak: 107, 62, 71, 85 ms in four runs, against 66, 36, 45, 57 with
    one clock read a burst, delivery reports only for errors and a wake-up
    every millisecond: ~11 %, 2,300 switches a second).

    ``linger.ms`` is librdkafka's default (5): a producer that sends every
    millisecond (1) makes the embedded broker store and serve 4-8 record
    batches of a few records each per millisecond, which saturates it at
    ~20,000 events/s on this machine (a core at 100 %, p50 of 0.4 s for the
    plain consumer loop), so the latency measured would be the broker's.
    """
    sent: dict[int, int] = {}
    errors: list[str] = []

    def cb(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    p = Producer({**producer_config, "enable.idempotence": False, "linger.ms": 5,
                  "delivery.report.only.error": True, "on_delivery": cb})

    t0 = time.perf_counter()
    i = 0
    n = len(records)
    events_sent = 0
    while i < n:
        due = int((time.perf_counter() - t0) * rate) + 1
        ts = int(time.time() * 1000)
        while i < n and (events_sent < due or records[i].is_label):
            r = records[i]
            try:
                p.produce(topic, r.value, r.key, partition=r.partition, timestamp=ts)
            except BufferError:
                p.poll(0.01)
                continue
            if not r.is_label:
                sent[r.event_index] = ts
                events_sent += 1
            i += 1
        p.poll(0)
        if i < n:
            # sleep until the next event is due (at least 1 ms: coarse but steady pacing, few wake-ups)
            wait = (events_sent / rate) - (time.perf_counter() - t0)
            time.sleep(max(0.001, min(wait, 0.01)))
    left = p.flush(timeout)
    if left or errors:
        raise RuntimeError(f"paced producing to {topic}: {left} undelivered, errors: {errors[:3]}")
    return sent


# -- reference -----------------------------------------------------------------
@dataclass(frozen=True)
class WindowDef:
    key: str
    field: str
    size_ms: int
    aggs: tuple[str, ...] = ("count", "mean")


def reference_windows(events: Sequence[dict[str, Any]], partitions: Sequence[int], w: WindowDef,
                      per_partition: bool = False) -> tuple[list[int], list[float]]:
    """Brute force: count and mean of ``w.field`` over each event's (entity, window) group,
    over the events up to and including itself (tumbling windows in event time).

    With ``per_partition`` the groups are also split by input partition (what a
    worker holding partition-local state can compute for a key that is not the
    partitioning key).
    """
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    size = w.size_ms
    for i, ev in enumerate(events):
        ts = ev["ts"]
        g = (ev[w.key], ts - ts % size, partitions[i] if per_partition else 0)
        groups[g].append(i)
    counts = [0] * len(events)
    means = [0.0] * len(events)
    for idx in groups.values():
        idx.sort(key=lambda j: (events[j]["ts"], j))
        total = 0.0
        for n, j in enumerate(idx, 1):
            total += float(events[j][w.field])
            counts[j] = n
            means[j] = total / n
    return counts, means
