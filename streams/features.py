"""Per-entity windowed features in event time, with state coalesced per batch.

Why here and not in faust: faust's windowed tables expire on wall-clock time,
so a replayed stream with old timestamps loses its windows, and every table
write costs a changelog send. Here a window's state is a small record per
(window definition, entity) held in a cache in front of the partition's
RocksDB store; a micro-batch updates it with native kernels (``ext``, C++ with
a pure-Python twin), and :meth:`Windows.flush` writes each entity touched since
the last flush once, before offsets are committed.

Tumbling windows (``kind = "tumbling"``) of ``size_ms``: an event at ``ts``
belongs to ``[ts - ts % size, ts - ts % size + size)``; its features include
the event. An event older than its entity's current window (out of order
beyond the window) is *late*: it is counted and not applied, and gets the
features of the current window. Aggregations: count, sum, mean, min, max.
State: ``ext.TumblingTable``.

Sliding windows (``kind = "sliding"``, per entity, event time): an event at
``ts`` gets the aggregates of the entity's *applied* events processed so far
(itself included) with ``item_ts`` in ``(ts - size_ms, ts]``.

* In order (``ts >=`` the entity's newest applied ts): appended to an
  ``ext.SlidingWindow`` (one ``update_many`` per entity per batch).
* Within grace (``newest - grace_ms <= ts < newest``): inserted in timestamp
  order (after items with the same ts) and given the window ending at *its*
  ts: exactly the features the sorted stream gives that event when the events
  processed before it are those of the sorted stream. Later events see it like
  any other item. (Python slow path: O(window) per such event.)
* Late (``ts < newest - grace_ms``): counted in :attr:`Windows.late`, not
  applied, and given the entity's *current* features: those of the window
  ``(newest - size_ms, newest]``, as if it were a value-less event at ``newest``.
* Without a value (field absent): not applied, changes no state, and gets the
  window ending at its ts over the items held; if that window is empty, count
  and sum are 0 and mean/min/max/var/std are 0.0 (as for tumbling).
* Aggregations: count, sum, mean, min, max, var and std (population), and
  ``last``: the value of the item just before the event in (ts, arrival)
  order, if it lies in the event's window, i.e. the entity's previous value
  (for an in-order stream); the feature is *omitted* from the event's features
  when there is no such item (missing, not zero).
* State per entity: the live items ``[[ts...], [value...]]`` with
  ``ts > newest - size_ms - grace_ms`` (what any event not yet late can need);
  older items are evicted, so state is bounded by the events of one
  ``size + grace`` span per entity.

Feature names are ``{field}_{agg}_{span}_by_{key}`` for both kinds, so two
windows that differ only in kind or grace would collide: :class:`Windows`
rejects duplicate names. The state key starts with a hash of the window
definition (kind, key, field, size, grace; not the aggregations), so changing
a definition never misreads old state.

>>> w = Windows([WindowSpec(key="user", field="amount", size_ms=60_000, aggs=("count", "mean"))])
>>> store = {}
>>> w.update({"user": "u1", "amount": 2.0}, 1_000, store.get)
{'amount_count_1m_by_user': 1.0, 'amount_mean_1m_by_user': 2.0}
>>> w.update({"user": "u1", "amount": 4.0}, 2_000, store.get)
{'amount_count_1m_by_user': 2.0, 'amount_mean_1m_by_user': 3.0}
>>> w.update({"user": "u1", "amount": 5.0}, 61_000, store.get)["amount_count_1m_by_user"]
1.0
>>> s = Windows([WindowSpec(key="user", field="x", size_ms=60_000, kind="sliding", aggs=("count", "sum", "last"))])
>>> s.update({"user": "u1", "x": 2.0}, 1_000, store.get)
{'x_count_1m_by_user': 1.0, 'x_sum_1m_by_user': 2.0}
>>> s.update({"user": "u1", "x": 4.0}, 2_000, store.get)
{'x_count_1m_by_user': 2.0, 'x_sum_1m_by_user': 6.0, 'x_last_1m_by_user': 2.0}
>>> s.update({"user": "u1", "x": 5.0}, 61_500, store.get)
{'x_count_1m_by_user': 2.0, 'x_sum_1m_by_user': 9.0, 'x_last_1m_by_user': 4.0}
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import orjson

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "var", "std", "last")
#: what each kind supports (tumbling state holds count/sum/min/max only)
KIND_AGGREGATIONS = {
    "tumbling": ("count", "sum", "mean", "min", "max"),
    "sliding": AGGREGATIONS,
}
KINDS = tuple(KIND_AGGREGATIONS)


def _fmt_ms(ms: int) -> str:
    for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class WindowSpec:
    """One window definition: ``aggs`` of ``field`` per ``key`` over ``size_ms``.

    ``grace_ms`` (sliding only): how far behind its entity's newest event an
    event may be and still be applied.
    """

    key: str
    field: str
    size_ms: int
    aggs: tuple[str, ...] = ("count", "mean")
    kind: str = "tumbling"
    grace_ms: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"window kind {self.kind!r} is not supported; supported: {KINDS}")
        if isinstance(self.size_ms, bool) or not isinstance(self.size_ms, int) or self.size_ms <= 0:
            raise ValueError("window size_ms must be a positive integer")
        if isinstance(self.grace_ms, bool) or not isinstance(self.grace_ms, int) or self.grace_ms < 0:
            raise ValueError("window grace_ms must be a non-negative integer")
        if self.kind == "tumbling" and self.grace_ms:
            raise ValueError("grace_ms is not supported for tumbling windows (late = older than the current window)")
        if self.size_ms + self.grace_ms >= 2**62:
            raise ValueError("window size_ms + grace_ms is too large")
        if not self.aggs:
            raise ValueError("a window needs at least one aggregation")
        if bad := set(self.aggs) - set(AGGREGATIONS):
            raise ValueError(f"unknown aggregation(s) {sorted(bad)}; supported: {AGGREGATIONS}")
        if bad := set(self.aggs) - set(KIND_AGGREGATIONS[self.kind]):
            raise ValueError(f"aggregation(s) {sorted(bad)} are not supported for {self.kind} windows; "
                             f"supported: {KIND_AGGREGATIONS[self.kind]}")
        if len(set(self.aggs)) != len(self.aggs):
            raise ValueError(f"duplicate aggregation in {list(self.aggs)}")

    @property
    def names(self) -> tuple[str, ...]:
        span = _fmt_ms(self.size_ms)
        return tuple(f"{self.field}_{a}_{span}_by_{self.key}" for a in self.aggs)

    @property
    def prefix(self) -> str:
        """State-key prefix: changes whenever the definition (kind, key, field, size, grace) changes."""
        ident = f"{self.kind}|{self.key}|{self.field}|{self.size_ms}"   # tumbling: unchanged since v1
        if self.kind != "tumbling":
            ident += f"|{self.grace_ms}|v1"
        h = hashlib.sha1(ident.encode()).hexdigest()[:10]
        return f"w{h}:"

    @classmethod
    def parse(cls, doc: Mapping[str, object]) -> WindowSpec:
        known = {"key", "field", "size_ms", "aggs", "kind", "grace_ms"}
        if unknown := set(doc) - known:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        for k in ("size_ms", "grace_ms"):
            if k in doc and (isinstance(doc[k], bool) or not isinstance(doc[k], int)):
                raise ValueError(f"{k} must be an integer (milliseconds), got {doc[k]!r}")
        aggs = doc.get("aggs", ("count", "mean"))
        if isinstance(aggs, str) or not isinstance(aggs, (list, tuple)):
            raise TypeError(f"aggs must be a list of aggregation names, got {aggs!r}")
        return cls(key=str(doc["key"]), field=str(doc["field"]), size_ms=doc["size_ms"],  # type: ignore[arg-type]
                   aggs=tuple(str(a) for a in aggs), kind=str(doc.get("kind", "tumbling")),
                   grace_ms=doc.get("grace_ms", 0))  # type: ignore[arg-type]


#: columns of TumblingTable.update_many's output
_COLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4}
#: columns of the sliding plan's rows: SlidingWindow.update_many's six, then std and last
_SCOLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "var": 5, "std": 6, "last": 7}
_NAN = math.nan
_EMPTY_ROW = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _stats(w: Any) -> tuple[float, float, float, float, float, float]:
    """[count, sum, mean, min, max, var] of a SlidingWindow (zeros when empty)."""
    if not w.count:
        return _EMPTY_ROW
    return (float(w.count), w.sum, w.mean, w.min, w.max, w.var)


class _Entity:
    """One entity's sliding state: the window, the items kept for grace, the newest item."""

    __slots__ = ("keep", "newest", "newest_val", "win")

    def __init__(self, win: Any, keep: Any, newest: int | None, newest_val: float) -> None:
        self.win = win            # SlidingWindow(size): the aggregates of (newest - size, newest]
        self.keep = keep          # SlidingWindow(size + grace) holding the retained items, or None (grace 0)
        self.newest = newest      # newest applied ts (None: no item yet)
        self.newest_val = newest_val


