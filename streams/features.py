"""Per-entity windowed features in event time, with state coalesced per batch.

Why here and not in faust: faust's windowed tables expire on wall-clock time,
so a replayed stream with old timestamps loses its windows, and every table
write costs a changelog send. Here a window's state is a small list per
(window definition, entity) held in a dict cache in front of the partition's
RocksDB store; a micro-batch updates the cache, and :meth:`Windows.flush`
writes each touched entity once before offsets are committed.

Tumbling windows of ``size_ms``: an event at ``ts`` belongs to
``[ts - ts % size, ts - ts % size + size)``; its features include the event.
An event older than its entity's current window (out of order beyond the
window) is *late*: it is counted and not applied, and gets the features of the
current window.

The state key starts with a hash of the window definition, so changing a
definition never misreads old state.

>>> w = Windows([WindowSpec(key="user", field="amount", size_ms=60_000, aggs=("count", "mean"))])
>>> store = {}
>>> w.update({"user": "u1", "amount": 2.0}, 1_000, store.get)
{'amount_count_1m_by_user': 1.0, 'amount_mean_1m_by_user': 2.0}
>>> w.update({"user": "u1", "amount": 4.0}, 2_000, store.get)
{'amount_count_1m_by_user': 2.0, 'amount_mean_1m_by_user': 3.0}
>>> w.update({"user": "u1", "amount": 5.0}, 61_000, store.get)["amount_count_1m_by_user"]
1.0
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson

AGGREGATIONS = ("count", "sum", "mean", "min", "max")
KINDS = ("tumbling",)


def _fmt_ms(ms: int) -> str:
    for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class WindowSpec:
    """One window definition: ``aggs`` of ``field`` per ``key`` over ``size_ms``."""

    key: str
    field: str
    size_ms: int
    aggs: tuple[str, ...] = ("count", "mean")
    kind: str = "tumbling"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"window kind {self.kind!r} is not supported; supported: {KINDS}")
        if self.size_ms <= 0:
            raise ValueError("window size_ms must be positive")
        if bad := set(self.aggs) - set(AGGREGATIONS):
            raise ValueError(f"unknown aggregation(s) {sorted(bad)}; supported: {AGGREGATIONS}")

    @property
    def names(self) -> tuple[str, ...]:
        span = _fmt_ms(self.size_ms)
        return tuple(f"{self.field}_{a}_{span}_by_{self.key}" for a in self.aggs)

    @property
    def prefix(self) -> str:
        """State-key prefix: changes whenever the definition changes."""
        h = hashlib.sha1(f"{self.kind}|{self.key}|{self.field}|{self.size_ms}".encode()).hexdigest()[:10]
        return f"w{h}:"

    @classmethod
    def parse(cls, doc: Mapping[str, object]) -> WindowSpec:
        return cls(key=str(doc["key"]), field=str(doc["field"]), size_ms=int(doc["size_ms"]),  # type: ignore[call-overload]
                   aggs=tuple(doc.get("aggs", ("count", "mean"))),  # type: ignore[arg-type]
                   kind=str(doc.get("kind", "tumbling")))


# state per (window, entity): [window_start, count, sum, min, max]
_START, _COUNT, _SUM, _MIN, _MAX = range(5)

_READERS: dict[str, Callable[[list], float]] = {
    "count": lambda st: float(st[1]),
    "sum": lambda st: st[2],
    "mean": lambda st: st[2] / st[1] if st[1] else 0.0,
    "min": lambda st: st[3] if st[1] else 0.0,
    "max": lambda st: st[4] if st[1] else 0.0,
}


class Windows:
    """The window features of one partition: update per event, flush per batch."""

    def __init__(self, specs: Sequence[WindowSpec], max_cached: int = 200_000) -> None:
        self.specs = tuple(specs)
        self.names = tuple(n for s in self.specs for n in s.names)
        self.max_cached = max_cached
        self._cache: dict[str, list] = {}
        self._dirty: set[str] = set()
        self.late = 0
        self._plan = [(s.key, s.field, s.size_ms, s.prefix,
                       tuple(zip(s.names, (_READERS[a] for a in s.aggs)))) for s in self.specs]

    def update(self, event: Mapping[str, object], ts: int,
               load: Callable[[str], bytes | None]) -> dict[str, float]:
        """Apply one event (in offset order) and return its features."""
        out: dict[str, float] = {}
        cache = self._cache
        dirty = self._dirty
        for key_field, field, size, prefix, readers in self._plan:
            skey = prefix + str(event.get(key_field))
            start = ts - ts % size
            st = cache.get(skey)
            if st is None:
                raw = load(skey)
                st = self.decode(raw) if raw is not None else None
                if st is None or start > st[0]:
                    st = [start, 0, 0.0, math.inf, -math.inf]
                cache[skey] = st
            elif start > st[0]:
                st = cache[skey] = [start, 0, 0.0, math.inf, -math.inf]
            if start < st[0]:
                self.late += 1            # beyond the current window: not applied
            else:
                v = event.get(field)
                if v is not None:
                    st[1] += 1
                    st[2] += v
                    if v < st[3]:
                        st[3] = float(v)
                    if v > st[4]:
                        st[4] = float(v)
                    dirty.add(skey)
            for name, read in readers:
                out[name] = read(st)
        return out

    def flush(self, put: Callable[[str, bytes], None]) -> int:
        """Write every entity touched since the last flush (once each)."""
        n = len(self._dirty)
        cache = self._cache
        for k in self._dirty:
            st = cache[k]
            put(k, orjson.dumps([st[0], st[1], st[2],
                                 st[3] if st[1] else None, st[4] if st[1] else None]))
        self._dirty = set()
        if len(cache) > self.max_cached:
            cache.clear()
        return n

    @staticmethod
    def decode(raw: bytes) -> list[float]:
        st = orjson.loads(raw)
        st[3] = math.inf if st[3] is None else st[3]
        st[4] = -math.inf if st[4] is None else st[4]
        return st
