"""Pure-Python twin of the native kernels in ``ext/src/kernels.hpp``.

Every function here performs the same IEEE-754 double operations, in the same
order, as the C++ core, so results are bit-identical to ``ext._native``.  When
you change an expression on one side, change it on the other; the hypothesis
tests in ``tests/unit/test_ext_parity.py`` compare the two bit for bit.

This module is the specification in executable form and the fallback backend
(see ``ext/__init__.py``); it favours being an obviously faithful transcription
over speed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SlidingWindow", "TumblingTable", "hash_string", "hash_strings"]

_FNV_OFFSET_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_NAN = math.nan
_STATS_WIDTH = 6
_TUMBLING_WIDTH = 5
_MAX_LOADED_COUNT = 1 << 53
_INF = math.inf


# -- argument conversion (mirrors what the nanobind binding accepts) ---------


def _as_int64(x: Any, name: str) -> int:
    if isinstance(x, float):
        raise TypeError(f"{name} must be an int, not float")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(x).__name__}") from None
    if not _I64_MIN <= v <= _I64_MAX:
        raise TypeError(f"{name}={v} does not fit in a signed 64-bit integer")
    return v


def _as_uint64(x: Any, name: str) -> int:
    if isinstance(x, float):
        raise TypeError(f"{name} must be an int, not float")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(x).__name__}") from None
    if not 0 <= v <= _U64:
        raise TypeError(f"{name}={v} does not fit in an unsigned 64-bit integer")
    return v


def _as_double(x: Any, name: str) -> float:
    if type(x) is float:
        return x
    t = type(x)
    if hasattr(t, "__float__") or hasattr(t, "__index__"):
        return float(x)
    raise TypeError(f"{name} must be a real number, not {t.__name__}")


def _as_1d_array(x: Any, dtype: type[np.generic], name: str) -> npt.NDArray[Any]:
    """Like nanobind's ndarray caster with implicit conversion: any 1-D numeric
    array exporting DLPack or the buffer protocol, cast (C-style) to ``dtype``;
    lists and other sequences are rejected, and plain buffer objects (e.g.
    ``array.array``) must already have the exact dtype."""
    plain_buffer = False
    if not isinstance(x, np.ndarray) and not hasattr(x, "__dlpack__"):
        try:
            memoryview(x)
        except TypeError:
            raise TypeError(
                f"update_many(): {name} must be a 1-D numeric array, not {type(x).__name__}"
            ) from None
        plain_buffer = True
    arr = np.asarray(x)
    if plain_buffer and arr.dtype != np.dtype(dtype):
        raise TypeError(
            f"update_many(): {name} must have dtype {np.dtype(dtype)}, got {arr.dtype}"
        )
    if arr.ndim != 1 or arr.dtype.kind not in "biuf":
        raise TypeError(
            f"update_many(): {name} must be a 1-D numeric array, got "
            f"shape {arr.shape} dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


# -- feature hashing ---------------------------------------------------------


def _fnv1a64(data: bytes, seed: int) -> int:
    """64-bit FNV-1a of ``data`` with the offset basis XOR-ed with ``seed``."""
    h = _FNV_OFFSET_BASIS ^ seed
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _U64
    return h


def _check_n_buckets(n_buckets: int) -> None:
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")


def hash_string(value: str, n_buckets: int, seed: int = 0) -> int:
    """Bucket of one string: 64-bit FNV-1a (basis XOR seed) of its UTF-8 bytes,
    modulo n_buckets."""
    if not isinstance(value, str):
        raise TypeError(f"value must be a str, not {type(value).__name__}")
    n_buckets = _as_int64(n_buckets, "n_buckets")
    seed = _as_uint64(seed, "seed")
    _check_n_buckets(n_buckets)
    return _fnv1a64(value.encode("utf-8"), seed) % n_buckets


def hash_strings(values: Iterable[str], n_buckets: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """Buckets of many strings as a 1-D int64 array; same hash as hash_string()."""
    n_buckets = _as_int64(n_buckets, "n_buckets")
    seed = _as_uint64(seed, "seed")
    try:
        iter(values)
    except TypeError:
        raise TypeError(
            f"hash_strings() expects an iterable of str, not {type(values).__name__}"
        ) from None
    _check_n_buckets(n_buckets)
    if isinstance(values, str):
        raise TypeError("hash_strings() expects an iterable of str, not a str")
    items = list(values)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"hash_strings(): values[{i}] is not a str (got {type(item).__name__})"
            )
    encoded = [item.encode("utf-8") for item in items]
    out = np.empty(len(encoded), dtype=np.int64)
    for i, data in enumerate(encoded):
        out[i] = _fnv1a64(data, seed) % n_buckets
    return out


# -- window moments ----------------------------------------------------------
# A moments tuple is (n, sum, mean, m2, min, max); see kernels.hpp.

_EMPTY = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
_Moments = tuple[int, float, float, float, float, float]


def _single(x: float) -> _Moments:
    return (1, x, x, 0.0, x, x)


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Chan et al. pairwise merge; ``a`` holds the older values."""
    a_n, a_sum, a_mean, a_m2, a_min, a_max = a
    b_n, b_sum, b_mean, b_m2, b_min, b_max = b
    if a_n == 0:
        return b
    if b_n == 0:
        return a
    r_n = a_n + b_n
    na = float(a_n)
    nb = float(b_n)
    n = float(r_n)
    delta = b_mean - a_mean
    r_sum = a_sum + b_sum
    r_mean = a_mean + delta * (nb / n)
    r_m2 = (a_m2 + b_m2) + (delta * delta) * ((na * nb) / n)
    r_min = b_min if b_min < a_min else a_min
    r_max = b_max if b_max > a_max else a_max
    return (r_n, r_sum, r_mean, r_m2, r_min, r_max)


