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
