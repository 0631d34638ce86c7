"""Command line of the benchmark suite: ``python -m benchmarks`` and ``streamscore bench``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

#: Run names, in the order they run (benchmarks/targets.py defines each).
RUN_NAMES: tuple[str, ...] = ("raw", "faust_naive", "windowed", "full", "full_2workers", "full_2machines",
                               "full_online")
BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "latest.json"
MARKDOWN = BENCH_DIR.parent / "BENCHMARKS.md"

DESCRIPTION = """\
Benchmark streamscore against a plain confluent-kafka loop and a naive faust
agent, on the same synthetic workload, against an embedded broker it starts
itself.

Runs (--only):
  raw            confluent-kafka consumer + orjson + dict, one process
  faust_naive    faust agent per event, RocksDB table, await send() (subset)
  windowed       streamscore worker, benchmarks/pipelines/windowed.toml
  full           streamscore worker, benchmarks/pipelines/full.toml (9 windows, LR, torch, blend, rules;
                 the torch model frozen: trained offline, deployed before the run)
  full_2workers  two workers of `full` in one consumer group, sharing a state directory as
                 `streamscore worker --workers 2` runs them on one machine
  full_2machines the same two workers with a state directory each, as on two machines: each
                 also keeps a standby copy of the other's partitions, on the same cores
  full_online    `full` with the torch model trained online too (full_online.toml)

Per run: events/s (median of --repeat runs, from the Kafka timestamps of the
first and last output), CPU % (sum over its processes, 100 = one core), peak
RSS, correctness (every event answered once, window values equal a
brute-force recomputation), and p50/p99 end-to-end latency at half the
measured peak. Writes benchmarks/results/latest.json and appends to
BENCHMARKS.md (--no-record: neither). Run nothing else heavy meanwhile.
Exit code 1 if a run failed or was incorrect.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=None,
                   help="Events in the workload. Default: 200000 (--quick: 20000).")
    p.add_argument("--repeat", type=int, default=None,
                   help="Throughput repetitions per run (median reported). Default: 3 (--quick: 1).")
    p.add_argument("--quick", action="store_true",
                   help="Smoke run: 20000 events, 1 repetition, faust_naive on 5000, 5 s latency runs.")
    p.add_argument("--only", default=",".join(RUN_NAMES), metavar="NAME[,NAME]",
                   help=f"Runs to do, comma-separated, from: {', '.join(RUN_NAMES)}.")
    p.add_argument("--naive-events", type=int, default=None,
                   help="faust_naive runs on the first N events only (it is ~100x slower). "
                        "Default: 20000 (--quick: 5000).")
    p.add_argument("--partitions", type=int, default=4, help="Partitions of the input topics.")
    p.add_argument("--users", type=int, default=10_000, help="Distinct users (record keys).")
    p.add_argument("--seed", type=int, default=42, help="Workload seed.")
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="Length of each latency run at half the peak. Default: 10 (--quick: 5).")
    p.add_argument("--no-latency", action="store_true", help="Skip the latency runs.")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON results file.")
    p.add_argument("--markdown", type=Path, default=MARKDOWN, help="Markdown log to append a row set to.")
    p.add_argument("--no-record", action="store_true", help="Write neither the JSON results nor the markdown.")
    p.add_argument("--keep", action="store_true", help="Keep the work dir (logs, state) even on success.")
    p.add_argument("--no-extras", action="store_true",
                   help="Skip the in-process benchmarks: native vs reference kernels, torch inference.")


def options_from_args(args: argparse.Namespace, command: str):  # type: ignore[no-untyped-def]
    from benchmarks.harness import Options

    only = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in only if n not in RUN_NAMES]
    if unknown or not only:
        raise SystemExit(f"--only: unknown run(s) {unknown}; choose from {', '.join(RUN_NAMES)}")
    quick = args.quick
    events = args.events if args.events is not None else (20_000 if quick else 200_000)
    naive = args.naive_events if args.naive_events is not None else (5_000 if quick else 20_000)
    return Options(
        events=events,
        repeat=args.repeat if args.repeat is not None else (1 if quick else 3),
        naive_events=min(naive, events),
        partitions=args.partitions,
        users=args.users,
        seed=args.seed,
        only=tuple(n for n in RUN_NAMES if n in only),
        latency=not args.no_latency,
        latency_seconds=args.latency_seconds if args.latency_seconds is not None else (5.0 if quick else 10.0),
        results=None if args.no_record else args.results,
        markdown=None if args.no_record else args.markdown,
        keep=args.keep,
        extras=not args.no_extras,
        quick=quick,
        command=command,
    )


def run(args: argparse.Namespace, command: str | None = None) -> int:
    from benchmarks.harness import main_echo, run_all

    cmd = command or getattr(args, "bench_command", None) or "python -m benchmarks"
    _, rc = run_all(options_from_args(args, cmd), echo=main_echo)
    return rc


def add_bench_parser(add: Callable[[str, str, str], argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``streamscore bench`` (called by streams/cli.py)."""
    p = add("bench", "benchmark suite: raw Kafka vs faust vs streamscore", DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=lambda args: run(args, "streamscore " + shlex.join(sys.argv[1:])))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    return run(args, "python -m benchmarks" + (" " + shlex.join(argv) if argv else ""))
