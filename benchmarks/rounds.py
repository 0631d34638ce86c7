"""A worker's fetch rounds in process: ``python -m benchmarks.rounds``.

Why: a worker fetches rounds of records from all its partitions at once.
At a moderate load a round holds a few records per partition, and a torch
forward pass costs about the same for a few rows as for hundreds, so one
pass per partition-batch made most of a batch's fixed cost
(``benchmarks.processor``: 4× the per-event cost at 2-record batches).
``BatchScorer.handle_round`` scores the new events of every partition with
the same frozen torch model in one pass per round. This times both ways on
the same rounds, without a broker (a producer that keeps what it is given), by
records per partition and round: ``handle`` batch by batch (the baseline)
and ``handle_round``, alternating blocks of rounds between two scorers so
that the machine's drift falls on both. The torch model gets random weights
(an untrained one scores a constant); both ways must publish the same bytes.

>>> rows = run(events=4_000, per_partition=(10,), blocks=2)
>>> rows[0]["records_per_partition"], rows[0]["ratio"] > 0
(10, True)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.workload import make_workload
from models import build_model
from models.deep import DeepModel
from streams.agents import BatchScorer
from streams.app import tune_gc
from streams.processor import Record
from streams.settings import Settings
from streams.spec import load_spec

PIPELINE = "benchmarks/pipelines/full.toml"
PARTITIONS = 4


class KeepingProducer:
    """A stand-in for the worker's producer: keeps the outputs, ``(topic, value)`` by partition, in order."""

    def __init__(self) -> None:
        self.sent: dict[int, list[tuple[str, bytes]]] = {}

    def produce(self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1) -> None:
        if partition >= 0:               # not the worker's metrics (their own clock and figures)
            self.sent.setdefault(partition, []).append((topic, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def _scorer(state: Path, weights: dict[str, Any]) -> BatchScorer:
    s = Settings(state_dir=state, changelog=False, metrics_port=0, snapshot_key="k" * 32,
                 commit_interval_s=0.1)
    scorer = BatchScorer(s, load_spec(PIPELINE), producer=KeepingProducer())  # type: ignore[arg-type]
    asyncio.run(scorer.open_partitions(range(PARTITIONS)))
    for proc in scorer.processors.values():
        proc.swap_weights("deep", weights)
    return scorer


def random_weights(seed: int = 1) -> DeepModel:
    """``full``'s torch model with random weights everywhere (an untrained one scores a constant 0.5)."""
    spec = load_spec(PIPELINE)
    model = build_model(next(m for m in spec.models if m.name == "deep"), spec.model_numeric, spec.categorical)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _largest_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between the numbers of two decoded outputs of the same shape."""
    if isinstance(a, dict) and isinstance(b, dict):
        return max((_largest_difference(a[k], b.get(k)) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return max((_largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def run(events: int = 40_000, per_partition: Sequence[int] = (2, 10, 50, 200), blocks: int = 6,
        warm: int = 4_000, allow_differences: bool = False) -> list[dict[str, Any]]:
    """µs per event both ways, for each number of records per partition and round.

    Both ways must publish the same bytes (:class:`RuntimeError` otherwise). On
    CUDA a row's score may change in its last bits with the rows beside it (the
    kernels are chosen by shape), so there ``allow_differences`` reports how many
    outputs differ (``differing_outputs``) instead of raising.
    """
    w = make_workload(events, partitions=PARTITIONS, labels=True)
    by_partition: dict[int, list[Any]] = {}
    for r in w.records:
        by_partition.setdefault(r.partition, []).append(r)
    torch.set_num_threads(1)                 # as a worker (Settings.torch_threads)
    weights = random_weights().state()
    rows = []
    for per in per_partition:
        with tempfile.TemporaryDirectory() as d:
            scorers = {"batch": _scorer(Path(d) / "batch", weights), "round": _scorer(Path(d) / "round", weights)}
            topic = scorers["batch"].settings.topic("events")
            at = {name: dict.fromkeys(by_partition, 0) for name in scorers}
            spent = dict.fromkeys(scorers, 0.0)
            done = dict.fromkeys(scorers, 0)

            def rounds(name: str, limit: int) -> list[list[tuple[str, int, list[Record], None]]]:
                pos, out = at[name], []
                while limit > 0:
                    one = []
                    for p, recs in by_partition.items():
                        chunk = recs[pos[p]:pos[p] + per]
                        if chunk:
                            one.append((topic, p, [Record(pos[p] + i, r.key, r.value, 0)
                                                   for i, r in enumerate(chunk)], None))
                            pos[p] += len(chunk)
                            limit -= len(chunk)
                    if not one:
                        break
                    out.append(one)
                return out

            async def feed(name: str, todo: list[list[tuple[str, int, list[Record], None]]]) -> None:
                scorer = scorers[name]
                for one in todo:
                    if name == "round":
                        await scorer.handle_round(one)
                    else:
                        for b in one:
                            await scorer.handle(*b)
                    if scorer._flush_task is not None:      # let a flush that began run to its end
                        await scorer._flush_task

            for name in scorers:
                asyncio.run(feed(name, rounds(name, warm)))
            block = (len(w.records) - warm) // blocks
            for _ in range(blocks):
                for name in scorers:
                    todo = rounds(name, block)
                    n = sum(len(b[2]) for one in todo for b in one)
                    gc.collect()
                    t0 = time.perf_counter()
                    asyncio.run(feed(name, todo))
                    spent[name] += time.perf_counter() - t0
                    done[name] += n
            sent = [s.producer.sent for s in scorers.values()]  # type: ignore[attr-defined]
            device = str(next(m.device for proc in scorers["round"].processors.values()
                              for m in proc.batch_models if isinstance(m, DeepModel)))
            for s in scorers.values():
                s.close()
        differ, largest = 0, 0.0              # outputs that differ (or are missing), and by how much at most
        for p in set(sent[0]) | set(sent[1]):
            by_batch, by_round = sent[0].get(p, []), sent[1].get(p, [])
            differ += abs(len(by_batch) - len(by_round))
            for a, b in zip(by_batch, by_round):
                if a != b:
                    differ += 1
                    largest = max(largest, _largest_difference(json.loads(a[1]), json.loads(b[1])))
        if differ and not allow_differences:
            raise RuntimeError(f"{per} records per partition: handle_round published other bytes than handle "
                               f"({differ} outputs differ)")
        us = {name: spent[name] / (done[name] / 2) * 1e6 for name in scorers}   # an event and its label
        rows.append({"records_per_partition": per, "us_per_event_batch": round(us["batch"], 1),
                     "us_per_event_round": round(us["round"], 1), "ratio": round(us["batch"] / us["round"], 2),
                     "device": device, "differing_outputs": differ,
                     "largest_difference": largest})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rounds", description=__doc__.split("\n\n>>>")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=40_000, help="Events of the workload. Default: 40,000.")
    ap.add_argument("--per-partition", default="2,10,50,200",
                    help="Records per partition and round, comma-separated. Default: 2,10,50,200.")
    ap.add_argument("--blocks", type=int, default=6, help="Alternating timed blocks per scorer. Default: 6.")
    ap.add_argument("--allow-differences", action="store_true",
                    help="Report outputs that differ between the two ways instead of failing (for CUDA, whose "
                         "kernels may change a score's last bits with the rows beside it).")
    ap.add_argument("--json", help="Write the rows as JSON here.")
    args = ap.parse_args(argv)
    tune_gc(50_000)                   # as a worker does
    rows = run(args.events, [int(x) for x in args.per_partition.split(",")], args.blocks,
               allow_differences=args.allow_differences)
    print(f"full, {PARTITIONS} partitions in process, {args.events:,} events, torch on {rows[0]['device']}: "
          f"µs per event (and its label)")
    print(f"{'records/partition/round':>23}  {'handle':>8}  {'handle_round':>12}  {'ratio':>6}")
    for r in rows:
        print(f"{r['records_per_partition']:>23,}  {r['us_per_event_batch']:>8.1f}  "
              f"{r['us_per_event_round']:>12.1f}  {r['ratio']:>5.2f}×"
              + (f"  ({r['differing_outputs']:,} outputs differ, by {r['largest_difference']:.2g} at most)"
                 if r["differing_outputs"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
