"""Sliding windows (streams.features) against a brute-force reference, under both ext/ backends.

The reference recomputes every event's window from the raw events with the
rules of the streams.features docstring: applied items of the entity with ts
in (end - size, end], end = the event's ts (its own value included when
applied), or the entity's newest ts for a late event; ``last`` = the value of
the item just before the event in (ts, arrival) order, omitted if none; ``since`` = end - its ts.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext import _reference as ref
from streams.features import Windows, WindowSpec
from tests.unit.ext_backends import assert_bits_equal, require_native
from tests.unit.window_oracles import check, streams, values
from tests.unit.window_oracles import random_stream as _random_stream
from tests.unit.window_oracles import run as _run

AGGS = ("count", "sum", "mean", "min", "max", "var", "std", "last", "since")
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def brute_force(events, size, grace, half_life=None):
    """[(features, late?, scale)] for events [(key, ts, value or None)] in list order (values: numbers or ids).

    With ``half_life``: also decay_sum = sum(v_i * 2**(-(end - t_i) / half_life)) over the window
    (math.fsum) and decay_mean = that over the sum of the weights, and scale is (scale, decay scale).
    """
    applied: list[tuple[str, int, int, float]] = []   # (key, ts, arrival, value)
    newest: dict[str, int] = {}
    out = []
    for i, (k, t, v) in enumerate(events):
        late = k in newest and t < newest[k] - grace
        end = newest[k] if late else t
        items = sorted((tj, j, vj) for (kj, tj, j, vj) in applied if kj == k and end - size < tj <= end)
        prev = items[-1] if items else None
        if not late and v is not None:
            items.append((t, i, v))
            applied.append((k, t, i, v))
            newest[k] = max(newest.get(k, t), t)
        xs = [x for _, _, x in items]
        n = len(xs)
        if any(isinstance(x, str) for x in xs):        # item ids: count, distinct and since only
            f = {"count": float(n)}
        elif n:
            mean = math.fsum(xs) / n
            var = math.fsum((x - mean) ** 2 for x in xs) / n
            f = {"count": float(n), "sum": math.fsum(xs), "mean": mean, "min": min(xs), "max": max(xs),
                 "var": var, "std": math.sqrt(var)}
        else:
            f = dict.fromkeys(("count", "sum", "mean", "min", "max", "var", "std"), 0.0)
        f["distinct"] = float(len(set(xs)))             # numbers by value: 1 and 1.0 are one
        if prev is not None:
            f["last"] = prev[2]
            f["since"] = float(end - prev[0])
        scale = max((abs(x) for x in xs if not isinstance(x, str)), default=0.0)
        if half_life is not None:
            ws = [2.0 ** (-(end - tj) / half_life) for tj, _, _ in items]
            f["decay_sum"] = math.fsum(w * x for w, x in zip(ws, xs))
            if n:    # the mean from weights relative to the newest item: no underflow in the ratio
                rel = [2.0 ** (-(items[-1][0] - tj) / half_life) for tj, _, _ in items]
                f["decay_mean"] = math.fsum(w * x for w, x in zip(rel, xs)) / math.fsum(rel)
            else:
                f["decay_mean"] = 0.0
            scale = (scale, math.fsum(w * abs(x) for w, x in zip(ws, xs)))
        out.append((f, late, scale))
    return out


IDS = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f"]))
#: numbers with every value aggregate, and item ids (the field need not be numeric) with distinct
CASES = [(values(small=50), AGGS), (IDS, ("count", "since", "distinct"))]


@pytest.mark.parametrize("vals, aggs", CASES, ids=["numbers", "ids"])
@SETTINGS
@given(size=st.sampled_from([1, 7, 100, 1000, 10**6]), grace=st.sampled_from([0, 3, 100, 2000, 10**7]),
       in_order=st.booleans(), data=st.data())
def test_sliding_equals_brute_force(backend, vals, aggs, size, grace, in_order, data):
    raw = data.draw(streams(vals))
    events = sorted(raw, key=lambda e: e[1]) if in_order else raw
    spec = WindowSpec(key="k", field="x", size_ms=size, kind="sliding", grace_ms=grace, aggs=aggs)
    cuts = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
    reload_at = frozenset(data.draw(st.lists(st.integers(0, 40), max_size=10)))
    got, late, _, _ = run(spec, events, backend, batches=cuts + [len(events)], reload_at=reload_at)
    expected = brute_force(events, size, grace)
    check(got, expected, spec)
    assert late == sum(e[1] for e in expected)
    if in_order:
        assert late == 0


@SETTINGS
@given(size=st.sampled_from([1, 7, 100, 1000, 10**6]), grace=st.sampled_from([0, 3, 100, 2000, 10**7]),
       half_life=st.sampled_from([1, 7, 500, 10**6]), in_order=st.booleans(), data=st.data())
def test_sliding_decay_equals_brute_force(backend, size, grace, half_life, in_order, data):
    raw = data.draw(streams(values(small=50)))
    events = sorted(raw, key=lambda e: e[1]) if in_order else raw
    spec = WindowSpec(key="k", field="x", size_ms=size, kind="sliding", grace_ms=grace, half_life_ms=half_life,
                      aggs=("count", "sum", "decay_sum", "decay_mean"))
    cuts = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
    reload_at = frozenset(data.draw(st.lists(st.integers(0, 40), max_size=10)))
    got, late, _, _ = run(spec, events, backend, batches=cuts + [len(events)], reload_at=reload_at)
    expected = brute_force(events, size, grace, half_life)
    check(got, expected, spec)
    assert late == sum(e[1] for e in expected)


def random_stream(seed, n, **kw):
    return _random_stream(seed, n, value=lambda r: round(r.uniform(-100, 100), 3), **kw)


def run(*args, **kw):
    """Flushed only at the reloads: the windows carry their state in memory in between."""
    return _run(*args, flush_every_batch=False, **kw)


@pytest.mark.parametrize("grace", [0, 40, 500])
@pytest.mark.parametrize("distinct", [False, True])
def test_sliding_long_random_stream(backend, grace, distinct):
    """distinct: few values (integers up to 40, as floats), so the counts repeat values."""
    if distinct:
        events = _random_stream(8, 3000, keys=4, disorder=600, value=lambda r: float(r.randint(0, 40)))
        aggs: tuple[str, ...] = ("count", "sum", "distinct")
    else:
        events, aggs = random_stream(1, 3000, disorder=600), AGGS
    spec = WindowSpec(key="k", field="x", size_ms=400, kind="sliding", grace_ms=grace, aggs=aggs)
    rnd = random.Random(2)
    batches = [rnd.randint(1, 300) for _ in range(100)]
    got, late, _, _ = run(spec, events, backend, batches=batches, reload_at=frozenset(range(0, 100, 3)))
    expected = brute_force(events, 400, grace)
    check(got, expected, spec)
    assert late == sum(e[1] for e in expected) > 0
    if distinct:
        assert max(g["x_distinct_400ms_by_k"] for g in got) > 5


def test_sliding_decay_long_stream_restarts_bit_for_bit(backend):
    """Blocks roll hundreds of times; a restart from the store at every batch changes no bit."""
    events = random_stream(3, 4000, disorder=600)
    spec = WindowSpec(key="k", field="x", size_ms=400, kind="sliding", grace_ms=200, half_life_ms=150,
                      aggs=("count", "decay_sum", "decay_mean"))
    rnd = random.Random(4)
    batches = [rnd.randint(1, 200) for _ in range(80)]
    kept, late, _, _ = run(spec, events, backend, batches=batches)
    restarted, late2, _, _ = run(spec, events, backend, batches=batches, reload_at=frozenset(range(80)))
    assert late == late2 > 0
    assert [list(g) for g in kept] == [list(g) for g in restarted]
    assert_bits_equal([x for g in kept for x in g.values()], [x for g in restarted for x in g.values()])
    check(kept, brute_force(events, 400, 200, 150), spec)


def test_decay_semantics_and_state(backend):
    spec = WindowSpec(key="k", field="x", size_ms=100, kind="sliding", grace_ms=50, half_life_ms=10,
                      aggs=("count", "decay_sum", "decay_mean"))
    w, store = Windows([spec], kernels=backend), {}

    def f(t, v=None):
        got = w.update({"k": "a", "x": v} if v is not None else {"k": "a"}, t, store.get)
        return tuple(got[n] for n in spec.names)

    assert f(0, 1.0) == (1.0, 1.0, 1.0)
    assert f(10, 1.0) == (2.0, 1.5, 1.0)                   # one half-life later: 1 * 0.5 + 1
    assert f(20) == (2.0, 0.75, 1.0)                       # value-less: the same items, 10 ms older
    approx = pytest.approx
    assert f(105, 4.0) == (2.0, approx(4.0 + 2 ** -9.5), approx((4.0 + 2 ** -9.5) / (1 + 2 ** -9.5)))  # 0 left
    assert f(60, 8.0)[:2] == (3.0, approx(8.0 + 2 ** -6 + 2 ** -5))   # within grace: its own window (-40, 60]
    w.flush(store.__setitem__)
    w = Windows([spec], kernels=backend)
    assert f(106, 0.0)[:2] == (4.0, approx(4.0 * 2 ** -0.1 + 8.0 * 2 ** -4.6 + 2 ** -9.6))  # (+ 0.0)
    assert f(500) == (0.0, 0.0, 0.0)                      # nothing in (400, 500]
    # the sliding state keeps its prefix whatever the half-life; the decay state has its own
    other = WindowSpec(**{**spec.__dict__, "half_life_ms": 20})
    assert other.prefix == spec.prefix and other.decay_prefix != spec.decay_prefix
    assert spec.prefix + "a" in store and spec.decay_prefix + "a" in store


def test_out_of_order_semantics(backend):
    spec = WindowSpec(key="k", field="x", size_ms=100, kind="sliding", grace_ms=50,
                      aggs=("count", "sum", "last"))
    w, store = Windows([spec], kernels=backend), {}

    def f(t, v):
        got = w.update({"k": "a", "x": v}, t, store.get)
        return tuple(got.get(n) for n in spec.names)

    assert f(1000, 1.0) == (1.0, 1.0, None)
    assert f(1060, 2.0) == (2.0, 3.0, 1.0)
    # 40 ms behind the newest (1060): within grace -> applied; its window is (920, 1020]
    assert f(1020, 4.0) == (2.0, 5.0, 1.0)
    assert w.late == 0
    # later events see it: (1010, 1110] holds 1020 and 1060
    assert f(1110, 8.0) == (3.0, 14.0, 2.0)
    # 1050 < 1110 - 50: late -> counted, not applied, gets the current window (1010, 1110]
    assert f(1050, 100.0) == (3.0, 14.0, 8.0)
    assert w.late == 1
    assert f(1111, 0.0) == (4.0, 14.0, 8.0)
    # a value-less event: not applied, the window ending at its ts: (1110, 1210]
    assert w.update({"k": "a"}, 1210, store.get) == {"x_count_100ms_by_k": 1.0, "x_sum_100ms_by_k": 0.0,
                                                     "x_last_100ms_by_k": 0.0}
    assert w.update({"k": "zz"}, 5, store.get) == {"x_count_100ms_by_k": 0.0, "x_sum_100ms_by_k": 0.0}
    assert w.flush(store.__setitem__) == 1                       # "zz" has no state to write


def test_flush_reload_continues_bit_for_bit(backend):
    events = random_stream(3, 4000, keys=20, disorder=300)
    spec = WindowSpec(key="k", field="x", size_ms=2000, kind="sliding", grace_ms=100, aggs=AGGS)
    whole, late_whole, _, _ = run(spec, events, backend, batches=[97] * 50)
    store: dict[str, bytes] = {}
    parts, late_parts, _, _ = run(spec, events, backend, batches=[97] * 50,
                                  reload_at=frozenset(range(0, 50, 2)), store=store)
    assert late_parts == late_whole > 0
    names = spec.names
    for a, b in zip(whole, parts):
        assert set(a) == set(b)
        assert_bits_equal([a[n] for n in names if n in a], [b[n] for n in names if n in b])
    # the stored state is the items of (newest - size - grace, newest], oldest first
    for raw in store.values():
        ts, vals = orjson.loads(raw)
        assert ts == sorted(ts) and len(ts) == len(vals)
        assert ts[-1] - ts[0] < 2000 + 100


def test_native_and_reference_backends_agree_bit_for_bit():
    nat = require_native()
    events = random_stream(4, 5000, keys=30, disorder=200)
    spec = WindowSpec(key="k", field="x", size_ms=1500, kind="sliding", grace_ms=60, aggs=AGGS)
    a, la, _, sa = run(spec, events, nat, batches=[250] * 20, reload_at=frozenset({3, 7}))
    b, lb, _, sb = run(spec, events, ref, batches=[250] * 20, reload_at=frozenset({3, 7}))
    assert la == lb and sa == sb
    for x, y in zip(a, b):
        assert list(x) == list(y)
        assert_bits_equal(list(x.values()), list(y.values()))


def bounded_key_stream(spec, backend, seed, batches, field="x", value=lambda rnd: rnd.random()):
    """Yield the store after each batch of 100 events over 7 keys, 5-15 ms apart (reloaded every 20 batches)."""
    store: dict[str, bytes] = {}
    w = Windows([spec], kernels=backend)
    rnd = random.Random(seed)
    t = 0
    for batch in range(batches):
        docs, ts = [], []
        for _ in range(100):
            t += rnd.randint(5, 15)
            docs.append({"k": rnd.randrange(7), field: value(rnd)})
            ts.append(t)
        w.update_batch(docs, ts, store.get)
        w.flush(store.__setitem__)
        if batch % 20 == 19:
            w = Windows([spec], kernels=backend)                 # reload from the store too
        yield store


@pytest.mark.parametrize("grace", [0, 1000])
def test_state_stays_bounded(backend, grace):
    """Bounded key set, advancing time: stored entries and bytes stop growing."""
    spec = WindowSpec(key="k", field="x", size_ms=5_000, kind="sliding", grace_ms=grace, aggs=("count", "mean"))
    sizes = [(len(store), sum(len(v) for v in store.values()), max(len(orjson.loads(v)[0]) for v in store.values()))
             for store in bounded_key_stream(spec, backend, 5, 200)]
    assert {s[0] for s in sizes[10:]} == {7}
    # items per key: at most the events of one size + grace span (gaps >= 5 ms)
    assert max(s[2] for s in sizes) <= (5_000 + grace) // 5 + 1
    first, last = max(s[1] for s in sizes[20:100]), max(s[1] for s in sizes[100:])
    assert last <= first * 1.1, (first, last)


def test_sliding_decay_state_stays_bounded(backend):
    """The decayed sums keep their own items: those of one size + grace span, like the window's."""
    spec = WindowSpec(key="k", field="x", size_ms=5_000, kind="sliding", grace_ms=1000, half_life_ms=700,
                      aggs=("decay_sum",))
    sizes = []
    for store in bounded_key_stream(spec, backend, 5, 200):
        decay = [orjson.loads(v) for k, v in store.items() if k.startswith(spec.decay_prefix)]
        sizes.append((len(decay), sum(len(v) for v in store.values()), max(len(d[1]) for d in decay)))
    assert {s[0] for s in sizes[10:]} == {7}
    assert 100 < max(s[2] for s in sizes) <= 6_000 // 5 + 1
    first, last = max(s[1] for s in sizes[20:100]), max(s[1] for s in sizes[100:])
    assert last <= first * 1.1, (first, last)


