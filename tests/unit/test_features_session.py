"""Session windows, time since the previous event and decayed sums (streams.features), both backends.

The reference follows the rules of the streams.features docstring with the
session's applied values kept raw, and recomputes every aggregate from them:
decay_sum = sum(v_i * 2**(-(T - t_i) / half_life)) with math.fsum, decay_mean
= decay_sum / sum(2**(-(T - t_i) / half_life)), T = max(ts, newest).
"""

from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext import _reference as ref
from streams.features import Windows, WindowSpec
from tests.unit.ext_backends import assert_bits_equal, require_native
from tests.unit.window_oracles import check, run, streams
from tests.unit.window_oracles import random_stream as _random_stream

AGGS = ("count", "sum", "mean", "min", "max", "var", "std", "since", "duration", "distinct", "decay_sum",
        "decay_mean")
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def features(items, at, start, since, half_life):
    """Aggregates of a session's items [(ts, value)] reported at time ``at``; a scale for tolerances."""
    xs = [x for _, x in items]
    n = len(xs)
    f = {"since": since} if since is not None else {}
    if not n:
        f.update(dict.fromkeys(("count", "sum", "mean", "min", "max", "var", "std", "duration", "distinct",
                                "decay_sum", "decay_mean"), 0.0))
        return f, (0.0, 0.0)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / n
    weights = [2.0 ** (-(at - t) / half_life) for t, _ in items]
    dsum = math.fsum(w * x for w, x in zip(weights, xs))
    # decay_mean is a ratio: weights relative to the newest item give it without underflow (a value-less
    # event long after the session has weights 2**-1075 == 0.0 at ``at``, the kernels the undecayed ratio)
    newest = max(t for t, _ in items)
    rel = [2.0 ** (-(newest - t) / half_life) for t, _ in items]
    f.update(count=float(n), sum=math.fsum(xs), mean=mean, min=min(xs), max=max(xs), var=var, std=math.sqrt(var),
             duration=float(at - start), distinct=float(len(set(xs))), decay_sum=dsum,
             decay_mean=math.fsum(w * x for w, x in zip(rel, xs)) / math.fsum(rel))
    return f, (max(abs(x) for x in xs), math.fsum(w * abs(x) for w, x in zip(weights, xs)))


def brute_force(events, gap, half_life):
    """[(features, late, scales)] for events [(key, ts, value or None)] processed in list order."""
    sessions: dict[str, dict] = {}
    out = []
    for k, t, v in events:
        s = sessions.get(k)
        since, at, late = None, t, False
        if s is None:
            if v is not None:
                s = sessions[k] = {"start": t, "newest": t, "items": [(t, v)]}
        elif t < s["start"]:                                    # before the session: late
            late, at = True, s["newest"]
        elif t >= s["newest"]:
            since = float(t - s["newest"])
            if t - s["newest"] >= gap:                          # the session ended
                if v is None:
                    s = None                                    # (reported empty; the state stays)
                else:
                    s = sessions[k] = {"start": t, "newest": t, "items": [(t, v)]}
            elif v is not None:
                s["items"].append((t, v))
                s["newest"] = t
        else:                                                   # out of order, inside the session
            at = s["newest"]
            if v is not None:
                s["items"].append((t, v))
        f, scale = features(s["items"] if s else [], at, s["start"] if s else t, since, half_life)
        out.append((f, late, scale))
    return out


@SETTINGS
@given(raw=streams(), gap=st.sampled_from([1, 10, 100, 1000, 10**6]), half_life=st.sampled_from([1, 7, 500, 10**6]),
       in_order=st.booleans(), data=st.data())
def test_session_equals_brute_force(backend, raw, gap, half_life, in_order, data):
    events = sorted(raw, key=lambda e: e[1]) if in_order else raw
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=gap, half_life_ms=half_life, aggs=AGGS)
    cuts = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
    reload_at = frozenset(data.draw(st.lists(st.integers(0, 40), max_size=10)))
    got, late, _, _ = run(spec, events, backend, batches=cuts + [len(events)], reload_at=reload_at)
    expected = brute_force(events, gap, half_life)
    check(got, expected, spec)
    assert late == sum(e[1] for e in expected)
    if in_order:
        assert late == 0