class _Sliding:
    """Sliding windows of one definition over many entities (see the module docstring)."""

    def __init__(self, spec: WindowSpec, kernels: ModuleType) -> None:
        self.spec = spec
        self.size = spec.size_ms
        self.grace = spec.grace_ms
        self.SW = kernels.SlidingWindow
        self.entities: dict[str, _Entity] = {}
        self.dirty: dict[str, None] = {}
        self.late = 0

    # -- state ------------------------------------------------------------
    def _from_items(self, ts: list[int], vals: list[float]) -> _Entity:
        SW = self.SW
        win = SW.from_state(self.size, ts, vals)
        keep = SW.from_state(self.size + self.grace, ts, vals) if self.grace else None
        return _Entity(win, keep, ts[-1] if ts else None, vals[-1] if vals else _NAN)

    def load(self, keys: Sequence[str], load: Callable[[str], bytes | None]) -> None:
        ents = self.entities
        for k in keys:
            if k not in ents:
                raw = load(k)
                ts, vals = orjson.loads(raw) if raw is not None else ([], [])
                ents[k] = self._from_items(ts, vals)

    def take_dirty(self) -> list[tuple[str, bytes]]:
        out = []
        for k in self.dirty:
            e = self.entities[k]
            ts, vals = (e.keep or e.win).state()
            out.append((k, orjson.dumps([ts, vals])))
        self.dirty.clear()
        return out

    # -- updates ------------------------------------------------------------
    def update_many(self, keys: list[str], ts: np.ndarray, values: np.ndarray, has: np.ndarray,
                    load: Callable[[str], bytes | None]) -> np.ndarray:
        """Rows ``[count, sum, mean, min, max, var, std, last]`` (last NaN: none) per event, in order."""
        n = len(keys)
        self.load(dict.fromkeys(keys), load)
        codes_of: dict[str, int] = {}
        codes = np.fromiter((codes_of.setdefault(k, len(codes_of)) for k in keys), dtype=np.int64, count=n)
        if len(codes_of) == 1:
            order = None
            ts_s, v_s, has_s = ts, values, has
            starts = np.zeros(1, dtype=np.int64)
        else:
            order = np.argsort(codes, kind="stable")
            codes_s = codes[order]
            ts_s, v_s, has_s = ts[order], values[order], has[order]
            starts = np.flatnonzero(np.r_[True, codes_s[1:] != codes_s[:-1]])
        ends = np.r_[starts[1:], n]
        group_keys = list(codes_of)           # code -> key (first-seen order == sorted code order)
        ents = [self.entities[k] for k in group_keys]
        # The entity's newest item before the batch, as the "previous" of each group's first row.
        big = np.iinfo(np.int64).min
        first_prev_ts = np.array([big if e.newest is None else e.newest for e in ents], dtype=np.int64)
        first_prev_val = np.array([e.newest_val for e in ents], dtype=np.float64)
        prev_ts = np.empty(n, dtype=np.int64)
        prev_val = np.empty(n, dtype=np.float64)
        prev_ts[1:], prev_val[1:] = ts_s[:-1], v_s[:-1]
        prev_ts[starts], prev_val[starts] = first_prev_ts, first_prev_val
        ok = has_s & (ts_s >= prev_ts)        # appends in order (the fast path) ...
        all_ok = np.logical_and.reduceat(ok, starts)   # ... for every row of the group
        res = np.empty((n, 8), dtype=np.float64)
        size, dirty = self.size, self.dirty
        ts_l, v_l = ts_s.tolist(), v_s.tolist()
        for a, b, fast, e, key in zip(starts.tolist(), ends.tolist(), all_ok.tolist(), ents, group_keys):
            if fast:
                t_g, v_g = ts_s[a:b], v_s[a:b]
                res[a:b, :6] = e.win.update_many(t_g, v_g)
                if e.keep is not None:
                    e.keep.update_many(t_g, v_g)
                e.newest, e.newest_val = ts_l[b - 1], v_l[b - 1]
                dirty[key] = None
            else:
                has_l = has_s[a:b].tolist()
                for i in range(a, b):
                    res[i] = self._one(key, e, ts_l[i], v_l[i], has_l[i - a])
        # std and last of the fast rows (the slow rows wrote theirs)
        np.sqrt(res[:, 5], out=res[:, 6])
        fast_rows = np.repeat(all_ok, ends - starts)
        last = np.where(prev_ts > ts_s - size, prev_val, _NAN)
        res[fast_rows, 7] = last[fast_rows]
        if order is None:
            return res
        out = np.empty_like(res)
        out[order] = res
        return out

    def _one(self, key: str, e: _Entity, t: int, v: float, has: bool) -> tuple[float, ...]:
        """One event of a group that is not all in-order appends (see the module docstring)."""
        size = self.size
        if e.newest is not None and t < e.newest - self.grace:            # late: not applied
            self.late += 1
            row = _stats(e.win)
            return (*row, math.sqrt(row[5]), e.newest_val)
        if has and (e.newest is None or t >= e.newest):                     # in order
            last = e.newest_val if e.newest is not None and e.newest > t - size else _NAN
            e.win.update(t, v)
            if e.keep is not None:
                e.keep.update(t, v)
            e.newest, e.newest_val = t, v
            self.dirty[key] = None
            row = _stats(e.win)
            return (*row, math.sqrt(row[5]), last)
        # value-less, or within grace: the window ending at t over the items held
        its, ivs = (e.keep or e.win).state()
        pos = bisect_right(its, t)
        lo = bisect_right(its, t - size, 0, pos)
        w_ts, w_vals = its[lo:pos], ivs[lo:pos]
        last = w_vals[-1] if w_vals else _NAN
        if has:                                                               # within grace: insert in order
            row = _stats(self.SW.from_state(size, [*w_ts, t], [*w_vals, v]))
            its.insert(pos, t)
            ivs.insert(pos, v)
            newest, newest_val = e.newest, e.newest_val
            ne = self._from_items(its, ivs)
            e.win, e.keep, e.newest, e.newest_val = ne.win, ne.keep, newest, newest_val
            self.dirty[key] = None
        else:
            row = _stats(self.SW.from_state(size, w_ts, w_vals)) if w_ts else _EMPTY_ROW
        return (*row, math.sqrt(row[5]), last)