def test_spec_rules_and_prefixes():
    base = {"key": "k", "field": "x", "size_ms": 60_000}
    tumbling = WindowSpec(**base)
    # tumbling prefixes are those of earlier releases (stored state stays readable)
    assert tumbling.prefix == "w" + hashlib.sha1(b"tumbling|k|x|60000").hexdigest()[:10] + ":"
    sliding = WindowSpec(**base, kind="sliding")
    prefixes = {tumbling.prefix, sliding.prefix, WindowSpec(**base, kind="sliding", grace_ms=1).prefix,
                WindowSpec(key="k", field="x", size_ms=30_000, kind="sliding").prefix,
                WindowSpec(key="k", field="y", size_ms=60_000, kind="sliding").prefix,
                WindowSpec(key="j", field="x", size_ms=60_000, kind="sliding").prefix}
    assert len(prefixes) == 6
    assert sliding.prefix == WindowSpec(**base, kind="sliding", aggs=("var",)).prefix   # aggs: not state
    assert WindowSpec(**base, kind="sliding", aggs=("std", "last")).names == ("x_std_1m_by_k", "x_last_1m_by_k")
    parsed = WindowSpec.parse({"key": "k", "field": "x", "size_ms": 60_000, "kind": "sliding",
                               "grace_ms": 5, "aggs": ["var"]})
    assert parsed == WindowSpec(**base, kind="sliding", grace_ms=5, aggs=("var",))
    with pytest.raises(ValueError, match="collide"):
        Windows([tumbling, sliding])


