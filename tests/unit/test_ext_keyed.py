"""ext.HoppingTable and ext.SessionTable: native (C++) vs pure-Python twin, bit
for bit, plus brute-force recomputation from the raw rows and store round trips.

Floats are compared through their 64-bit patterns (tests/unit/ext_backends.py).
Native-only tests skip when ext._native is not built, and fail instead when
STREAMSCORE_REQUIRE_NATIVE=1 is set.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ext
from streams.features import dumps_table_state, loads_table_state
from tests.unit.ext_backends import PARITY, assert_bits_equal, nat, ref
from tests.unit.ext_backends import require_native as _require_native

LIMIT = 1 << 62
KEYS = ["a", "b", "c", "é"]


# -- strategies and helpers ------------------------------------------------------

finite = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-20, 20).map(float),
                   st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def rows(draw, max_rows=120):
    """(keys, ts, values, has): times mostly advancing, some out of order, some far apart."""
    n = draw(st.integers(0, max_rows))
    t = draw(st.integers(-10**6, 10**6))
    ts = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 1, 2, 7, 30, 500]))
        ts.append(t - draw(st.sampled_from([0, 0, 0, 3, 40, 1000])))
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=n, max_size=n))
    vals = draw(st.lists(finite, min_size=n, max_size=n))
    has = draw(st.lists(st.booleans().map(lambda b: b or None), min_size=n, max_size=n))
    return keys, np.array(ts, dtype=np.int64), np.array(vals, dtype=np.float64), np.array(
        [h is not None for h in has], dtype=bool)


hopping_params = st.tuples(st.sampled_from([1, 3, 10, 100]), st.sampled_from([1, 2, 4]),
                           st.sampled_from([0, 5, 50, 2000]))
session_params = st.tuples(st.sampled_from([1, 5, 40, 10**6]), st.sampled_from([0, 1, 10, 1000]))


def make(mod, kind, params):
    if kind == "hopping":
        hop, m, grace = params
        return mod.HoppingTable(hop * m, hop, grace)
    return mod.SessionTable(*params)


def chunks(data, n):
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=5)))
    bounds = [0, *cuts, n]
    return list(zip(bounds[:-1], bounds[1:]))


def dump(row) -> bytes:
    """A take_dirty() row as Windows.flush stores it."""
    return dumps_table_state(row[1:])


# -- brute force ---------------------------------------------------------------


def hopping_brute_force(keys, ts, vals, has, hop, m, grace):
    """Rows and late count, each row recomputed from the applied rows of its window."""
    applied = []                       # (key, bucket, value) in application order
    newest: dict[str, int] = {}
    out, late = [], 0
    for k, t, v, h in zip(keys, ts, vals, has):
        b = t // hop
        if k in newest and (b + 1) * hop + grace <= newest[k]:
            late += 1
            b = newest[k] // hop
        elif h:
            applied.append((k, b, v))
            newest[k] = max(newest.get(k, t), t)
        # bucket by bucket (oldest first), each bucket's values in application order
        buckets: dict[int, list[float]] = {}
        for kj, bj, x in applied:
            if kj == k and b - m < bj <= b:
                buckets.setdefault(bj, []).append(x)
        out.append(fold_buckets([buckets[x] for x in sorted(buckets)]))
    return out, late


def fold_buckets(parts):
    """The kernels' fold: each bucket merged in order, then buckets merged oldest first (exact
    reproduction through the reference's own merge, on the bucket lists recomputed here)."""
    acc = ref._EMPTY
    for xs in parts:
        mom = ref._EMPTY
        for x in xs:
            mom = ref._merge(mom, ref._single(x))
        acc = ref._merge(acc, mom)
    return list(ref._stats_row(acc))


def session_brute_force(keys, ts, vals, has, gap):
    """Rows [count, sum, mean, min, max, var, since, duration] and late count: sessions
    recomputed from their applied rows (decay columns are checked in test_features_session)."""
    sessions: dict[str, dict] = {}
    out, late = [], 0
    for k, t, v, h in zip(keys, ts, vals, has):
        s = sessions.get(k)
        since, at = math.nan, t
        if s is None:
            if h:
                s = sessions[k] = {"start": t, "newest": t, "xs": [v]}
        elif t < s["start"]:
            late += 1
            at = s["newest"]
        elif t >= s["newest"]:
            since = float(t - s["newest"])
            if t - s["newest"] >= gap:
                if h:
                    s = sessions[k] = {"start": t, "newest": t, "xs": [v]}
                else:
                    s = None
            elif h:
                s["xs"].append(v)
                s["newest"] = t
        else:
            if h:
                s["xs"].append(v)
            at = s["newest"]
        if s is None:
            out.append([0.0] * 6 + [since, 0.0])
        else:
            out.append(fold_buckets([s["xs"]]) + [since, float(at - s["start"])])
    return out, late