class Windows:
    """The window features of one partition: update per batch (native kernels), flush per commit.

    Each tumbling definition has an ``ext.TumblingTable`` holding the state of
    the entities it has seen; each sliding definition one ``ext.SlidingWindow``
    per entity (two with a grace period). Entities not held are loaded from the
    partition store on first sight. ``kernels`` picks the backend module
    (default: ``ext``, i.e. native unless disabled); tests pass
    ``ext._reference`` or ``ext._native`` to run both.
    """

    def __init__(self, specs: Sequence[WindowSpec], max_cached: int = 200_000,
                 kernels: ModuleType | None = None) -> None:
        if kernels is None:
            import ext as kernels

        self.specs = tuple(specs)
        self.names = tuple(n for s in self.specs for n in s.names)
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"window feature names collide: {dup} (two windows differ only in kind or grace?)")
        if len({s.prefix for s in self.specs}) != len(self.specs):
            raise ValueError("two windows have the same definition (kind, key, field, size, grace)")
        self.max_cached = max_cached
        self._plan: list[tuple[str, str, str, Any, list[int], tuple[str, ...]]] = []
        for s in self.specs:
            if s.kind == "tumbling":
                table: Any = kernels.TumblingTable(s.size_ms)
                cols = [_COLUMNS[a] for a in s.aggs]
            else:
                table = _Sliding(s, kernels)
                cols = [_SCOLUMNS[a] for a in s.aggs]
            self._plan.append((s.key, s.field, s.prefix, table, cols, s.names))

    @property
    def late(self) -> int:
        """Events that arrived too late to be applied (counted, not applied), over all windows."""
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
            vals = [e.get(field) for e in events]
            has = np.fromiter((v is not None for v in vals), dtype=np.bool_, count=n)
            values = np.fromiter((0.0 if v is None else v for v in vals), dtype=np.float64, count=n)
            if isinstance(table, _Sliding):
                res = table.update_many(keys, ts_arr, values, has, load)
                rows = res[:, cols].tolist()
                for o, row in zip(out, rows):
                    o.update(zip(names, row))
                if 7 in cols:                   # "last" with no previous item in the window: omitted
                    name = names[cols.index(7)]
                    for i in np.flatnonzero(np.isnan(res[:, 7])).tolist():
                        del out[i][name]
                continue
            for k in table.missing(keys):
                raw = load(k)
                if raw is not None:
                    table.load(k, *self.decode(raw))
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
            if isinstance(table, _Sliding):
                for key, raw in table.take_dirty():
                    put(key, raw)
                    n += 1
                if len(table.entities) > self.max_cached:
                    table.entities.clear()
                continue
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
