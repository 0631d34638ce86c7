"""The feature layer per window kind, in process: ``python -m benchmarks.windows``.

Why: ``benchmarks.kernels`` times the native inner loops alone; a user
choosing a window kind pays for the whole of :class:`streams.features.Windows`
instead: keys and values read from the events, the per-entity glue, the
feature dicts and a store flush per micro-batch. This feeds one stream (1000
entities, 20 % of events up to 3 s early, 5 % without the field) through one
window definition at a time, in micro-batches of 500 with a flush to a dict
after each (a worker flushes before each commit), and prints events/s per
kind with its ratio to the plain tumbling window, measured in the same run.

Session windows with ``grace_ms`` and the decayed sums of sliding windows
run in pure Python for both backends (see ``streams.features``); this is
where their price shows.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from streams.features import Windows, WindowSpec

#: (name, definition): count and mean of one field per entity, plus what each kind adds
KINDS: tuple[tuple[str, WindowSpec], ...] = (
    ("tumbling", WindowSpec(key="k", field="x", size_ms=60_000, aggs=("count", "mean"))),
    ("tumbling_grace", WindowSpec(key="k", field="x", size_ms=60_000, grace_ms=5_000, aggs=("count", "mean"))),
    ("sliding", WindowSpec(key="k", field="x", kind="sliding", size_ms=60_000, aggs=("count", "mean", "since"))),
    ("sliding_grace", WindowSpec(key="k", field="x", kind="sliding", size_ms=60_000, grace_ms=5_000,
                                 aggs=("count", "mean", "since"))),
    ("sliding_decay", WindowSpec(key="k", field="x", kind="sliding", size_ms=60_000, grace_ms=5_000,
                                 half_life_ms=10_000, aggs=("count", "mean", "since", "decay_sum", "decay_mean"))),
    ("hopping_grace", WindowSpec(key="k", field="x", kind="hopping", size_ms=60_000, hop_ms=10_000, grace_ms=5_000,
                           aggs=("count", "mean"))),
    ("session", WindowSpec(key="k", field="x", kind="session", gap_ms=2_000, aggs=("count", "mean", "since"))),
    ("session_grace", WindowSpec(key="k", field="x", kind="session", gap_ms=2_000, grace_ms=5_000,
                                 aggs=("count", "mean", "since"))),
)


def _stream(n: int, keys: int, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    rnd = random.Random(seed)
    t, docs, ts = 0, [], []
    for _ in range(n):
        t += rnd.choice((0, 1, 5, 30))
        ts.append(t - (rnd.randint(0, 3000) if rnd.random() < 0.2 else 0))
        k = f"e{rnd.randrange(keys)}"
        docs.append({"k": k} if rnd.random() < 0.05 else {"k": k, "x": round(rnd.uniform(0, 100), 1)})
    return docs, ts


def run(events: int = 200_000, keys: int = 1000, batch: int = 500, seed: int = 7,
        kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per kind: events/s through Windows (update + flush), late events, ratio to tumbling."""
    docs, ts = _stream(events, keys, seed)
    rows: list[dict[str, Any]] = []
    for name, spec in KINDS:
        if kinds is not None and name not in kinds and name != "tumbling":
            continue
        w, store = Windows([spec]), {}
        t0 = time.perf_counter()
        for lo in range(0, events, batch):
            w.update_batch(docs[lo:lo + batch], ts[lo:lo + batch], store.get)
            w.flush(store.__setitem__)
        elapsed = time.perf_counter() - t0
        rows.append({"kind": name, "events_per_s": round(events / elapsed), "late": w.late,
                     "us_per_event": round(elapsed / events * 1e6, 2)})
    base = rows[0]["events_per_s"]
    for r in rows:
        r["vs_tumbling"] = round(r["events_per_s"] / base, 2)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.windows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="events in the stream (default 200,000)")
    p.add_argument("--keys", type=int, default=1000, help="entities (default 1000)")
    p.add_argument("--batch", type=int, default=500, help="events per micro-batch (default 500)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = p.parse_args()
    import ext

    rows = run(args.events, args.keys, args.batch)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"Windows.update_batch + flush, {args.events:,} events, {args.keys} entities, "
          f"batches of {args.batch}, ext backend: {ext.backend_name()}")
    print(f"{'kind':<16}{'events/s':>12}{'µs/event':>10}{'vs tumbling':>13}{'late':>8}")
    for r in rows:
        print(f"{r['kind']:<16}{r['events_per_s']:>12,}{r['us_per_event']:>10.2f}{r['vs_tumbling']:>12.2f}×"
              f"{r['late']:>8,}")


if __name__ == "__main__":
    main()
