"""ext.TumblingTable: native (C++) vs pure-Python twin, bit for bit, plus a
brute-force recomputation per (key, window) and store round trips.

Floats are compared through their 64-bit patterns (signed zeros and
infinities exactly; NaN - here only inf + -inf in a sum - by position).
Native-only tests skip when ext._native is not built, and fail instead when
STREAMSCORE_REQUIRE_NATIVE=1 is set.
"""

from __future__ import annotations

import math
import struct
import threading

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ext
from tests.unit.ext_backends import (
    PARITY,
    assert_bits_equal,
    nat,
    ref,
)
from tests.unit.ext_backends import require_native as _require_native

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
INF = math.inf
# -- helpers -----------------------------------------------------------------




def assert_same_dirty(a, b, what: str = "") -> None:
    """take_dirty() results: same keys, order, ints, and float bits."""
    assert [r[:3] for r in a] == [r[:3] for r in b], what
    for ra, rb in zip(a, b):
        assert type(ra) is tuple and len(ra) == 6
        assert type(ra[0]) is str and type(ra[1]) is int and type(ra[2]) is int
        assert all(type(x) is float for x in ra[3:])
        assert_bits_equal(ra[3:], rb[3:], f"{what} state of {ra[0]!r}")


def window_start(t: int, size: int) -> int:
    return t - t % size  # Python's % is the floor modulo


def brute_force(keys, ts, vals, has, size):
    """Rows, late count and final take_dirty() recomputed from scratch per row.

    A key's current window at row i is the newest window among its rows <= i
    (windows never go back); row i is late iff its own window is older; the
    state is the fold, in row order, of that window's rows with a value (none
    of which can have been late)."""
    starts = [window_start(t, size) for t in ts]
    rows, late, first_seen, final = [], 0, [], {}
    for i, k in enumerate(keys):
        prior = [j for j in range(i + 1) if keys[j] == k]
        cur = max(starts[j] for j in prior)
        late += starts[i] < cur
        count, s, mn, mx = 0, 0.0, INF, -INF
        for j in prior:
            if starts[j] == cur and has[j]:
                count += 1
                s = s + vals[j]
                mn = min(mn, vals[j])
                mx = max(mx, vals[j])
        if count:
            rows.append([float(count), s, s / float(count), mn, mx])
        else:
            rows.append([0.0, s, 0.0, 0.0, 0.0])
        if k not in final:
            first_seen.append(k)
        final[k] = (k, cur, count, s, mn, mx)
    dirty = [final[k] for k in first_seen]  # a key's first row always starts a window
    return np.array(rows, dtype=np.float64).reshape(len(keys), 5), late, dirty


# -- strategies --------------------------------------------------------------

KEY_ALPHABET = ["a", "b", "c", "user-42", "", "é", "ключ", "\U0001f600", "a\x00b", "A" * 40]

finite_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e3, max_value=1e3),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.1, 1e20, -1e20, 1e308, -1e308, 5e-324, -5e-324]),
)
# NaN is rejected upstream (documented); infinities are allowed.
values_with_inf = st.one_of(finite_values, st.sampled_from([INF, -INF]))

window_sizes = st.one_of(
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=100_000),
    st.sampled_from([1, 2, 1000, 60_000, 2**40, 2**62, I64_MAX]),
)


@st.composite
def tumbling_streams(draw, order=None, values=values_with_inf, max_rows=120):
    """(size, keys, ts, values, has_value); order is "ordered" (non-decreasing
    ts), "shuffled", "jitter" (some rows moved back in time) or None (any)."""
    size = draw(window_sizes)
    lo = I64_MIN + size - 1  # smallest ts whose window start is representable for every size
    alphabet = draw(st.lists(st.sampled_from(KEY_ALPHABET), min_size=1, max_size=5, unique=True))
    n = draw(st.integers(min_value=0, max_value=max_rows))
    keys = draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n))
    t = draw(
        st.one_of(
            st.integers(min_value=-(10**6), max_value=10**6),
            st.integers(min_value=lo, max_value=I64_MAX),
            st.sampled_from([lo, -1, 0, I64_MAX - 1000, I64_MAX]),
        )
    )
    step = st.one_of(
        st.just(0),
        st.integers(min_value=0, max_value=max(1, size // 4)),
        st.integers(min_value=0, max_value=min(I64_MAX, 3 * size)),
        st.integers(min_value=0, max_value=I64_MAX),
    )
    ts = []
    for _ in range(n):
        t = min(t + draw(step), I64_MAX)
        ts.append(t)
    mode = order or draw(st.sampled_from(["ordered", "shuffled", "jitter"]))
    if mode == "shuffled":
        ts = draw(st.permutations(ts))
    elif mode == "jitter":
        back = st.one_of(st.just(0), st.integers(min_value=0, max_value=min(I64_MAX, 3 * size)))
        ts = [max(lo, x - draw(back)) for x in ts]
    vals = draw(st.lists(values, min_size=n, max_size=n))
    has = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return (
        size,
        keys,
        np.array(ts, dtype=np.int64),
        np.array(vals, dtype=np.float64),
        np.array(has, dtype=np.bool_),
    )


def chunks(data, n: int) -> list[tuple[int, int]]:
    """Random batch boundaries covering rows 0..n (empty batches included)."""
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=n), max_size=5)))
    bounds = [0, *cuts, n]
    return list(zip(bounds[:-1], bounds[1:]))


