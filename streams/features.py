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
State: ``ext.TumblingTable`` (start and four numbers per entity, stored as
41 packed bytes written by the kernel; JSON in stores from before
2026-11-27, still read). Tumbling definitions over the same key and field
(``amount`` per user over 1 minute, 10 minutes and 1 hour) share one state
key per entity (:class:`_TumblingGroup`): an event then costs one store
write and one changelog record for them all, not one per definition. A tumbling window
with ``grace_ms`` or with var, std or distinct is computed as the hopping
window with ``hop_ms = size_ms`` (below; the same windows): it keeps each
window still open to late events, and an event within grace is applied to
*its* window and gets that window's features.

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
* Aggregations: count, sum, mean, min, max, var and std (population),
  ``last``: the value of the item just before the event in (ts, arrival)
  order, if it lies in the event's window, i.e. the entity's previous value
  (for an in-order stream); the feature is *omitted* from the event's features
  when there is no such item (missing, not zero); and ``since``: ``end -`` the
  ts of that same item (ms since the entity's previous event; ``end`` is the
  event's ts, or ``newest`` for a late event), omitted with it. ``distinct``:
  the distinct values among the window's items, always exact (the items are
  held anyway; ``distinct_exact_max`` does not apply), kept with a count per
  value of the items of ``(newest - size_ms, newest]`` (O(1) per event in
  order; O(window) within grace).
* ``decay_sum`` and ``decay_mean`` (``half_life_ms`` = h) of the same window
  at its end ``T``: ``sum(v_i * 2**(-(T - t_i) / h))`` over its items, and
  that over ``sum(2**(-(T - t_i) / h))`` (0.0 for an empty window): a recency
  weighted spend that also forgets everything older than ``size_ms``. Pure
  Python for both backends, O(1) amortised in order (see ``_SlidingDecay``).
* State per entity: the live items ``[[ts...], [value...]]`` with
  ``ts > newest - size_ms - grace_ms`` (what any event not yet late can need);
  older items are evicted, so state is bounded by the events of one
  ``size + grace`` span per entity.

