"""Weights for the benchmark pipelines' frozen torch models, trained offline and deployed.

Why: a pipeline may serve a torch model it does not train (``learn = false``:
the production pattern for deep models, trained offline by ``streamscore
train`` and hot-swapped in). The workers then start from the deployed
checkpoint, as they would in production, instead of from an untrained model
that scores a constant 0.5: the scores the benchmark publishes mean something,
and the forward passes cost what they cost (the weights do not change that).

The training data is a workload of its own (another seed than the measured
one): the measured events are never seen in training.

>>> from pathlib import Path
>>> import tempfile
>>> from benchmarks.targets import PIPELINES
>>> with tempfile.TemporaryDirectory() as d:
...     paths = deploy_pretrained(PIPELINES / "full.toml", Path(d), events=2_000)
...     [p.relative_to(d).as_posix() for p in paths]
['bench_full/deep.pt']
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.workload import make_workload
from models.registry import BATCH_KINDS
from streams.processor import PartitionProcessor, Record
from streams.spec import load_spec
from streams.state import PartitionStore

#: Seed of the training workload (the measured one uses 42 by default).
TRAIN_SEED = 7


def deploy_pretrained(pipeline: str | Path, checkpoints: Path, *, events: int = 20_000,
                      seed: int = TRAIN_SEED) -> list[Path]:
    """Train ``pipeline``'s frozen torch models on ``events`` events; save each where workers hot-swap from.

    Returns the checkpoint paths, ``checkpoints/PIPELINE/MODEL.pt`` (none when
    no torch model is frozen). Existing files are kept: one training per work dir.
    """
    spec = load_spec(pipeline)
    frozen = [m.name for m in spec.models if not m.learn and m.kind in BATCH_KINDS]
    paths = [checkpoints / spec.name / f"{name}.pt" for name in frozen]
    if all(p.exists() for p in paths):
        return paths
    spec = spec.all_learning()
    w = make_workload(events, partitions=1, labels=True, seed=seed)
    records = [Record(i, r.key, r.value, 0) for i, r in enumerate(w.records)]
    with tempfile.TemporaryDirectory(prefix="streamscore-pretrain-") as d:
        proc = PartitionProcessor(spec, PartitionStore(Path(d) / "p0"), partition=0, device="cpu")
        for i in range(0, len(records), 1000):
            proc.process("events", records[i:i + 1000])
        for m, path in zip([m for m in proc.batch_models if m.name in frozen], paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            m.save(path)
        proc.close()
    return paths
