"""Acceptance: elec2 with inline labels through the live broker and worker equals River.

Every published probability must equal, to 1e-9, what
``river.evaluate.progressive_val_score`` (same model, same order) predicts for
that event, and the final accuracy must be identical.
"""

from __future__ import annotations

import time

import pytest
from river import evaluate, linear_model, metrics, optim, preprocessing

from streams.datasets import convert, iter_records
from streams.demo import OutputReader, start_worker, stop_worker
from streams.replay import replay
from streams.spec import load_spec

pytestmark = pytest.mark.integration


def river_reference(spec):
    """(event_id, x, y) in stream order and River's per-event predictions."""
    xs: dict[str, dict] = {}
    order: list[str] = []
    ys: dict[str, int] = {}
    for rec in iter_records("elec2"):
        v = rec["value"]
        if "label" in v:
            ys[v["event_id"]] = v["label"]
        else:
            xs[v["event_id"]] = {f: float(v[f]) for f in spec.numeric}
            order.append(v["event_id"])
    dataset = [(xs[e], bool(ys[e])) for e in order]
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    probs = [step["Prediction"].get(True, 0.0) for step in evaluate.iter_progressive_val_score(
        dataset, model, metrics.LogLoss(), step=1, yield_predictions=True)]
    final = evaluate.progressive_val_score(
        dataset, preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01)),
        metrics.Accuracy())
    return order, ys, probs, final.get()


def test_elec2_live_equals_progressive_val_score(make_settings, tmp_path):
    spec = load_spec("elec2")
    order, ys, expected, river_acc = river_reference(spec)
    s = make_settings(pipeline="elec2", partitions=1)
    stream = tmp_path / "elec2.jsonl.gz"
    convert("elec2", stream)
    proc = start_worker(s, tmp_path / "worker.log")
    reader = OutputReader(s)
    try:
        replay(stream, s)
        deadline = time.monotonic() + 240
        while len(reader.predictions) < len(order) and time.monotonic() < deadline:
            reader.poll(0.5)
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        stop_worker(proc)
        reader.close()
    assert len(reader.predictions) == len(order) == 45312
    assert reader.dlq == []
    worst = max(abs(reader.predictions[e]["score"] - p) for e, p in zip(order, expected))
    assert worst <= 1e-9, f"largest difference {worst}"
    acc = metrics.Accuracy()
    for e in order:
        acc.update(bool(ys[e]), bool(reader.predictions[e]["class"]))
    assert acc.get() == river_acc