Hopping windows (``kind = "hopping"``, ``size_ms`` a multiple of ``hop_ms``,
at most ``MAX_HOPS`` hops): the windows are ``[k*hop, k*hop + size)`` for
every integer ``k``; an event at ``ts`` lies in ``size / hop`` of them, and
its features are those of the one that *closes first*, ``[end - size, end)``
with ``end = (ts // hop + 1) * hop``: the ``size`` span ending with the
event's hop. They aggregate the entity's applied events processed so far with
ts in that window (later events of the same hop included, as for tumbling).
``hop == size`` gives tumbling's windows and lateness.

* Late: the event's window has closed, ``end + grace_ms <= newest`` (the
  entity's newest applied ts): counted, not applied, and given the window of
  ``newest``. With ``grace_ms = 0`` and ``hop == size`` this is tumbling's rule.
* Without a value: not applied; the window of its ts over the state held
  (zeros if empty).
* Aggregations: count, sum, mean, min, max, var, std, distinct.
* State per entity: ``newest`` and the moments of each non-empty hop bucket
  (``ext.HoppingTable``); buckets older than ``floor((newest - grace) / hop)
  - size / hop + 1`` cannot be in the window of an event that is not late and
  are dropped: at most ``(size + grace) / hop + 2`` buckets per entity.

Session windows (``kind = "session"``, ``gap_ms``, no ``size_ms``): an
entity's session goes on while its applied events are less than ``gap_ms``
apart; the features are aggregates of the current session's applied events,
the event included (``ext.SessionTable``; state: O(1) per entity).

* An event at ``ts >= newest + gap_ms`` ends the session: with a value it
  starts a new one, without one it gets an empty session (zeros).
* An event with ``start <= ts < newest`` (out of order inside the session) is
  applied; without ``grace_ms``, one with ``ts < start`` is late: counted, not
  applied, and given the current session.
* With ``grace_ms`` = g (Flink's merging sessions with allowed lateness): an
  event is late only when ``ts < newest - g`` *and* ``ts < start``. Any other
  event with a value joins every session it lies within ``gap_ms`` of (``start
  - gap < ts < end + gap``), merging them when it bridges two, or starts a
  session of its own between them; it is given the session it ends up in,
  over the events applied so far, at ``T = max(ts, end)`` (``since`` omitted,
  as for any out-of-order event). A value-less event before ``newest`` gets
  the session that contains its ts at that session's end, or an empty one.
  The sessions an entity ends up with are those of its applied events sorted
  by time, whatever their arrival order. State: the sessions that an event
  not yet late can still reach (``end > newest - g - gap``), so at most
  ``g / gap + 2`` per entity. This path is pure Python for both backends (as
  are distinct counts): about 5 µs an event, as much as a sliding window with
  grace (``python -m benchmarks.windows``); grace 0 keeps ``ext.SessionTable``.
* Aggregations: count (the session's length in events), sum, mean, min, max,
  var, std, ``duration`` (``T - start``, ms, where ``T = max(ts, newest)``),
  ``since`` (``ts - newest``: ms since the entity's previous applied event,
  across sessions; omitted for its first event, and for out-of-order and
  late events), ``distinct`` and the decayed ones below.
* ``decay_sum`` and ``decay_mean`` (``half_life_ms`` = h), in event time at
  ``T``: ``decay_sum = sum(v_i * 2**(-(T - t_i) / h))`` over the session's
  values, ``decay_mean = decay_sum / sum(2**(-(T - t_i) / h))``; kept
  incrementally (``dsum = dsum * f + v``, ``f = exp2(-(ts - newest) / h)``)
  with the exact operation sequence in ``ext/__init__.py``. For decay over an
  entity's whole history, use a gap longer than the stream; over a bounded
  span, a sliding window. Tumbling and hopping windows take no decay: their
  sums restart at every bucket edge, which is what decay exists to avoid.

Value aggregations (sum, mean, min, max, var, std, last, decay_*) need a
numeric field; count, since, duration and distinct of sliding, hopping and
session windows only need the field *present*, so any event field works (an
item id).

``distinct``: the number of distinct values of the field in the window (or
session). Values are compared as strings, and numbers by their float value
(``1`` and ``1.0`` are one value). Each hop bucket (or session) keeps its
values exactly up to ``distinct_exact_max`` (default 1000): the count is
exact while every bucket of the window holds at most that many. Beyond, the
bucket becomes an Apache DataSketches HyperLogLog sketch (``lg_k = 12``,
HLL_4, ~2 KiB) and the count an estimate, read from the registers alone (the
composite estimator; in the sparse modes, the coupon count). The estimate and
the stored sketch are a canonical image of the union (no HIP accumulator, no
hash-table order), so neither depends on arrival order, micro-batches, flush
points or store round trips: a restart from any flush gives the features and
state bytes of an uninterrupted run. Relative standard
error about 1.6%, within 5% of the exact count with 99.7% confidence (3
standard deviations). Distinct counts are computed in Python with the same
lateness and session rules as the ext tables, for both backends (cheap for the
small sets it keeps exact; not on the tumbling hot path).

Feature names are ``{field}_{agg}_{span}_by_{key}`` for every kind, with
``span`` the size (``30d``), or ``session{gap}`` for sessions, and the decayed
aggregations named ``decay{half-life}_sum`` / ``decay{half-life}_mean``. Two
windows that differ only in kind, hop or grace would collide: the spec loader
and :class:`Windows` reject duplicate names. The state key starts with a hash
of the window definition (kind, key, field, size, hop, gap, grace, half-life;
not the aggregations), so changing a definition never misreads old state.

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

A 30-day window every day, and distinct items (any field):

>>> h = Windows([WindowSpec(key="user", field="item", kind="hopping", size_ms=30 * 86_400_000,
...                         hop_ms=86_400_000, aggs=("count", "distinct"))])
>>> day = 86_400_000
>>> [h.update({"user": "u1", "item": it}, t, store.get)["item_distinct_30d_by_user"]
...  for t, it in ((0, "a"), (day, "b"), (2 * day, "a"), (30 * day, "c"))]
[1.0, 2.0, 2.0, 3.0]

Sessions, time since the previous event, and a decayed sum (half-life 1 h):

>>> ss = Windows([WindowSpec(key="user", field="x", kind="session", gap_ms=1_800_000,
...                          half_life_ms=3_600_000, aggs=("count", "since", "decay_sum"))])
>>> ss.update({"user": "u1", "x": 8.0}, 0, store.get)
{'x_count_session30m_by_user': 1.0, 'x_decay1h_sum_session30m_by_user': 8.0}
>>> ss.update({"user": "u1", "x": 1.0}, 1_200_000, store.get)["x_decay1h_sum_session30m_by_user"]  # 8 * 2**(-1/3) + 1
7.349604207872798
>>> ss.update({"user": "u1", "x": 2.0}, 7_200_000, store.get)    # 100 min later: a new session
{'x_count_session30m_by_user': 1.0, 'x_since_session30m_by_user': 6000000.0, 'x_decay1h_sum_session30m_by_user': 2.0}
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import orjson

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "var", "std", "last", "since", "duration",
                "distinct", "decay_sum", "decay_mean")
#: what each kind supports
KIND_AGGREGATIONS = {
    "tumbling": ("count", "sum", "mean", "min", "max", "var", "std", "distinct"),
    "sliding": ("count", "sum", "mean", "min", "max", "var", "std", "last", "since", "distinct",
                "decay_sum", "decay_mean"),
    "hopping": ("count", "sum", "mean", "min", "max", "var", "std", "distinct"),
    "session": ("count", "sum", "mean", "min", "max", "var", "std", "since", "duration", "distinct",
                "decay_sum", "decay_mean"),
}
KINDS = tuple(KIND_AGGREGATIONS)
#: what ext.TumblingTable holds; other tumbling windows run as hopping windows with hop = size
TUMBLING_NATIVE = frozenset({"count", "sum", "mean", "min", "max"})
#: aggregations that read the field's numeric value (the others need it present only)
VALUE_AGGREGATIONS = frozenset({"sum", "mean", "min", "max", "var", "std", "last", "decay_sum", "decay_mean"})
#: hopping windows fold at most this many hops (size_ms // hop_ms) per event
MAX_HOPS = 10_000
#: distinct: the log2 of the HyperLogLog's register count (4096 registers, HLL_4)
HLL_LG_K = 12
#: the current-mode bits (byte 7 & 3) of a compact sketch image in HLL (dense) mode; 0/1: LIST/SET
_HLL_MODE = 2
_LIMIT = 2**62


def _fmt_ms(ms: int) -> str:
    for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class WindowSpec:
    """One window definition: ``aggs`` of ``field`` per ``key`` over a window of ``kind``.

    ``size_ms``: the span of tumbling, sliding and hopping windows (session
    windows have none). ``hop_ms`` (hopping): how far the windows advance;
    ``size_ms`` must be a multiple of it. ``gap_ms`` (session): the inactivity
    that ends a session. ``grace_ms``: how far behind its entity's newest
    event an event may be and still be applied (tumbling, sliding, hopping,
    session). ``half_life_ms`` (session and sliding, needed by decay_sum/decay_mean):
    the decay's half-life. ``distinct_exact_max``: distinct values held exactly per bucket
    or session before switching to a HyperLogLog sketch.
    """

    key: str
    field: str
    size_ms: int = 0
    aggs: tuple[str, ...] = ("count", "mean")
    kind: str = "tumbling"
    grace_ms: int = 0
    hop_ms: int = 0
    gap_ms: int = 0
    half_life_ms: int = 0
    distinct_exact_max: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"window kind {self.kind!r} is not supported; supported: {KINDS}")
        for name in ("size_ms", "grace_ms", "hop_ms", "gap_ms", "half_life_ms", "distinct_exact_max"):
            v = getattr(self, name)
            if not _is_int(v) or not 0 <= v < _LIMIT:
                raise ValueError(f"window {name} must be a non-negative integer below 2**62, got {v!r}")
        kind = self.kind
        if kind == "session":
            if self.size_ms:
                raise ValueError("session windows have no size_ms: a session lasts while events are less "
                                 "than gap_ms apart")
            if self.gap_ms <= 0:
                raise ValueError("a session window needs gap_ms > 0 (the inactivity that ends a session)")
        elif self.size_ms <= 0:
            raise ValueError("window size_ms must be a positive integer")
        if kind != "session" and self.gap_ms:
            raise ValueError(f"gap_ms is for session windows, not {kind}")
        if kind == "hopping":
            if self.hop_ms <= 0 or self.size_ms % self.hop_ms:
                raise ValueError(f"a hopping window needs hop_ms > 0 dividing size_ms, got size_ms={self.size_ms} "
                                 f"hop_ms={self.hop_ms}")
            if self.size_ms // self.hop_ms > MAX_HOPS:
                raise ValueError(f"hopping window size_ms / hop_ms = {self.size_ms // self.hop_ms} exceeds "
                                 f"{MAX_HOPS}; use a larger hop_ms")
        elif self.hop_ms:
            raise ValueError(f"hop_ms is for hopping windows, not {kind}")
        if self.size_ms + self.grace_ms >= _LIMIT:
            raise ValueError("window size_ms + grace_ms is too large")
        if not self.aggs:
            raise ValueError("a window needs at least one aggregation")
        if bad := set(self.aggs) - set(AGGREGATIONS):
            raise ValueError(f"unknown aggregation(s) {sorted(bad)}; supported: {AGGREGATIONS}")
        if bad := set(self.aggs) - set(KIND_AGGREGATIONS[kind]):
            raise ValueError(f"aggregation(s) {sorted(bad)} are not supported for {kind} windows; "
                             f"supported: {KIND_AGGREGATIONS[kind]}")
        if len(set(self.aggs)) != len(self.aggs):
            raise ValueError(f"duplicate aggregation in {list(self.aggs)}")
        decays = bool({"decay_sum", "decay_mean"} & set(self.aggs))
        if decays != (self.half_life_ms > 0):
            raise ValueError("decay_sum and decay_mean need half_life_ms > 0, and half_life_ms needs one of them")
        if self.distinct_exact_max < 1:
            raise ValueError("distinct_exact_max must be at least 1")

    @property
    def span(self) -> str:
        """The window part of feature names: ``1m`` (size), or ``session30m`` (gap)."""
        return f"session{_fmt_ms(self.gap_ms)}" if self.kind == "session" else _fmt_ms(self.size_ms)

    @property
    def names(self) -> tuple[str, ...]:
        span, hl = self.span, _fmt_ms(self.half_life_ms) if self.half_life_ms else ""
        tokens = {"decay_sum": f"decay{hl}_sum", "decay_mean": f"decay{hl}_mean"}
        return tuple(f"{self.field}_{tokens.get(a, a)}_{span}_by_{self.key}" for a in self.aggs)

    @property
    def reads_values(self) -> bool:
        """True when the field must be numeric (ext.TumblingTable always reads it)."""
        return (self.kind == "tumbling" and self.as_hopping is None) or bool(VALUE_AGGREGATIONS & set(self.aggs))

    @property
    def as_hopping(self) -> WindowSpec | None:
        """The hopping window (``hop_ms = size_ms``) that computes this tumbling one, when
        ``ext.TumblingTable`` cannot (grace, or var/std/distinct); None otherwise."""
        if self.kind != "tumbling" or (not self.grace_ms and set(self.aggs) <= TUMBLING_NATIVE):
            return None
        return dataclasses.replace(self, kind="hopping", hop_ms=self.size_ms)

    def _ident(self) -> str:
        if self.kind == "hopping":
            return f"hopping|{self.key}|{self.field}|{self.size_ms}|{self.hop_ms}|{self.grace_ms}|v1"
        if self.kind == "session" and self.grace_ms:      # another state layout: the sessions grace can reach
            return f"session|{self.key}|{self.field}|{self.gap_ms}|{self.half_life_ms}|{self.grace_ms}|v2"
        if self.kind == "session":
            return f"session|{self.key}|{self.field}|{self.gap_ms}|{self.half_life_ms}|v1"
        ident = f"{self.kind}|{self.key}|{self.field}|{self.size_ms}"   # tumbling: unchanged since v1
        if self.kind != "tumbling":
            ident += f"|{self.grace_ms}|v1"
        return ident

    @property
    def prefix(self) -> str:
        """State-key prefix: changes whenever the definition (kind, key, field, span, hop, grace,
        half-life; not the aggregations) changes."""
        return "w" + hashlib.sha1(self._ident().encode()).hexdigest()[:10] + ":"

    @property
    def decay_prefix(self) -> str:
        """State-key prefix of a sliding window's decayed sums (changes with the half-life too)."""
        return "w" + hashlib.sha1(f"{self._ident()}|decay|{self.half_life_ms}".encode()).hexdigest()[:10] + ":"

    @property
    def distinct_prefix(self) -> str:
        """State-key prefix of the distinct-count state (hopping, session)."""
        return "w" + hashlib.sha1((self._ident() + "|distinct").encode()).hexdigest()[:10] + ":"

    @classmethod
    def parse(cls, doc: Mapping[str, object]) -> WindowSpec:
        known = {"key", "field", "size_ms", "aggs", "kind", "grace_ms", "hop_ms", "gap_ms", "half_life_ms",
                 "distinct_exact_max"}
        if unknown := set(doc) - known:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        for k in ("key", "field"):
            if k not in doc:
                raise ValueError(f"missing required key {k!r}")
        kind = str(doc.get("kind", "tumbling"))
        if kind != "session" and "size_ms" not in doc:
            raise ValueError(f"missing required key 'size_ms' (the {kind} window's span in milliseconds)")
        for k in ("size_ms", "grace_ms", "hop_ms", "gap_ms", "half_life_ms"):
            if k in doc and not _is_int(doc[k]):
                raise ValueError(f"{k} must be an integer (milliseconds), got {doc[k]!r}")
        if "distinct_exact_max" in doc and not _is_int(doc["distinct_exact_max"]):
            raise ValueError(f"distinct_exact_max must be an integer, got {doc['distinct_exact_max']!r}")
        aggs = doc.get("aggs", ("count", "mean"))
        if isinstance(aggs, str) or not isinstance(aggs, (list, tuple)):
            raise TypeError(f"aggs must be a list of aggregation names, got {aggs!r}")
        ints = {k: doc[k] for k in ("size_ms", "grace_ms", "hop_ms", "gap_ms", "half_life_ms",
                                     "distinct_exact_max") if k in doc}
        return cls(key=str(doc["key"]), field=str(doc["field"]), aggs=tuple(str(a) for a in aggs), kind=kind,
                   **ints)  # type: ignore[arg-type]


#: columns of TumblingTable.update_many's output
_COLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4}
#: columns of the sliding plan's rows: SlidingWindow.update_many's six, then std, last, since, distinct and decay
_SCOLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "var": 5, "std": 6, "last": 7, "since": 8,
             "distinct": 9, "decay_sum": 10, "decay_mean": 11}
