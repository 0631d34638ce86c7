"""benchmarks.harness.worker_rates: a group's speed while all its workers run."""

from __future__ import annotations

import pytest

from benchmarks.harness import worker_rates


def _outputs(per_worker: list[list[int]]) -> tuple[dict[str, int], list[int]]:
    """Event ids and output timestamps, worker w's events on partition w."""
    ts: dict[str, int] = {}
    parts: list[int] = []
    for w, stamps in enumerate(per_worker):
        for t in stamps:
            ts[f"e{len(parts):07d}"] = t
            parts.append(w)
    return ts, parts


def test_a_late_start_does_not_count_but_a_slow_worker_does():
    even = [list(range(0, 10_000, 10)), list(range(0, 10_000, 10))]         # 100 events/s each
    late = [list(range(0, 10_000, 10)), list(range(3_000, 13_000, 10))]     # the second starts 3 s late
    slow = [list(range(0, 10_000, 10)), list(range(0, 20_000, 20))]         # the second at half speed
    rates = {name: worker_rates(*_outputs(w), [[0], [1]]) for name, w in
             {"even": even, "late": late, "slow": slow}.items()}
    assert rates["even"]["events_per_s_all_running"] == rates["late"]["events_per_s_all_running"] == 200.0
    assert rates["late"]["window_s"] == 6.99
    assert rates["late"]["worker_spans_s"] == [[0.0, 9.99], [3.0, 12.99]]
    assert rates["slow"]["events_per_s_all_running"] == pytest.approx(100.0, rel=0.01)   # 50/s for half


def test_no_figure_without_every_partition_owned_or_a_second_together():
    ts, parts = _outputs([list(range(0, 5_000, 10)), list(range(0, 5_000, 10))])
    assert worker_rates(ts, parts, [[0], [2]]) == {}
    short = worker_rates(*_outputs([list(range(0, 1_000, 10)), list(range(500, 1_500, 10))]), [[0], [1]])
    assert short["events_per_s_all_running"] is None and short["window_s"] == 0.49
