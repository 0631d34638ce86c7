"""One partition's processor in process, by micro-batch size: ``python -m benchmarks.processor``.

Why: a worker's throughput is its processor's (decode, windows, models,
rules, encode) plus Kafka's; this measures the first alone, without a
broker, so a change to the hot path is seen without the noise of four
processes sharing two cores. And by batch size, because a micro-batch has a
fixed cost (a torch forward pass, a kernel call per window definition):
at a moderate offered load the batches are small, so a worker at half of
its peak rate is far more than half loaded, which is what its latency
there comes from (BENCHMARKS.md, "The full pipeline in process").

The workload is the benchmarks' (``benchmarks.workload``): events of one
partition, each followed by its inline label for a pipeline with models.
The first ``--warm`` records are processed before timing (state, torch's
first steps); the processor is flushed every ``--flush-s`` seconds as a
worker's commit interval does. Prints µs per event (an event and its label
are two records) and events/s per batch size.

>>> rows = run("benchmarks/pipelines/windowed.toml", events=2_000, batches=(50,), warm=1_000)
>>> rows[0]["batch"], rows[0]["events_per_s"] > 0
(50, True)
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.workload import make_workload
from streams.app import tune_gc
from streams.processor import PartitionProcessor, Record
from streams.spec import load_spec
from streams.state import PartitionStore

PIPELINES = {"full": "benchmarks/pipelines/full.toml", "full_online": "benchmarks/pipelines/full_online.toml",
             "windowed": "benchmarks/pipelines/windowed.toml"}


def run(pipeline: str, events: int = 40_000, batches: Sequence[int] = (2, 10, 50, 400, 2000),
        warm: int = 20_000, flush_s: float = 0.1) -> list[dict[str, Any]]:
    """Time the records after the first ``warm`` at each batch size (a fresh processor each)."""
    spec = load_spec(PIPELINES.get(pipeline, pipeline))
    w = make_workload(events, partitions=1, labels=bool(spec.models))
    records = [Record(i, r.key, r.value, 0) for i, r in enumerate(w.records)]
    warm = min(warm, len(records) // 2)
    timed_events = sum(1 for r in w.records[warm:] if not r.is_label)
    torch.set_num_threads(1)              # as a worker (Settings.torch_threads)
    rows = []
    for size in batches:
        with tempfile.TemporaryDirectory() as d:
            proc = PartitionProcessor(spec, PartitionStore(Path(d) / "p0"), partition=0)
            for i in range(0, warm, 400):
                proc.process("events", records[i:min(i + 400, warm)])
            proc.flush()
            gc.collect()
            answered = 0
            t0 = last = time.perf_counter()
            for i in range(warm, len(records), size):
                out = proc.process("events", records[i:i + size])
                answered += sum(1 for o in out if o.topic == "predictions")
                if time.perf_counter() - last > flush_s:
                    proc.flush()
                    last = time.perf_counter()
            proc.flush()
            seconds = time.perf_counter() - t0
            proc.close()
        if answered != timed_events:      # one prediction per event: nothing refused, nothing lost
            raise RuntimeError(f"batch {size}: {answered} predictions for {timed_events} events")
        rows.append({"batch": size, "us_per_event": round(seconds / timed_events * 1e6, 1),
                     "events_per_s": round(timed_events / seconds, 1)})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.processor", description=__doc__.split("\n\n>>>")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="full", help="full, full_online, windowed, or a pipeline file. Default: full.")
    ap.add_argument("--events", type=int, default=40_000, help="Events of the workload. Default: 40,000.")
    ap.add_argument("--batches", default="2,10,50,400,2000",
                    help="Micro-batch sizes in records, comma-separated. Default: 2,10,50,400,2000.")
    ap.add_argument("--warm", type=int, default=20_000, help="Records processed before timing. Default: 20,000.")
    ap.add_argument("--flush-s", type=float, default=0.1, help="Seconds between flushes. Default: 0.1.")
    ap.add_argument("--json", help="Write the rows as JSON here.")
    args = ap.parse_args(argv)
    tune_gc(50_000)                   # as a worker does
    rows = run(args.pipeline, args.events, [int(b) for b in args.batches.split(",")], args.warm, args.flush_s)
    largest = rows[-1]
    print(f"{args.pipeline}: one partition in process, {args.events:,} events")
    print(f"{'records/batch':>13}  {'µs/event':>9}  {'events/s':>9}  {'× largest batch':>15}")
    for r in rows:
        print(f"{r['batch']:>13,}  {r['us_per_event']:>9.1f}  {r['events_per_s']:>9,.0f}  "
              f"{r['us_per_event'] / largest['us_per_event']:>15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
