"""Per-entity windowed features in event time, with state coalesced per batch.

Why here and not in faust: faust's windowed tables expire on wall-clock time,
so a replayed stream with old timestamps loses its windows, and every table
write costs a changelog send. Here a window's state is a small list per
(window definition, entity) held in a dict cache in front of the partition's
RocksDB store (the cache is ``ext.TumblingTable``, a C++ kernel with a
pure-Python twin); a micro-batch updates it in one call per window
definition, and :meth:`Windows.flush` writes each touched entity once before
offsets are committed.

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

import numpy as np
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


#: columns of TumblingTable.update_many's output
_COLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4}


class Windows:
    """The window features of one partition: update per batch (native kernel), flush per commit.

    Each window definition has an ``ext.TumblingTable`` holding the state of
    the entities it has seen (the C++ kernel, or its pure-Python twin);
    entities not held are loaded from the partition store on first sight.
    """

    def __init__(self, specs: Sequence[WindowSpec], max_cached: int = 200_000) -> None:
        import ext

        self.specs = tuple(specs)
        self.names = tuple(n for s in self.specs for n in s.names)
        self.max_cached = max_cached
        self._plan = [(s.key, s.field, s.prefix, ext.TumblingTable(s.size_ms),
                       [_COLUMNS[a] for a in s.aggs], s.names) for s in self.specs]

    @property
    def late(self) -> int:
        """Events that arrived after their entity's window had moved on (counted, not applied)."""
        return sum(t.late for _, _, _, t, _, _ in self._plan)

    def update_batch(self, events: Sequence[Mapping[str, object]], ts: Sequence[int],
                     load: Callable[[str], bytes | None]) -> list[dict[str, float]]:
        """Apply events in order (one batch) and return each event's features."""
        n = len(events)
        out: list[dict[str, float]] = [{} for _ in range(n)]
        if not n:
            return out
        ts_arr = np.fromiter(ts, dtype=np.int64, count=n)
        for key_field, field, prefix, table, cols, names in self._plan:
            keys = [prefix + str(e.get(key_field)) for e in events]
            for k in table.missing(keys):
                raw = load(k)
                if raw is not None:
                    table.load(k, *self.decode(raw))
            vals = [e.get(field) for e in events]
            has = np.fromiter((v is not None for v in vals), dtype=np.bool_, count=n)
            values = np.fromiter((0.0 if v is None else v for v in vals), dtype=np.float64, count=n)
            rows = table.update_many(keys, ts_arr, values, has)[:, cols].tolist()
            for o, row in zip(out, rows):
                o.update(zip(names, row))
        return out

    def update(self, event: Mapping[str, object], ts: int,
               load: Callable[[str], bytes | None]) -> dict[str, float]:
        """Apply one event and return its features (a batch of one)."""
        return self.update_batch([event], [ts], load)[0]

    def flush(self, put: Callable[[str, bytes], None]) -> int:
        """Write every entity touched since the last flush (once each); bound the cache."""
        n = 0
        for _, _, _, table, _, _ in self._plan:
            for key, start, count, total, lo, hi in table.take_dirty():
                put(key, orjson.dumps([start, count, total, lo if count else None, hi if count else None]))
                n += 1
            if len(table) > self.max_cached:
                table.clear()
        return n

    @staticmethod
    def decode(raw: bytes) -> tuple[int, int, float, float, float]:
        start, count, total, lo, hi = orjson.loads(raw)
        return (start, count, total, math.inf if lo is None else lo, -math.inf if hi is None else hi)
