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
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HoppingTable", "ScaledLogistic", "SessionTable", "SlidingWindow", "TumblingTable", "hash_string",
           "hash_strings"]

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


#: TumblingTable.take_dirty_packed: the native binding writes the same bytes
_PACK_TUMBLING = struct.Struct("<cqqddd").pack


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

    def take_dirty_packed(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """take_dirty() as (prefix + UTF-8 key, b"T" + struct.pack("<qqddd", start, count, sum,
        min, max)) pairs: store entries."""
        pack = _PACK_TUMBLING
        return [(prefix + key.encode("utf-8"), pack(b"T", *st)) for key, *st in self.take_dirty()]

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""
        if self._dirty:
            raise RuntimeError(
                f"clear(): {len(self._dirty)} dirty key(s) not taken; call take_dirty() first"
            )
        self._state = {}


# -- hopping and session windows per key ---------------------------------------

_MAX_ABS_TS = 1 << 62
_SESSION_WIDTH = 10


def _check_param(v: int, lo: int, name: str) -> None:
    if not lo <= v < _MAX_ABS_TS:
        raise ValueError(f"{name} must be in [{lo}, 2**62), got {v}")


def _check_ts_range(ts_list: list[int]) -> None:
    for i, t in enumerate(ts_list):
        if not -_MAX_ABS_TS < t < _MAX_ABS_TS:
            raise ValueError(f"update_many(): ts[{i}]={t} is outside (-2**62, 2**62)")


def _check_loaded_count(count: int) -> None:
    if not 0 <= count <= _MAX_LOADED_COUNT:
        raise ValueError(f"load(): count must be in [0, 2**53], got {count}")


def _stats_row(m: _Moments) -> tuple[float, float, float, float, float, float]:
    """[count, sum, mean, min, max, var] of m, all 0.0 when m is empty (kernels.hpp write_stats)."""
    if m[0] == 0:
        return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return _stats_of(m)


def _batch_args(
    fn: str, keys: Any, ts: Any, values: Any, has_value: Any
) -> tuple[list[str], list[int], list[float], list[bool]]:
    ts_arr = _as_1d_array(ts, np.int64, "ts")
    val_arr = _as_1d_array(values, np.float64, "values")
    hv_arr = _as_1d_array(has_value, np.bool_, "has_value")
    key_list = _key_list(keys, fn)
    n = len(key_list)
    if ts_arr.shape[0] != n or val_arr.shape[0] != n or hv_arr.shape[0] != n:
        raise ValueError(
            f"{fn}(): keys, ts, values and has_value must have the same length, "
            f"got {n}, {ts_arr.shape[0]}, {val_arr.shape[0]} and {hv_arr.shape[0]}"
        )
    ts_list = ts_arr.tolist()
    _check_ts_range(ts_list)
    return key_list, ts_list, val_arr.tolist(), hv_arr.tolist()


def _missing(state: dict[str, Any], keys: Sequence[str]) -> list[str]:
    key_list = _key_list(keys, "missing")
    seen: set[str] = set()
    out: list[str] = []
    for key in key_list:
        if key not in state and key not in seen:
            seen.add(key)
            out.append(key)
    return out


def _check_new_key(state: dict[str, Any], key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"load(): key must be a str, not {type(key).__name__}")
    key.encode("utf-8")
    if key in state:
        raise ValueError(f"load(): key {key!r} already has state; load only keys returned by missing()")
    return key


def _clear_checked(dirty: dict[str, None]) -> None:
    if dirty:
        raise RuntimeError(f"clear(): {len(dirty)} dirty key(s) not taken; call take_dirty() first")


class HoppingTable:
    """Hopping-window [count, sum, mean, min, max, var] per key (see ext/__init__.py).

    Transcription of the C++ ``HoppingTable``: per key ``[newest, buckets]``
    with ``buckets`` a list of ``[bucket, moments]`` in ascending bucket order.
    Not thread-safe.
    """

    __slots__ = ("_size_ms", "_hop_ms", "_grace_ms", "_m", "_state", "_dirty", "_late")

    def __init__(self, size_ms: int, hop_ms: int, grace_ms: int = 0) -> None:
        size_ms = _as_int64(size_ms, "size_ms")
        hop_ms = _as_int64(hop_ms, "hop_ms")
        grace_ms = _as_int64(grace_ms, "grace_ms")
        _check_param(size_ms, 1, "size_ms")
        _check_param(hop_ms, 1, "hop_ms")
        _check_param(grace_ms, 0, "grace_ms")
        if size_ms % hop_ms:
            raise ValueError(f"size_ms must be a multiple of hop_ms, got {size_ms} and {hop_ms}")
        if size_ms + grace_ms >= _MAX_ABS_TS:
            raise ValueError("size_ms + grace_ms must be below 2**62")
        self._size_ms = size_ms
        self._hop_ms = hop_ms
        self._grace_ms = grace_ms
        self._m = size_ms // hop_ms
        self._state: dict[str, list[Any]] = {}
        self._dirty: dict[str, None] = {}
        self._late = 0

    @property
    def size_ms(self) -> int:
        return self._size_ms

    @property
    def hop_ms(self) -> int:
        return self._hop_ms

    @property
    def grace_ms(self) -> int:
        return self._grace_ms

    @property
    def late(self) -> int:
        return self._late

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return (
            f"HoppingTable(size_ms={self._size_ms}, hop_ms={self._hop_ms}, grace_ms={self._grace_ms}, "
            f"keys={len(self._state)}, dirty={len(self._dirty)}, late={self._late})"
        )

    def update_many(
        self, keys: Sequence[str], ts: npt.ArrayLike, values: npt.ArrayLike, has_value: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """Apply every row in order; returns an (n, 6) float64 array of
        [count, sum, mean, min, max, var] of each row's window."""
        key_list, ts_list, vals, hvs = _batch_args("update_many", keys, ts, values, has_value)
        hop, m, grace = self._hop_ms, self._m, self._grace_ms
        state, dirty = self._state, self._dirty
        rows: list[tuple[float, ...]] = []
        append = rows.append
        for key, t, v, hv in zip(key_list, ts_list, vals, hvs):
            b = t // hop
            end = (b + 1) * hop
            st = state.get(key)
            if st is not None and end + grace <= st[0]:
                self._late += 1
                bn = st[0] // hop
                append(_stats_row(self._fold(st[1], bn - m + 1, bn)))
                continue
            if hv:
                if st is None:
                    st = state[key] = [t, []]
                self._apply(st, b, t, v)
                dirty[key] = None
            append(_STATS_ZERO if st is None else _stats_row(self._fold(st[1], b - m + 1, b)))
        return np.array(rows, dtype=np.float64).reshape(len(key_list), _STATS_WIDTH)

    def _apply(self, st: list[Any], b: int, t: int, v: float) -> None:
        buckets: list[list[Any]] = st[1]
        pos = len(buckets)
        while pos > 0 and buckets[pos - 1][0] >= b:
            pos -= 1
        if pos < len(buckets) and buckets[pos][0] == b:
            buckets[pos][1] = _merge(buckets[pos][1], _single(v))
        else:
            buckets.insert(pos, [b, _single(v)])
        if t > st[0]:
            st[0] = t
        keep = (st[0] - self._grace_ms) // self._hop_ms - self._m + 1
        drop = 0
        while drop < len(buckets) and buckets[drop][0] < keep:
            drop += 1
        if drop:
            del buckets[:drop]

    @staticmethod
    def _fold(buckets: list[list[Any]], lo: int, hi: int) -> _Moments:
        acc = _EMPTY
        for b, mom in buckets:
            if b > hi:
                break
            if b >= lo:
                acc = _merge(acc, mom)
        return acc

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Distinct keys (first-seen order) that have no state in the table."""
        return _missing(self._state, keys)

    def load(
        self,
        key: str,
        newest: int,
        buckets: Sequence[int],
        counts: Sequence[int],
        sums: Sequence[float],
        means: Sequence[float],
        m2s: Sequence[float],
        mins: Sequence[float],
        maxs: Sequence[float],
    ) -> None:
        """Install a key's state read from the store (not marked dirty)."""
        newest = _as_int64(newest, "newest")
        bs = [_as_int64(b, "buckets") for b in buckets]
        ns = [_as_int64(c, "counts") for c in counts]
        cols = [[_as_double(x, name) for x in col]
                for col, name in ((sums, "sums"), (means, "means"), (m2s, "m2s"), (mins, "mins"), (maxs, "maxs"))]
        if any(len(c) != len(bs) for c in (ns, *cols)):
            raise ValueError("load(): the bucket columns must have the same length")
        if not isinstance(key, str):
            raise TypeError(f"load(): key must be a str, not {type(key).__name__}")
        key.encode("utf-8")
        for j, c in enumerate(ns):
            _check_loaded_count(c)
            if c == 0:
                raise ValueError("load(): bucket counts must be >= 1")
            if j and bs[j] <= bs[j - 1]:
                raise ValueError("load(): buckets must be strictly ascending")
        _check_new_key(self._state, key)
        self._state[key] = [newest, [[b, (c, s, mu, m2, lo, hi)]
                                     for b, c, s, mu, m2, lo, hi in zip(bs, ns, *cols)]]

    def take_dirty(self) -> list[tuple[Any, ...]]:
        """(key, newest, buckets, counts, sums, means, m2s, mins, maxs) of every
        dirty key, in first-dirtied order; clears the dirty set."""
        out = []
        for key in self._dirty:
            newest, buckets = self._state[key]
            cols: list[list[Any]] = [[b for b, _ in buckets]] + [[mom[j] for _, mom in buckets] for j in range(6)]
            out.append((key, newest, *cols))
        self._dirty = {}
        return out

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""
        _clear_checked(self._dirty)
        self._state = {}


_STATS_ZERO = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class SessionTable:
    """Gap-based session aggregates per key (see ext/__init__.py).

    Transcription of the C++ ``SessionTable``: per key ``[start, newest,
    moments, dsum, dweight]``.  Not thread-safe.
    """

    __slots__ = ("_gap_ms", "_half_life_ms", "_state", "_dirty", "_late")

    def __init__(self, gap_ms: int, half_life_ms: int = 0) -> None:
        gap_ms = _as_int64(gap_ms, "gap_ms")
        half_life_ms = _as_int64(half_life_ms, "half_life_ms")
        _check_param(gap_ms, 1, "gap_ms")
        _check_param(half_life_ms, 0, "half_life_ms")
        self._gap_ms = gap_ms
        self._half_life_ms = half_life_ms
        self._state: dict[str, list[Any]] = {}
        self._dirty: dict[str, None] = {}
        self._late = 0

    @property
    def gap_ms(self) -> int:
        return self._gap_ms

    @property
    def half_life_ms(self) -> int:
        return self._half_life_ms

    @property
    def late(self) -> int:
        return self._late

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return (
            f"SessionTable(gap_ms={self._gap_ms}, half_life_ms={self._half_life_ms}, "
            f"keys={len(self._state)}, dirty={len(self._dirty)}, late={self._late})"
        )

    def _decay(self, dt: int) -> float:
        return math.exp2(-(float(dt) / float(self._half_life_ms)))

    def _fresh(self, t: int, v: float) -> list[Any]:
        if self._half_life_ms > 0:
            return [t, t, _single(v), v, 1.0]
        return [t, t, _single(v), 0.0, 0.0]

    def _report(self, st: list[Any], at: int, since: float) -> list[float]:
        row = [*_stats_row(st[2]), since, float(at - st[0])]
        if self._half_life_ms > 0:
            row += [st[3], st[3] / st[4]]
        else:
            row += [0.0, 0.0]
        return row

    def update_many(
        self, keys: Sequence[str], ts: npt.ArrayLike, values: npt.ArrayLike, has_value: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """Apply every row in order; returns an (n, 10) float64 array of [count,
        sum, mean, min, max, var, since, duration, decay_sum, decay_mean] of
        each row's session."""
        key_list, ts_list, vals, hvs = _batch_args("update_many", keys, ts, values, has_value)
        gap, decays = self._gap_ms, self._half_life_ms > 0
        state, dirty, report = self._state, self._dirty, self._report
        rows: list[list[float]] = []
        append = rows.append
        for key, t, v, hv in zip(key_list, ts_list, vals, hvs):
            st = state.get(key)
            if st is None:
                if hv:
                    st = state[key] = self._fresh(t, v)
                    dirty[key] = None
                    append(report(st, t, _NAN))
                else:
                    append([0.0] * 6 + [_NAN, 0.0, 0.0, 0.0])
                continue
            if t < st[0]:
                self._late += 1
                append(report(st, st[1], _NAN))
            elif t >= st[1]:
                since = float(t - st[1])
                if t - st[1] >= gap:
                    if hv:
                        st[:] = self._fresh(t, v)
                        dirty[key] = None
                        append(report(st, t, since))
                    else:
                        append([0.0] * 6 + [since, 0.0, 0.0, 0.0])
                elif hv:
                    if decays:
                        f = self._decay(t - st[1])
                        st[3] = st[3] * f + v
                        st[4] = st[4] * f + 1.0
                    st[2] = _merge(st[2], _single(v))
                    st[1] = t
                    dirty[key] = None
                    append(report(st, t, since))
                else:
                    row = report(st, t, since)
                    if decays:
                        row[8] = st[3] * self._decay(t - st[1])
                    append(row)
            else:
                if hv:
                    if decays:
                        f = self._decay(st[1] - t)
                        st[3] = st[3] + v * f
                        st[4] = st[4] + f
                    st[2] = _merge(st[2], _single(v))
                    dirty[key] = None
                append(report(st, st[1], _NAN))
        return np.array(rows, dtype=np.float64).reshape(len(key_list), _SESSION_WIDTH)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Distinct keys (first-seen order) that have no state in the table."""
        return _missing(self._state, keys)

    def load(
        self,
        key: str,
        start: int,
        newest: int,
        count: int,
        sum: float,  # noqa: A002
        mean: float,
        m2: float,
        min: float,  # noqa: A002
        max: float,  # noqa: A002
        dsum: float,
        dweight: float,
    ) -> None:
        """Install a key's state read from the store (not marked dirty)."""
        if not isinstance(key, str):
            raise TypeError(f"load(): key must be a str, not {type(key).__name__}")
        start = _as_int64(start, "start")
        newest = _as_int64(newest, "newest")
        count = _as_int64(count, "count")
        floats = [_as_double(x, name) for x, name in ((sum, "sum"), (mean, "mean"), (m2, "m2"), (min, "min"),
                                                      (max, "max"), (dsum, "dsum"), (dweight, "dweight"))]
        key.encode("utf-8")
        _check_loaded_count(count)
        _check_new_key(self._state, key)
        self._state[key] = [start, newest, (count, *floats[:5]), floats[5], floats[6]]

    def take_dirty(self) -> list[tuple[Any, ...]]:
        """(key, start, newest, count, sum, mean, m2, min, max, dsum, dweight) of
        every dirty key, in first-dirtied order; clears the dirty set."""
        out = []
        for key in self._dirty:
            start, newest, mom, dsum, dweight = self._state[key]
            out.append((key, start, newest, *mom, dsum, dweight))
        self._dirty = {}
        return out

    def clear(self) -> None:
        """Drop all held state; raises RuntimeError if dirty keys were not taken."""
        _clear_checked(self._dirty)
        self._state = {}




# -- online standardised logistic regression ------------------------------------
class ScaledLogistic:
    """Pure-Python twin of ``ext/src/linear.hpp``: River's ``StandardScaler() |
    LogisticRegression(optim.SGD(lr), l2, intercept_lr)`` with an fsum dot, the
    same operations in the same order."""

    def __init__(self, lr: float, l2: float, intercept_lr: float, clip_gradient: float = 1e12) -> None:
        self._lr, self._l2, self._intercept_lr, self._clip = float(lr), float(l2), float(intercept_lr), float(clip_gradient)
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._counts: list[int] = []
        self._means: list[float] = []
        self._vars: list[float] = []
        self._weights: list[float] = []
        self._intercept = 0.0
        self._n_iterations = 0

    def _slots(self, x: dict) -> tuple[list[int], list[float]]:
        slots, xs = [], []
        for name, value in x.items():
            if not isinstance(name, str):
                raise TypeError(f"feature names must be str, got {type(name).__name__}")
            s = self._index.get(name)
            if s is None:
                s = self._index[name] = len(self._names)
                self._names.append(name)
                self._counts.append(0)
                self._means.append(0.0)
                self._vars.append(0.0)
                self._weights.append(0.0)
            if not isinstance(value, (int, float)):
                raise TypeError(f"feature {name!r}: a number is needed, got {type(value).__name__}")
            slots.append(s)
            xs.append(float(value))
        return slots, xs

    def _transform(self, slots: list[int], xs: list[float]) -> list[float]:
        means, vars_ = self._means, self._vars
        out = []
        for s, xi in zip(slots, xs):
            v = vars_[s]
            if v < 0:      # cannot happen (Welford); the native kernel raises the same
                raise ValueError("negative number cannot be raised to a fractional power")
            out.append((xi - means[s]) / v ** 0.5 if v else 0.0)
        return out

    def _raw_dot(self, slots: list[int], z: list[float]) -> float:
        w = self._weights
        return math.fsum(w[s] * zi for s, zi in zip(slots, z)) + self._intercept

    def predict_proba_one(self, x: dict) -> float:
        slots, xs = self._slots(x)
        raw = self._raw_dot(slots, self._transform(slots, xs))
        if raw < -30:
            return 0.0
        if raw > 30:
            return 1.0
        return 1 / (1 + math.exp(-raw))

    def learn_one(self, x: dict, y: bool) -> None:
        slots, xs = self._slots(x)
        counts, means, vars_ = self._counts, self._means, self._vars
        for s, xi in zip(slots, xs):
            counts[s] += 1
            old_mean = means[s]
            means[s] += (xi - old_mean) / counts[s]
            vars_[s] += ((xi - old_mean) * (xi - means[s]) - vars_[s]) / counts[s]
        z = self._transform(slots, xs)
        raw = self._raw_dot(slots, z)
        yt = 1 if y else -1
        zz = raw * yt
        if zz > 18.0:
            g = 1.0 * math.exp(-zz) * -yt
        elif zz < -18.0:
            g = 1.0 * -yt
        else:
            g = 1.0 * -yt / (math.exp(zz) + 1.0)
        g *= 1.0
        g = float(max(min(g, self._clip), -self._clip))
        self._intercept -= self._intercept_lr * g
        w, l2, lr = self._weights, self._l2, self._lr
        for s, zi in zip(slots, z):
            gi = zi * g
            if l2:
                gi += w[s] * l2
            w[s] -= gi * lr
        self._n_iterations += 1

    def state(self) -> dict:
        """Plain data: hyper-parameters and per-feature (count, mean, var, weight), slot order."""
        return {"lr": self._lr, "l2": self._l2, "intercept_lr": self._intercept_lr, "clip_gradient": self._clip,
                "names": list(self._names), "counts": list(self._counts), "means": list(self._means),
                "vars": list(self._vars), "weights": list(self._weights), "intercept": self._intercept,
                "n_iterations": self._n_iterations}

    @classmethod
    def from_state(cls, state: dict) -> "ScaledLogistic":
        new = cls(state["lr"], state["l2"], state["intercept_lr"], state["clip_gradient"])
        for name, c, m, v, w in zip(state["names"], state["counts"], state["means"], state["vars"],
                                    state["weights"], strict=True):
            new._slots({name: 0.0})
            s = new._index[name]
            new._counts[s], new._means[s], new._vars[s], new._weights[s] = int(c), float(m), float(v), float(w)
        new._intercept, new._n_iterations = float(state["intercept"]), int(state["n_iterations"])
        return new
