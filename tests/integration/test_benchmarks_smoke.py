"""The benchmark harness still runs and its correctness checks pass (no speed asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_smoke_runs_are_correct(tmp_path: Path):
    results = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--events", "3000", "--repeat", "1", "--only", "raw,windowed,full",
         "--no-latency", "--results", str(results), "--markdown", str(tmp_path / "B.md")],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(results.read_text())
    runs = report["runs"]
    assert set(runs) == {"raw", "windowed", "full"}
    k = report["kernels"]                    # native and reference kernels agreed (else the run fails)
    assert k["reference_events_per_s"] > 0 and k["native_events_per_s"] > 0
    assert set(report["torch"]["cpu"]) == {"1", "64", "1024"}
    for name, run in runs.items():
        assert run["correct"] is True, name
        assert run["events_per_s"] > 0, name


def test_recovery_benchmark_recovers_the_writers_state():
    """`python -m benchmarks.recovery` on a small changelog: both recoveries equal the writer's store
    (checked inside ``run``), the standby reads only what it was behind."""
    from benchmarks.recovery import run

    r = run(keys=2_000, value_bytes=50, flush=500, behind=1)
    assert r["records"] == 2_500 and r["standby_records"] == 500
    assert r["full_s"] > 0 and r["standby_s"] > 0


def test_latency_sweep_runs_correctly_with_a_worker_setting(tmp_path: Path):
    """`python -m benchmarks.latency`: a point per rate, checked for correctness, the setting applied, a plot."""
    out, png = tmp_path / "lat.json", tmp_path / "lat.png"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency", "--only", "windowed", "--rates", "500,1500", "--seconds", "2",
         "--set", "commit_interval_s=0.3", "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["overrides"] == {"commit_interval_s": "0.3"}
    assert [r["offered_events_per_s"] for r in doc["rows"]] == [500.0, 1500.0]
    for r in doc["rows"]:
        assert r["correct"] is True and r["p99_latency_ms"] >= r["p50_latency_ms"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_processor_benchmark_answers_every_event_at_every_batch_size():
    """`python -m benchmarks.processor`: one prediction per event (checked inside ``run``) for a
    pipeline with models and labels and for one without."""
    from benchmarks.processor import run

    for pipeline in ("full", "windowed"):
        rows = run(pipeline, events=1_500, batches=(3, 200), warm=600)
        assert [r["batch"] for r in rows] == [3, 200]
        assert all(r["events_per_s"] > 0 and r["us_per_event"] > 0 for r in rows)


def test_windows_benchmark_runs_every_kind_and_grace_saves_late_events():
    """`python -m benchmarks.windows`: one row per window kind; only the kinds without grace drop events."""
    from benchmarks.windows import KINDS, run

    rows = run(events=4_000, keys=50, batch=250)
    assert [r["kind"] for r in rows] == [name for name, _ in KINDS]
    assert rows[0]["vs_tumbling"] == 1.0 and all(r["events_per_s"] > 0 for r in rows)
    late = {r["kind"]: r["late"] for r in rows}
    assert late["session"] > 0 and late["sliding"] > 0
    assert late["session_grace"] == late["sliding_grace"] == late["tumbling_grace"] == 0


def test_rounds_benchmark_publishes_the_same_bytes_both_ways():
    """`python -m benchmarks.rounds`: ``handle`` and ``handle_round`` publish the same bytes (checked
    inside ``run``: it raises otherwise) at each round size."""
    from benchmarks.rounds import run

    rows = run(events=3_000, per_partition=(2, 40), blocks=2, warm=1_000)
    assert [r["records_per_partition"] for r in rows] == [2, 40]
    assert all(r["us_per_event_batch"] > 0 and r["us_per_event_round"] > 0 for r in rows)


def test_two_workers_report_their_partitions_and_spans(tmp_path: Path):
    """`full_2workers`: correct, the two workers' partitions cover the topic once, and the per-worker
    figures (benchmarks.harness.worker_rates) account for every output."""
    results = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--events", "3000", "--repeat", "1", "--only", "full_2workers",
         "--no-latency", "--no-extras", "--results", str(results), "--markdown", str(tmp_path / "B.md")],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(results.read_text())["runs"]["full_2workers"]["reps"][0]
    assert rep["correct"] is True
    owned = rep["partitions_per_worker"]
    assert len(owned) == 2 and all(owned) and sorted(p for ps in owned for p in ps) == [0, 1, 2, 3]
    assert sum(rep["outputs_per_worker"]) == 3000 == sum(rep["records_per_worker"]) // 2
    assert len(rep["worker_spans_s"]) == 2 and min(a for a, _ in rep["worker_spans_s"]) == 0.0
