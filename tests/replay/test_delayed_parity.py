"""Acceptance: delayed labels replayed at their recorded times equal River's delayed evaluation.

River's ``progressive_val_score(dataset, model, metric, moment=None, delay=d)``
asks the model about event ``i`` and reveals its label once ``d`` more events
have been asked (``river.stream.simulate_qa``: before each question, every
answer whose time has come, oldest first). We write the same session as a
recorded stream: each label goes on the events topic right where River
reveals it. Scored by the worker (and, faster, by the processor alone), every
published probability must equal River's to 1e-12, and the final accuracy and
log loss must be River's exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import evaluate, linear_model, metrics, optim, preprocessing

from streams.datasets import iter_records
from streams.demo import OutputReader, start_worker, stop_worker
from streams.processor import PartitionProcessor, Record
from streams.replay import replay
from streams.spec import load_spec
from streams.state import PartitionStore

SPEC = load_spec("elec2")


def model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))


def delayed_session(n_events: int, delay: int) -> tuple[list[dict[str, Any]], list[tuple[dict, bool]], list[str]]:
    """The recorded stream (records in River's question/answer order), River's dataset, event ids."""
    events: list[dict[str, Any]] = []
    labels: dict[str, dict[str, Any]] = {}
    for rec in iter_records("elec2"):
        v = rec["value"]
        if "label" in v:
            labels[v["event_id"]] = rec
        elif len(events) < n_events:
            events.append(rec)
        if len(events) >= n_events and all(e["value"]["event_id"] in labels for e in events):
            break
    ids = [e["value"]["event_id"] for e in events]
    dataset = [({f: float(e["value"][f]) for f in SPEC.numeric}, bool(labels[i]["value"]["label"]))
               for e, i in zip(events, ids)]
    stream: list[dict[str, Any]] = []
    waiting: list[int] = []          # event indexes whose label is not revealed yet (expiry = i + delay)
    for i, e in enumerate(events):
        while waiting and waiting[0] + delay <= i:
            stream.append(labels[ids[waiting.pop(0)]])
        waiting.append(i)
        stream.append(e)
    stream += [labels[ids[j]] for j in waiting]
    return stream, dataset, ids


def river_reference(dataset: list[tuple[dict, bool]], delay: int) -> tuple[list[float], float, float]:
    probs = [step["Prediction"].get(True, 0.0) for step in evaluate.iter_progressive_val_score(
        dataset, model(), metrics.LogLoss(), moment=None, delay=delay, step=1, yield_predictions=True)]
    acc = evaluate.progressive_val_score(dataset, model(), metrics.Accuracy(), moment=None, delay=delay)
    loss = evaluate.progressive_val_score(dataset, model(), metrics.LogLoss(), moment=None, delay=delay)
    return probs, acc.get(), loss.get()


@pytest.mark.parametrize("delay", [1, 50, 500])
def test_processor_with_delayed_labels_equals_river(tmp_path: Path, delay: int) -> None:
    stream, dataset, ids = delayed_session(3000, delay)
    expected, acc, loss = river_reference(dataset, delay)
    p = PartitionProcessor(SPEC, PartitionStore(tmp_path / "s"), 0, clock=lambda: 0.0)
    scores: dict[str, float] = {}
    # micro-batches of 97 records cut across events and labels, as a worker's fetches would
    records = [Record(n, r["key"].encode(), orjson.dumps(r["value"]), 0) for n, r in enumerate(stream)]
    for i in range(0, len(records), 97):
        for o in p.process("events", records[i:i + 97]):
            d = orjson.loads(o.value)
            scores[d["event_id"]] = d["score"]
    assert [scores[i] for i in ids] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    got = p.prequential["lr"].get()
    assert got["n"] == len(ids) and got["accuracy"] == acc and got["log_loss"] == pytest.approx(loss, rel=1e-12)


@pytest.mark.integration
def test_live_worker_with_delayed_labels_equals_river(make_settings, tmp_path: Path) -> None:
    delay = 200
    stream, dataset, ids = delayed_session(4000, delay)
    expected, acc, _ = river_reference(dataset, delay)
    path = tmp_path / "delayed.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in stream))
    s = make_settings(pipeline="elec2", partitions=1)
    proc = start_worker(s, tmp_path / "worker.log")
    reader = OutputReader(s)
    try:
        replay(path, s)
        deadline = time.monotonic() + 120
        while len(reader.predictions) < len(ids) and time.monotonic() < deadline:
            reader.poll(0.5)
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        stop_worker(proc)
    got = [reader.predictions[i]["score"] for i in ids]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # River's accuracy, from what the worker published and the labels it was given
    ys = dict(zip(ids, (y for _, y in dataset)))
    hits = sum((reader.predictions[i]["score"] > 0.5) == ys[i] for i in ids)
    assert hits / len(ids) == pytest.approx(acc, abs=1e-12)
    reader.close()