# -- parity and brute force ----------------------------------------------------


def test_exported():
    assert ext.HoppingTable is (nat.HoppingTable if ext.NATIVE else ref.HoppingTable)
    assert ext.SessionTable is (nat.SessionTable if ext.NATIVE else ref.SessionTable)


@PARITY
@given(stream=rows(), kind=st.sampled_from(["hopping", "session"]), hp=hopping_params, sp=session_params,
       data=st.data())
def test_parity_round_trips_and_brute_force(stream, kind, hp, sp, data):
    """Native and reference agree bit for bit (rows, late, len, take_dirty) over random
    batches with store round trips in between, and equal the brute-force recomputation."""
    native = _require_native()
    keys, ts, vals, has = stream
    params = hp if kind == "hopping" else sp
    tables = {mod: make(mod, kind, params) for mod in (native, ref)}
    stores: dict = {native: {}, ref: {}}
    outs: dict = {native: [], ref: []}
    lates = dict.fromkeys(tables, 0)
    for a, b in chunks(data, len(keys)):
        for mod in tables:
            t = tables[mod]
            for k in t.missing(keys[a:b]):
                if k in stores[mod]:
                    t.load(k, *loads_table_state(stores[mod][k]))
            outs[mod].append(t.update_many(keys[a:b], ts[a:b], vals[a:b], has[a:b]))
        assert_bits_equal(outs[native][-1], outs[ref][-1], f"rows {a}:{b}")
        assert tables[native].late == tables[ref].late and len(tables[native]) == len(tables[ref])
        d_n, d_r = tables[native].take_dirty(), tables[ref].take_dirty()
        assert [dump(r) for r in d_n] == [dump(r) for r in d_r] and [r[0] for r in d_n] == [r[0] for r in d_r]
        for mod, d in ((native, d_n), (ref, d_r)):
            stores[mod].update((r[0], dump(r)) for r in d)
        if data.draw(st.booleans()):             # reload from the store: a fresh table of either backend
            for mod in tables:
                lates[mod] += tables[mod].late
                tables[mod] = make(data.draw(st.sampled_from([native, ref])), kind, params)
    width = 6 if kind == "hopping" else 10
    got = np.concatenate(outs[ref]) if outs[ref] else np.empty((0, width))
    assert got.shape == (len(keys), width)
    if kind == "hopping":
        hop, m, grace = params
        exp, exp_late = hopping_brute_force(keys, ts.tolist(), vals.tolist(), has.tolist(), hop, m, grace)
        assert_bits_equal(got, np.array(exp).reshape(-1, 6), "vs brute force")
    else:
        exp, exp_late = session_brute_force(keys, ts.tolist(), vals.tolist(), has.tolist(), params[0])
        assert_bits_equal(got[:, :8], np.array(exp).reshape(-1, 8), "vs brute force")
        if params[1] == 0:
            assert not got[:, 8:].any()
    assert lates[native] + tables[native].late == lates[ref] + tables[ref].late == exp_late


def test_hopping_semantics(backend):
    t = backend.HoppingTable(30, 10, 5)
    assert (t.size_ms, t.hop_ms, t.grace_ms, t.late, len(t)) == (30, 10, 5, 0, 0)

    def u(k, ts, v, h=True):
        return t.update_many([k], np.array([ts]), np.array([v]), np.array([h]))[0, :3].tolist()

    assert u("a", 1, 1.0) == [1.0, 1.0, 1.0]
    assert u("a", 12, 2.0) == [2.0, 3.0, 1.5]           # window [-10, 20)
    assert u("a", 25, 4.0) == [3.0, 7.0, 7 / 3]         # window [0, 30)
    assert u("a", 31, 8.0) == [3.0, 14.0, 14 / 3]       # window [10, 40): 1.0 left
    # 9 is in [0, 10): its window [-20, 10) closed at 10, + grace 5 = 15 <= newest 31: late
    assert u("a", 9, 100.0) == [3.0, 14.0, 14 / 3] and t.late == 1
    # 19: window [-10, 20) ends at 20; 20 + 5 = 25 <= 31: late too; 29: [0, 30), 35 > 31: applied
    assert u("a", 19, 100.0) == [3.0, 14.0, 14 / 3] and t.late == 2
    assert u("a", 29, 16.0) == [4.0, 23.0, 5.75]
    assert u("a", 45, 0.0, False) == [3.0, 28.0, 28 / 3]    # value-less: window [20, 50), nothing changes
    assert u("b", 45, 0.0, False) == [0.0, 0.0, 0.0] and len(t) == 1
    (key, newest, buckets, counts, *_), = t.take_dirty()
    assert (key, newest, buckets, counts) == ("a", 31, [0, 1, 2, 3], [1, 1, 2, 1])
    t.update_many(["a"], np.array([95]), np.array([1.0]), np.array([True]))
    # keep buckets >= floor((95 - 5) / 10) - 3 + 1 = 7
    assert t.take_dirty()[0][2] == [9]
    assert repr(t) == "HoppingTable(size_ms=30, hop_ms=10, grace_ms=5, keys=1, dirty=0, late=2)"


