"""Restart equivalence of the window features (streams.features), both backends.

The worker flushes window state (``Windows.flush``) before it commits offsets;
after a crash it starts a new ``Windows`` on the partition's store as of the
last flush and processes again every record after it, with other
micro-batches. Every event's features, and the state finally flushed, must
then be exactly those of an uninterrupted run, whatever its own micro-batches
and flush points: the features a restarted worker computes must not depend on
anything that is not in the store (in-memory caches, sketch internals), and a
stored value must read back to the same state (float round trips, sets and
sketches serialised canonically).

Covered: hopping (numeric aggregations, distinct exact, as sparse sketches and
as dense HyperLogLog sketches, grace, late events), session (since, duration,
decay_sum, decay_mean, distinct), sliding (with and without grace; last,
since) and tumbling, with out-of-order, late and value-less events, and a
small cache bound (entities dropped and read back from the store).
"""

from __future__ import annotations

import random

import orjson
import pytest

from streams.features import Windows, WindowSpec
from tests.unit.ext_backends import assert_bits_equal, require_native

H = 3_600_000
SPECS = (
    WindowSpec(key="k", field="x", kind="hopping", size_ms=4 * H, hop_ms=H, grace_ms=2 * H,
               aggs=("count", "sum", "mean", "min", "max", "var", "std", "distinct"), distinct_exact_max=5),
    WindowSpec(key="k", field="item", kind="hopping", size_ms=6 * H, hop_ms=H, aggs=("distinct",),
               distinct_exact_max=8),
    WindowSpec(key="k", field="x", kind="session", gap_ms=H, half_life_ms=H // 2,
               aggs=("count", "sum", "mean", "min", "max", "var", "std", "since", "duration", "distinct",
                     "decay_sum", "decay_mean"), distinct_exact_max=6),
    WindowSpec(key="k", field="item", kind="session", gap_ms=2 * H, aggs=("since", "duration", "distinct")),
    WindowSpec(key="k", field="x", kind="sliding", size_ms=2 * H, grace_ms=H // 2,
               aggs=("count", "sum", "mean", "min", "max", "var", "std", "last", "since")),
    WindowSpec(key="k", field="x", kind="sliding", size_ms=3 * H, aggs=("count", "sum", "std", "last", "since")),
    WindowSpec(key="k", field="x", kind="tumbling", size_ms=5 * H, aggs=("count", "sum", "mean", "min", "max")),
    # with the one above, a tumbling group (one state key per entity); an event late for this
    # window is often within the 5 h one, so the members write different entities
    WindowSpec(key="k", field="x", kind="tumbling", size_ms=H, aggs=("count", "mean", "max")),
)
#: many distinct items per hop: buckets beyond the exact threshold, window unions past the sparse modes
HLL_SPECS = (
    WindowSpec(key="k", field="item", kind="hopping", size_ms=4 * H, hop_ms=H, grace_ms=H // 2,
               aggs=("count", "distinct"), distinct_exact_max=20),
    WindowSpec(key="k", field="item", kind="session", gap_ms=H, aggs=("count", "since", "duration", "distinct"),
               distinct_exact_max=30),
)
#: the online_retail pipeline's windows (per customer: tumbling spend, 30-day hopping distinct items, since)
RETAIL_SPECS = (
    WindowSpec(key="customer_id", field="amount", size_ms=86_400_000, aggs=("count", "sum")),
    WindowSpec(key="customer_id", field="amount", size_ms=2_592_000_000, aggs=("count", "mean")),
    WindowSpec(key="customer_id", field="quantity", size_ms=2_592_000_000, aggs=("max",)),
    WindowSpec(key="customer_id", field="stock_code", kind="hopping", size_ms=2_592_000_000,
               hop_ms=86_400_000, aggs=("distinct",)),
    WindowSpec(key="customer_id", field="amount", kind="session", gap_ms=3_600_000, aggs=("since",)),
)


def mixed_stream(seed: int, n: int) -> list[tuple[dict, int]]:
    """Events of 4 entities: bursts and gaps, 15% out of order (some late), values and items sometimes absent,
    items as strings and as numbers (``3`` and ``3.0`` are one distinct value)."""
    rng = random.Random(seed)
    t, out = 0, []
    for _ in range(n):
        t += rng.choice([0, 1000, 60_000, 600_000, 1_800_000, 3 * H])
        ts = t - (rng.randint(0, 3 * H) if rng.random() < 0.15 else 0)
        e: dict = {"k": rng.choice("abcd")}
        if rng.random() < 0.9:
            e["x"] = round(rng.uniform(-100, 100), rng.choice([0, 2, 7]))
        if rng.random() < 0.9:
            e["item"] = rng.choice([f"i{rng.randint(0, 60)}", rng.randint(0, 20), float(rng.randint(0, 20))])
        out.append((e, ts))
    return out


