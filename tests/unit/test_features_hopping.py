"""Hopping windows and distinct counts (streams.features) against a brute-force reference, both backends.

The reference recomputes every event's window from the raw events with the
rules of the streams.features docstring: the window of an event at ``ts`` is
``[end - size, end)`` with ``end = (ts // hop + 1) * hop`` (or the window of
the entity's newest applied ts for a late event: ``end(ts) + grace <=
newest``), over the entity's applied events processed so far.
"""

from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ext import _reference as ref
from streams.features import Windows, WindowSpec
from tests.unit.ext_backends import assert_bits_equal, require_native
from tests.unit.window_oracles import check, random_stream, run, streams

NUMERIC = ("count", "sum", "mean", "min", "max", "var", "std")
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HLL_REL_ERR = 0.05      # 3 standard deviations of the estimate (documented in streams.features)


def items(n):
    """Values of a stream of item ids (strings: distinct counts only)."""
    return lambda rnd: f"item{rnd.randrange(n)}"


def token(v):
    return v if isinstance(v, str) else float(v)


def aggregates(xs):
    """Exact-as-possible aggregates of the values xs (math.fsum), and a scale for tolerances."""
    nums = [x for x in xs if not isinstance(x, str)]
    f = {"distinct": float(len({token(x) for x in xs}))}
    n = len(nums)
    if n:
        mean = math.fsum(nums) / n
        var = math.fsum((x - mean) ** 2 for x in nums) / n
        f.update(count=float(n), sum=math.fsum(nums), mean=mean, min=min(nums), max=max(nums), var=var,
                 std=math.sqrt(var))
    else:
        f.update(dict.fromkeys(NUMERIC, 0.0))
    return f, max((abs(x) for x in nums), default=0.0)