def run_table(mod, size, keys, ts, vals, has):
    t = mod.TumblingTable(size)
    return t, t.update_many(keys, ts, vals, has)


# -- parity and brute force ----------------------------------------------------


def test_exported():
    assert ext.TumblingTable is (nat.TumblingTable if ext.NATIVE else ref.TumblingTable)


@PARITY
@given(stream=tumbling_streams(), data=st.data())
def test_update_many_parity_and_brute_force(stream, data):
    """Native and reference agree bit for bit - rows, late, len, take_dirty -
    over random batches, and both equal the brute-force recomputation."""
    native = _require_native()
    size, keys, ts, vals, has = stream
    tables = {mod: mod.TumblingTable(size) for mod in (native, ref)}
    outs = {mod: [] for mod in tables}
    taken: dict[str, tuple] = {}  # latest state taken per key
    for a, b in chunks(data, len(keys)):
        for mod, t in tables.items():
            out = t.update_many(keys[a:b], ts[a:b], vals[a:b], has[a:b])
            assert out.dtype == np.float64 and out.shape == (b - a, 5)
            outs[mod].append(out)
        assert_bits_equal(outs[native][-1], outs[ref][-1], f"rows {a}:{b}")
        assert tables[native].late == tables[ref].late
        assert len(tables[native]) == len(tables[ref])
        if data.draw(st.booleans()):
            if data.draw(st.booleans()):   # packed: the same bytes, the take_dirty rows packed
                prefix = data.draw(st.sampled_from([b"", b"w1a2:", "wé:".encode()]))   # a definition's prefix
                p_n, p_r = tables[native].take_dirty_packed(prefix), tables[ref].take_dirty_packed(prefix)
                assert p_n == p_r and all(k.startswith(prefix) for k, _ in p_n)
                d_r = [(k[len(prefix):].decode(), *struct.unpack("<cqqddd", v)[1:]) for k, v in p_r]
            else:
                d_n, d_r = tables[native].take_dirty(), tables[ref].take_dirty()
                assert_same_dirty(d_n, d_r, "take_dirty")
            taken.update((row[0], row) for row in d_r)
    rows = {mod: np.concatenate(o) if o else np.empty((0, 5)) for mod, o in outs.items()}
    exp_rows, exp_late, exp_dirty = brute_force(keys, ts.tolist(), vals.tolist(), has.tolist(), size)
    assert_bits_equal(rows[native], exp_rows, "native vs brute force")
    assert_bits_equal(rows[ref], exp_rows, "reference vs brute force")
    assert tables[native].late == tables[ref].late == exp_late
    assert len(tables[native]) == len(set(keys))
    # every key is dirtied on its first row, so the dirty sets taken so far
    # plus the last one hold every key's final state
    d_n, d_r = tables[native].take_dirty(), tables[ref].take_dirty()
    assert_same_dirty(d_n, d_r, "final take_dirty")
    if not taken:  # nothing taken before: every key, in first-seen order
        assert_same_dirty(d_r, exp_dirty, "vs brute force")
    # a key's state changes only when it is dirtied, so the latest state
    # taken per key is its final state
    taken.update((row[0], row) for row in d_r)
    assert sorted(taken) == sorted(set(keys))
    for row in exp_dirty:
        assert_same_dirty([taken[row[0]]], [row], "vs brute force")
    assert tables[native].take_dirty() == tables[ref].take_dirty() == []


