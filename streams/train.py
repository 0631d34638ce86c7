"""Offline pre-training from a recorded stream: ``streamscore train``.

Why through the worker's own processor: the features a model trains on must be
exactly those the worker will compute live (same decoding, same windows, same
delayed-label join), or a pre-trained torch model starts on a skewed input.
So training replays the file through one :class:`~streams.processor.PartitionProcessor`
in memory-free temporary state, prequentially (each event is scored before
its label trains the models), and writes each torch model's checkpoint where
the workers hot-swap it from (``Settings.checkpoints/PIPELINE/MODEL.pt``) or
to ``--out``.

The report is the prequential figures of every model over the file, so the
gain over a constant predictor is visible before deploying.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from streams.processor import PartitionProcessor, Record
from streams.replay import iter_lines, open_stream
from streams.spec import PipelineSpec
from streams.state import PartitionStore


def _batches(path: str | Path, size: int, limit: int | None) -> Iterator[tuple[str, list[Record]]]:
    """Consecutive records of one topic, at most ``size`` each, in file order."""
    topic, batch, n = None, [], 0
    with open_stream(path) as fh:
        for rec, raw in iter_lines(fh):
            if limit is not None and n >= limit:
                break
            t = rec["topic"]
            if t not in ("events", "labels"):
                continue
            key = rec.get("key")
            r = Record(n, None if key is None else str(key).encode(), raw, 0)
            n += 1
            if t != topic or len(batch) >= size:
                if batch:
                    yield topic, batch  # type: ignore[misc]
                topic, batch = t, []
            batch.append(r)
    if batch:
        yield topic, batch  # type: ignore[misc]


def train(spec: PipelineSpec, data: str | Path, *, out: Path | None = None, checkpoints: Path | None = None,
          device: str | None = None, batch: int = 1000, limit: int | None = None,
          progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Replay ``data`` through a processor; save every torch model; return the report.

    ``out`` is the checkpoint file when the pipeline has one torch model (a
    directory when it has several); by default each goes to
    ``checkpoints/PIPELINE/MODEL.pt``, the path a running worker hot-swaps from.
    Models marked ``learn = false`` (frozen in the stream) are trained too:
    this is where their weights come from.
    """
    if not spec.models:
        raise ValueError(f"pipeline {spec.name!r} has no models to train")
    spec = spec.all_learning()
    with tempfile.TemporaryDirectory(prefix="streamscore-train-") as tmp:
        proc = PartitionProcessor(spec, PartitionStore(Path(tmp) / "state"), partition=0, device=device)
        events = labels = timed_out = dlq = 0
        for topic, records in _batches(data, batch, limit):
            proc.process(topic, records)
            s = proc.last_stats
            events, labels, dlq = events + s.events, labels + s.labels, dlq + sum((s.dlq or {}).values())
            timed_out += s.labels_timed_out
            if progress is not None:
                progress(len(records))
        saved: dict[str, str] = {}
        for m in proc.batch_models:
            if out is not None:
                path = out / f"{m.name}.pt" if len(proc.batch_models) > 1 else out
            else:
                if checkpoints is None:
                    raise ValueError("give out= or checkpoints=")
                path = checkpoints / spec.name / f"{m.name}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            m.save(path)
            saved[m.name] = str(path)
        report = {
            "pipeline": spec.name,
            "data": str(data),
            "events": events,
            "labels": labels,
            "labels_timed_out": timed_out,
            "dlq": dlq,
            "models": {name: {"version": proc.version_of(name), **preq.get()}
                       for name, preq in proc.prequential.items()},
            "checkpoints": saved,
        }
        proc.close()
    return report