def random_stream(seed, n, **kw):
    """Sessions need gaps: time also jumps by 5 s; integer values (exact sums)."""
    return _random_stream(seed, n, steps=(0, 1, 5, 30, 200, 5000), value=lambda r: float(r.randint(-100, 100)), **kw)


def test_long_random_stream(backend):
    events = random_stream(1, 4000, disorder=3000)
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=2000, half_life_ms=700, aggs=AGGS,
                      distinct_exact_max=20)
    rnd = random.Random(2)
    got, late, _, _ = run(spec, events, backend, batches=[rnd.randint(1, 300) for _ in range(60)],
                       reload_at=frozenset(range(0, 60, 3)))
    check(got, brute_force(events, 2000, 700), spec)
    assert late == sum(e[1] for e in brute_force(events, 2000, 700)) > 0


def test_native_and_reference_agree_bit_for_bit():
    nat = require_native()
    events = random_stream(4, 5000, keys=30, disorder=2000)
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=3000, half_life_ms=1000, aggs=AGGS,
                      distinct_exact_max=10)
    a, la, _, sa = run(spec, events, nat, batches=[250] * 20, reload_at=frozenset({3, 7}))
    b, lb, _, sb = run(spec, events, ref, batches=[250] * 20, reload_at=frozenset({3, 7}))
    assert la == lb > 0 and sa == sb
    for x, y in zip(a, b):
        assert list(x) == list(y)
        assert_bits_equal(list(x.values()), list(y.values()))


def test_semantics(backend):
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=2000, half_life_ms=1000,
                      aggs=("count", "since", "duration", "decay_sum", "decay_mean"))
    assert spec.names == ("x_count_session2s_by_k", "x_since_session2s_by_k", "x_duration_session2s_by_k",
                          "x_decay1s_sum_session2s_by_k", "x_decay1s_mean_session2s_by_k")
    w, store = Windows([spec], kernels=backend), {}

    def f(t, v=None):
        got = w.update({"k": "a", "x": v} if v is not None else {"k": "a"}, t, store.get)
        return tuple(got.get(n) for n in spec.names)

    assert f(10_000, 4.0) == (1.0, None, 0.0, 4.0, 4.0)          # first event: no since
    assert f(11_000, 2.0) == (2.0, 1000.0, 1000.0, 4.0, 8 / 3)   # one half-life later: 4 * 0.5 + 2
    assert f(10_500, 1.0)[:3] == (3.0, None, 1000.0)             # out of order inside: no since
    assert f(9_000, 1.0)[:3] == (3.0, None, 1000.0) and w.late == 1   # before the start: late
    assert f(11_500)[:3] == (3.0, 500.0, 1500.0)                 # value-less: the session at its ts
    assert f(13_000, 3.0) == (1.0, 2000.0, 0.0, 3.0, 3.0)        # 2000 ms after 11_000: a new session
    assert f(20_000) == (0.0, 7000.0, 0.0, 0.0, 0.0)             # ended, no value: empty, since stays


def test_since_only_needs_the_field_present(backend):
    """A string field for since and distinct: no value is read."""
    spec = WindowSpec(key="k", field="item", kind="session", gap_ms=86_400_000, aggs=("since", "distinct", "count"))
    assert not spec.reads_values
    w, store = Windows([spec], kernels=backend), {}
    rows = [w.update({"k": "c1", "item": it}, t, store.get) for t, it in ((5, "x"), (9, "y"), (9, "x"), (20, "z"))]
    name = spec.names[0]
    assert name == "item_since_session1d_by_k"
    assert [r.get(name) for r in rows] == [None, 4.0, 0.0, 11.0]
    assert [r[spec.names[1]] for r in rows] == [1.0, 2.0, 2.0, 3.0]
    assert [r[spec.names[2]] for r in rows] == [1.0, 2.0, 3.0, 4.0]