@PARITY
@given(stream=tumbling_streams(order="ordered"))
def test_in_order_stream_is_never_late(stream):
    size, keys, ts, vals, has = stream
    exp_rows, exp_late, exp_dirty = brute_force(keys, ts.tolist(), vals.tolist(), has.tolist(), size)
    assert exp_late == 0
    for mod in (ref, nat) if nat is not None else (ref,):
        t, out = run_table(mod, size, keys, ts, vals, has)
        assert t.late == 0
        assert_bits_equal(out, exp_rows, mod.__name__)
        assert_same_dirty(t.take_dirty(), exp_dirty, mod.__name__)


def _flush(table, store, encode: bool) -> None:
    """take_dirty() into the store; with encode, in the orjson layout used by
    streams.features.Windows.flush ([start, count, sum, min|None, max|None])."""
    for key, start, count, s, mn, mx in table.take_dirty():
        if encode:
            store[key] = orjson.dumps([start, count, s, mn if count else None, mx if count else None])
        else:
            store[key] = (start, count, s, mn, mx)


def _reload(table, store, keys, encode: bool) -> None:
    for key in table.missing(keys):
        if key in store:
            if encode:
                start, count, s, mn, mx = orjson.loads(store[key])
                table.load(key, start, count, s, INF if mn is None else mn, -INF if mx is None else mx)
            else:
                table.load(key, *store[key])


@PARITY
@given(stream=tumbling_streams(values=st.one_of(finite_values, values_with_inf)), data=st.data())
def test_flush_clear_reload_round_trip(stream, data):
    """take_dirty -> store, clear() (or a fresh table of either backend), then
    missing() + load() continues exactly like one uninterrupted table."""
    native = _require_native()
    size, keys, ts, vals, has = stream
    _, full = run_table(ref, size, keys, ts, vals, has)
    # the JSON layout cannot hold infinite sums (orjson writes them as null)
    encode = bool(np.isfinite(full).all()) and data.draw(st.booleans())
    exp_late = brute_force(keys, ts.tolist(), vals.tolist(), has.tolist(), size)[1]
    store: dict = {}
    table = data.draw(st.sampled_from([native, ref])).TumblingTable(size)
    late = 0
    for a, b in chunks(data, len(keys)):
        batch_keys = keys[a:b]
        _reload(table, store, batch_keys, encode)
        assert table.missing(batch_keys) == [k for k in dict.fromkeys(batch_keys) if k not in store]
        out = table.update_many(batch_keys, ts[a:b], vals[a:b], has[a:b])
        assert_bits_equal(out, full[a:b], f"rows {a}:{b}")
        _flush(table, store, encode)
        if data.draw(st.booleans()):
            table.clear()
            assert len(table) == 0
        else:
            late += table.late
            table = data.draw(st.sampled_from([native, ref])).TumblingTable(size)
    assert late + table.late == exp_late


@settings(PARITY, max_examples=100)
@given(stream=tumbling_streams(max_rows=60), data=st.data())
def test_missing_parity(stream, data):
    native = _require_native()
    size, keys, ts, vals, has = stream
    cut = data.draw(st.integers(min_value=0, max_value=len(keys)))
    probe = data.draw(st.lists(st.sampled_from(KEY_ALPHABET), max_size=20))
    tn, _ = run_table(native, size, keys[:cut], ts[:cut], vals[:cut], has[:cut])
    tr, _ = run_table(ref, size, keys[:cut], ts[:cut], vals[:cut], has[:cut])
    held = set(keys[:cut])
    expected = [k for k in dict.fromkeys(probe) if k not in held]
    assert tn.missing(probe) == tr.missing(probe) == expected


def test_large_batch_parity(native):
    """Above the GIL-release threshold; realistic mostly-ordered event times
    with late arrivals, 5k keys."""
    rng = np.random.default_rng(11)
    n = 60_000
    keys = [f"user-{i}" for i in rng.integers(0, 5_000, size=n)]
    ts = (1_700_000_000_000 + np.cumsum(rng.integers(0, 40, size=n))).astype(np.int64)
    ts -= np.where(rng.random(n) < 0.05, rng.integers(0, 120_000, size=n), 0)
    vals = rng.normal(50.0, 20.0, size=n)
    has = rng.random(n) < 0.9
    for size in (1, 1000, 60_000):
        tn, out_n = run_table(native, size, keys, ts, vals, has)
        tr, out_r = run_table(ref, size, keys, ts, vals, has)
        assert_bits_equal(out_n, out_r, f"size={size}")
        assert tn.late == tr.late > 0
        assert len(tn) == len(tr) == len(set(keys))
        assert_same_dirty(tn.take_dirty(), tr.take_dirty())
        assert tn.missing(keys + ["nobody", "nobody"]) == tr.missing(keys + ["nobody"]) == ["nobody"]


