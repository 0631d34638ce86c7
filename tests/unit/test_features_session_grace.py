"""Session windows with a grace period (streams.features), both backends.

The reference keeps every applied event of an entity and recomputes its
sessions from scratch for each event: the applied values sorted by time, cut
wherever two neighbours are ``gap`` or more apart. Nothing in it is
incremental, so it checks the merging, the eviction of sessions that grace
can no longer reach, and the state round trips of the code under test.
"""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext import _reference as ref
from streams.features import Windows, WindowSpec
from tests.unit.ext_backends import assert_bits_equal, require_native
from tests.unit.test_features_session import AGGS, features
from tests.unit.test_features_session import random_stream as session_stream
from tests.unit.window_oracles import check, run, streams

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def sessions_of(items, gap):
    """The sessions of applied items [(ts, value)]: sorted by ts, cut where neighbours are >= gap apart."""
    out: list[list] = []
    for t, v in sorted(items, key=lambda i: i[0]):
        if out and t - out[-1][-1][0] < gap:
            out[-1].append((t, v))
        else:
            out.append([(t, v)])
    return out


def brute_force(events, gap, grace, half_life):
    """[(features, late, scales)] for events [(key, ts, value or None)] processed in list order."""
    applied: dict[str, list] = {}
    out = []
    for k, t, v in events:
        items = applied.setdefault(k, [])
        late, since = False, None
        if not items:
            if v is not None:
                items.append((t, v))
            session, at = (items if items else []), t
        else:
            newest = max(i[0] for i in items)
            cur = sessions_of(items, gap)[-1]
            if t >= newest:                                    # in order
                since = float(t - newest)
                if v is not None:
                    items.append((t, v))
                session = sessions_of(items, gap)[-1] if v is not None or t - newest < gap else []
                at = t
            elif t < newest - grace and t < cur[0][0]:         # late: the current session at newest
                late, session, at = True, cur, newest
            else:                                              # out of order, applied
                if v is not None:
                    items.append((t, v))
                session = next((s for s in sessions_of(items, gap) if s[0][0] <= t <= s[-1][0]), [])
                at = session[-1][0] if session else t
        start = session[0][0] if session else t
        f, scale = features(session, at, start, since, half_life)
        out.append((f, late, scale))
    return out


@SETTINGS
@given(raw=streams(), gap=st.sampled_from([1, 10, 100, 1000]), grace=st.sampled_from([1, 50, 400, 5000]),
       half_life=st.sampled_from([1, 7, 500, 10**6]), data=st.data())
def test_grace_sessions_equal_brute_force(backend, raw, gap, grace, half_life, data):
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=gap, grace_ms=grace, half_life_ms=half_life,
                      aggs=AGGS, distinct_exact_max=data.draw(st.sampled_from([2, 1000])))
    cuts = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
    reload_at = frozenset(data.draw(st.lists(st.integers(0, 40), max_size=10)))
    got, late, _, _ = run(spec, raw, backend, batches=cuts + [len(raw)], reload_at=reload_at)
    expected = brute_force(raw, gap, grace, half_life)
    if spec.distinct_exact_max == 2:                           # sketches: within their error (3 sd)
        check(got, expected, spec, hll_rel_err=0.05)
    else:
        check(got, expected, spec)
    assert late == sum(e[1] for e in expected)


def test_long_disordered_stream(backend):
    events = session_stream(11, 4000, disorder=6000)
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=2000, grace_ms=3000, half_life_ms=700,
                      aggs=AGGS, distinct_exact_max=20)
    rnd = random.Random(3)
    got, late, _, _ = run(spec, events, backend, batches=[rnd.randint(1, 300) for _ in range(60)],
                          reload_at=frozenset(range(0, 60, 4)))
    expected = brute_force(events, 2000, 3000, 700)
    check(got, expected, spec, hll_rel_err=0.05)
    assert 0 < late < sum(e[1] for e in brute_force(events, 2000, 0, 700))