def hll_stream(seed: int, n: int) -> list[tuple[dict, int]]:
    """Two entities buying from 100,001 items, a few hundred events an hour, 10% out of order."""
    rng = random.Random(seed)
    t, out = 0, []
    for _ in range(n):
        t += rng.choice([0, 1000, 5000, 20_000])
        if rng.random() < 0.002:
            t += 2 * H
        ts = t - (rng.randint(0, H) if rng.random() < 0.1 else 0)
        out.append(({"k": rng.choice("ab"), "item": f"i{rng.randint(0, 100_000)}"}, ts))
    return out


def run(specs, events, kernels, seed, crashes=0.0, max_cached=200_000):
    """Feed ``events`` in random micro-batches (1-12), flushing after ~40% of them; with ``crashes``
    (a probability per batch), lose everything not flushed, start a new Windows on the flushed
    store and go on from the first event after the last flush. Returns, per event, every feature
    dict computed for it (one per time it was processed), the final store and the restarts."""
    rng = random.Random(seed)
    store: dict[str, bytes] = {}
    durable: dict[str, bytes] = {}
    w = Windows(specs, kernels=kernels, max_cached=max_cached)
    got: list[list[dict[str, float]]] = [[] for _ in events]
    i = flushed_at = restarts = 0
    while i < len(events):
        chunk = events[i:i + rng.randint(1, 12)]
        for j, f in enumerate(w.update_batch([e for e, _ in chunk], [t for _, t in chunk], store.get)):
            got[i + j].append(f)
        i += len(chunk)
        if rng.random() < 0.4:
            w.flush(store.__setitem__, get=store.get)
            durable, flushed_at = dict(store), i
        if rng.random() < crashes:
            store = dict(durable)
            w = Windows(specs, kernels=kernels, max_cached=max_cached)
            i, restarts = flushed_at, restarts + 1
    w.flush(store.__setitem__, get=store.get)
    return got, store, restarts


def assert_same(base, got, base_store, got_store):
    for i, (b, gs) in enumerate(zip(base, got)):
        for g in gs:
            assert list(g) == list(b[0]), (i, b[0], g)            # same features (and omissions), same order
            assert_bits_equal(list(g.values()), list(b[0].values()), f"event {i}")
    assert got_store.keys() == base_store.keys()
    assert [k for k in base_store if base_store[k] != got_store[k]] == []


@pytest.mark.parametrize("seed", range(4))
def test_restarts_give_the_uninterrupted_features_and_state(backend, seed):
    events = mixed_stream(seed, 500)
    base, base_store, _ = run(SPECS, events, backend, seed=seed)
    for s, max_cached in ((seed + 100, 200_000), (seed + 200, 2)):
        got, store, restarts = run(SPECS, events, backend, seed=s, crashes=0.15, max_cached=max_cached)
        assert restarts > 3
        assert_same(base, got, base_store, store)


def test_restarts_in_the_hyperloglog_regime(backend):
    """Sketch buckets (sparse and dense): the estimates and the stored sketches do not depend on the
    micro-batches, the flush points, the restarts nor on the store round trips."""
    events = hll_stream(0, 3000)
    base, base_store, _ = run(HLL_SPECS, events, backend, seed=0)
    assert max(f[0]["item_distinct_4h_by_k"] for f in base) > 500            # dense HLL unions
    hop, ses = (s.distinct_prefix for s in HLL_SPECS)
    assert any(isinstance(part, str) for k, raw in base_store.items() if k.startswith(hop)
               for _, part in orjson.loads(raw)[1])                           # stored sketches
    assert any(isinstance(orjson.loads(raw)[2], str) for k, raw in base_store.items() if k.startswith(ses))
    got, store, restarts = run(HLL_SPECS, events, backend, seed=1, crashes=0.1)
    assert restarts > 3
    assert_same(base, got, base_store, store)
    got, store, _ = run(HLL_SPECS, events, backend, seed=2, max_cached=1)    # every batch reads the store
    assert_same(base, got, base_store, store)


def test_restarts_with_the_online_retail_windows(backend):
    """The pipeline's windows on a synthetic purchase stream (a customer's first purchase has no since)."""
    rng = random.Random(7)
    t, events = 1_291_191_960_000, []
    for n in range(1500):
        t += rng.choice([0, 0, 60_000, 3_600_000, 86_400_000])
        doc = {"customer_id": str(rng.randint(1, 40)), "stock_code": f"{rng.randint(20_000, 20_300)}",
               "quantity": float(rng.randint(1, 24)), "amount": round(rng.uniform(0.5, 80), 2)}
        events.append((doc, t))
    base, base_store, _ = run(RETAIL_SPECS, events, backend, seed=0)
    assert sum("amount_since_session1h_by_customer_id" not in f[0] for f in base) >= 40    # omitted (first)
    got, store, restarts = run(RETAIL_SPECS, events, backend, seed=3, crashes=0.1)
    assert restarts > 3
    assert_same(base, got, base_store, store)


def test_backends_agree_through_restarts():
    nat = require_native()
    from ext import _reference as ref

    events = mixed_stream(9, 400)
    a, sa, _ = run(SPECS, events, nat, seed=5, crashes=0.1)
    b, sb, _ = run(SPECS, events, ref, seed=5, crashes=0.1)
    assert_same([x[-1:] for x in a], b, sa, sb)