#: columns of the hopping plan's rows: HoppingTable.update_many's six, then std and distinct
_HCOLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "var": 5, "std": 6, "distinct": 7}
#: columns of the session plan's rows: SessionTable.update_many's ten, then std and distinct
_SESSION_COLUMNS = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "var": 5, "since": 6, "duration": 7,
                    "decay_sum": 8, "decay_mean": 9, "std": 10, "distinct": 11}
#: aggregations omitted from an event's features when NaN (no previous item)
_OMITTED_IF_NAN = ("last", "since")
#: a tumbling window's packed state (ext TumblingTable.take_dirty_packed): b"T", start, count, sum, min, max
_UNPACK_TUMBLING = struct.Struct("<cqqddd").unpack
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
        self.since = "since" in spec.aggs
        self.distinct = _SlidingDistinct(spec) if "distinct" in spec.aggs else None
        self.decay = _SlidingDecay(spec) if spec.half_life_ms else None

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
        if self.distinct is not None:
            out += self.distinct.take_dirty()
        if self.decay is not None:
            out += self.decay.take_dirty()
        return out

    def bound(self, max_cached: int) -> None:
        """Drop the cached state when it exceeds ``max_cached`` entities (after take_dirty)."""
        if len(self.entities) > max_cached:
            self.entities.clear()
        if self.distinct is not None:
            self.distinct.bound(max_cached)
        if self.decay is not None:
            self.decay.bound(max_cached)

    # -- updates ------------------------------------------------------------
    def update_many(self, keys: list[str], ts: np.ndarray, values: np.ndarray, has: np.ndarray,
                    load: Callable[[str], bytes | None], entities: Sequence[str] = (),
                    raw: Sequence[object] = ()) -> np.ndarray:
        """Rows ``[count, sum, mean, min, max, var, std, last, since, distinct, decay_sum, decay_mean]``.

        (last/since NaN: none; distinct from ``entities`` and the ``raw`` field
        values, and the decayed ones, only when the definition has them.)
        """
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
        res = np.empty((n, 12), dtype=np.float64)
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
                    res[i, :9] = self._one(key, e, ts_l[i], v_l[i], has_l[i - a])
        # std, last and since of the fast rows (the slow rows wrote theirs)
        np.sqrt(res[:, 5], out=res[:, 6])
        fast_rows = np.repeat(all_ok, ends - starts)
        prev_in = prev_ts > ts_s - size
        last = np.where(prev_in, prev_val, _NAN)
        res[fast_rows, 7] = last[fast_rows]
        if self.since:
            since = np.where(prev_in, (ts_s - np.where(prev_in, prev_ts, ts_s)).astype(np.float64), _NAN)
            res[fast_rows, 8] = since[fast_rows]
        if order is not None:
            out = np.empty_like(res)
            out[order] = res
            res = out
        if self.distinct is not None:
            res[:, 9] = self.distinct.update_many(entities, ts.tolist(), raw, load)
        if self.decay is not None:
            res[:, 10:] = self.decay.update_many(entities, ts.tolist(), values.tolist(), has.tolist(), load)
        return res

    def _one(self, key: str, e: _Entity, t: int, v: float, has: bool) -> tuple[float, ...]:
        """One event of a group that is not all in-order appends (see the module docstring)."""
        size = self.size
        if e.newest is not None and t < e.newest - self.grace:            # late: not applied
            self.late += 1
            row = _stats(e.win)
            return (*row, math.sqrt(row[5]), e.newest_val, 0.0)       # (as a value-less event at newest)
        if has and (e.newest is None or t >= e.newest):                     # in order
            prev_in = e.newest is not None and e.newest > t - size
            last = e.newest_val if prev_in else _NAN
            since = float(t - e.newest) if prev_in else _NAN              # type: ignore[operator]
            e.win.update(t, v)
            if e.keep is not None:
                e.keep.update(t, v)
            e.newest, e.newest_val = t, v
            self.dirty[key] = None
            row = _stats(e.win)
            return (*row, math.sqrt(row[5]), last, since)
        # value-less, or within grace: the window ending at t over the items held
        its, ivs = (e.keep or e.win).state()
        pos = bisect_right(its, t)
        lo = bisect_right(its, t - size, 0, pos)
        w_ts, w_vals = its[lo:pos], ivs[lo:pos]
        last = w_vals[-1] if w_vals else _NAN
        since = float(t - w_ts[-1]) if w_ts else _NAN
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
        return (*row, math.sqrt(row[5]), last, since)


def _token(v: object) -> str:
    """The distinct-count identity of a field value: strings as they are, numbers by their float value."""
    if type(v) is str:
        return v
    if isinstance(v, (int, float)):
        return "#" + repr(float(v) + 0.0)          # (+ 0.0: -0.0 is 0.0)
    return "@" + orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _sketch_of(tokens: Iterable[str]) -> Any:
    from datasketches import hll_sketch, tgt_hll_type

    sk = hll_sketch(HLL_LG_K, tgt_hll_type.HLL_4)
    for t in sorted(tokens):
        sk.update(t)
    return sk