def test_in_order_stream_is_bit_identical_to_the_native_session_table():
    """Without disorder, grace changes nothing: the same operations as ext.SessionTable, bit for bit."""
    nat = require_native()
    events = sorted(session_stream(4, 5000, keys=30), key=lambda e: e[1])
    aggs = tuple(a for a in AGGS if a != "distinct")
    plain = WindowSpec(key="k", field="x", kind="session", gap_ms=3000, half_life_ms=1000, aggs=aggs)
    graced = WindowSpec(key="k", field="x", kind="session", gap_ms=3000, half_life_ms=1000, aggs=aggs,
                        grace_ms=10_000)
    a, la, _, _ = run(plain, events, nat, batches=[250] * 20, reload_at=frozenset({3, 7}))
    b, lb, _, _ = run(graced, events, ref, batches=[250] * 20, reload_at=frozenset({3, 7}))
    assert la == lb == 0 and len(a) == len(b) == 5000
    for x, y in zip(a, b):
        assert list(x) == list(y)
        assert_bits_equal(list(x.values()), list(y.values()))


def test_any_arrival_order_within_grace_ends_with_the_sorted_sessions(backend):
    """The sessions are a function of the applied events, not of the order they came in."""
    rnd = random.Random(8)
    events = [("a", rnd.randrange(0, 20_000), float(rnd.randrange(100))) for _ in range(400)]
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=100, grace_ms=10**9, aggs=("count", "sum"))
    finals = []
    for order in range(3):
        shuffled = sorted(events, key=lambda e: e[1]) if order == 0 else rnd.sample(events, len(events))
        _, late, _, store = run(spec, shuffled, backend, batches=[37] * 11)
        assert late == 0
        finals.append(orjson.loads(store[spec.prefix + "a"]))
    cuts = [[s[0], s[1], s[2], s[3]] for s in finals[0][1]]
    assert len(cuts) > 20
    assert [[s[0], s[1], s[2], s[3]] for s in finals[1][1]] == cuts == [[s[0], s[1], s[2], s[3]]
                                                                         for s in finals[2][1]]


def test_semantics(backend):
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=100, grace_ms=500,
                      aggs=("count", "sum", "since", "duration"))
    assert spec.names == ("x_count_session100ms_by_k", "x_sum_session100ms_by_k", "x_since_session100ms_by_k",
                          "x_duration_session100ms_by_k")
    w, store = Windows([spec], kernels=backend), {}

    def f(t, v=None):
        got = w.update({"k": "a", "x": v} if v is not None else {"k": "a"}, t, store.get)
        return tuple(got.get(n) for n in spec.names)

    assert f(1000, 1.0) == (1.0, 1.0, None, 0.0)
    assert f(1050, 2.0) == (2.0, 3.0, 50.0, 50.0)
    assert f(1300, 3.0) == (1.0, 3.0, 250.0, 0.0)         # 250 ms after 1050: a new session
    assert f(1200, 4.0) == (1.0, 4.0, None, 0.0)          # 150 after 1050, 100 before 1300: a session of its own
    assert f(1120, 5.0) == (4.0, 12.0, None, 200.0)       # bridges [1000, 1050] and [1200]: one session
    assert f(960, 6.0) == (5.0, 18.0, None, 240.0)        # before the start, within grace: extends it back
    assert f(1000) == (5.0, 18.0, None, 240.0)            # value-less inside a past session: that session
    assert f(1250) == (0.0, 0.0, None, 0.0)               # value-less between sessions: empty
    assert f(700, 7.0) == (1.0, 3.0, None, 0.0) and w.late == 1   # before 1300 - 500, before its session: late
    assert f(830, 8.0) == (1.0, 8.0, None, 0.0) and w.late == 1   # within grace: a session of its own
    w.flush(store.__setitem__)
    w = Windows([spec], kernels=backend)
    assert f(1310, 1.0) == (2.0, 4.0, 10.0, 10.0)         # from the store: the current session goes on


def test_state_stays_bounded(backend):
    """Sessions that grace can no longer reach are dropped: at most grace / gap + 2 per entity."""
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=50, grace_ms=400, half_life_ms=100,
                      aggs=("count", "mean", "decay_mean", "distinct"), distinct_exact_max=30)
    store: dict[str, bytes] = {}
    w = Windows([spec], kernels=backend)
    rnd = random.Random(5)
    sizes, most = [], 0
    t = 0
    for batch in range(150):
        docs, ts = [], []
        for _ in range(100):
            t += rnd.randint(5, 15) + (80 if rnd.random() < 0.05 else 0)
            docs.append({"k": rnd.randrange(7), "x": float(rnd.randrange(10_000))})
            ts.append(t - rnd.randrange(300))
        w.update_batch(docs, ts, store.get)
        w.flush(store.__setitem__)
        if batch % 20 == 19:
            w = Windows([spec], kernels=backend)
        most = max(most, max(len(orjson.loads(v)[1]) for v in store.values()))
        sizes.append((len(store), sum(len(v) for v in store.values())))
    assert 2 < most <= 400 // 50 + 2
    assert {s[0] for s in sizes[10:]} == {7}
    first, last = max(s[1] for s in sizes[20:75]), max(s[1] for s in sizes[75:])
    assert last <= first * 1.2, (first, last)


