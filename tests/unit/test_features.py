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
            w.flush(store.__setitem__, get=store.get)
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


GROUP = (WindowSpec(key="user", field="x", size_ms=10, aggs=("count", "sum", "max")),
         WindowSpec(key="user", field="x", size_ms=100, aggs=("count", "mean")),
         WindowSpec(key="user", field="x", size_ms=1000, aggs=("count", "min")))
ALONE = (WindowSpec(key="user", field="y", size_ms=100, aggs=("sum",)),
         WindowSpec(key="shop", field="x", size_ms=100, aggs=("count",)))


def _feed(w: Windows, store: dict, events, flush_every: int) -> list[dict]:
    got = []
    for i in range(0, len(events), 3):
        chunk = events[i:i + 3]
        got += w.update_batch([e for e, _ in chunk], [t for _, t in chunk], store.get)
        if (i // 3) % flush_every == 0:
            w.flush(store.__setitem__, get=store.get)
    w.flush(store.__setitem__, get=store.get)
    return got


group_streams = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["s", "t"]),
                                   st.integers(0, 3000), st.integers(-50, 50)), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(group_streams, st.integers(1, 4))
def test_tumbling_windows_over_one_key_and_field_share_a_state_key(raw, flush_every):
    """Three tumbling windows of ``x`` per user: one state key per user, not three, and the same
    features as each window computed alone (out-of-order events included: one late for the 10 ms
    window is often in the current second, so the members write different users)."""
    events = [({"user": u, "shop": sh, "x": float(x), "y": 1.0}, ts) for u, sh, ts, x in raw]
    store: dict[str, bytes] = {}
    got = _feed(Windows([*GROUP, *ALONE]), store, events, flush_every)
    for spec in (*GROUP, *ALONE):
        alone: dict[str, bytes] = {}
        ref = _feed(Windows([spec]), alone, events, flush_every)
        assert [{n: f[n] for n in spec.names} for f in got] == ref, spec.names
    group_keys = {k for k in store if k.startswith("wg")}
    assert {k.split(":", 1)[1] for k in group_keys} == {e["user"] for e, _ in events}
    assert not any(k.startswith(s.prefix) for s in GROUP for k in store)     # no key per definition
    assert all(any(k.startswith(s.prefix) for k in store) for s in ALONE)    # lone windows as before
    again = Windows([*GROUP, *ALONE])                                         # reloaded from the store
    more = [({"user": "a", "shop": "s", "x": 5.0, "y": 1.0}, 3001)]
    ref_w = Windows([*GROUP, *ALONE])
    ref_store = dict(store)
    assert _feed(again, dict(store), more, 1) == _feed(ref_w, ref_store, more, 1)


def test_a_store_from_before_the_groups_is_read_and_a_new_window_starts_empty():
    """A store with a key per definition (written before the groups existed) is read on; a window
    added to a group starts empty while the others keep their state."""
    store: dict[str, bytes] = {}
    events = [({"user": "a", "x": float(i)}, 5 * i) for i in range(10)]
    for spec in GROUP[:2]:                      # the old layout: each definition alone
        _feed(Windows([spec]), store, events, 1)
    assert not any(k.startswith("wg") for k in store)
    w = Windows(list(GROUP))                    # now a group of three, the third new
    f = w.update({"user": "a", "x": 100.0}, 49, store.get)
    assert f["x_count_10ms_by_user"] == 3 and f["x_sum_10ms_by_user"] == 117.0     # 40, 45 and 49 in [40, 50)
    assert f["x_count_100ms_by_user"] == 11 and f["x_count_1s_by_user"] == 1       # kept; the new one empty
    w.flush(store.__setitem__, get=store.get)
    (key,) = [k for k in store if k.startswith("wg")]
    assert key.endswith(":a") and len(store[key]) == 1 + 3 * (12 + 41)
    w = Windows(list(GROUP[1:]))                # a definition removed: the others read on
    assert w.update({"user": "a", "x": 1.0}, 50, store.get)["x_count_100ms_by_user"] == 12