# -- semantics -----------------------------------------------------------------


def _u(table, keys, ts, vals, has=None):
    has = [True] * len(keys) if has is None else has
    return table.update_many(
        keys, np.array(ts, dtype=np.int64), np.array(vals, dtype=np.float64), np.array(has, dtype=bool)
    ).tolist()


def test_semantics(backend):
    t = backend.TumblingTable(10)
    assert (t.size_ms, t.late, len(t)) == (10, 0, 0)
    assert repr(t) == "TumblingTable(size_ms=10, keys=0, dirty=0, late=0)"
    assert _u(t, ["a", "a", "b"], [0, 9, 3], [2.0, -1.0, 5.0], [True, True, False]) == [
        [1.0, 2.0, 2.0, 2.0, 2.0],
        [2.0, 1.0, 0.5, -1.0, 2.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],  # new window without a value: count 0, zeros
    ]
    assert repr(t) == "TumblingTable(size_ms=10, keys=2, dirty=2, late=0)"
    assert t.take_dirty() == [("a", 0, 2, 1.0, -1.0, 2.0), ("b", 0, 0, 0.0, INF, -INF)]
    assert t.take_dirty() == []
    # same window, no value: not dirty; later window: dirty even without a value
    assert _u(t, ["a", "b"], [5, 10], [9.0, 9.0], [False, False]) == [
        [2.0, 1.0, 0.5, -1.0, 2.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    assert t.take_dirty() == [("b", 10, 0, 0.0, INF, -INF)]
    # late rows are counted, not applied, and report the current window
    assert _u(t, ["b", "b", "b"], [25, 19, 20], [1.0, 100.0, 3.0]) == [
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [2.0, 4.0, 2.0, 1.0, 3.0],
    ]
    assert t.late == 1
    assert t.take_dirty() == [("b", 20, 2, 4.0, 1.0, 3.0)]
    empty = t.update_many([], np.array([], dtype=np.int64), np.array([]), np.array([], dtype=bool))
    assert empty.shape == (0, 5) and empty.dtype == np.float64


def test_negative_timestamps_use_floor_modulo(backend):
    t = backend.TumblingTable(10)
    _u(t, ["a", "b", "c", "d"], [-1, -10, -11, I64_MIN + 9], [1.0, 2.0, 3.0, 4.0])
    starts = {k: s for k, s, *_ in t.take_dirty()}
    assert starts == {"a": -10, "b": -10, "c": -20, "d": I64_MIN + 8}
    t = backend.TumblingTable(I64_MAX)
    _u(t, ["x", "y", "z"], [I64_MAX, -1, I64_MIN + I64_MAX - 1], [1.0, 1.0, 1.0])
    assert [r[1] for r in t.take_dirty()] == [I64_MAX, -I64_MAX, -I64_MAX]


def test_start_below_int64_is_rejected_atomically(backend):
    t = backend.TumblingTable(10)
    _u(t, ["a"], [5], [1.0])
    with pytest.raises(ValueError, match=r"ts\[1\]=-9223372036854775808 has a window start below"):
        _u(t, ["a", "b"], [6, I64_MIN], [1.0, 1.0])
    assert len(t) == 1 and t.late == 0
    assert t.take_dirty() == [("a", 0, 1, 1.0, 1.0, 1.0)]


def test_signed_zero_and_infinities(backend):
    t = backend.TumblingTable(100)
    out = _u(t, ["k"] * 4, [1, 2, 3, 4], [-0.0, 0.0, INF, -INF])
    # the sum starts at +0.0 and 0.0 + -0.0 == +0.0; min/max take the -0.0
    assert_bits_equal(out[0], [1.0, 0.0, 0.0, -0.0, -0.0])
    # 0.0 < -0.0 and 0.0 > -0.0 are false: min and max keep the first zero
    assert_bits_equal(out[1], [2.0, 0.0, 0.0, -0.0, -0.0])
    assert_bits_equal(out[2], [3.0, INF, INF, -0.0, INF])
    assert out[3][0] == 4.0 and math.isnan(out[3][1]) and out[3][3:] == [-INF, INF]


def test_load_missing_take_dirty_clear(backend):
    t = backend.TumblingTable(60_000)
    assert t.missing(["u1", "u2", "u1", "u3", "u2"]) == ["u1", "u2", "u3"]
    t.load("u1", 60_000, 2, 5.0, 1.0, 4.0)
    t.load("u2", 0, 0, 0.0, 0.0, 0.0)  # count 0: min/max normalised to +inf/-inf
    assert len(t) == 2 and t.take_dirty() == []  # loads are not dirty
    assert t.missing(["u1", "u2", "u3", "u3"]) == ["u3"]
    with pytest.raises(ValueError, match="already has state"):
        t.load("u1", 60_000, 1, 1.0, 1.0, 1.0)
    assert _u(t, ["u1", "u2", "u2"], [61_000, 1, 2], [6.0, -3.0, 3.0]) == [
        [3.0, 11.0, 11.0 / 3.0, 1.0, 6.0],
        [1.0, -3.0, -3.0, -3.0, -3.0],
        [2.0, 0.0, 0.0, -3.0, 3.0],
    ]
    with pytest.raises(RuntimeError, match=r"clear\(\): 2 dirty key\(s\) not taken"):
        t.clear()
    assert len(t) == 2
    assert t.take_dirty() == [("u1", 60_000, 3, 11.0, 1.0, 6.0), ("u2", 0, 2, 0.0, -3.0, 3.0)]
    t.clear()
    assert len(t) == 0 and t.missing(["u1"]) == ["u1"]
    # loaded state of an older window is replaced by the row's newer window
    t.load("u1", 0, 5, 50.0, 1.0, 20.0)
    assert _u(t, ["u1"], [120_000], [7.0]) == [[1.0, 7.0, 7.0, 7.0, 7.0]]
    # and rows older than a loaded window are late
    t.load("u9", 120_000, 1, 2.0, 2.0, 2.0)
    assert _u(t, ["u9"], [119_999], [7.0]) == [[1.0, 2.0, 2.0, 2.0, 2.0]]
    assert t.late == 1
    t.take_dirty()
    t.clear()
    assert t.late == 1  # clear() drops state, not the counter


def test_missing_returns_callers_objects(backend):
    k = "".join(["user", "-", "7"])  # not interned
    t = backend.TumblingTable(5)
    (got,) = t.missing([k, "user-7"])
    assert got is k


def test_keys_accept_sequences(backend):
    t = backend.TumblingTable(5)
    one = (np.array([1]), np.array([1.0]), np.array([True]))
    assert t.update_many(("a",), *one).tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0]]
    assert t.update_many(np.array(["a"]), *one)[0, 0] == 2.0  # numpy str_ is a str
    assert t.missing(("a", "b")) == ["b"]
    assert t.take_dirty()[0][0] == "a"