def test_hopping_with_hop_equal_size_is_tumbling(backend):
    rng = np.random.default_rng(3)
    n = 3000
    keys = [f"k{i}" for i in rng.integers(0, 20, n)]
    ts = np.cumsum(rng.integers(0, 30, n)) - np.where(rng.random(n) < 0.1, rng.integers(0, 300, n), 0)
    vals = np.round(rng.normal(0, 100, n), 2)
    has = np.ones(n, dtype=bool)     # (a value-less event opens a new tumbling window, not a hopping one)
    hop = backend.HoppingTable(100, 100).update_many(keys, ts, vals, has)
    tum = backend.TumblingTable(100)
    tumbling = tum.update_many(keys, ts, vals, has)
    counts = hop[:, 0]
    # same windows and lateness; count, min, max exact; sum and mean to rounding (another fold order)
    assert np.array_equal(counts, tumbling[:, 0]) and tum.late > 0
    assert np.array_equal(hop[:, 3:5][counts > 0], tumbling[:, 3:5][counts > 0])
    assert np.allclose(hop[:, 1:3], tumbling[:, 1:3], rtol=1e-9, atol=1e-6)


def test_session_semantics(backend):
    t = backend.SessionTable(10, 5)
    assert (t.gap_ms, t.half_life_ms) == (10, 5)

    def u(ts, v, h=True, k="a"):
        return t.update_many([k], np.array([ts]), np.array([v]), np.array([h]))[0].tolist()

    r = u(100, 2.0)
    assert r[:6] == [1.0, 2.0, 2.0, 2.0, 2.0, 0.0] and math.isnan(r[6]) and r[7:] == [0.0, 2.0, 2.0]
    r = u(105, 4.0)                                    # continues: 5 ms later, one half-life
    assert r[:2] == [2.0, 6.0] and r[6:8] == [5.0, 5.0]
    assert r[8] == 2.0 * 0.5 + 4.0 and r[9] == 5.0 / 1.5
    r = u(103, 8.0)                                    # out of order inside the session: T = newest
    assert r[:2] == [3.0, 14.0] and math.isnan(r[6]) and r[7] == 5.0
    assert r[8] == 5.0 + 8.0 * math.exp2(-(2 / 5))
    r = u(110, 0.0, False)                             # value-less: decayed to its ts, nothing changes
    assert r[:2] == [3.0, 14.0] and r[6:8] == [5.0, 10.0] and r[8] == (5.0 + 8.0 * math.exp2(-0.4)) * 0.5
    r = u(99, 1.0)                                     # before the session start: late
    assert r[:2] == [3.0, 14.0] and math.isnan(r[6]) and t.late == 1
    r = u(115, 1.0)                                    # 10 ms after 105: a new session
    assert r[:2] == [1.0, 1.0] and r[6:] == [10.0, 0.0, 1.0, 1.0]
    r = u(200, 0.0, False)                             # the session ended, no value: an empty row
    assert r == [0.0] * 6 + [85.0, 0.0, 0.0, 0.0]
    assert t.take_dirty() == [("a", 115, 115, 1, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0)]
    r = u(5, 0.0, False, k="new")
    assert r[:6] == [0.0] * 6 and math.isnan(r[6]) and len(t) == 1


def test_session_without_decay_reports_zero_decay(backend):
    t = backend.SessionTable(10)
    out = t.update_many(["a", "a"], np.array([1, 2]), np.array([3.0, 5.0]), np.array([True, True]))
    assert out[:, 8:].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert t.take_dirty()[0][-2:] == (0.0, 0.0)


def test_state_is_bounded(backend):
    """Bounded keys, advancing time: hopping keeps the buckets of one size + grace span."""
    t = backend.HoppingTable(1000, 100, 200)
    ts = np.arange(0, 100_000, 7, dtype=np.int64)
    keys = [f"k{i % 5}" for i in range(len(ts))]
    t.update_many(keys, ts, np.ones(len(ts)), np.ones(len(ts), dtype=bool))
    for row in t.take_dirty():
        assert len(row[2]) <= (1000 + 200) // 100 + 2


