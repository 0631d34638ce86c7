"""streamscore native kernels, with a pure-Python twin.

Backends
--------
``ext._native``     C++17 core (``ext/src/kernels.hpp``) behind a thin nanobind
                    binding (``ext/src/bindings.cpp``); built by scikit-build-core.
``ext._reference``  Pure-Python transcription of the same algorithms.

This package re-exports one of them.  The choice is made once, at import:

* ``STREAMSCORE_DISABLE_NATIVE=1`` -> always the reference (second CI leg).
* ``STREAMSCORE_REQUIRE_NATIVE=1`` -> the native module, and an ``ImportError``
  explaining how to build it if it cannot be imported.
* neither -> native if importable, else the reference.  A native module that
  exists but fails to load also falls back, with a ``RuntimeWarning``.
* both -> ``ImportError`` (contradictory configuration).

Environment values ``1``, ``true``, ``yes``, ``on`` (any case) mean set.

API
---
``hash_string(value, n_buckets, seed=0) -> int``
``hash_strings(values, n_buckets, seed=0) -> numpy.ndarray[int64]``
    Feature hashing.  ``h = 0xcbf29ce484222325 ^ seed`` (seed is an unsigned
    64-bit int), then 64-bit FNV-1a over the UTF-8 bytes of the string
    (``h = (h ^ byte) * 0x100000001b3 mod 2**64``); the bucket is
    ``h % n_buckets`` (``n_buckets >= 1``).  Strings that cannot be encoded as
    UTF-8 (lone surrogates) raise ``UnicodeEncodeError``.

``SlidingWindow(size_ms)``
    Time window ``(ts - size_ms, ts]`` over one entity's (ts, value) stream
    (``size_ms >= 1``, int64 timestamps, non-decreasing; a decreasing
    timestamp raises ``ValueError`` and, for ``update_many``, leaves the window
    untouched).  ``update(ts, value)`` appends and then evicts every item with
    ``item_ts <= ts - size_ms``.  ``update_many(ts, values)`` does that for
    every row and returns an ``(n, 6)`` float64 array of
    ``[count, sum, mean, min, max, var]`` after each row (GIL released for
    large batches).  Read-only properties ``count``, ``sum``, ``mean``,
    ``min``, ``max``, ``var`` (population variance), ``last`` and ``size_ms``.
    An empty window has count 0, sum 0.0 and NaN mean/min/max/var/last.
    ``state() -> (ts list, values list)`` (live items, oldest first) and
    ``SlidingWindow.from_state(size_ms, ts, values)`` (== a fresh window fed
    every pair) persist and restore a window; windows also pickle/copy (same
    state).  Windows are not thread-safe: do not share one across threads.

``TumblingTable(size_ms)``
    Tumbling-window aggregates for many entities, keyed by ``str``
    (``size_ms >= 1``).  Per key it holds ``(start, count, sum, min, max)``
    (int64, int64, three doubles; an empty window is ``(start, 0, 0.0, +inf,
    -inf)``).  The window of ``ts`` starts at ``ts - floor_mod(ts, size_ms)``
    (``floor_mod`` in ``[0, size_ms)``, like Python's ``%``), so negative
    timestamps fall in the window below them (``ts=-1, size_ms=10`` -> start
    ``-10``); a batch with a timestamp whose window start would be below the
    int64 range (only ``ts < -2**63 + size_ms`` can be) raises ``ValueError``
    and changes nothing.

    ``update_many(keys, ts, values, has_value) -> ndarray (n, 5)``: ``keys``
    a sequence of ``str`` (UTF-8 encodable), ``ts`` int64, ``values`` float64,
    ``has_value`` bool arrays of the same length.  For each row ``i``, in
    order::

        if key has no state or start > state.start:
            state = (start, 0, 0.0, +inf, -inf); mark key dirty
        if start < state.start: late += 1           # LATE: row not applied
        elif has_value[i]:
            count += 1; sum = sum + value
            if value < min: min = value
            if value > max: max = value
            mark key dirty
        out[i] = [count, sum, sum / count, min, max]  (mean/min/max 0.0 if count == 0)

    Values must not be NaN (callers reject them upstream; a NaN would poison
    ``sum`` but never ``min``/``max``, identically in both backends).  A key
    unknown to the table starts a fresh window, so load its stored state
    first: ``missing(keys) -> list[str]`` gives the distinct keys (first-seen
    order, the caller's str objects) without state, and ``load(key, start,
    count, sum, min, max)`` installs one (not dirty; ``0 <= count <= 2**53``;
    with ``count == 0`` min/max are set to +inf/-inf; ``ValueError`` if the key
    already has state).  ``take_dirty() -> [(key, start, count, sum, min,
    max), ...]`` returns every dirty key's state in first-dirtied order and
    clears the dirty set (write these to the store); ``take_dirty_packed(prefix=b"")``
    is the same as store entries, ``(prefix + key.encode(), b"T" + struct.pack("<qqddd",
    start, count, sum, min, max))``.  ``clear()`` drops all
    state (cache eviction) and raises ``RuntimeError`` while dirty keys have
    not been taken.  ``late`` (rows not applied, cumulative, kept by
    ``clear()``), ``size_ms`` and ``len(table)`` (keys held) are read-only.
    A ``take_dirty`` / ``clear`` / ``missing`` + ``load`` round trip continues
    bit-for-bit like an uninterrupted table.  The native ``update_many`` and
    ``missing`` release the GIL for large batches; tables are not thread-safe
    (the native one raises ``RuntimeError`` if used by two threads at once).

    >>> import numpy as np
    >>> t = TumblingTable(10)
    >>> t.update_many(["a", "a", "b", "a"], np.array([3, 7, 5, 12]),
    ...               np.array([1.0, 3.0, 4.0, 6.0]), np.array([True, True, False, True])).tolist()
    [[1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 4.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 6.0, 6.0, 6.0, 6.0]]
    >>> t.update_many(["a"], np.array([9]), np.array([5.0]), np.array([True])).tolist(), t.late
    ([[1.0, 6.0, 6.0, 6.0, 6.0]], 1)
    >>> t.take_dirty()
    [('a', 10, 1, 6.0, 6.0, 6.0), ('b', 0, 0, 0.0, inf, -inf)]

``HoppingTable(size_ms, hop_ms, grace_ms=0)`` and ``SessionTable(gap_ms, half_life_ms=0)``
    Keyed tables with ``TumblingTable``'s interface (``update_many(keys, ts,
    values, has_value)``, ``missing``, ``load``, ``take_dirty``, ``clear``,
    ``late``, ``len``; same argument conversion, GIL release and thread check)
    for the hopping and session windows of ``streams.features``.  Parameters
    and timestamps must lie in ``(-2**62, 2**62)`` (a batch with another
    timestamp raises ``ValueError`` and changes nothing).  Per row, in order
    (the exact operation sequence is in the comments of ``kernels.hpp``):

    Hopping (``size_ms`` a multiple of ``hop_ms``, ``m = size_ms // hop_ms``):
    ``b = floor(ts / hop)``, ``end = (b + 1) * hop``.  Per key: ``newest``
    (newest applied ts) and the non-empty buckets, each the ``Moments`` of its
    values merged in application order.  If the key has state and ``end +
    grace_ms <= newest`` the row is late (counted, not applied) and reports the
    window of ``newest``; else a value is merged into bucket ``b``, ``newest =
    max(newest, ts)`` and buckets below ``floor((newest - grace) / hop) - m +
    1`` are dropped; the row reports buckets ``[b - m + 1, b]`` folded oldest
    to newest: ``[count, sum, mean, min, max, var]``, all 0.0 when empty.
    ``load(key, newest, buckets, counts, sums, means, m2s, mins, maxs)`` /
    ``take_dirty() -> [(key, newest, buckets, counts, sums, means, m2s, mins,
    maxs), ...]`` (columns of the buckets, ascending).

    Session: per key ``start``, ``newest``, the session's ``Moments`` and, with
    ``half_life_ms > 0``, ``dsum``/``dweight`` (decayed value and weight sums
    at ``newest``; ``decay(dt) = exp2(-(double(dt) / double(half_life_ms)))``).
    A row with ``ts < start`` is late.  ``ts - newest >= gap_ms`` ends the
    session (a value starts a new one: ``dsum = v, dweight = 1.0``); a value
    with ``0 <= ts - newest < gap_ms`` continues it (``dsum = dsum * f + v``,
    ``dweight = dweight * f + 1.0``, ``f = decay(ts - newest)``); a value with
    ``start <= ts < newest`` is merged in (``dsum = dsum + v * f``, ``dweight
    = dweight + f``, ``f = decay(newest - ts)``).  Rows are ``[count, sum,
    mean, min, max, var, since, duration, decay_sum, decay_mean]``: ``since =
    ts - newest`` (newest before the row; NaN for a first, late or out-of-order
    row), ``duration = T - start`` and ``decay_sum = dsum`` at ``T = max(ts,
    newest)`` (a value-less row past newest reports ``dsum * decay(ts -
    newest)``), ``decay_mean = dsum / dweight``.  An ended session without a
    new value, or a key without state, gives zeros (``since`` as above).
    ``load(key, start, newest, count, sum, mean, m2, min, max, dsum,
    dweight)`` / ``take_dirty() -> [(key, start, newest, count, sum, mean, m2,
    min, max, dsum, dweight), ...]``.

    >>> h = HoppingTable(30, 10)
    >>> h.update_many(["a", "a", "a"], np.array([1, 12, 25]), np.array([1.0, 2.0, 3.0]),
    ...               np.array([True, True, True]))[:, :3].tolist()
    [[1.0, 1.0, 1.0], [2.0, 3.0, 1.5], [3.0, 6.0, 2.0]]
    >>> s = SessionTable(10)
    >>> s.update_many(["a", "a", "a"], np.array([1, 5, 30]), np.array([1.0, 2.0, 3.0]),
    ...               np.array([True, True, True]))[:, [0, 1, 6, 7]].tolist()
    [[1.0, 1.0, nan, 0.0], [2.0, 3.0, 4.0, 4.0], [1.0, 3.0, 25.0, 0.0]]

Numerical definition (why native and reference are bit-identical)
-----------------------------------------------------------------
Sums are *not* maintained by "add on enter, subtract on exit": subtraction
of evicted values drifts (after 1e20 enters and leaves, a window holding just
1.0 reports sum 0.0) and Welford removal can make the variance negative.
Instead the window keeps moments ``(n, sum, mean, m2, min, max)`` and merges
them with Chan et al.'s pairwise update (``delta = b.mean - a.mean``;
``sum = a.sum + b.sum``; ``mean = a.mean + delta * (nb / n)``;
``m2 = (a.m2 + b.m2) + (delta * delta) * ((na * nb) / n)``; ``min``/``max``
keep ``a``'s value unless ``b``'s compares strictly smaller/larger), using an
"aligned two stacks" layout: time is cut into blocks ``[k*size, (k+1)*size)``;
values of the current block are merged oldest-to-newest into one prefix
aggregate, values of the previous block carry suffix aggregates merged
newest-to-oldest, and the reported moments are ``merge(front suffix, back
prefix)``.  Then ``count = n``, ``mean = sum / n``, ``var = m2 / n``.  This
gives O(1) amortised updates (min/max included, so no monotonic deques are
needed; the update that crosses into a new block pays O(items in the previous
block) once to rebuild suffix aggregates), only values inside the window ever contribute (no drift; ``var >=
0``), and every result is a function of ``(size_ms, window contents)`` alone,
so ``from_state(size_ms, *w.state())`` continues bit-for-bit like ``w``.

The operation sequence above *is* the specification: the C++ core (built with
``-ffp-contract=off``, no fast-math) and ``ext/_reference.py`` execute the
same IEEE-754 double operations in the same order, so all outputs - hashes
and floats (TumblingTable: plain ``sum + value`` in row order and ``sum /
count``), including signed zeros and infinities - are bit-identical between
backends, and NaN appears in exactly the same places (the sign/payload bits of
a NaN are not specified: IEEE-754 leaves their propagation open and compilers
may swap the operands of + and *).  The tests compare results bit for bit.
HoppingTable and SessionTable reuse ``merge``; the decay factor is one call
of the C library's ``exp2`` in both backends (Python's ``math.exp2`` is that
function), so decayed sums are bit-identical too on one platform.

``ScaledLogistic(lr, l2, intercept_lr, clip_gradient=1e12)``
    Online standardised logistic regression, the same bits as River's
    ``preprocessing.StandardScaler() | linear_model.LogisticRegression(
    optim.SGD(lr), l2=l2, intercept_lr=intercept_lr)`` with an fsum dot
    (``models.registry._ExactDot``): ``predict_proba_one(x) -> float`` (P(y=1)
    with the current statistics), ``learn_one(x, y)`` (the scaler learns x,
    then the model learns from x scaled by the new statistics), ``state()``
    (plain data) and ``ScaledLogistic.from_state(state)``. ``x`` maps feature
    names (str) to numbers; anything else raises ``TypeError``. Wrapped by
    ``models.linear.ScaledLogisticRegression``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

__all__ = [
    "NATIVE",
    "HoppingTable",
    "ScaledLogistic",
    "SessionTable",
    "SlidingWindow",
    "TumblingTable",
    "backend_name",
    "hash_string",
    "hash_strings",
]

_TRUTHY = frozenset({"1", "true", "yes", "on"})


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def _select_backend() -> ModuleType:
    require = _flag("STREAMSCORE_REQUIRE_NATIVE")
    disable = _flag("STREAMSCORE_DISABLE_NATIVE")
    if require and disable:
        raise ImportError(
            "ext: STREAMSCORE_REQUIRE_NATIVE and STREAMSCORE_DISABLE_NATIVE are both set; "
            "unset one of them"
        )
    if disable:
        return importlib.import_module("ext._reference")
    try:
        # import_module, not `from ext import _native`: the latter turns a
        # missing submodule into a generic "cannot import name" ImportError.
        native = importlib.import_module("ext._native")
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "ext._native"
        if require:
            what = "is not built" if missing else "failed to load"
            raise ImportError(
                f"ext: the native module ext._native {what} ({exc}) and "
                "STREAMSCORE_REQUIRE_NATIVE=1 is set. Build it with\n"
                "    pip install --no-build-isolation --no-deps -e .\n"
                "(needs cmake, a C++17 compiler, nanobind and scikit-build-core), "
                "or unset STREAMSCORE_REQUIRE_NATIVE to use the pure-Python reference."
            ) from exc
        if not missing:
            warnings.warn(
                f"ext: native module ext._native failed to load ({exc}); "
                "falling back to the pure-Python reference",
                RuntimeWarning,
                stacklevel=2,
            )
        return importlib.import_module("ext._reference")
    return native


_backend = _select_backend()

NATIVE: bool = _backend.__name__ == "ext._native"
hash_string = _backend.hash_string
hash_strings = _backend.hash_strings
SlidingWindow = _backend.SlidingWindow
TumblingTable = _backend.TumblingTable
HoppingTable = _backend.HoppingTable
SessionTable = _backend.SessionTable
ScaledLogistic = _backend.ScaledLogistic


def backend_name() -> str:
    """``"native"`` or ``"reference"``: which implementation this package exports."""
    return "native" if NATIVE else "reference"