def _canonical(parts: Sequence[Any]) -> bytes:
    """The union of the sketches ``parts`` as a compact HLL_4 image that depends only on the values
    fed to them: not on their order, on how they were split between sketches, nor on store round trips.

    A sketch's own bytes do not qualify: in the sparse modes (LIST/SET) it lists its coupons in hash
    table order, which a round trip reshuffles, and in HLL mode it carries the HIP accumulator, which
    depends on the order the registers rose in (including the coupon order at the SET -> HLL
    promotion). So the union's result is merged twice into a fresh union (an HLL source merged into
    an HLL gadget sets the out-of-order flag, zeroes HIP and rebuilds kxq and cur_min from the
    registers), and a sparse image gets its coupons sorted and one more round trip (which fixes
    the header and the hash order). The estimate of the image is then a function of the registers
    (composite estimator) or of the coupon count.
    """
    from datasketches import hll_sketch, hll_union, tgt_hll_type

    u = hll_union(HLL_LG_K)
    for p in parts:
        u.update(p)
    merged = u.get_result(tgt_hll_type.HLL_8)
    u = hll_union(HLL_LG_K)
    u.update(merged)
    u.update(merged)
    img = u.get_result(tgt_hll_type.HLL_4).serialize_compact()
    if img[7] & 3 != _HLL_MODE:                     # LIST or SET: coupons (uint32) after the preamble
        pre = img[0] * 4
        coupons = sorted(struct.unpack_from(f"<{(len(img) - pre) // 4}I", img, pre))
        img = hll_sketch.deserialize(img[:pre] + struct.pack(f"<{len(coupons)}I", *coupons)).serialize_compact()
    return img


def _distinct_of(parts: Sequence[set[str] | Any]) -> float:
    """Distinct values of the union of ``parts`` (exact sets or sketches): exact when all are sets.

    With a sketch, the estimate is that of the union's canonical image (:func:`_canonical`), so it
    depends only on the values (not their order, the micro-batches, flushes or store round trips).
    """
    sets = [p for p in parts if isinstance(p, set)]
    if len(sets) == len(parts):
        return float(len(sets[0]) if len(sets) == 1 else len(set().union(*sets)))
    from datasketches import hll_sketch

    sketches = [p for p in parts if not isinstance(p, set)]
    if sets:
        sketches.append(_sketch_of(set().union(*sets)))
    return float(hll_sketch.deserialize(_canonical(sketches)).get_estimate())


def _dump_part(part: set[str] | Any) -> list[str] | str:
    if isinstance(part, set):
        return sorted(part)
    return base64.b64encode(_canonical([part])).decode()


def _load_part(raw: list[str] | str) -> set[str] | Any:
    if isinstance(raw, list):
        return set(raw)
    from datasketches import hll_sketch

    return hll_sketch.deserialize(base64.b64decode(raw))


def _decay_factor(dt: int, half_life: int) -> float:
    """``2**(-dt / half_life)``: the decay of a weight ``dt`` ms old, as ext.SessionTable computes it."""
    return math.exp2(-(float(dt) / float(half_life)))


def _add_token(holder: dict[Any, Any] | list[Any], slot: Any, tok: str, exact_max: int) -> None:
    """Add ``tok`` to the distinct part ``holder[slot]``: a set up to ``exact_max`` values, then a sketch."""
    part = holder[slot]
    if isinstance(part, set):
        part.add(tok)
        if len(part) > exact_max:
            holder[slot] = _sketch_of(part)
    else:
        part.update(tok)


def _load_missing(ents: dict[str, Any], keys: Sequence[str], load: Callable[[str], bytes | None],
                  decode: Callable[[bytes], Any]) -> None:
    """Read from the store, once each, the state of ``keys`` not held in ``ents``."""
    for k in dict.fromkeys(keys):
        if k not in ents and (b := load(k)) is not None:
            ents[k] = decode(b)


class _Distinct:
    """Distinct counts of one hopping or session definition (pure Python, shared by both backends).

    Values are kept exactly (a set per hop bucket or per session) up to
    ``distinct_exact_max``; beyond, that set becomes a HyperLogLog sketch.
    Lateness and session boundaries follow the same rules as the ext tables.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.hopping = spec.kind == "hopping"
        self.prefix = spec.distinct_prefix
        self.hop, self.grace, self.gap = spec.hop_ms, spec.grace_ms, spec.gap_ms
        self.m = spec.size_ms // spec.hop_ms if self.hopping else 1
        self.exact_max = spec.distinct_exact_max
        # hopping: key -> [newest, {bucket: part}]; session: key -> [start, newest, part]
        self.entities: dict[str, list[Any]] = {}
        self.dirty: dict[str, None] = {}
        self.late = 0

    def _add(self, holder: dict[Any, Any] | list[Any], slot: Any, tok: str) -> None:
        _add_token(holder, slot, tok, self.exact_max)

    def update_many(self, entities: Sequence[str], ts: Sequence[int], raw: Sequence[object],
                    load: Callable[[str], bytes | None]) -> np.ndarray:
        """The distinct count of each event's window (its hop window or session), in order."""
        keys = [self.prefix + e for e in entities]
        _load_missing(self.entities, keys, load, self._load)
        row = self._row
        return np.fromiter((row(k, t, v) for k, t, v in zip(keys, ts, raw)), dtype=np.float64, count=len(keys))

    def _load(self, raw: bytes) -> list[Any]:
        st = orjson.loads(raw)
        if self.hopping:
            return [st[0], {bk: _load_part(p) for bk, p in st[1]}]
        return [st[0], st[1], _load_part(st[2])]

    def _row(self, key: str, t: int, v: object) -> float:
        return self._hop_row(key, t, v) if self.hopping else self._session_row(key, t, v)

    def _hop_row(self, key: str, t: int, v: object) -> float:
        hop, m = self.hop, self.m
        st = self.entities.get(key)
        b = t // hop
        if st is not None and (b + 1) * hop + self.grace <= st[0]:          # late
            self.late += 1
            b = st[0] // hop
        elif v is not None:
            if st is None:
                st = self.entities[key] = [t, {}]
            buckets = st[1]
            if b in buckets:
                self._add(buckets, b, _token(v))
            else:
                buckets[b] = {_token(v)}
            if t > st[0]:
                st[0] = t
                keep = (t - self.grace) // hop - m + 1
                for old in [x for x in buckets if x < keep]:
                    del buckets[old]
            self.dirty[key] = None
        if st is None:
            return 0.0
        parts = [p for x, p in st[1].items() if b - m < x <= b]
        return _distinct_of(parts) if parts else 0.0

    def _session_row(self, key: str, t: int, v: object) -> float:
        st = self.entities.get(key)
        if st is None or (t >= st[1] and t - st[1] >= self.gap):           # no session, or it ended
            if v is None:
                return 0.0
            self.entities[key] = [t, t, {_token(v)}]
            self.dirty[key] = None
            return 1.0
        if t < st[0]:                                                        # late
            self.late += 1
        elif v is not None:
            self._add(st, 2, _token(v))
            st[1] = max(st[1], t)
            self.dirty[key] = None
        return _distinct_of([st[2]])

    def take_dirty(self) -> list[tuple[str, bytes]]:
        out = []
        for k in self.dirty:
            st = self.entities[k]
            if self.hopping:
                doc = [st[0], [[b, _dump_part(p)] for b, p in sorted(st[1].items())]]
            else:
                doc = [st[0], st[1], _dump_part(st[2])]
            out.append((k, orjson.dumps(doc)))
        self.dirty.clear()
        return out

    def bound(self, max_cached: int) -> None:
        """Drop the cached entities when there are more than ``max_cached`` (after take_dirty)."""
        if len(self.entities) > max_cached:
            self.entities.clear()