def test_large_batch_parity(native):
    rng = np.random.default_rng(7)
    n = 40_000
    keys = [f"user-{i}" for i in rng.integers(0, 3_000, n)]
    ts = (1_700_000_000_000 + np.cumsum(rng.integers(0, 40, n))).astype(np.int64)
    ts -= np.where(rng.random(n) < 0.05, rng.integers(0, 100_000, n), 0)
    vals = rng.normal(50.0, 20.0, n)
    has = rng.random(n) < 0.9
    for kind, params in (("hopping", (10_000, 6, 30_000)), ("session", (60_000, 30_000))):
        tn, tr = make(native, kind, params), make(ref, kind, params)
        assert_bits_equal(tn.update_many(keys, ts, vals, has), tr.update_many(keys, ts, vals, has), kind)
        assert tn.late == tr.late > 0
        assert [dump(r) for r in tn.take_dirty()] == [dump(r) for r in tr.take_dirty()]


# -- errors ----------------------------------------------------------------------


def _raises_same(call, *args):
    native = _require_native()
    errors = []
    for mod in (native, ref):
        with pytest.raises(Exception) as info:
            call(mod)(*args)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]), errors
    return errors


def _same_msg(errs, exc_type):
    assert isinstance(errs[0], exc_type) and str(errs[0]) == str(errs[1]), errs


@pytest.mark.parametrize("args", [(0, 1), (10, 0), (10, 3), (10, 5, -1), (LIMIT, 1), (LIMIT - 10, 10, 10)])
def test_hopping_constructor_errors_match(args):
    _same_msg(_raises_same(lambda m: m.HoppingTable, *args), ValueError)


@pytest.mark.parametrize("args", [(0,), (10, -1), (LIMIT,)])
def test_session_constructor_errors_match(args):
    _same_msg(_raises_same(lambda m: m.SessionTable, *args), ValueError)


def test_errors_match_and_change_nothing():
    native = _require_native()
    for kind, params in (("hopping", (10, 3, 5)), ("session", (10, 5))):
        tables = {m: make(m, kind, params) for m in (native, ref)}
        for t in tables.values():
            t.update_many(["held"], np.array([1]), np.array([1.0]), np.array([True]))
        held = {m: [dump(r) for r in t.take_dirty()] for m, t in tables.items()}
        one = (np.array([1]), np.array([1.0]), np.array([True]))

        def upd(*args):
            return _raises_same(lambda m: tables[m].update_many, *args)

        _same_msg(upd(["a", "b"], *one), ValueError)
        _same_msg(upd(["a", 3], np.array([1, 2]), np.ones(2), np.ones(2, dtype=bool)), TypeError)
        _same_msg(upd("ab", np.array([1, 2]), np.ones(2), np.ones(2, dtype=bool)), TypeError)
        assert isinstance(upd(["\ud800"], *one)[0], UnicodeEncodeError)
        for bad_ts in (LIMIT, -LIMIT):
            _same_msg(upd(["a", "b"], np.array([0, bad_ts]), np.ones(2), np.ones(2, dtype=bool)), ValueError)
        _same_msg(_raises_same(lambda m: tables[m].missing, "abc"), TypeError)
        if kind == "hopping":
            _same_msg(_raises_same(lambda m: tables[m].load, "held", 1, [0], [1], [1.0], [1.0], [0.0], [1.0],
                                   [1.0]), ValueError)
            _same_msg(_raises_same(lambda m: tables[m].load, "new", 1, [0, 0], [1, 1], *[[1.0, 1.0]] * 5),
                      ValueError)
            _same_msg(_raises_same(lambda m: tables[m].load, "new", 1, [0], [0], *[[1.0]] * 5), ValueError)
            _same_msg(_raises_same(lambda m: tables[m].load, "new", 1, [0], [1, 2], *[[1.0]] * 5), ValueError)
        else:
            _same_msg(_raises_same(lambda m: tables[m].load, "held", 1, 1, 1, *[1.0] * 7), ValueError)
            _same_msg(_raises_same(lambda m: tables[m].load, "new", 1, 1, -1, *[1.0] * 7), ValueError)
        for t in tables.values():
            t.update_many(["x"], np.array([1]), np.array([1.0]), np.array([True]))
        _same_msg(_raises_same(lambda m: tables[m].clear), RuntimeError)
        for m, t in tables.items():
            assert len(t) == 2 and t.late == 0 and held[m] == held[ref]
            assert [r[0] for r in t.take_dirty()] == ["x"]


def test_native_concurrent_use_is_an_error_not_a_crash(native):
    n = 200_000
    keys = [f"k{i % 5_000}" for i in range(n)]
    ts, vals, has = np.arange(n, dtype=np.int64), np.ones(n), np.ones(n, dtype=bool)
    for t in (native.HoppingTable(10**6, 10**4), native.SessionTable(10**6)):
        worker = threading.Thread(target=t.update_many, args=(keys, ts, vals, has))
        worker.start()
        while worker.is_alive():
            try:
                len(t)
                t.missing(["zz"])
            except RuntimeError as exc:
                assert "in use by another thread" in str(exc)
        worker.join()
        assert len(t) == 5_000 and t.late == 0
