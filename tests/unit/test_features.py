"""Tumbling window features against a brute-force reference, and state round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.features import Windows, WindowSpec


def brute_force(events, size):
    """Recompute each event's window from the raw events (in-order streams)."""
    out = []
    for i, (user, ts, v) in enumerate(events):
        start = ts - ts % size
        vals = [w for (u, t, w) in events[: i + 1] if u == user and t - t % size == start]
        out.append((len(vals), sum(vals) / len(vals), min(vals), max(vals)))
    return out


streams_ = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5000),
                              st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(streams_, st.sampled_from([1, 7, 100, 1000]), st.integers(1, 10))
def test_tumbling_equals_brute_force_and_survives_flush_reload(raw, size, flush_every):
    events = sorted(raw, key=lambda e: e[1])          # in event-time order
    spec = WindowSpec(key="user", field="x", size_ms=size, aggs=("count", "mean", "min", "max"))
    store: dict[str, bytes] = {}
    w = Windows([spec])
    got = []
    for i, (user, ts, v) in enumerate(events):
        f = w.update({"user": user, "x": v}, ts, store.get)
        got.append(tuple(f[n] for n in spec.names))
        if i % flush_every == 0:                       # flush and drop the cache: state comes back from the store
            w.flush(store.__setitem__)
            w = Windows([spec])
    for (c, mean, lo, hi), (ec, emean, elo, ehi) in zip(got, brute_force(events, size)):
        assert c == ec and lo == elo and hi == ehi
        assert math.isclose(mean, emean, rel_tol=1e-9, abs_tol=1e-9)


def test_late_event_is_counted_and_not_applied():
    w = Windows([WindowSpec(key="k", field="x", size_ms=10)])
    store: dict[str, bytes] = {}
    w.update({"k": "a", "x": 1.0}, 25, store.get)
    f = w.update({"k": "a", "x": 100.0}, 5, store.get)     # window [0,10) is closed for "a"
    assert w.late == 1
    assert f == {"x_count_10ms_by_k": 1.0, "x_mean_10ms_by_k": 1.0}


def test_definition_change_changes_state_prefix():
    a = WindowSpec(key="k", field="x", size_ms=60_000)
    assert a.prefix == WindowSpec(key="k", field="x", size_ms=60_000, aggs=("sum",)).prefix
    assert a.prefix != WindowSpec(key="k", field="x", size_ms=30_000).prefix
    assert a.names == ("x_count_1m_by_k", "x_mean_1m_by_k")


@pytest.mark.parametrize("bad", [{"size_ms": 0}, {"aggs": ("median",)}, {"kind": "session"}])
def test_bad_window_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        WindowSpec(**{"key": "k", "field": "x", "size_ms": 10, **bad})