class _SlidingDistinct(_Distinct):
    """Exact distinct counts of one sliding definition (pure Python, shared by both backends).

    Per entity: the items ``(ts, token)`` with ``ts > newest - size - grace``
    in (ts, arrival) order, as the sliding window keeps its values, plus a
    count per token of the items in ``(newest - size, newest]``, so an event
    in order costs O(1) amortised; an event within grace or without a value
    counts its own window ``(ts - size, ts]`` from the items (O(window)). A
    late event gets the window of ``newest``. Exact, never a sketch: the
    window's items are held anyway.
    """

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.size = spec.size_ms
        # entities: key -> [newest, [ts...], [token...], lo, {token: items in (newest - size, newest]}]

    def _load(self, raw: bytes) -> list[Any]:
        newest, ts, toks = orjson.loads(raw)
        lo = bisect_right(ts, newest - self.size)
        counts: dict[str, int] = {}
        for t in toks[lo:]:
            counts[t] = counts.get(t, 0) + 1
        return [newest, ts, toks, lo, counts]

    def _row(self, key: str, t: int, v: object) -> float:
        st = self.entities.get(key)
        size = self.size
        if st is None:
            if v is None:
                return 0.0
            self.entities[key] = [t, [t], [_token(v)], 0, {_token(v): 1}]
            self.dirty[key] = None
            return 1.0
        newest, its, toks, lo, counts = st
        if t < newest - self.grace:                           # late: the window of newest
            return float(len(counts))
        if v is None:                                         # the window ending at t over the items held
            if t == newest:
                return float(len(counts))
            pos = bisect_right(its, t)
            return float(len(set(toks[bisect_right(its, t - size, 0, pos):pos])))
        tok = _token(v)
        self.dirty[key] = None
        if t >= newest:                                       # in order: O(1) amortised
            its.append(t)
            toks.append(tok)
            counts[tok] = counts.get(tok, 0) + 1
            st[0] = newest = t
            edge = t - size
            while its[lo] <= edge:                            # leaves the window of newest
                old = toks[lo]
                c = counts[old] - 1
                if c:
                    counts[old] = c
                else:
                    del counts[old]
                lo += 1
            drop = bisect_right(its, edge - self.grace, 0, lo)   # no longer needed for grace either
            if drop:
                del its[:drop], toks[:drop]
                lo -= drop
            st[3] = lo
            return float(len(counts))
        pos = bisect_right(its, t)                            # within grace: inserted in (ts, arrival) order
        its.insert(pos, t)
        toks.insert(pos, tok)
        if t > newest - size:
            counts[tok] = counts.get(tok, 0) + 1
        else:
            st[3] = lo + 1
        return float(len(set(toks[bisect_right(its, t - size, 0, pos + 1):pos + 1])))

    def take_dirty(self) -> list[tuple[str, bytes]]:
        out = []
        for k in self.dirty:
            st = self.entities[k]
            out.append((k, orjson.dumps([st[0], st[1], st[2]])))
        self.dirty.clear()
        return out


class _SlidingDecay:
    """Decayed sums and means of one sliding definition (pure Python, shared by both backends).

    ``decay_sum`` at ``T`` is ``sum(v_i * 2**(-(T - t_i) / h))`` over the
    window ``(T - size, T]``; ``decay_mean`` divides it by the sum of the
    weights. Nothing is subtracted when an item leaves the window (that
    drifts, as it would for plain sums; see ext/__init__.py): the items of
    the entity's current size-aligned block ``k = newest // size`` are folded
    oldest to newest into one prefix ``(dsum, dweight)`` at ``newest``, and
    those of block ``k - 1`` carry suffix sums at the block's last item, so a
    window ending in block ``k`` is one suffix plus the prefix, each scaled
    to ``T`` (SlidingWindow's aligned two stacks). In order that is O(1)
    amortised per event; a value within grace is inserted in (ts, arrival)
    order and the stacks are rebuilt; a value-less event or one within grace
    sums its own window from the items (O(window)). Both stacks are a
    function of the items and ``newest`` alone, so a restart from the store
    continues bit for bit.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.prefix = spec.decay_prefix
        self.size, self.grace, self.half_life = spec.size_ms, spec.grace_ms, spec.half_life_ms
        # key -> [newest, [ts...], [value...], block, prefix dsum, prefix dweight,
        #         front: [(ts, suffix dsum, suffix dweight)...], first live front index, front's last ts]
        self.entities: dict[str, list[Any]] = {}
        self.dirty: dict[str, None] = {}

    def _decay(self, dt: int) -> float:
        return _decay_factor(dt, self.half_life)

    def _suffixes(self, its: list[int], ivs: list[float], a: int, b: int) -> tuple[list[tuple[int, float, float]], int]:
        """Suffix sums of items ``[a, b)`` at the last one's ts, oldest first."""
        if a == b:
            return [], 0
        r, decay = its[b - 1], self._decay
        out: list[tuple[int, float, float]] = []
        sd, sw = 0.0, 0.0
        for j in range(b - 1, a - 1, -1):
            f = decay(r - its[j])
            sd = sd + ivs[j] * f
            sw = sw + f
            out.append((its[j], sd, sw))
        out.reverse()
        return out, r

    def _build(self, newest: int, its: list[int], ivs: list[float]) -> list[Any]:
        size = self.size
        k = newest // size
        back = bisect_right(its, k * size - 1)
        front_at = bisect_right(its, (k - 1) * size - 1, 0, back)
        pd, pw = 0.0, 0.0
        for j in range(back, len(its)):
            if j == back:
                pd, pw = ivs[j], 1.0
            else:
                f = self._decay(its[j] - its[j - 1])
                pd, pw = pd * f + ivs[j], pw * f + 1.0
        front, r = self._suffixes(its, ivs, front_at, back)
        fl = 0
        while fl < len(front) and front[fl][0] <= newest - size:
            fl += 1
        return [newest, its, ivs, k, pd, pw, front, fl, r]

    def _at(self, st: list[Any], t: int) -> tuple[float, float]:
        """(decay_sum, decay_mean) of the window ending at ``newest``, reported at ``t >= newest``."""
        newest, pd, pw, front, fl, r = st[0], st[4], st[5], st[6], st[7], st[8]
        if fl < len(front):
            f = self._decay(newest - r)
            pd, pw = front[fl][1] * f + pd, front[fl][2] * f + pw
        if pw == 0.0:
            return 0.0, 0.0
        return (pd if t == newest else pd * self._decay(t - newest)), pd / pw

    def _window(self, its: list[int], ivs: list[float], t: int) -> tuple[float, float]:
        """(decay_sum, decay_mean) of the items in ``(t - size, t]``, summed from the items."""
        pos = bisect_right(its, t)
        lo = bisect_right(its, t - self.size, 0, pos)
        if lo == pos:
            return 0.0, 0.0
        top, decay = its[pos - 1], self._decay
        sd, sw = 0.0, 0.0
        for j in range(lo, pos):
            f = decay(top - its[j])
            sd, sw = sd + ivs[j] * f, sw + f
        return (sd if t == top else sd * decay(t - top)), sd / sw

    def _row(self, key: str, t: int, v: float, has: bool) -> tuple[float, float]:
        st = self.entities.get(key)
        if st is None:
            if not has:
                return 0.0, 0.0
            st = self.entities[key] = self._build(t, [t], [v])
            self.dirty[key] = None
            return v, v
        newest, its, ivs = st[0], st[1], st[2]
        if t < newest - self.grace:                              # late: the window of newest
            return self._at(st, newest)
        if not has:                                              # the window ending at t, not applied
            return self._at(st, t) if t == newest else self._window(its, ivs, t)
        self.dirty[key] = None
        if t < newest:                                           # within grace: inserted, stacks rebuilt
            pos = bisect_right(its, t)
            its.insert(pos, t)
            ivs.insert(pos, v)
            self.entities[key] = self._build(newest, its, ivs)
            return self._window(its, ivs, t)
        size = self.size
        k = t // size
        if k == st[3]:                                           # the same block: extend the prefix
            f = self._decay(t - newest)
            st[4], st[5] = st[4] * f + v, st[5] * f + 1.0
        else:
            if k == st[3] + 1:                                   # the back block becomes the front one
                back = bisect_right(its, st[3] * size - 1)
                st[6], st[8] = self._suffixes(its, ivs, back, len(its))
            else:                                                # a whole block skipped: nothing in front
                st[6], st[8] = [], 0
            st[3], st[4], st[5], st[7] = k, v, 1.0, 0
        its.append(t)
        ivs.append(v)
        st[0] = t
        front, fl = st[6], st[7]
        while fl < len(front) and front[fl][0] <= t - size:
            fl += 1
        st[7] = fl
        drop = bisect_right(its, t - size - self.grace)          # not needed for grace either
        if drop:
            del its[:drop], ivs[:drop]
        return self._at(st, t)

    def update_many(self, entities: Sequence[str], ts: Sequence[int], values: Sequence[float],
                    has: Sequence[bool], load: Callable[[str], bytes | None]) -> np.ndarray:
        """``[decay_sum, decay_mean]`` of each event's window, in order."""
        keys = [self.prefix + e for e in entities]
        _load_missing(self.entities, keys, load, lambda b: self._build(*orjson.loads(b)))
        row = self._row
        return np.array([row(k, t, v, h) for k, t, v, h in zip(keys, ts, values, has)],
                        dtype=np.float64).reshape(len(keys), 2)

    def take_dirty(self) -> list[tuple[str, bytes]]:
        out = [(k, orjson.dumps(self.entities[k][:3])) for k in self.dirty]
        self.dirty.clear()
        return out

    bound = _Distinct.bound


