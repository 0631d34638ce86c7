"""Native vs reference window kernels, in batch mode: ``python -m benchmarks.kernels``.

Why: the window inner loops are the part of the hot path that is pure
arithmetic per event; ext/ holds them in C++ with a pure-Python twin that must
give identical results. This measures both on the same input, in the same
process: 1M events over 10 keys, each event updating its key's exact sliding
window (count, sum, mean, min, max, var: 6 aggregations) and its tumbling
window (count, sum, mean, min, max), fed in micro-batches of 10,000 events as
the worker does. Reports events/s of each backend and the ratio, and checks
that both produced the same numbers. The inputs of each kernel call are built
before timing (see :func:`_batches`).
"""

from __future__ import annotations

import argparse
import json
import time
from types import ModuleType
from typing import Any

import numpy as np


def _workload(n: int, keys: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    key_idx = rng.integers(0, keys, n)
    ts = np.cumsum(rng.integers(0, 50, n)).astype(np.int64)        # non-decreasing event time, ms
    values = rng.gamma(2.0, 30.0, n)
    return key_idx, ts, values


def _batches(key_idx: np.ndarray, ts: np.ndarray, values: np.ndarray, keys: int,
             batch: int) -> list[tuple[list[tuple[int, np.ndarray, np.ndarray]], list[str], np.ndarray, np.ndarray,
                                   np.ndarray]]:
    """The kernels' inputs, per micro-batch, built once: both backends get the same arrays.

    Why outside the timing: splitting a batch by key and building the key
    strings is the caller's glue, the same for both backends (~0.1 µs per
    event, as much as the native kernels themselves); timing it would
    measure numpy and list building, not the kernels.
    """
    names = [f"k{i}" for i in range(keys)]
    out = []
    for lo in range(0, len(ts), batch):
        k = key_idx[lo:lo + batch]
        t = ts[lo:lo + batch]
        v = values[lo:lo + batch]
        per_key = []
        for i in range(keys):
            sel = k == i
            if sel.any():
                per_key.append((i, np.ascontiguousarray(t[sel]), np.ascontiguousarray(v[sel])))
        out.append((per_key, [names[i] for i in k.tolist()], t, v, np.ones(len(t), dtype=np.bool_)))
    return out


def _run(backend: ModuleType, batches: list, keys: int, size_ms: int) -> tuple[float, float]:
    """Seconds for the whole stream (kernel calls only), and a checksum of every output row."""
    sliding = [backend.SlidingWindow(size_ms) for _ in range(keys)]
    table = backend.TumblingTable(size_ms)
    outs = []
    t0 = time.perf_counter()
    for per_key, key_names, t, v, has in batches:
        for i, t_sel, v_sel in per_key:          # one kernel call per key per batch
            outs.append(sliding[i].update_many(t_sel, v_sel))
        outs.append(table.update_many(key_names, t, v, has))
    elapsed = time.perf_counter() - t0
    return elapsed, sum(float(o[:, :2].sum()) for o in outs)


def run(n: int = 1_000_000, keys: int = 10, batch: int = 10_000, size_ms: int = 60_000,
        seed: int = 42) -> dict[str, Any]:
    """Both backends over the same stream; raises if their outputs differ."""
    from ext import _reference

    try:
        from ext import _native
    except ImportError:          # pragma: no cover - only without a build
        _native = None
    key_idx, ts, values = _workload(n, keys, seed)
    batches = _batches(key_idx, ts, values, keys, batch)
    out: dict[str, Any] = {"events": n, "keys": keys, "batch": batch, "aggregations": 6,
                           "kernels": "SlidingWindow.update_many (count,sum,mean,min,max,var) "
                                      "+ TumblingTable.update_many (count,sum,mean,min,max)"}
    ref_s, ref_check = _run(_reference, batches, keys, size_ms)
    out["reference_events_per_s"] = round(n / ref_s, 1)
    if _native is not None:
        nat_s, nat_check = _run(_native, batches, keys, size_ms)
        if nat_check != ref_check:
            raise AssertionError(f"native and reference disagree: {nat_check!r} != {ref_check!r}")
        out["native_events_per_s"] = round(n / nat_s, 1)
        out["ratio"] = round(ref_s / nat_s, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--batch", type=int, default=10_000)
    args = p.parse_args()
    print(json.dumps(run(args.events, args.keys, args.batch), indent=2))


if __name__ == "__main__":
    main()