@pytest.mark.parametrize("bad", [{"aggs": ("last",)}, {"aggs": ("since",)}, {"kind": "session", "grace_ms": 5},
                                 {"kind": "sliding", "grace_ms": -1}, {"kind": "sliding", "aggs": ()},
                                 {"kind": "sliding", "size_ms": 1.5}, {"kind": "hopping"}])
def test_bad_sliding_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        WindowSpec(**{"key": "k", "field": "x", "size_ms": 10, **bad})


@pytest.mark.parametrize("doc", [{"grace": 5}, {"size_ms": "1h"}, {"aggs": "count"}, {"grace_ms": 1.5}])
def test_bad_window_docs_are_rejected(doc):
    with pytest.raises((ValueError, TypeError)):
        WindowSpec.parse({"key": "k", "field": "x", "size_ms": 10, "kind": "sliding", **doc})


def test_tumbling_outputs_unchanged_by_kernels_argument(backend):
    """Tumbling through the new code path: the same features and stored bytes as ext.TumblingTable alone."""
    spec = WindowSpec(key="k", field="x", size_ms=100, aggs=("count", "sum", "mean", "min", "max"))
    events = random_stream(6, 2000, disorder=150)
    got, late, w, store = run(spec, events, backend, batches=[100] * 20, reload_at=frozenset({4, 9}))
    w.flush(store.__setitem__)
    table = backend.TumblingTable(100)
    keys = [spec.prefix + k for k, _, _ in events]
    rows = table.update_many(keys, np.array([t for _, t, _ in events], dtype=np.int64),
                             np.array([0.0 if v is None else v for _, _, v in events]),
                             np.array([v is not None for _, _, v in events]))
    assert [list(g.values()) for g in got] == rows.tolist()
    assert late == table.late
    for key, start, count, total, lo, hi in table.take_dirty():
        assert store[key] == struct.pack("<cqqddd", b"T", start, count, total, lo, hi)


