"""How long a partition remembers an event id: dedupe retention in event time.

Why: every scored event leaves its stored prediction (``p:<id>``, the answer
to a redelivery; with no open features ``e:<id>`` left, it also says the event
was labelled) in the partition's state, and in its changelog (an event given a
label timeout's default keeps a marker ``y:<id>`` too); a label whose event has not come waits as
``l:<id>`` (and is remembered here by the label's ts). Kept for ever, they grow with the stream: at
100,000 events/s, billions of keys a day. With a retention of ``ttl_ms``, an
event id is forgotten once the partition's event-time watermark (the largest
event ``ts`` it has seen) has passed the event's ``ts + ttl_ms``: its keys are
deleted (tombstones in the changelog, which compaction then drops), so state
is bounded by the events of one retention span. A redelivery or a label
later than that finds nothing: the event is scored again as new, the label
waits as for an unknown event. Choose the retention longer than any
redelivery or label delay you expect.

Event ids are grouped in buckets of ``ttl_ms / 16`` of event time, held in
state in chunks of ``CHUNK`` ids, ``x:<bucket>:<chunk>`` (JSON lists, in
record order), so a flush rewrites at most one partial chunk per bucket, not
the whole bucket (a worker flushes ten times a second); chunk boundaries are
set by the count of ids, not by flush times, so the state is the same however
often a worker flushed. A bucket goes when its end is ``ttl_ms`` behind the
watermark. Expiry happens while records are
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
#: event ids per state key of a bucket
CHUNK = 1024
WATERMARK_KEY = "w:dedupe"
BUCKET_PREFIX = "x:"


def bucket_prefix(bucket: int) -> str:
    """The prefix of a bucket's chunk keys (``x:<bucket>:``)."""
    return f"{BUCKET_PREFIX}{bucket}:"


def chunk_key(bucket: int, chunk: int) -> str:
    return f"{bucket_prefix(bucket)}{chunk:06d}"


def bucket_of(key: str) -> int:
    """The bucket of an ``x:`` key (``x:<bucket>:<chunk>``, or ``x:<bucket>`` as written before chunks)."""
    return int(key[len(BUCKET_PREFIX):].split(":", 1)[0])


class DedupeRetention:
    """The event ids of one partition by event-time bucket; which ones the watermark has expired.

    ``get``, ``delete`` and ``scan`` act on the partition's state
    (``PartitionStore``); ``known`` lists the buckets already in state (from
    the ``x:`` keys) and ``watermark`` the persisted watermark, when a
    partition is reopened.
    """

    def __init__(self, ttl_ms: int, get: Callable[[str], bytes | None],
                 delete: Callable[[str], None] = lambda key: None, known: Iterable[int] = (),
                 watermark: int | None = None,
                 scan: Callable[[str], list[tuple[str, bytes]]] = lambda prefix: []) -> None:
        if ttl_ms <= 0:
            raise ValueError("a dedupe retention needs ttl_ms > 0")
        self.ttl = ttl_ms
        self.width = max(1, ttl_ms // BUCKETS_PER_TTL)
        self._get, self._delete, self._scan = get, delete, scan
        self._buckets = sorted(set(known))               # every bucket in state or pending, ascending
        self._tail: dict[int, tuple[int, list[str]]] = {}   # bucket -> (chunk, its ids): the open chunk
        self._dirty: dict[tuple[int, int], list[str]] = {}  # (bucket, chunk) -> ids, to write
        self.watermark = watermark
        self._dirty_wm = False

    def _open_chunk(self, b: int) -> tuple[int, list[str]]:
        """Bucket ``b``'s last chunk, if not full, else a new one (from state when it has the bucket)."""
        chunks = self._scan(bucket_prefix(b))
        if not chunks:
            return (0, [])
        key, raw = chunks[-1]
        ids = orjson.loads(raw)
        k = int(key.rsplit(":", 1)[1])
        return (k, ids) if len(ids) < CHUNK else (k + 1, [])

    def add(self, event_id: str, ts: int) -> list[str]:
        """Remember ``event_id`` (scored at event time ``ts``); the ids this expired, oldest bucket first."""
        b = ts // self.width
        tail = self._tail.get(b)
        if tail is None:
            i = bisect.bisect_left(self._buckets, b)
            if i == len(self._buckets) or self._buckets[i] != b:
                self._buckets.insert(i, b)
                tail = (0, [])
            else:
                tail = self._open_chunk(b)
            self._tail[b] = tail
        k, ids = tail
        ids.append(event_id)
        self._dirty[(b, k)] = ids
        if len(ids) == CHUNK:
            self._tail[b] = (k + 1, [])
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
            self._dirty_wm = True
            if (self._buckets[0] + 1) * self.width + self.ttl <= ts:
                return self._expire()
        return []

    def _expire(self) -> list[str]:
        """Drop every bucket whose end is ``ttl`` behind the watermark (its ``x:`` keys at once)."""
        assert self.watermark is not None
        gone: dict[str, None] = {}
        while self._buckets and (self._buckets[0] + 1) * self.width + self.ttl <= self.watermark:
            b = self._buckets.pop(0)
            legacy = BUCKET_PREFIX + str(b)
            if (raw := self._get(legacy)) is not None:
                gone.update(dict.fromkeys(orjson.loads(raw)))
                self._delete(legacy)
            for key, raw in self._scan(bucket_prefix(b)):
                gone.update(dict.fromkeys(orjson.loads(raw)))
                self._delete(key)
            for k in sorted(k for bb, k in self._dirty if bb == b):
                ids = self._dirty.pop((b, k))
                gone.update(dict.fromkeys(ids))
                self._delete(chunk_key(b, k))
            self._tail.pop(b, None)
        return list(gone)

    def take_dirty(self) -> list[tuple[str, bytes]]:
        """State writes since the last call: each touched chunk's id list, and the watermark."""
        puts = [(chunk_key(b, k), orjson.dumps(ids)) for (b, k), ids in self._dirty.items()]
        self._dirty = {}
        if self._dirty_wm and self.watermark is not None:
            puts.append((WATERMARK_KEY, str(self.watermark).encode()))
            self._dirty_wm = False
        return puts
