"""`streamscore demo` end to end on a slice of a real stream (the full run is `make demo`)."""

from __future__ import annotations

import orjson
import pytest

from streams.demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_writes_report_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # the stream cache goes under tmp_path/.cache
    report = run_demo("online_retail", report_path=tmp_path / "r.json", plot_path=tmp_path / "r.png",
                      limit=40000, partitions=2, echo=lambda s: None)
    on_disk = orjson.loads((tmp_path / "r.json").read_bytes())
    for key in ("events", "predictions", "dlq", "events_per_s", "latency_p50_ms", "latency_p99_ms"):
        assert key in on_disk, key
    assert on_disk["events"] > 0
    assert on_disk["predictions"] + on_disk["dlq"] == on_disk["events"]
    lr = on_disk["models"]["lr"]
    assert {"accuracy", "log_loss", "roc_auc"} <= set(lr)
    assert 0.0 <= lr["accuracy"] <= 1.0 and lr["n"] > 0    # events whose 30-day deadline passed
    # River, torch, the shadow tree and the blend are all evaluated, from the worker's metrics
    assert set(on_disk["models"]) == {"lr", "deep", "hat", "blend"}
    assert all(m["n"] == lr["n"] and 0.0 < m["roc_auc"] < 1.0 for m in on_disk["models"].values())
    assert on_disk["latency_p50_ms"] <= on_disk["latency_p99_ms"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report == on_disk