def test_tumbling_state_in_the_json_format_of_older_stores_still_loads(backend):
    """Stores written before the packed format hold [start, count, sum, min or null, max or null]:
    a worker upgraded onto one continues its windows exactly."""
    spec = WindowSpec(key="k", field="x", size_ms=100, aggs=("count", "sum", "mean", "min", "max"))
    events = random_stream(6, 600, disorder=150)
    whole, _, _, _ = run(spec, events, backend, batches=[300, 300])
    first, _, w, store = run(spec, events[:300], backend, batches=[300])
    w.flush(store.__setitem__)
    old = {}
    for key, raw in store.items():                       # rewrite the state as an older store held it
        start, count, total, lo, hi = struct.unpack("<cqqddd", raw)[1:]
        old[key] = orjson.dumps([start, count, total, lo if count else None, hi if count else None])
    w2 = Windows([spec], kernels=backend)
    docs = [{"k": k, "x": v} if v is not None else {"k": k} for k, _, v in events[300:]]
    second = w2.update_batch(docs, [t for _, t, _ in events[300:]], old.get)
    assert first + second == whole


def test_sliding_distinct_state_stays_bounded(backend):
    """Bounded key set, advancing time: the distinct state holds one size + grace span per key."""
    spec = WindowSpec(key="k", field="item", size_ms=5_000, kind="sliding", grace_ms=1_000,
                      aggs=("count", "distinct"))
    sizes = []
    for store in bounded_key_stream(spec, backend, 6, 150, field="item", value=lambda r: f"i{r.randrange(10_000)}"):
        dist = [orjson.loads(v) for k, v in store.items() if k.startswith(spec.distinct_prefix)]
        sizes.append((len(dist), max(len(d[1]) for d in dist)))
    assert {s[0] for s in sizes[10:]} == {7}
    assert max(s[1] for s in sizes) <= 6_000 // 5 + 1