def brute_force(events, size, hop, grace):
    """[(aggregates, late, scale)] for events [(key, ts, value or None)] processed in list order."""
    applied: list[tuple[str, int, object]] = []
    newest: dict[str, int] = {}
    out = []
    for k, t, v in events:
        end = (t // hop + 1) * hop
        late = k in newest and end + grace <= newest[k]
        if late:
            end = (newest[k] // hop + 1) * hop
        elif v is not None:
            applied.append((k, t, v))
            newest[k] = max(newest.get(k, t), t)
        f, scale = aggregates([x for kj, tj, x in applied if kj == k and end - size <= tj < end])
        out.append((f, late, scale))
    return out


@SETTINGS
@given(raw=streams(), hop=st.sampled_from([1, 7, 100, 1000]), m=st.sampled_from([1, 2, 5]),
       grace=st.sampled_from([0, 3, 100, 2000]), in_order=st.booleans(), data=st.data())
def test_hopping_equals_brute_force(backend, raw, hop, m, grace, in_order, data):
    events = sorted(raw, key=lambda e: e[1]) if in_order else raw
    spec = WindowSpec(key="k", field="x", size_ms=hop * m, hop_ms=hop, kind="hopping", grace_ms=grace,
                      aggs=(*NUMERIC, "distinct"))
    cuts = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
    reload_at = frozenset(data.draw(st.lists(st.integers(0, 40), max_size=10)))
    got, late, _, _ = run(spec, events, backend, batches=cuts + [len(events)], reload_at=reload_at)
    expected = brute_force(events, hop * m, hop, grace)
    check(got, expected, spec, all_names=True)
    assert late == sum(e[1] for e in expected)
    if in_order:
        assert late == 0


@SETTINGS
@given(raw=streams(), size=st.sampled_from([1, 7, 100, 1000]), grace=st.sampled_from([0, 3, 100, 2000]),
       aggs=st.sampled_from([("count", "mean"), NUMERIC, ("count", "distinct")]), data=st.data())
def test_tumbling_with_grace_or_more_aggregations_is_hopping_with_hop_equal_size(backend, raw, size, grace, aggs,
                                                                                 data):
    """What ext.TumblingTable cannot hold (grace; var, std, distinct) runs as the hopping window of the
    same windows: each event gets its own tumbling window's aggregates, late = closed + grace."""
    spec = WindowSpec(key="k", field="x", size_ms=size, kind="tumbling", grace_ms=grace, aggs=aggs)
    assume(spec.as_hopping is not None)   # else ext.TumblingTable (its own tests: value-less events differ)
    cuts = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
    reload_at = frozenset(data.draw(st.lists(st.integers(0, 40), max_size=10)))
    got, late, _, _ = run(spec, raw, backend, batches=cuts + [len(raw)], reload_at=reload_at)
    expected = brute_force(raw, size, size, grace)
    check(got, expected, spec, all_names=True)
    assert late == sum(e[1] for e in expected)


def test_tumbling_keeps_its_native_table_and_state_when_it_can(backend):
    """No grace, native aggregations: ext.TumblingTable and the state keys of earlier releases."""
    plain = WindowSpec(key="k", field="x", size_ms=100, aggs=("count", "sum"))
    assert plain.as_hopping is None and plain.reads_values
    w = Windows([plain], kernels=backend)
    assert isinstance(w._plan[0][3], backend.TumblingTable)
    graced = WindowSpec(key="k", field="x", size_ms=100, grace_ms=50, aggs=("count", "sum"))
    assert graced.as_hopping == WindowSpec(key="k", field="x", size_ms=100, hop_ms=100, kind="hopping",
                                           grace_ms=50, aggs=("count", "sum"))
    assert graced.names == plain.names and graced.prefix != graced.as_hopping.prefix
    ids = WindowSpec(key="k", field="sku", size_ms=100, aggs=("count", "distinct"))
    assert not ids.reads_values                              # an item id works as the field


@pytest.mark.parametrize("grace", [0, 300])
def test_long_stream_with_string_distinct(backend, grace):
    """A non-numeric field: distinct only (no value is read), exact below the threshold."""
    events = random_stream(1, 3000, disorder=2000, value=items(40))
    spec = WindowSpec(key="k", field="x", size_ms=2000, hop_ms=500, kind="hopping", grace_ms=grace,
                      aggs=("distinct",))
    rnd = random.Random(2)
    got, late, _, _ = run(spec, events, backend, batches=[rnd.randint(1, 300) for _ in range(60)],
                       reload_at=frozenset(range(0, 60, 3)))
    expected = brute_force(events, 2000, 500, grace)
    check(got, expected, spec, all_names=True)
    assert late == sum(e[1] for e in expected) > 0


def test_distinct_beyond_the_threshold_is_a_sketch_within_its_error(backend):
    """Many distinct items per entity and a small exact threshold: HyperLogLog estimates within 5%
    of the exact count, and a flush + reload continues bit for bit."""
    events = random_stream(3, 6000, keys=2, disorder=150_000, value=items(5000), p_missing=0.0)
    spec = WindowSpec(key="k", field="x", size_ms=400_000, hop_ms=100_000, kind="hopping", grace_ms=100,
                      aggs=("distinct",), distinct_exact_max=50)
    whole, late, _, store = run(spec, events, backend, batches=[200] * 30)
    parts, late2, _, _ = run(spec, events, backend, batches=[200] * 30, reload_at=frozenset(range(30)))
    assert late == late2 > 0
    assert_bits_equal([g[spec.names[0]] for g in whole], [g[spec.names[0]] for g in parts])
    expected = brute_force(events, 400_000, 100_000, 100)
    check(whole, expected, spec, all_names=True, hll_rel_err=HLL_REL_ERR)
    assert max(e[0]["distinct"] for e in expected) > 1000
    assert any(isinstance(p, str) for raw in store.values() for _, p in orjson.loads(raw)[1])   # sketches


def test_native_and_reference_agree_bit_for_bit():
    nat = require_native()
    events = random_stream(4, 5000, keys=30, disorder=3000)
    spec = WindowSpec(key="k", field="x", size_ms=3000, hop_ms=1000, kind="hopping", grace_ms=500,
                      aggs=(*NUMERIC, "distinct"), distinct_exact_max=20)
    a, la, _, sa = run(spec, events, nat, batches=[250] * 20, reload_at=frozenset({3, 7}))
    b, lb, _, sb = run(spec, events, ref, batches=[250] * 20, reload_at=frozenset({3, 7}))
    assert la == lb > 0 and sa == sb
    for x, y in zip(a, b):
        assert list(x) == list(y)
        assert_bits_equal(list(x.values()), list(y.values()))


def test_late_and_value_less_events(backend):
    spec = WindowSpec(key="k", field="x", size_ms=300, hop_ms=100, kind="hopping", grace_ms=50,
                      aggs=("count", "sum", "distinct"))
    w, store = Windows([spec], kernels=backend), {}

    def f(t, v=None, k="a"):
        got = w.update({"k": k, "x": v} if v is not None else {"k": k}, t, store.get)
        return tuple(got[n] for n in spec.names)

    assert spec.names == ("x_count_300ms_by_k", "x_sum_300ms_by_k", "x_distinct_300ms_by_k")
    assert f(10, 1.0) == (1.0, 1.0, 1.0)
    assert f(150, 2.0) == (2.0, 3.0, 2.0)           # window [-100, 200)
    assert f(290, 2.0) == (3.0, 5.0, 2.0)           # window [0, 300)
    assert f(340, 4.0) == (3.0, 8.0, 2.0)           # window [100, 400): 10 is out
    assert f(240, 8.0) == (4.0, 13.0, 3.0)          # window [0, 300) ends at 300, + 50 > 340: applied
    assert f(190, 9.0) == (4.0, 16.0, 3.0)          # window ends at 200, + 50 <= 340: late, newest's window
    assert w.late == 1
    assert f(450) == (3.0, 14.0, 3.0)               # value-less: window [200, 500), nothing applied
    assert f(450, k="new") == (0.0, 0.0, 0.0)
    assert w.flush(store.__setitem__) == 2          # numeric and distinct state of "a"


@pytest.mark.parametrize("grace", [0, 1000])
def test_state_stays_bounded(backend, grace):
    """Bounded key set, advancing time: stored entries and bytes stop growing."""
    spec = WindowSpec(key="k", field="x", size_ms=5_000, hop_ms=1_000, kind="hopping", grace_ms=grace,
                      aggs=("count", "mean", "distinct"), distinct_exact_max=30)
    store: dict[str, bytes] = {}
    w = Windows([spec], kernels=backend)
    rnd = random.Random(5)
    sizes = []
    t = 0
    for batch in range(200):
        docs, ts = [], []
        for _ in range(100):
            t += rnd.randint(5, 15)
            docs.append({"k": rnd.randrange(7), "x": float(rnd.randrange(1000))})
            ts.append(t)
        w.update_batch(docs, ts, store.get)
        w.flush(store.__setitem__)
        if batch % 20 == 19:
            w = Windows([spec], kernels=backend)
        sizes.append((len(store), sum(len(v) for v in store.values())))
    assert {s[0] for s in sizes[10:]} == {14}
    first, last = max(s[1] for s in sizes[20:100]), max(s[1] for s in sizes[100:])
    assert last <= first * 1.1, (first, last)
    for raw in store.values():                       # buckets of one size + grace span at most
        assert len(orjson.loads(raw)[1]) <= (5_000 + grace) // 1_000 + 2


@pytest.mark.parametrize("bad", [{"kind": "hopping"}, {"kind": "hopping", "hop_ms": 3},
                                 {"kind": "hopping", "hop_ms": 20}, {"kind": "hopping", "hop_ms": 0},
                                 {"kind": "hopping", "hop_ms": 1, "size_ms": 10**6},
                                 {"kind": "hopping", "hop_ms": 5, "aggs": ("last",)},
                                 {"kind": "hopping", "hop_ms": 5, "aggs": ("since",)},
                                 {"kind": "tumbling", "hop_ms": 5}, {"kind": "tumbling", "aggs": ("since",)},
                                 {"kind": "hopping", "hop_ms": 5, "aggs": ("distinct",),
                                  "distinct_exact_max": 0}])
def test_bad_hopping_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        WindowSpec(**{"key": "k", "field": "x", "size_ms": 10, **bad})


def test_names_prefixes_and_parse():
    h = WindowSpec(key="k", field="x", size_ms=60_000, hop_ms=10_000, kind="hopping", aggs=("sum", "distinct"))
    assert h.names == ("x_sum_1m_by_k", "x_distinct_1m_by_k")
    assert h.reads_values and not WindowSpec(key="k", field="x", size_ms=60_000, hop_ms=10_000, kind="hopping",
                                             aggs=("count", "distinct")).reads_values
    others = [WindowSpec(key="k", field="x", size_ms=60_000, hop_ms=20_000, kind="hopping"),
              WindowSpec(key="k", field="x", size_ms=60_000, hop_ms=10_000, kind="hopping", grace_ms=1),
              WindowSpec(key="k", field="x", size_ms=60_000, kind="sliding"),
              WindowSpec(key="k", field="x", size_ms=60_000)]
    prefixes = {h.prefix, h.distinct_prefix, *(o.prefix for o in others)}
    assert len(prefixes) == 6
    assert h.prefix == WindowSpec(key="k", field="x", size_ms=60_000, hop_ms=10_000, kind="hopping",
                                  aggs=("var",)).prefix                         # aggs: not state
    assert WindowSpec.parse({"key": "k", "field": "x", "kind": "hopping", "size_ms": 60_000, "hop_ms": 10_000,
                             "aggs": ["sum", "distinct"]}) == h
    for doc in ({"hop_ms": 1.5}, {"hop": 5}, {"distinct_exact_max": "9"}):
        with pytest.raises(ValueError):
            WindowSpec.parse({"key": "k", "field": "x", "kind": "hopping", "size_ms": 10, "hop_ms": 5, **doc})
    with pytest.raises(ValueError, match="size_ms"):
        WindowSpec.parse({"key": "k", "field": "x", "kind": "hopping", "hop_ms": 5})