def _stats_of(m: _Moments) -> tuple[float, float, float, float, float, float]:
    """[count, sum, mean, min, max, var] of a moments tuple."""
    m_n, m_sum, _mean, m_m2, m_min, m_max = m
    if m_n == 0:
        return (0.0, 0.0, _NAN, _NAN, _NAN, _NAN)
    n = float(m_n)
    return (n, m_sum, m_sum / n, m_min, m_max, m_m2 / n)


def _check_order(prev: int | None, ts: int, i: int | None) -> None:
    if prev is not None and ts < prev:
        msg = f"timestamps must be non-decreasing: got ts={ts} after ts={prev}"
        if i is not None:
            msg += f" (row {i})"
        raise ValueError(msg)


class SlidingWindow:
    """Time window (ts - size_ms, ts] over one entity's values.

    Same "aligned two stacks" algorithm as the C++ ``SlidingWindow``: items of
    the current block [k*size, (k+1)*size) form the back part (one prefix
    aggregate), items of block k-1 the front part (one suffix aggregate per
    item).  Not thread-safe.
    """

    __slots__ = (
        "_size_ms",
        "_block",
        "_f_ts",
        "_f_vals",
        "_f_agg",
        "_f_head",
        "_b_ts",
        "_b_vals",
        "_b_agg",
    )

    def __init__(self, size_ms: int) -> None:
        size_ms = _as_int64(size_ms, "size_ms")
        if size_ms < 1:
            raise ValueError(f"size_ms must be >= 1, got {size_ms}")
        self._size_ms = size_ms
        self._block = 0
        self._f_ts: list[int] = []
        self._f_vals: list[float] = []
        self._f_agg: list[_Moments] = []
        self._f_head = 0
        self._b_ts: list[int] = []
        self._b_vals: list[float] = []
        self._b_agg: _Moments = _EMPTY

    @staticmethod
    def from_state(size_ms: int, ts: Sequence[int], values: Sequence[float]) -> SlidingWindow:
        """Window equal to SlidingWindow(size_ms) fed every (ts, value) pair in
        order; inverse of state()."""
        ts_list = [_as_int64(t, "ts") for t in ts]
        val_list = [_as_double(v, "values") for v in values]
        if len(ts_list) != len(val_list):
            raise ValueError(
                "from_state(): ts and values must have the same length, got "
                f"{len(ts_list)} and {len(val_list)}"
            )
        w = SlidingWindow(size_ms)
        w._update_many(ts_list, val_list, None)
        return w

    # -- public API ----------------------------------------------------------

    @property
    def size_ms(self) -> int:
        return self._size_ms

    def update(self, ts: int, value: float) -> None:
        """Append (ts, value), then evict items with item_ts <= ts - size_ms."""
        ts = _as_int64(ts, "ts")
        value = _as_double(value, "value")
        _check_order(self._last_ts(), ts, None)
        self._apply(ts, value)

    def update_many(self, ts: npt.ArrayLike, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Apply every row; returns an (n, 6) float64 array of
        [count, sum, mean, min, max, var] after each row."""
        ts_arr = _as_1d_array(ts, np.int64, "ts")
        val_arr = _as_1d_array(values, np.float64, "values")
        n = ts_arr.shape[0]
        if val_arr.shape[0] != n:
            raise ValueError(
                "update_many(): ts and values must have the same length, got "
                f"{n} and {val_arr.shape[0]}"
            )
        rows: list[tuple[float, float, float, float, float, float]] = []
        self._update_many(ts_arr.tolist(), val_arr.tolist(), rows)
        out = np.array(rows, dtype=np.float64).reshape(n, _STATS_WIDTH)
        return out

    def state(self) -> tuple[list[int], list[float]]:
        """Live items, oldest first, as (ts list, values list)."""
        h = self._f_head
        return (self._f_ts[h:] + self._b_ts, self._f_vals[h:] + self._b_vals)

    @property
    def count(self) -> int:
        return len(self._f_ts) - self._f_head + self._b_agg[0]

    @property
    def sum(self) -> float:
        return _stats_of(self._aggregate())[1]

    @property
    def mean(self) -> float:
        return _stats_of(self._aggregate())[2]

    @property
    def min(self) -> float:
        return _stats_of(self._aggregate())[3]

    @property
    def max(self) -> float:
        return _stats_of(self._aggregate())[4]

    @property
    def var(self) -> float:
        return _stats_of(self._aggregate())[5]

    @property
    def last(self) -> float:
        return self._b_vals[-1] if self._b_vals else _NAN

    def __repr__(self) -> str:
        return f"SlidingWindow(size_ms={self._size_ms}, count={self.count})"

    # pickle support (also makes copy.copy / copy.deepcopy work)
    def __getstate__(self) -> tuple[int, list[int], list[float]]:
        ts, values = self.state()
        return (self._size_ms, ts, values)

    def __setstate__(self, state: tuple[int, list[int], list[float]]) -> None:
        size_ms, ts, values = state
        restored = SlidingWindow.from_state(size_ms, ts, values)
        for name in SlidingWindow.__slots__:
            object.__setattr__(self, name, getattr(restored, name))

    # -- internals (transcription of kernels.hpp) ----------------------------

    def _last_ts(self) -> int | None:
        return self._b_ts[-1] if self._b_ts else None

    def _aggregate(self) -> _Moments:
        if self._f_head < len(self._f_ts):
            return _merge(self._f_agg[self._f_head], self._b_agg)
        return self._b_agg

    def _update_many(
        self,
        ts: list[int],
        values: list[float],
        rows: list[tuple[float, float, float, float, float, float]] | None,
    ) -> None:
        prev = self._last_ts()
        for i, t in enumerate(ts):
            _check_order(prev, t, i)
            prev = t
        apply = self._apply
        if rows is None:
            for t, v in zip(ts, values):
                apply(t, v)
        else:
            append = rows.append
            aggregate = self._aggregate
            for t, v in zip(ts, values):
                apply(t, v)
                append(_stats_of(aggregate()))

    def _clear_front(self) -> None:
        self._f_ts = []
        self._f_vals = []
        self._f_agg = []
        self._f_head = 0

    def _flip(self) -> None:
        self._f_ts = self._b_ts
        self._f_vals = self._b_vals
        self._f_head = 0
        vals = self._f_vals
        m = len(vals)
        agg: list[_Moments] = [_EMPTY] * m
        acc = _EMPTY
        for j in range(m - 1, -1, -1):
            acc = _merge(_single(vals[j]), acc)
            agg[j] = acc
        self._f_agg = agg
        self._b_ts = []
        self._b_vals = []
        self._b_agg = _EMPTY

    def _apply(self, ts: int, value: float) -> None:
        size = self._size_ms
        block = ts // size
        if self._b_ts and block != self._block:
            if block - 1 == self._block:
                self._flip()
            else:
                self._clear_front()
                self._b_ts = []
                self._b_vals = []
                self._b_agg = _EMPTY
        self._block = block
        self._b_ts.append(ts)
        self._b_vals.append(value)
        self._b_agg = _merge(self._b_agg, _single(value))
        f_ts = self._f_ts
        h = self._f_head
        n_front = len(f_ts)
        while h < n_front and ts - f_ts[h] >= size:
            h += 1
        if h == n_front:
            self._clear_front()
        else:
            self._f_head = h


# -- tumbling windows per key --------------------------------------------------


def _is_sequence(x: Any) -> bool:
    """Like PySequence_Check (what nanobind's ``Sequence`` argument requires):
    the type defines ``__getitem__`` and is not a dict."""
    return not isinstance(x, dict) and hasattr(type(x), "__getitem__")


def _key_list(keys: Any, fn: str) -> list[str]:
    """A private list of the keys; every key must be a str encodable as UTF-8
    (the native table keys on the UTF-8 bytes).  Errors name the first bad
    key, in row order, exactly like the binding."""
    if isinstance(keys, str):
        raise TypeError(f"{fn}(): keys must be a sequence of str, not a str")
    if not _is_sequence(keys):
        raise TypeError(f"{fn}(): keys must be a sequence of str, not {type(keys).__name__}")
    items = list(keys)
    try:
        # Fast path: one join + encode validates every key at once.
        "".join(items).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(
                    f"{fn}(): keys[{i}] is not a str (got {type(item).__name__})"
                ) from None
            item.encode("utf-8")
        raise
    return items


class TumblingTable:
    """Tumbling-window [count, sum, min, max] per key (see ext/__init__.py).

    Transcription of the C++ ``TumblingTable``: per key a state list
    ``[start, count, sum, min, max]`` (insertion-ordered dict), and a dict of
    dirty keys in first-dirtied order.  Not thread-safe.
    """

    __slots__ = ("_size_ms", "_state", "_dirty", "_late")

    def __init__(self, size_ms: int) -> None:
        size_ms = _as_int64(size_ms, "size_ms")
        if size_ms < 1:
            raise ValueError(f"size_ms must be >= 1, got {size_ms}")
        self._size_ms = size_ms
        self._state: dict[str, list[Any]] = {}
        self._dirty: dict[str, None] = {}
        self._late = 0

    @property
    def size_ms(self) -> int:
        return self._size_ms

    @property
    def late(self) -> int:
        return self._late

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return (
            f"TumblingTable(size_ms={self._size_ms}, keys={len(self._state)}, "
            f"dirty={len(self._dirty)}, late={self._late})"
        )

    def update_many(
        self,
        keys: Sequence[str],
        ts: npt.ArrayLike,
        values: npt.ArrayLike,
        has_value: npt.ArrayLike,
    ) -> npt.NDArray[np.float64]:
        """Apply every row in order; returns an (n, 5) float64 array of
        [count, sum, mean, min, max] of the row's key after each row."""
        ts_arr = _as_1d_array(ts, np.int64, "ts")
        val_arr = _as_1d_array(values, np.float64, "values")
        hv_arr = _as_1d_array(has_value, np.bool_, "has_value")
        key_list = _key_list(keys, "update_many")
        n = len(key_list)
        if ts_arr.shape[0] != n or val_arr.shape[0] != n or hv_arr.shape[0] != n:
            raise ValueError(
                "update_many(): keys, ts, values and has_value must have the same length, "
                f"got {n}, {ts_arr.shape[0]}, {val_arr.shape[0]} and {hv_arr.shape[0]}"
            )
        ts_list = ts_arr.tolist()
        size = self._size_ms
        # window start = ts - floor_mod(ts, size) (Python's % is a floor modulo
        # for size > 0); it can leave the int64 range only if ts < INT64_MIN + size.
        if ts_list and min(ts_list) < _I64_MIN + size:
            for i, t in enumerate(ts_list):
                if t - t % size < _I64_MIN:
                    raise ValueError(
                        f"update_many(): ts[{i}]={t} has a window start below the int64 range"
                    )
        state = self._state
        dirty = self._dirty
        late = 0
        rows: list[tuple[float, float, float, float, float]] = []
        append = rows.append
        for key, t, v, hv in zip(key_list, ts_list, val_arr.tolist(), hv_arr.tolist()):
            start = t - t % size
            st = state.get(key)
            if st is None or start > st[0]:
                st = state[key] = [start, 0, 0.0, _INF, -_INF]
                dirty[key] = None
            if start < st[0]:
                late += 1
            elif hv:
                st[1] += 1
                st[2] = st[2] + v
                if v < st[3]:
                    st[3] = v
                if v > st[4]:
                    st[4] = v
                dirty[key] = None
            count = st[1]
            if count != 0:
                c = float(count)
                s = st[2]
                append((c, s, s / c, st[3], st[4]))
            else:
                append((0.0, st[2], 0.0, 0.0, 0.0))
        self._late += late
        return np.array(rows, dtype=np.float64).reshape(n, _TUMBLING_WIDTH)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Distinct keys (first-seen order) that have no state in the table."""
        key_list = _key_list(keys, "missing")
        state = self._state
        seen: set[str] = set()
        out: list[str] = []
        for key in key_list:
            if key not in state and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    def load(self, key: str, start: int, count: int, sum: float, min: float, max: float) -> None:  # noqa: A002
        """Install a key's state read from the store (not marked dirty)."""
        if not isinstance(key, str):
            raise TypeError(f"load(): key must be a str, not {type(key).__name__}")
        start = _as_int64(start, "start")
        count = _as_int64(count, "count")
        sum_ = _as_double(sum, "sum")
        min_ = _as_double(min, "min")
        max_ = _as_double(max, "max")
        key.encode("utf-8")
        if not 0 <= count <= _MAX_LOADED_COUNT:
            raise ValueError(f"load(): count must be in [0, 2**53], got {count}")
        if key in self._state:
            raise ValueError(
                f"load(): key {key!r} already has state; load only keys returned by missing()"
            )
        if count == 0:
            min_, max_ = _INF, -_INF
        self._state[key] = [start, count, sum_, min_, max_]

    def take_dirty(self) -> list[tuple[str, int, int, float, float, float]]:
        """(key, start, count, sum, min, max) of every dirty key, in
        first-dirtied order; clears the dirty set."""
        state = self._state
        out = [(key, *state[key]) for key in self._dirty]
        self._dirty = {}
        return out  # type: ignore[return-value]

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""
        if self._dirty:
            raise RuntimeError(
                f"clear(): {len(self._dirty)} dirty key(s) not taken; call take_dirty() first"
            )
        self._state = {}