def _nonfinite_as_str(x: Any) -> Any:
    if isinstance(x, list):
        return [_nonfinite_as_str(y) for y in x]
    return repr(x) if isinstance(x, float) and not math.isfinite(x) else x


def _str_as_float(x: Any) -> Any:
    if isinstance(x, list):
        return [_str_as_float(y) for y in x]
    return float(x) if isinstance(x, str) else x


def dumps_table_state(row: Sequence[Any]) -> bytes:
    """A keyed table's ``take_dirty()`` row (less its key) as JSON; non-finite floats (an overflowed
    sum) as the strings "inf", "-inf", "nan", which JSON cannot hold as numbers."""
    raw = orjson.dumps(list(row))
    return orjson.dumps(_nonfinite_as_str(list(row))) if b"null" in raw else raw


def loads_table_state(raw: bytes) -> list[Any]:
    """The arguments of a keyed table's ``load()`` (less the key), from :func:`dumps_table_state`."""
    doc = orjson.loads(raw)
    return _str_as_float(doc) if b'"' in raw else doc


class _Keyed:
    """Hopping or session windows of one definition: an ext table and/or the distinct counts."""

    def __init__(self, spec: WindowSpec, kernels: ModuleType) -> None:
        self.prefix = spec.prefix
        self.reads_values = spec.reads_values
        self.hopping = spec.kind == "hopping"
        table: Any = None
        if set(spec.aggs) - {"distinct"}:
            table = (kernels.HoppingTable(spec.size_ms, spec.hop_ms, spec.grace_ms) if self.hopping
                     else kernels.SessionTable(spec.gap_ms, spec.half_life_ms))
        self.table = table
        self.distinct = _Distinct(spec) if "distinct" in spec.aggs else None
        self.width = 8 if self.hopping else 12

    @property
    def late(self) -> int:
        return self.table.late if self.table is not None else self.distinct.late  # type: ignore[union-attr]

    def update_many(self, entities: list[str], ts: np.ndarray, raw: list[object],
                    load: Callable[[str], bytes | None]) -> np.ndarray:
        """Rows in ``_HCOLUMNS`` / ``_SESSION_COLUMNS`` layout per event, in order."""
        n = len(entities)
        res = np.empty((n, self.width), dtype=np.float64)
        table = self.table
        if table is not None:
            keys = [self.prefix + e for e in entities]
            has = np.fromiter((v is not None for v in raw), dtype=np.bool_, count=n)
            if self.reads_values:
                values = np.fromiter((0.0 if v is None else v for v in raw), dtype=np.float64, count=n)  # type: ignore[misc]
            else:
                values = np.zeros(n, dtype=np.float64)
            for k in table.missing(keys):
                b = load(k)
                if b is not None:
                    table.load(k, *loads_table_state(b))
            got = table.update_many(keys, ts, values, has)
            res[:, :got.shape[1]] = got
            np.sqrt(got[:, 5], out=res[:, self.width - 2])
        if self.distinct is not None:
            res[:, -1] = self.distinct.update_many(entities, ts.tolist(), raw, load)
        return res

    def take_dirty(self) -> list[tuple[str, bytes]]:
        out = []
        if self.table is not None:
            out += [(row[0], dumps_table_state(row[1:])) for row in self.table.take_dirty()]
        if self.distinct is not None:
            out += self.distinct.take_dirty()
        return out

    def bound(self, max_cached: int) -> None:
        """Drop the cached state when it exceeds ``max_cached`` entities (after take_dirty)."""
        if self.table is not None and len(self.table) > max_cached:
            self.table.clear()
        if self.distinct is not None:
            self.distinct.bound(max_cached)


class _GraceSessions:
    """Session windows with a grace period, over many entities (pure Python, shared by both backends).

    Per entity: ``newest`` and the sessions an event that is not yet late can
    still reach, oldest first, each ``[start, end, moments, dsum, dweight,
    distinct part]`` (moments merged with ``ext``'s Chan update; ``dsum`` /
    ``dweight`` at ``end``). The operations on one session are those of
    ``ext.SessionTable``, so an event that bridges nothing gets the numbers
    grace 0 would give it; two sessions merge as ``dsum = a.dsum * decay(b.end
    - a.end) + b.dsum``. Rows use ``_SESSION_COLUMNS``. See the module
    docstring for the rules.
    """

    width = 12

    def __init__(self, spec: WindowSpec) -> None:
        from ext._reference import _merge, _single, _stats_row

        self._merge_m, self._single, self._stats_row = _merge, _single, _stats_row
        self.prefix = spec.prefix
        self.gap, self.grace, self.half_life = spec.gap_ms, spec.grace_ms, spec.half_life_ms
        self.reads_values = spec.reads_values
        self.distinct = "distinct" in spec.aggs
        self.exact_max = spec.distinct_exact_max
        self.entities: dict[str, list[Any]] = {}      # key -> [newest, [session, ...]]
        self.dirty: dict[str, None] = {}
        self.late = 0

    # -- one session ------------------------------------------------------------
    def _decay(self, dt: int) -> float:
        return _decay_factor(dt, self.half_life)

    def _fresh(self, t: int, v: float, tok: str | None) -> list[Any]:
        decays = self.half_life > 0
        return [t, t, self._single(v), v if decays else 0.0, 1.0 if decays else 0.0,
                {tok} if tok is not None else None]

    def _add(self, s: list[Any], t: int, v: float, tok: str | None) -> None:
        """One value into session ``s`` (ext.SessionTable's continue / merge-in operations)."""
        if t >= s[1]:
            if self.half_life:
                f = self._decay(t - s[1])
                s[3] = s[3] * f + v
                s[4] = s[4] * f + 1.0
            s[1] = t
        else:
            if self.half_life:
                f = self._decay(s[1] - t)
                s[3] = s[3] + v * f
                s[4] = s[4] + f
            if t < s[0]:
                s[0] = t
        s[2] = self._merge_m(s[2], self._single(v))
        if tok is not None:
            _add_token(s, 5, tok, self.exact_max)

    def _join(self, a: list[Any], b: list[Any]) -> list[Any]:
        """Sessions ``a`` (older) and ``b`` bridged into one."""
        dsum, dweight = 0.0, 0.0
        if self.half_life:
            f = self._decay(b[1] - a[1])
            dsum = a[3] * f + b[3]
            dweight = a[4] * f + b[4]
        part = self._union([a[5], b[5]]) if self.distinct else None
        return [a[0], b[1], self._merge_m(a[2], b[2]), dsum, dweight, part]

    def _union(self, parts: list[Any]) -> Any:
        if all(isinstance(p, set) for p in parts):
            u = set().union(*parts)
            return _sketch_of(u) if len(u) > self.exact_max else u
        from datasketches import hll_sketch

        sketches = [p for p in parts if not isinstance(p, set)]
        sketches += [_sketch_of(p) for p in parts if isinstance(p, set)]
        return hll_sketch.deserialize(_canonical(sketches))

    def _report(self, s: list[Any], at: int, since: float) -> list[float]:
        row = [*self._stats_row(s[2]), since, float(at - s[0]), 0.0, 0.0, 0.0, 0.0]
        if self.half_life:
            row[8] = s[3] if at == s[1] else s[3] * self._decay(at - s[1])
            row[9] = s[3] / s[4]
        if self.distinct:
            row[11] = _distinct_of([s[5]])
        return row

    @staticmethod
    def _empty(since: float) -> list[float]:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, since, 0.0, 0.0, 0.0, 0.0, 0.0]

    # -- rows -------------------------------------------------------------------
    def _row(self, key: str, t: int, v: float, tok: str | None, has: bool) -> list[float]:
        st = self.entities.get(key)
        if st is None:
            if not has:
                return self._empty(_NAN)
            s = self._fresh(t, v, tok)
            self.entities[key] = [t, [s]]
            self.dirty[key] = None
            return self._report(s, t, _NAN)
        newest, sessions = st
        cur = sessions[-1]
        if t >= newest:                                     # in order: as ext.SessionTable
            since = float(t - newest)
            if not has:
                return self._empty(since) if t - newest >= self.gap else self._report(cur, t, since)
            if t - newest >= self.gap:
                cur = self._fresh(t, v, tok)
                sessions.append(cur)
            else:
                self._add(cur, t, v, tok)
            st[0] = t
            edge = t - self.grace - self.gap                # sessions ending here cannot be reached any more
            drop = 0
            while drop < len(sessions) - 1 and sessions[drop][1] <= edge:
                drop += 1
            if drop:
                del sessions[:drop]
            self.dirty[key] = None
            return self._report(cur, t, since)
        if t < newest - self.grace and t < cur[0]:          # late
            self.late += 1
            return self._report(cur, newest, _NAN)
        gap = self.gap
        if not has:                                         # the session holding t, at its end
            for s in sessions:
                if s[0] <= t <= s[1]:
                    return self._report(s, s[1], _NAN)
            return self._empty(_NAN)
        i = 0                                               # sessions[i:j] are those t lies within gap of
        while sessions[i][1] + gap <= t:                    # (the last one ends at newest > t)
            i += 1
        j = i
        while j < len(sessions) and sessions[j][0] - gap < t:
            j += 1
        if i == j:                                          # between sessions: a new one
            s = self._fresh(t, v, tok)
            sessions.insert(i, s)
        else:
            s = sessions[i]
            self._add(s, t, v, tok)
            for other in sessions[i + 1:j]:
                s = self._join(s, other)
            sessions[i:j] = [s]
        self.dirty[key] = None
        return self._report(s, s[1], _NAN)

    def update_many(self, entities: list[str], ts: np.ndarray, raw: list[object],
                    load: Callable[[str], bytes | None]) -> np.ndarray:
        """Rows in ``_SESSION_COLUMNS`` layout per event, in order."""
        n = len(entities)
        keys = [self.prefix + e for e in entities]
        _load_missing(self.entities, keys, load, self._load)
        reads, distinct, row = self.reads_values, self.distinct, self._row
        out = np.array([row(k, t, float(v) if reads and v is not None else 0.0,  # type: ignore[arg-type]
                            _token(v) if distinct and v is not None else None, v is not None)
                        for k, t, v in zip(keys, ts.tolist(), raw)], dtype=np.float64).reshape(n, self.width)
        np.sqrt(out[:, 5], out=out[:, 10])
        return out

    # -- state ------------------------------------------------------------------
    def _load(self, raw: bytes) -> list[Any]:
        doc = orjson.loads(raw)
        nums = _str_as_float(doc[1]) if b'"' in raw else doc[1]
        parts = [_load_part(p) for p in doc[2]] if self.distinct else [None] * len(nums)
        return [doc[0], [[a, b, (n, *m), ds, dw, p] for (a, b, n, *m, ds, dw), p in zip(nums, parts)]]

    def take_dirty(self) -> list[tuple[str, bytes]]:
        out = []
        for k in self.dirty:
            newest, sessions = self.entities[k]
            nums = _nonfinite_as_str([[s[0], s[1], *s[2], s[3], s[4]] for s in sessions])
            doc = [newest, nums, [_dump_part(s[5]) for s in sessions] if self.distinct else []]
            out.append((k, orjson.dumps(doc)))
        self.dirty.clear()
        return out

    bound = _Distinct.bound