# -- errors and conversions ------------------------------------------------------


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


def test_errors_match():
    native = _require_native()
    for size in (0, -1):
        _same_msg(_raises_same(lambda m: m.TumblingTable, size), ValueError)
    for size in (1 << 63, 1.5, "10"):
        assert isinstance(_raises_same(lambda m: m.TumblingTable, size)[0], TypeError)

    tables = {m: m.TumblingTable(10) for m in (native, ref)}
    for t in tables.values():
        _u(t, ["held"], [1], [1.0])
        t.take_dirty()
    one = (np.array([1]), np.array([1.0]), np.array([True]))

    def upd(*args):
        return _raises_same(lambda m: tables[m].update_many, *args)

    _same_msg(upd(["a", "b"], *one), ValueError)
    _same_msg(upd(["a"], np.array([1, 2]), np.array([1.0]), np.array([True])), ValueError)
    _same_msg(upd(["a"], np.array([1]), np.array([1.0]), np.array([True, False])), ValueError)
    _same_msg(upd(["a", 3], np.array([1, 2]), np.ones(2), np.ones(2, dtype=bool)), TypeError)
    _same_msg(upd("ab", np.array([1, 2]), np.ones(2), np.ones(2, dtype=bool)), TypeError)
    for bad_keys in (5, {"a"}, (k for k in ["a"]), {"a": 1}):
        assert isinstance(upd(bad_keys, *one)[0], TypeError)
    assert isinstance(upd(["\ud800"], *one)[0], UnicodeEncodeError)
    # the halves of a surrogate pair are two lone surrogates, not a pair
    assert isinstance(upd(["\ud83d", "\ude00"], np.array([1, 2]), np.ones(2), np.ones(2, dtype=bool))[0],
                      UnicodeEncodeError)
    # the first bad key decides the error, in row order
    assert isinstance(upd(["ok", "\udfff", 3], np.array([1, 2, 3]), np.ones(3), np.ones(3, dtype=bool))[0],
                      UnicodeEncodeError)
    _same_msg(upd(["ok", 3, "\udfff"], np.array([1, 2, 3]), np.ones(3), np.ones(3, dtype=bool)), TypeError)
    for bad in ([1], np.array([[1]]), np.array(["1"])):
        assert isinstance(upd(["a"], bad, np.array([1.0]), np.array([True]))[0], TypeError)
        assert isinstance(upd(["a"], np.array([1]), np.array([1.0]), bad)[0], TypeError)
    _same_msg(upd(["a", "b"], np.array([0, I64_MIN]), np.ones(2), np.ones(2, dtype=bool)), ValueError)

    def miss(*args):
        return _raises_same(lambda m: tables[m].missing, *args)

    _same_msg(miss("abc"), TypeError)
    _same_msg(miss(["a", None]), TypeError)
    assert isinstance(miss(["\udc80"])[0], UnicodeEncodeError)
    assert isinstance(miss(7)[0], TypeError)

    def load(*args):
        return _raises_same(lambda m: tables[m].load, *args)

    _same_msg(load("held", 0, 1, 1.0, 1.0, 1.0), ValueError)
    _same_msg(load("new", 0, -1, 1.0, 1.0, 1.0), ValueError)
    _same_msg(load("new", 0, (1 << 53) + 1, 1.0, 1.0, 1.0), ValueError)
    assert isinstance(load("\ud800", 0, 1, 1.0, 1.0, 1.0)[0], UnicodeEncodeError)
    for args in [(b"new", 0, 1, 1.0, 1.0, 1.0), ("new", 0.5, 1, 1.0, 1.0, 1.0),
                 ("new", 0, 1.0, 1.0, 1.0, 1.0), ("new", 1 << 63, 1, 1.0, 1.0, 1.0),
                 ("new", 0, 1, "1.0", 1.0, 1.0)]:
        assert isinstance(load(*args)[0], TypeError), args

    for t in tables.values():
        _u(t, ["x"], [1], [1.0])
    _same_msg(_raises_same(lambda m: tables[m].clear), RuntimeError)
    # failed calls changed nothing
    for t in tables.values():
        assert len(t) == 2 and t.late == 0
        assert t.take_dirty() == [("x", 0, 1, 1.0, 1.0, 1.0)]