def test_state_stays_bounded(backend):
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=500, half_life_ms=100,
                      aggs=("count", "mean", "decay_mean", "distinct"), distinct_exact_max=30)
    store: dict[str, bytes] = {}
    w = Windows([spec], kernels=backend)
    rnd = random.Random(5)
    sizes = []
    t = 0
    for batch in range(200):
        docs, ts = [], []
        for _ in range(100):
            t += rnd.randint(5, 15) + (2000 if rnd.random() < 0.001 else 0)
            docs.append({"k": rnd.randrange(7), "x": float(rnd.randrange(10_000))})
            ts.append(t)
        w.update_batch(docs, ts, store.get)
        w.flush(store.__setitem__)
        if batch % 20 == 19:
            w = Windows([spec], kernels=backend)
        sizes.append((len(store), sum(len(v) for v in store.values())))
    assert {s[0] for s in sizes[10:]} == {14}
    first, last = max(s[1] for s in sizes[20:100]), max(s[1] for s in sizes[100:])
    assert last <= first * 1.1, (first, last)
    assert any(isinstance(orjson.loads(v)[2], str) for v in store.values())     # a sketch (fixed size)


def test_overflowed_sums_survive_the_store(backend):
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=100, aggs=("sum", "count"))
    store: dict[str, bytes] = {}
    w = Windows([spec], kernels=backend)
    w.update_batch([{"k": "a", "x": 1e308}, {"k": "a", "x": 1e308}], [1, 2], store.get)
    w.flush(store.__setitem__)
    w = Windows([spec], kernels=backend)
    assert w.update({"k": "a", "x": 1.0}, 3, store.get) == {"x_sum_session100ms_by_k": math.inf,
                                                             "x_count_session100ms_by_k": 3.0}


@pytest.mark.parametrize("bad", [{}, {"gap_ms": 10, "size_ms": 10}, {"gap_ms": 10, "grace_ms": -5},
                                 {"gap_ms": 10, "aggs": ("decay_sum",)},
                                 {"gap_ms": 10, "aggs": ("count",), "half_life_ms": 5},
                                 {"gap_ms": 10, "aggs": ("last",)}, {"gap_ms": -1},
                                 {"gap_ms": 2**62}])
def test_bad_session_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        WindowSpec(**{"key": "k", "field": "x", "kind": "session", **bad})


def test_decay_is_for_session_and_sliding_windows():
    """Tumbling and hopping sums restart at each bucket edge: no decay there."""
    with pytest.raises(ValueError, match="not supported for tumbling"):
        WindowSpec(key="k", field="x", size_ms=10, aggs=("decay_sum",), half_life_ms=5)
    with pytest.raises(ValueError, match="not supported for hopping"):
        WindowSpec(key="k", field="x", size_ms=10, hop_ms=5, kind="hopping", aggs=("decay_mean",), half_life_ms=5)
    assert WindowSpec(key="k", field="x", size_ms=10, kind="sliding", aggs=("decay_sum",), half_life_ms=5).names \
        == ("x_decay5ms_sum_10ms_by_k",)
    with pytest.raises(ValueError, match="gap_ms is for session"):
        WindowSpec(key="k", field="x", size_ms=10, gap_ms=5)


def test_parse_and_prefixes():
    doc = {"key": "k", "field": "x", "kind": "session", "gap_ms": 60_000, "half_life_ms": 3_600_000,
           "aggs": ["decay_mean"]}
    s = WindowSpec.parse(doc)
    assert s == WindowSpec(key="k", field="x", kind="session", gap_ms=60_000, half_life_ms=3_600_000,
                           aggs=("decay_mean",))
    assert s.names == ("x_decay1h_mean_session1m_by_k",)
    assert s.prefix != WindowSpec.parse({**doc, "half_life_ms": 60_000}).prefix      # decay state differs
    assert s.prefix != WindowSpec.parse({**doc, "gap_ms": 1}).prefix
    assert s.prefix == WindowSpec.parse({**doc, "aggs": ["decay_sum", "count"]}).prefix
    with pytest.raises(ValueError, match="no size_ms"):
        WindowSpec.parse({**doc, "size_ms": 5})
