"""Batched histogram observation equals one observe() per value."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.metrics import Metrics


def _samples(m: Metrics, name: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in m.registry.collect() if f.name == name
            for s in f.samples if not s.name.endswith("_created")}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 50, allow_nan=False), max_size=200))
def test_observe_batch_equals_observe_per_value(values):
    batched, single = Metrics(), Metrics()
    batched.observe_batch(batched.e2e_latency, values)
    for v in values:
        single.e2e_latency.observe(v)
    name = "streamscore_worker_end_to_end_latency_seconds"
    a, b = _samples(batched, name), _samples(single, name)
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(b[k])), k
