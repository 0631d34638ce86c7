"""Latency against offered load: p50/p99 end to end at fixed event rates.

``make bench`` measures latency at one load, half of each run's peak. This
sweeps the offered load instead, to show where latency comes from: the floor
at a light load (fetch wait, producer linger), the flush stalls in the middle,
and queueing as the machine saturates. Each point is a fresh run (topics,
group, state) of a paced producer offering the workload's events at that rate
for ``--seconds`` while the system runs, checked for correctness like every
benchmark run; latency = output Kafka timestamp - input Kafka timestamp.

``--set NAME=VALUE`` overrides a worker setting (streams.settings.Settings)
for the streamscore runs, to compare configurations, e.g. the commit interval::

    python -m benchmarks.latency --only windowed --rates 2000,20000,68000
    python -m benchmarks.latency --only windowed --rates 68000 --set commit_interval_s=1
    python -m benchmarks.latency --only windowed,full --rates 1000,5000,20000 --plot latency.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cli import RUN_NAMES
from benchmarks.harness import Context, Options, make_workloads, measure
from benchmarks.targets import TARGETS, WorkerTarget
from streams.broker import EmbeddedBroker


def run(names: Sequence[str], rates: Sequence[float], seconds: float = 6.0,
        overrides: Sequence[tuple[str, str]] = (), echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One latency run per (run name, offered rate); a row of figures each."""
    opts = Options(latency_seconds=seconds, latency_warmup_s=min(1.0, seconds / 5))
    workloads = make_workloads(opts, max(1000, int(max(rates) * seconds)))
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="streamscore-latency-"))
    with EmbeddedBroker(log_path=str(workdir / "broker.log")) as broker:
        ctx = Context(opts, broker, workdir, echo)
        for name in names:
            target = TARGETS[name]
            if overrides and isinstance(target, WorkerTarget):
                target = dataclasses.replace(target, settings=tuple(overrides))
            for i, rate in enumerate(rates):
                w = workloads[target.workload].prefix(max(1000, int(rate * seconds)))
                # a tag of its own per point (topics, state directory): a rate given twice is a repeat,
                # not a restart of the worker that ran the first
                r = measure(ctx, target, w, f"{name}-{int(rate)}-{i}", paced_rate=rate)
                row = {"run": name, "offered_events_per_s": rate,
                       **{k: r.get(k) for k in ("achieved_offered_events_per_s", "p50_latency_ms", "p99_latency_ms",
                                                "max_latency_ms", "cpu_pct", "broker_cpu_pct", "correct")}}
                rows.append(row)
                echo(f"  {name} at {rate:,.0f} events/s: p50 {row['p50_latency_ms']} ms, p99 "
                     f"{row['p99_latency_ms']} ms, CPU {row['cpu_pct']} % (broker {row['broker_cpu_pct']} %), "
                     f"correct {row['correct']}")
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """p50 (dashed) and p99 (solid) latency against offered load, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(dict.fromkeys(r["run"] for r in rows)):
        pts = sorted((r["offered_events_per_s"], r["p50_latency_ms"], r["p99_latency_ms"])
                     for r in rows if r["run"] == name and r["p99_latency_ms"] is not None)
        if not pts:
            continue
        x, p50, p99 = zip(*pts)
        colour = f"C{i}"
        ax.plot(x, p99, "o-", color=colour, label=f"{name} p99")
        ax.plot(x, p50, "o--", color=colour, alpha=0.6, label=f"{name} p50")
    ax.axhline(50, color="grey", lw=0.8, ls=":", label="50 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(title or "latency against offered load")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="windowed",
                    help=f"Runs, comma-separated, from: {', '.join(RUN_NAMES)}. Default: windowed.")
    ap.add_argument("--rates", default="2000,20000,68000", help="Offered loads, events/s, comma-separated.")
    ap.add_argument("--seconds", type=float, default=6.0, help="Length of each run. Default: 6.")
    ap.add_argument("--set", dest="overrides", type=_setting, action="append", default=[], metavar="NAME=VALUE",
                    help="A worker setting for the streamscore runs (repeatable), e.g. commit_interval_s=1.")
    ap.add_argument("--json", type=Path, help="Write the rows as JSON here.")
    ap.add_argument("--plot", type=Path, help="Write a PNG of latency against offered load here.")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if bad := [n for n in names if n not in TARGETS]:
        ap.error(f"unknown run(s) {bad}; choose from {', '.join(RUN_NAMES)}")
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    rows = run(names, rates, args.seconds, args.overrides)
    if args.json:
        args.json.write_text(json.dumps({"overrides": dict(args.overrides), "rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot, title="latency against offered load"
             + (f" ({', '.join(f'{k}={v}' for k, v in args.overrides)})" if args.overrides else ""))
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