def test_update_many_input_conversions_match(native):
    cases = [
        (np.array([1, 2, 3], dtype=np.int32), np.array([1.5, 2.5, -3.0], dtype=np.float32),
         np.array([1, 0, 2], dtype=np.int8)),
        (np.array([1, 5, 9, 13, 17, 21])[::2], np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[::2],
         np.array([True, False, True, True, False, True])[::2]),
        (np.array([1, 2, 3], dtype=np.uint8), np.array([1, 2, 3], dtype=np.int64),
         np.array([0.0, 0.5, np.nan])),
    ]
    for ts, vals, has in cases:
        keys = ["k"] * len(ts)
        out_n = native.TumblingTable(4).update_many(keys, ts, vals, has)
        out_r = ref.TumblingTable(4).update_many(keys, ts, vals, has)
        assert_bits_equal(out_n, out_r, f"{ts.dtype}/{vals.dtype}/{has.dtype}")


def test_native_concurrent_use_is_an_error_not_a_crash(native):
    """update_many releases the GIL; another thread touching the same table
    meanwhile gets RuntimeError instead of corrupting it."""
    n = 300_000
    keys = [f"k{i % 7_000}" for i in range(n)]
    ts, vals, has = np.arange(n, dtype=np.int64), np.ones(n), np.ones(n, dtype=bool)
    t = native.TumblingTable(10**9)
    worker = threading.Thread(target=t.update_many, args=(keys, ts, vals, has))
    worker.start()
    while worker.is_alive():
        try:
            len(t)
            t.missing(["zz"])
        except RuntimeError as exc:
            assert "in use by another thread" in str(exc)
    worker.join()
    assert len(t) == 7_000 and t.late == 0
    dirty = t.take_dirty()
    assert len(dirty) == 7_000 and sum(r[2] for r in dirty) == n
