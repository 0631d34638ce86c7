"""What the window tests share: feeding a stream through Windows, comparing with a reference, random streams.

Each test module keeps its own brute-force reference (the rules differ per
window kind); the reference returns, per event, ``(features, late, scale)``
where ``scale`` bounds the magnitude of the values involved (for the absolute
tolerance of float comparisons) or is ``(scale, decay_scale)`` when decayed
sums are compared.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from hypothesis import strategies as st

from streams.features import Windows, WindowSpec

#: below this a float is subnormal: no relative precision left, so no tolerance can be tighter
TINY = sys.float_info.min

#: (key, ts, value or None): one event of the window tests
Event = tuple[str, int, Any]

#: aggregates that must equal the reference exactly (no float rounding involved)
EXACT = frozenset({"count", "min", "max", "last", "since", "duration", "distinct"})


def values(small: int = 5) -> st.SearchStrategy[float | None]:
    """A value, or None (the field is missing): finite floats up to 1e6, and integers up to ``small`` (ties)."""
    return st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-small, small).map(float))


def streams(vals: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[list[Event]]:
    """Short streams over three keys, timestamps 0..3000 in any order."""
    return st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3000),
                              values() if vals is None else vals), min_size=1, max_size=80)


def run(spec: WindowSpec, events: Sequence[Event], kernels: Any, batches: Iterable[int] | None = None,
        reload_at: Collection[int] = frozenset(), store: dict[str, bytes] | None = None,
        flush_every_batch: bool = True) -> tuple[list[dict[str, float]], int, Windows, dict[str, bytes]]:
    """Feed events through Windows in batches of ``batches``; returns (features, late, windows, store).

    At batch indexes in ``reload_at`` the state is flushed and a new Windows
    object continues from the store (a restart); ``flush_every_batch`` also
    flushes after every other batch (a worker flushes before each commit).
    """
    store = {} if store is None else store
    w = Windows([spec], kernels=kernels)
    got: list[dict[str, float]] = []
    i, late = 0, 0
    for b, size in enumerate(batches or [len(events)]):
        chunk = events[i:i + size]
        i += size
        docs = [{"k": k, "x": v} if v is not None else {"k": k} for k, _, v in chunk]
        got += w.update_batch(docs, [t for _, t, _ in chunk], store.get)
        if flush_every_batch or b in reload_at:
            w.flush(store.__setitem__, get=store.get)
        if b in reload_at:
            late += w.late
            w = Windows([spec], kernels=kernels)
    assert i >= len(events)
    return got, late + w.late, w, store


def check(got: Sequence[dict[str, float]], expected: Sequence[tuple[dict[str, float], bool, Any]],
          spec: WindowSpec, *, all_names: bool = False, hll_rel_err: float | None = None) -> None:
    """Features equal the reference's: exact aggregates bit for bit, floats to 1e-9 relative.

    ``all_names``: every feature of the spec is present for every event (else
    only those the reference has). ``hll_rel_err``: distinct counts are
    sketches, compared within that relative error. Variance and std are
    compared squared (sqrt magnifies the rounding of a ~0 variance).
    """
    names = dict(zip(spec.aggs, spec.names))
    for i, (g, (e, _, scale)) in enumerate(zip(got, expected)):
        scale, dscale = scale if isinstance(scale, tuple) else (scale, scale)
        want = set(spec.names) if all_names else {names[a] for a in spec.aggs if a in e}
        assert set(g) == want, (i, g, e)
        for a in spec.aggs:
            if a not in e:
                continue
            x, y = g[names[a]], e[a]
            if a == "distinct" and hll_rel_err is not None:
                assert abs(x - y) <= hll_rel_err * y, (i, x, y)
            elif a in EXACT:
                assert x == y, (i, a, x, y)
            elif a in ("var", "std"):
                # a variance of values ~1e-162 is subnormal (scale * scale underflows): it has no relative
                # precision left, so the tolerance is floored at the smallest normal float (TINY)
                assert math.isclose(x * x if a == "std" else x, y * y if a == "std" else y, rel_tol=1e-9,
                                    abs_tol=max(1e-12 * scale * scale, TINY)), (i, a, x, y)
            elif a == "decay_sum":      # a sum decayed over ~1,000 half-lives is subnormal too (same floor)
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=max(1e-12 * dscale, TINY)), (i, a, x, y)
            else:
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=max(1e-12 * scale, TINY)), (i, a, x, y)


def random_stream(seed: int, n: int, keys: int = 5, disorder: int = 0, p_missing: float = 0.05,
                  steps: Sequence[int] = (0, 1, 5, 30, 200),
                  value: Callable[[random.Random], Any] = lambda r: round(r.uniform(-100, 100), 1)) -> list[Event]:
    """A long stream: time advances by one of ``steps`` per event; 20 % of events up to ``disorder`` early."""
    rnd = random.Random(seed)
    t, out = 0, []
    for _ in range(n):
        t += rnd.choice(steps)
        ts = t - (rnd.randint(0, disorder) if disorder and rnd.random() < 0.2 else 0)
        v = None if rnd.random() < p_missing else value(rnd)
        out.append((f"e{rnd.randrange(keys)}", ts, v))
    return out