def test_grace_changes_the_state_prefix_and_zero_keeps_the_old_one():
    base = dict(key="k", field="x", kind="session", gap_ms=60_000, aggs=("count",))
    plain = WindowSpec(**base)
    assert plain.prefix == WindowSpec(**base, grace_ms=0).prefix == "w" + __import__("hashlib").sha1(
        b"session|k|x|60000|0|v1").hexdigest()[:10] + ":"          # state written before grace existed
    assert len({plain.prefix, WindowSpec(**base, grace_ms=1000).prefix,
                WindowSpec(**base, grace_ms=2000).prefix}) == 3
    assert WindowSpec.parse({**base, "aggs": ["count"], "grace_ms": 1000}).grace_ms == 1000


def test_overflowed_sums_survive_the_store(backend):
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=100, grace_ms=10, aggs=("sum", "count"))
    store: dict[str, bytes] = {}
    w = Windows([spec], kernels=backend)
    w.update_batch([{"k": "a", "x": 1e308}, {"k": "a", "x": 1e308}], [1, 2], store.get)
    w.flush(store.__setitem__)
    w = Windows([spec], kernels=backend)
    assert w.update({"k": "a", "x": 1.0}, 3, store.get) == {"x_sum_session100ms_by_k": float("inf"),
                                                             "x_count_session100ms_by_k": 3.0}


def test_distinct_only_needs_the_field_present(backend):
    """A string field (an item id): 60 bridges the visits at 50 and 70 (gap 15), 55 falls inside."""
    spec = WindowSpec(key="k", field="item", kind="session", gap_ms=15, grace_ms=100, aggs=("distinct", "count"))
    assert not spec.reads_values
    w, store = Windows([spec], kernels=backend), {}
    rows = [w.update({"k": "c", "item": it}, t, store.get) for t, it in ((50, "x"), (70, "y"), (60, "x"), (55, "z"))]
    assert [r[spec.names[0]] for r in rows] == [1.0, 1.0, 2.0, 3.0]
    assert [r[spec.names[1]] for r in rows] == [1.0, 1.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def otto():
    """OTTO's recorded clickstream: (user session id, ts, article id as a number), in recorded order."""
    from streams.datasets import iter_records

    try:
        recs = [r["value"] for r in iter_records("otto") if r["topic"] == "events"]
    except FileNotFoundError as exc:  # pragma: no cover - data/ is part of the repository
        pytest.skip(f"otto data not available: {exc}")
    return [(e["session"], e["ts"], float(e["aid"])) for e in recs]


@pytest.mark.parametrize("jitter_min", [0, 20, 90])
def test_recorded_otto_visits_equal_brute_force(backend, otto, jitter_min):
    """Visits (30 min gap) of real users with 1 h of grace, arriving in order or up to ``jitter_min`` late."""
    rnd = random.Random(jitter_min)
    events = sorted(otto, key=lambda e: e[1] + rnd.randrange(jitter_min * 60_000 + 1))
    spec = WindowSpec(key="k", field="x", kind="session", gap_ms=1_800_000, grace_ms=3_600_000,
                      half_life_ms=600_000, aggs=AGGS, distinct_exact_max=1000)
    got, late, _, _ = run(spec, events, backend, batches=[64] * 14, reload_at=frozenset({5, 9}))
    expected = brute_force(events, 1_800_000, 3_600_000, 600_000)
    check(got, expected, spec, all_names=False)
    assert late == sum(e[1] for e in expected)
    assert (late > 0) == (jitter_min == 90) and len(got) == 862
    without_grace = sum(e[1] for e in brute_force(events, 1_800_000, 0, 600_000))
    assert (without_grace > 100) == (jitter_min > 0)                # what grace saves: 148 and 245 events
    assert max(f["count"] for f, _, _ in expected) > 20             # real visits, not single clicks