def _no_store(key: str) -> bytes | None:
    raise ValueError("Windows.flush(get=...) is needed: a tumbling group's members differ in what they wrote")


#: a tumbling group's stored value: this tag, then per definition its prefix (12 bytes) and packed state (41)
_GROUP_TAG = b"G"
_SEGMENT = 12 + 41


class _TumblingGroup:
    """Tumbling definitions over one (key, field): one state key per entity for all of them.

    Why: their entities are the same (an event updates every definition over
    its key), so one key holds them all, and a flush writes, and the
    changelog carries, one record per entity instead of one per definition:
    the benchmarks' ``full`` pipeline went from 4.1 to 2.0 store writes per
    event. The value is ``b"G"`` then, per definition, its state-key prefix
    (12 bytes, which changes with the definition) and its packed state (41
    bytes, as a lone definition stores it). A definition added to the spec
    finds no segment of its own and starts empty; one removed leaves its
    segment, dropped at the entity's next write; the others keep their state.
    Stores written before the groups existed hold a key per definition
    (``prefix + entity``): read when an entity has no group value or lacks a
    segment, and left behind (never read again once the group value exists).
    """

    def __init__(self, key_field: str, field: str, members: list[tuple[str, Any]]) -> None:
        self.prefix = "wg" + hashlib.sha1(f"tumbling-group|{key_field}|{field}|v1".encode()).hexdigest()[:10] + ":"
        self.members = [(prefix, prefix.encode(), table) for prefix, table in members]

    @staticmethod
    def segments(raw: bytes) -> dict[bytes, bytes]:
        """A group value's packed states by definition prefix."""
        if raw[:1] != _GROUP_TAG or (len(raw) - 1) % _SEGMENT:
            raise ValueError(f"not a tumbling group value ({len(raw)} bytes)")
        return {raw[i:i + 12]: raw[i + 12:i + _SEGMENT] for i in range(1, len(raw), _SEGMENT)}

    def stored(self, entity: str, load: Callable[[str], bytes | None]) -> dict[bytes, bytes]:
        """The packed states the store holds for ``entity``, by definition prefix (empty: none)."""
        raw = load(self.prefix + entity)
        return {} if raw is None else self.segments(raw)

    def load_missing(self, base: Sequence[str], load: Callable[[str], bytes | None]) -> None:
        """Install the stored state of every entity of ``base`` a member table does not hold."""
        groups: dict[str, dict[bytes, bytes]] = {}
        for prefix, pb, table in self.members:
            for k in table.missing(base):
                segs = groups.get(k)
                if segs is None:
                    segs = groups[k] = self.stored(k, load)
                packed = segs.get(pb) or load(prefix + k)       # else: a store from before the groups
                if packed is not None:
                    table.load(k, *Windows.decode(packed))

    def take_dirty(self, load: Callable[[str], bytes | None]) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` of every entity some member wrote since the last call.

        Members can differ: an event late for a minute's window may still be
        in the current hour. A member that did not write an entity has the
        state it had at the last flush, which is what the store holds."""
        gp = self.prefix.encode()
        taken = [table.take_dirty_packed(gp) for _, _, table in self.members]
        keys = [k for k, _ in taken[0]]
        if all(len(t) == len(keys) and [k for k, _ in t] == keys for t in taken[1:]):
            # the common case: every member wrote the same entities (in the same order: the same events)
            pbs = [pb for _, pb, _ in self.members]
            return [(k, _GROUP_TAG + b"".join(b for pb, (_, v) in zip(pbs, row) for b in (pb, v)))
                    for k, row in zip(keys, zip(*taken))]
        dirty = [(prefix, pb, dict(t)) for (prefix, pb, _), t in zip(self.members, taken)]
        out = []
        for k in dict.fromkeys(k for _, _, d in dirty for k in d):
            parts: list[bytes] = []
            stored: dict[bytes, bytes] | None = None
            entity = k[len(gp):].decode("utf-8")
            for prefix, pb, d in dirty:
                packed = d.get(k)
                if packed is None:                  # not written by this member since the last flush
                    if stored is None:
                        stored = self.stored(entity, load)
                    packed = stored.get(pb) or load(prefix + entity)
                if packed is not None:
                    parts += (pb, packed)
            out.append((k, _GROUP_TAG + b"".join(parts)))
        return out

    def bound(self, max_cached: int) -> None:
        """Drop every member's cached state together when one exceeds ``max_cached`` entities."""
        if any(len(table) > max_cached for _, _, table in self.members):
            for _, _, table in self.members:
                table.clear()


class Windows:
    """The window features of one partition: update per batch (native kernels), flush per commit.

    Each tumbling definition has an ``ext.TumblingTable`` holding the state of
    the entities it has seen; each sliding definition one ``ext.SlidingWindow``
    per entity (two with a grace period); each hopping or session definition
    an ``ext.HoppingTable`` / ``ext.SessionTable`` and, for ``distinct``, a
    Python distinct counter; a session definition with a grace period, a
    Python table of mergeable sessions. Entities not held are loaded from the partition
    store on first sight. ``kernels`` picks the backend module (default:
    ``ext``, i.e. native unless disabled); tests pass ``ext._reference`` or
    ``ext._native`` to run both.
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
            raise ValueError("two windows have the same definition (kind, key, field, span, hop, grace)")
        self.max_cached = max_cached
        self._plan: list[tuple[str, str, str, Any, list[int], tuple[str, ...], list[tuple[int, str]]]] = []
        for s in self.specs:
            if s.kind == "tumbling" and s.as_hopping is None:
                table: Any = kernels.TumblingTable(s.size_ms)
                columns = _COLUMNS
            elif s.kind == "sliding":
                table = _Sliding(s, kernels)
                columns = _SCOLUMNS
            elif s.kind == "session" and s.grace_ms:
                table = _GraceSessions(s)
                columns = _SESSION_COLUMNS
            else:
                table = _Keyed(s.as_hopping or s, kernels)
                columns = _SESSION_COLUMNS if s.kind == "session" else _HCOLUMNS
            cols = [columns[a] for a in s.aggs]
            omit = [(columns[a], n) for a, n in zip(s.aggs, s.names) if a in _OMITTED_IF_NAN]
            self._plan.append((s.key, s.field, s.prefix, table, cols, s.names, omit))
        # tumbling definitions over one (key, field) share a state key per entity (_TumblingGroup)
        members: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(self._plan):
            if not isinstance(p[3], (_Sliding, _Keyed, _GraceSessions)):
                members.setdefault((p[0], p[1]), []).append(i)
        self._groups: dict[int, _TumblingGroup] = {}
        #: by the kernels' output widths: the joined rows' columns to keep, and the omittable ones
        self._gather: dict[tuple[int, ...], tuple[np.ndarray, list[tuple[int, str]]]] = {}
        for (key_field, field), idx in members.items():
            if len(idx) > 1:
                group = _TumblingGroup(key_field, field, [(self._plan[i][2], self._plan[i][3]) for i in idx])
                self._groups.update(dict.fromkeys(idx, group))

    def _gather_plan(self, widths: tuple[int, ...]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """For kernel outputs of these widths joined side by side: the columns of the feature
        matrix (spec order), and ``(column, name)`` of the features omitted where NaN."""
        take: list[int] = []
        omitted: list[tuple[int, str]] = []
        at = 0
        for width, (_, _, _, _, cols, _, omit) in zip(widths, self._plan):
            omitted += [(len(take) + cols.index(col), name) for col, name in omit]
            take += [at + c for c in cols]
            at += width
        return np.array(take, dtype=np.intp), omitted

    @property
    def late(self) -> int:
        """Events that arrived too late to be applied (counted, not applied), over all windows."""
        return sum(p[3].late for p in self._plan)

    def update_batch(self, events: Sequence[Mapping[str, object]], ts: Sequence[int],
                     load: Callable[[str], bytes | None]) -> list[dict[str, float]]:
        """Apply events in order (one batch) and return each event's features.

        Entity keys and values are read from the events once per field, not
        once per window, and every window's columns are joined into one
        matrix, so each event's feature dict is built in one go.
        """
        return self.update_columns(events, ts, load)[0]

    def update_columns(self, events: Sequence[Mapping[str, object]], ts: Sequence[int],
                       load: Callable[[str], bytes | None]) -> tuple[list[dict[str, float]], np.ndarray]:
        """:meth:`update_batch`, and the features as a matrix too: a row per event, a column
        per feature name in spec order, NaN where the dict omits the feature (a model reads
        them from there without a dict lookup per value)."""
        n = len(events)
        if not n:
            return [], np.empty((0, len(self.names)))
        ts_arr = np.fromiter(ts, dtype=np.int64, count=n)
        entity: dict[str, list[str]] = {}
        raw_values: dict[str, list[object]] = {}
        numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        results: list[np.ndarray] = []                 # each window's kernel rows, all its columns
        loaded: set[int] = set()                       # groups whose members' state is loaded
        for at_plan, (key_field, field, prefix, table, _cols, _names, _omit) in enumerate(self._plan):
            base = entity.get(key_field)
            if base is None:
                base = entity[key_field] = [str(e.get(key_field)) for e in events]
            vals = raw_values.get(field)
            if vals is None:
                vals = raw_values[field] = [e.get(field) for e in events]
            if isinstance(table, (_Keyed, _GraceSessions)):
                res = table.update_many(base, ts_arr, vals, load)
            else:
                num = numeric.get(field)
                if num is None and isinstance(table, _Sliding) and not table.spec.reads_values:
                    # count/since/distinct only: the field need not be numeric (an item id)
                    num = (np.zeros(n, dtype=np.float64),
                           np.fromiter((v is not None for v in vals), dtype=np.bool_, count=n))
                elif num is None:
                    has = np.fromiter((v is not None for v in vals), dtype=np.bool_, count=n)
                    values = np.fromiter((0.0 if v is None else v for v in vals), dtype=np.float64, count=n)
                    num = numeric[field] = (values, has)
                values, has = num
                if isinstance(table, _Sliding):
                    res = table.update_many([prefix + k for k in base], ts_arr, values, has, load, base, vals)
                else:
                    # a tumbling kernel holds entities by their bare key: no key string built per
                    # event and definition; the definition's prefix names the state (load, flush)
                    group = self._groups.get(at_plan)
                    if group is None:
                        for k in table.missing(base):
                            raw = load(prefix + k)
                            if raw is not None:
                                table.load(k, *self.decode(raw))
                    elif id(group) not in loaded:
                        group.load_missing(base, load)
                        loaded.add(id(group))
                    res = table.update_many(base, ts_arr, values, has)
            results.append(res)
        widths = tuple(r.shape[1] for r in results)
        gather = self._gather.get(widths)
        if gather is None:
            gather = self._gather[widths] = self._gather_plan(widths)
        take, omitted = gather
        # one join and one gather (a fancy index per window and then a join: 6x slower on small batches)
        matrix = (results[0] if len(results) == 1 else np.concatenate(results, axis=1)).take(take, axis=1)
        out = [dict(zip(self.names, row)) for row in matrix.tolist()]
        for col, name in omitted:                # "last"/"since" with no previous item: omitted
            for i in np.flatnonzero(np.isnan(matrix[:, col])).tolist():
                del out[i][name]
        return out, matrix

    def update(self, event: Mapping[str, object], ts: int,
               load: Callable[[str], bytes | None]) -> dict[str, float]:
        """Apply one event and return its features (a batch of one)."""
        return self.update_batch([event], [ts], load)[0]

    def flush(self, put: Callable[[str, bytes], None],
              put_many: Callable[[list[tuple[bytes, bytes]]], object] | None = None,
              get: Callable[[str], bytes | None] | None = None) -> int:
        """Write every entity touched since the last flush (once each); bound the cache.

        ``put_many``: takes ``(UTF-8 key, value)`` pairs in one call (the
        store's :meth:`~streams.state.PartitionStore.put_many`); a tumbling
        table's entries come packed from its kernel and go there without a
        Python step per key. ``get``: reads the store, for a tumbling group
        whose members did not all write an entity (:class:`_TumblingGroup`);
        needed when the spec has such groups.
        """
        def put_packed(entries: list[tuple[bytes, bytes]]) -> int:
            if put_many is not None:
                put_many(entries)
            else:
                for key_bytes, raw in entries:
                    put(key_bytes.decode("utf-8"), raw)
            return len(entries)

        n = 0
        done: set[int] = set()
        for i, p in enumerate(self._plan):
            table = p[3]
            group = self._groups.get(i)
            if group is not None:
                if id(group) not in done:
                    done.add(id(group))
                    n += put_packed(group.take_dirty(get if get is not None else _no_store))
                    group.bound(self.max_cached)
                continue
            if isinstance(table, (_Sliding, _Keyed, _GraceSessions)):
                for key, raw in table.take_dirty():
                    put(key, raw)
                    n += 1
                table.bound(self.max_cached)
                continue
            n += put_packed(table.take_dirty_packed(p[2].encode()))
            if len(table) > self.max_cached:
                table.clear()
        return n

    @staticmethod
    def decode(raw: bytes) -> tuple[int, int, float, float, float]:
        """A tumbling window's stored state: packed (``b"T"`` + ``<qqddd``, since 2026-11-27), or
        the JSON ``[start, count, sum, min or null, max or null]`` stores written before hold."""
        if len(raw) == 41 and raw[0] == 0x54:      # b"T"; JSON starts with "["
            return _UNPACK_TUMBLING(raw)[1:]  # type: ignore[no-any-return]
        start, count, total, lo, hi = orjson.loads(raw)
        return (start, count, total, math.inf if lo is None else lo, -math.inf if hi is None else hi)
