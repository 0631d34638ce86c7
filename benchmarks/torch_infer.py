"""Batched inference throughput of the torch Wide & Deep model (models/deep.py).

Why: a worker scores each micro-batch with one ``predict_proba_many`` call,
so what matters is how rows/s grows with the batch. This measures rows/s at
batch sizes 1, 64 and 1024 on the CPU, and on CUDA too when
``torch.cuda.is_available()``, end to end: from a list of event dicts (12
numeric features and one categorical) to a list of Python floats, i.e.
feature extraction, hashing, standardisation, host-to-device copy, the
forward pass and the copy back.

Each figure is the median of ``repeats`` timed runs of ``seconds`` each,
after a warm-up, of a model that has taken a few optimizer steps (so running
statistics and weights are not trivial). Run nothing else heavy meanwhile.

    python -m benchmarks.torch_infer [--json OUT] [--seconds S] [--repeats N] [--threads T] [--devices cpu,cuda]

:func:`run` returns (and the command prints, then writes to ``--json``)::

    {"cpu":  {"1": rows_per_s, "64": rows_per_s, "1024": rows_per_s},
     "cuda": {...},                                   # only with a GPU
     "ratio_vs_batch1": {"cpu": {"1": 1.0, "64": r64, "1024": r1024}, "cuda": {...}},
     "meta": {"torch": ..., "threads": ..., "devices": {...}, ...}}
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.deep import DeepModel, DeepParams

BATCH_SIZES: tuple[int, ...] = (1, 64, 1024)
NUMERIC: tuple[str, ...] = tuple(f"f{i}" for i in range(12))
CATEGORICAL: tuple[str, ...] = ("merchant",)
ROWS = 4096          # distinct event dicts the timed calls cycle through
TRAIN_ROWS = 1024    # learned before timing (8 optimizer steps at batch_size 128)

DESCRIPTION = """\
Batched inference rows/s of models.deep.DeepModel.predict_proba_many at batch
sizes 1, 64 and 1024, on the CPU and (when available) CUDA: median of
--repeats timed runs of --seconds each, after a warm-up, end to end from event
dicts (12 numeric + 1 categorical feature) to Python floats. Prints a table
and the result dict as JSON; --json OUT also writes it to OUT.
"""


def make_rows(n: int, seed: int = 0) -> tuple[list[dict[str, float | str]], list[int]]:
    """``n`` deterministic synthetic events and labels (a little noise: some values missing)."""
    rng = random.Random(seed)
    merchants = [f"m{i}" for i in range(500)]
    xs: list[dict[str, float | str]] = []
    ys: list[int] = []
    for _ in range(n):
        x: dict[str, float | str] = {f: rng.gauss(10.0 * i, 1.0 + i) for i, f in enumerate(NUMERIC)}
        label = int(float(x["f1"]) - 10.0 + rng.gauss(0, 1) > 0.0)
        if rng.random() < 0.05:
            del x[NUMERIC[rng.randrange(len(NUMERIC))]]
        x["merchant"] = merchants[min(int(rng.paretovariate(1.2)) - 1, len(merchants) - 1)]
        xs.append(x)
        ys.append(label)
    return xs, ys


def build_model(device: str, seed: int = 0) -> DeepModel:
    """A default-sized DeepModel on ``device`` that has taken a few optimizer steps."""
    model = DeepModel("bench", NUMERIC, CATEGORICAL, DeepParams(device=device, seed=seed))
    xs, ys = make_rows(TRAIN_ROWS, seed + 1)
    model.learn_many(xs, ys)
    return model


def _timed(model: DeepModel, batches: Sequence[Sequence[dict[str, float | str]]], seconds: float) -> float:
    """Rows/s of ``predict_proba_many`` over ``batches`` (cycled) for about ``seconds``."""
    rows = 0
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        batch = batches[calls % len(batches)]
        model.predict_proba_many(batch)   # returns Python floats: any CUDA work has finished
        rows += len(batch)
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return rows / (now - start)


def measure(model: DeepModel, rows: Sequence[dict[str, float | str]], batch_size: int, seconds: float,
            repeats: int, warmup_s: float) -> float:
    """Median rows/s of ``repeats`` timed runs at ``batch_size`` after ``warmup_s`` of warm-up."""
    batches = [rows[i:i + batch_size] for i in range(0, len(rows) - batch_size + 1, batch_size)]
    _timed(model, batches, warmup_s)
    return statistics.median(_timed(model, batches, seconds) for _ in range(repeats))


def run(devices: Sequence[str] | None = None, seconds: float = 0.5, repeats: int = 5,
        warmup_s: float = 0.25, batch_sizes: Sequence[int] = BATCH_SIZES,
        threads: int | None = None) -> dict[str, Any]:
    """Rows/s per device and batch size (see the module docstring for the shape of the result).

    ``devices`` defaults to ``["cpu"]`` plus ``"cuda"`` when available;
    ``seconds`` is the length of each of the ``repeats`` timed runs;
    ``threads`` sets torch's intra-op CPU threads for the run (restored after;
    default: leave torch's setting as it is).
    """
    if devices is None:
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(list(devices), seconds, repeats, warmup_s, batch_sizes)
    finally:
        torch.set_num_threads(previous_threads)


def _run(devices: list[str], seconds: float, repeats: int, warmup_s: float,
         batch_sizes: Sequence[int]) -> dict[str, Any]:
    rows, _ = make_rows(ROWS, seed=0)
    result: dict[str, Any] = {}
    ratios: dict[str, dict[str, float]] = {}
    device_names: dict[str, str] = {}
    for device in devices:
        model = build_model(device)
        rates = {str(b): measure(model, rows, b, seconds, repeats, warmup_s) for b in batch_sizes}
        result[device] = rates
        base = rates.get("1")
        if base:
            ratios[device] = {b: r / base for b, r in rates.items()}
        device_names[device] = (torch.cuda.get_device_name(model.device) if model.device.type == "cuda"
                                else platform.processor() or platform.machine())
    result["ratio_vs_batch1"] = ratios
    result["meta"] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "devices": device_names,
        "numeric_features": len(NUMERIC),
        "categorical_features": len(CATEGORICAL),
        "params": {k: v for k, v in vars(DeepParams()).items() if k != "device"},
        "seconds": seconds,
        "repeats": repeats,
        "statistic": "median rows/s of predict_proba_many (end to end, dicts in, floats out)",
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    devices = [d for d in result if d not in ("ratio_vs_batch1", "meta")]
    sizes = list(result[devices[0]]) if devices else []
    lines = [f"{'device':<8}" + "".join(f"{'batch ' + s:>16}" for s in sizes)]
    for d in devices:
        lines.append(f"{d:<8}" + "".join(f"{result[d][s]:>11,.0f} r/s " for s in sizes))
        ratio = result["ratio_vs_batch1"].get(d, {})
        lines.append(f"{'  x b=1':<8}" + "".join(f"{ratio.get(s, float('nan')):>14.1f}x " for s in sizes))
        lines.append(f"{'  us/row':<8}" + "".join(f"{1e6 / result[d][s]:>15.2f} " for s in sizes))
    meta = result.get("meta", {})
    lines.append(f"torch {meta.get('torch')}, {meta.get('threads')} CPU threads, devices {meta.get('devices')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.torch_infer", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="Also write the result dict to OUT.")
    p.add_argument("--seconds", type=float, default=0.5, help="Length of each timed run (default 0.5).")
    p.add_argument("--repeats", type=int, default=5, help="Timed runs per figure; the median is reported.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's default, one per core).")
    p.add_argument("--devices", default=None, metavar="DEV[,DEV]",
                   help="Devices to measure (default: cpu, plus cuda when available).")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--seconds must be > 0, --repeats >= 1 and --threads >= 1")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    result = run(devices=devices, seconds=args.seconds, repeats=args.repeats, threads=args.threads)
    print(format_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
