"""How long a partition remembers an event id: dedupe retention in event time.

Why: every scored event leaves its stored prediction (``p:<id>``, the answer
to a redelivery) and, once labelled, a marker (``y:<id>``) in the partition's
state, and in its changelog. Kept for ever, they grow with the stream: at
100,000 events/s, billions of keys a day. With a retention of ``ttl_ms``, an
event id is forgotten once the partition's event-time watermark (the largest
event ``ts`` it has seen) has passed the event's ``ts + ttl_ms``: its keys are
deleted (tombstones in the changelog, which compaction then drops), so state
is bounded by the events of one retention span. A redelivery or a label
later than that finds nothing: the event is scored again as new, the label
waits as for an unknown event. Choose the retention longer than any
redelivery or label delay you expect.

Event ids are grouped in buckets of ``ttl_ms / 16`` of event time, held in
state as ``x:<bucket>`` (the ids of that bucket, JSON); a bucket goes when
its end is ``ttl_ms`` behind the watermark. Expiry happens while records are
processed, in record order, so a replay or a restart expires the same ids at
the same records.

>>> r = DedupeRetention(ttl_ms=1_000, get={}.get)
>>> r.add("a", 0) + r.add("b", 500)
[]
>>> r.add("c", 1_100)            # the watermark passed bucket 0's end (62) + 1,000: "a" goes
['a']
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

import orjson

#: buckets per retention span: the granularity of expiry (ids live ttl .. ttl * 17/16)
BUCKETS_PER_TTL = 16
WATERMARK_KEY = "w:dedupe"
BUCKET_PREFIX = "x:"


class DedupeRetention:
    """The event ids of one partition by event-time bucket; which ones the watermark has expired.

    ``get`` and ``delete`` act on the partition's state (``PartitionStore``);
    ``known`` lists the buckets already in state (``x:`` keys) and
    ``watermark`` the persisted watermark, when a partition is reopened.
    """

    def __init__(self, ttl_ms: int, get: Callable[[str], bytes | None],
                 delete: Callable[[str], None] = lambda key: None, known: Iterable[int] = (),
                 watermark: int | None = None) -> None:
        if ttl_ms <= 0:
            raise ValueError("a dedupe retention needs ttl_ms > 0")
        self.ttl = ttl_ms
        self.width = max(1, ttl_ms // BUCKETS_PER_TTL)
        self._get, self._delete = get, delete
        self._buckets = sorted(set(known))               # every bucket in state or pending, ascending
        self._pending: dict[int, list[str]] = {}         # bucket -> ids added since the last take_dirty
        self.watermark = watermark
        self._dirty_wm = False

    def add(self, event_id: str, ts: int) -> list[str]:
        """Remember ``event_id`` (scored at event time ``ts``); the ids this expired, oldest bucket first."""
        b = ts // self.width
        ids = self._pending.get(b)
        if ids is None:
            ids = self._pending[b] = []
            i = bisect.bisect_left(self._buckets, b)
            if i == len(self._buckets) or self._buckets[i] != b:
                self._buckets.insert(i, b)
        ids.append(event_id)
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
            self._dirty_wm = True
            if (self._buckets[0] + 1) * self.width + self.ttl <= ts:
                return self._expire()
        return []

    def _expire(self) -> list[str]:
        """Drop every bucket whose end is ``ttl`` behind the watermark (its ``x:`` key at once)."""
        assert self.watermark is not None
        gone: list[str] = []
        while self._buckets and (self._buckets[0] + 1) * self.width + self.ttl <= self.watermark:
            b = self._buckets.pop(0)
            key = BUCKET_PREFIX + str(b)
            raw = self._get(key)
            if raw is not None:
                gone += orjson.loads(raw)
                self._delete(key)
            gone += self._pending.pop(b, [])
        return gone

    def take_dirty(self) -> list[tuple[str, bytes]]:
        """State writes since the last call: each touched bucket's id list, and the watermark."""
        puts: list[tuple[str, bytes]] = []
        for b, ids in self._pending.items():
            key = BUCKET_PREFIX + str(b)
            raw = self._get(key)
            puts.append((key, orjson.dumps((orjson.loads(raw) if raw is not None else []) + ids)))
        self._pending = {}
        if self._dirty_wm and self.watermark is not None:
            puts.append((WATERMARK_KEY, str(self.watermark).encode()))
            self._dirty_wm = False
        return puts
