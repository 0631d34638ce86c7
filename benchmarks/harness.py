"""Runs the benchmark targets against one embedded broker and reports.

For each target: ``repeat`` throughput runs, then one latency run.

Throughput run: fresh topics, consumer group and state directory; the
workload is produced into the input topic *before* the system under test
starts (production is not timed); then the processes start, and once they
consume, their CPU time is sampled until every output is out.

* **events/s** = outputs / (Kafka timestamp of the last output - that of the
  first output), read back from the output topic. A Kafka timestamp is taken
  by the producer of the system under test when it publishes (CreateTime), so
  this is the processing rate from the first output to the last; start-up and
  the consumer-group join are excluded. The median over the repetitions is
  reported. (``wall_events_per_s`` in the JSON: events / busy wall time, see
  CPU %, as seen by polling every 50 ms.)
* **CPU %** = sum over the processes of the target of the utime+stime delta
  (/proc/<pid>/stat) over its busy wall time: from the last 50 ms sample
  before they first use > 20 % of a core (start of consumption; the idle
  first fetch is excluded) to the last output; 100 % = one core. Median over
  the repetitions. The broker's CPU is reported separately (``broker_cpu_pct``);
  ``cpu_ms_per_1k_events`` is the CPU cost of the target per 1000 events.
* **peak RSS MB** = VmHWM (/proc/<pid>/status) at the end of the run, summed
  over the processes; the largest over the repetitions.
* **correct**: see :mod:`benchmarks.check`; every repetition and the latency run.

Latency run: fresh topics again; the processes start on an empty input topic;
once they consume, a paced producer offers the events at HALF the measured
peak events/s (labels, where the workload has them, right after their
event), for ``latency_seconds`` (at least 1000 events, at most the whole
workload). Latency of an event = Kafka timestamp of its output - Kafka
timestamp of its input (both set at the produce call, 1 ms resolution);
events produced in the first ``latency_warmup_s`` (at most a fifth of the
run) are excluded. p50 and p99 are nearest-rank percentiles.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from benchmarks.cli import MARKDOWN, RESULTS, RUN_NAMES
from benchmarks.check import Reference, check_outputs, read_outputs
from benchmarks.procstat import CpuWindow, peak_rss_mb
from benchmarks.targets import TARGETS, RunFailed, Target
from benchmarks.workload import Workload, make_workload, produce, produce_paced
from streams.broker import EmbeddedBroker
from streams.settings import Settings

assert tuple(TARGETS) == RUN_NAMES, "benchmarks/cli.py RUN_NAMES and TARGETS disagree"


@dataclass
class Options:
    events: int = 200_000
    repeat: int = 3
    naive_events: int = 20_000
    partitions: int = 4
    users: int = 10_000
    seed: int = 42
    only: tuple[str, ...] = RUN_NAMES
    latency: bool = True
    latency_seconds: float = 10.0
    latency_warmup_s: float = 1.0
    stall_s: float = 60.0
    extras: bool = True            # the in-process kernel and torch inference benchmarks too
    results: Path | None = RESULTS
    markdown: Path | None = MARKDOWN
    keep: bool = False
    quick: bool = False
    command: str = "python -m benchmarks"


@dataclass
class Context:
    opts: Options
    broker: EmbeddedBroker
    workdir: Path
    echo: Callable[[str], None]
    refs: dict[int, Reference] = field(default_factory=dict)

    def ref(self, w: Workload) -> Reference:
        if id(w) not in self.refs:
            self.refs[id(w)] = Reference(w)
        return self.refs[id(w)]


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q / 100.0 * len(s) // 1)) - 1))
    return float(s[k])


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for fut in admin.delete_topics(topics, operation_timeout=10).values():
            try:
                fut.result(10)
            except Exception:
                pass
    except Exception:
        pass


PROGRESS_EVERY_S = 0.5


def _wait_done(inst: Any, expected: int, stall_s: float, windows: Sequence[CpuWindow] = ()) -> None:
    """Sample CPU every 50 ms; ask the system for its progress every ``PROGRESS_EVERY_S``.

    Why not every 50 ms too: a worker's progress is its ``/metrics`` page, and
    rendering it 20 times a second cost the worker ~5 % of its CPU (py-spy,
    2026-11-26), a load no deployment puts on it (Prometheus scrapes every 15 s,
    ``monitoring/prometheus.yml``). Throughput and latency come from Kafka
    timestamps, so noticing the end half a second late changes neither.
    """
    last_n, last_change = -1, time.monotonic()
    next_progress = 0.0
    while True:
        now = time.monotonic()
        for w in windows:
            w.sample(now)
        inst.check_alive()
        if now < next_progress:
            time.sleep(0.05)
            continue
        next_progress = now + PROGRESS_EVERY_S
        n, done = inst.progress()
        if done:
            return
        now = time.monotonic()
        if n != last_n:
            last_n, last_change = n, now
        elif now - last_change > stall_s:
            raise RunFailed(f"{inst.tag}: stalled at {n} of {expected} for {stall_s:.0f}s; logs: "
                            + ", ".join(str(p) for p in inst.logs))
        time.sleep(0.05)


def worker_rates(ts_ms: Mapping[str, int], partitions: Sequence[int],
                 owners: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How fast a group of workers is *while all of them run*, from the outputs' Kafka timestamps.

    ``ts_ms``: event id (``e0000042``) -> output timestamp; ``partitions``:
    each event's input partition; ``owners``: the partitions of each worker.

    Why not only outputs / (last output - first output), as for one worker:
    for a group that span also holds the gap between the workers' starts (the
    embedded broker answers each member's JoinGroup a fixed time after *its*
    request, so a worker whose process booted later starts later: 0.3-1.7 s
    on 2026-11-28, when a pair's 200,000-event run takes ~3.5 s on a normal
    day) and the tail where one worker runs alone on cores the other has
    left. Neither happens to a group that keeps up with a live stream. What such a group sustains is set by
    its slowest worker for its share: input rate x share_w <= rate_w for each
    worker w, so the group sustains min_w rate_w / share_w events/s, with
    rate_w measured in the window where every worker publishes (from the
    last worker's first output to the first worker's last output) and
    share_w its part of all outputs.

    Two workers at 100 events/s each, the second started 3 s late: 2,000
    outputs in 13 s, but the pair sustains 200 events/s:

    >>> stamps = [*range(0, 10_000, 10), *range(3_000, 13_000, 10)]
    >>> ts = {f"e{i:07d}": t for i, t in enumerate(stamps)}
    >>> r = worker_rates(ts, [0] * 1000 + [1] * 1000, owners=[[0], [1]])
    >>> r["worker_spans_s"], r["window_s"], r["events_per_s_all_running"]
    ([[0.0, 9.99], [3.0, 12.99]], 6.99, 200.0)
    """
    worker_of = {p: w for w, ps in enumerate(owners) for p in ps}
    per_worker: list[list[int]] = [[] for _ in owners]
    for eid, ts in ts_ms.items():
        w = worker_of.get(partitions[int(eid[1:])])
        if w is None:
            return {}                                    # a partition no worker reported: no figure
        per_worker[w].append(ts)
    if not all(per_worker):
        return {}
    t0 = min(ts_ms.values())
    firsts = [min(ts) for ts in per_worker]
    lasts = [max(ts) for ts in per_worker]
    lo, hi = max(firsts), min(lasts)
    n = sum(len(ts) for ts in per_worker)
    out: dict[str, Any] = {
        "outputs_per_worker": [len(ts) for ts in per_worker],
        "worker_spans_s": [[round((a - t0) / 1000, 2), round((b - t0) / 1000, 2)] for a, b in zip(firsts, lasts)],
        "window_s": round((hi - lo) / 1000, 3) if hi > lo else 0.0,
    }
    if hi - lo < 1000:                                   # under a second together: too short to say
        out["events_per_s_all_running"] = None
        return out
    rates = [sum(1 for t in ts if lo <= t < hi) / ((hi - lo) / 1000) for ts in per_worker]
    out["worker_rates_all_running"] = [round(r, 1) for r in rates]
    out["events_per_s_all_running"] = round(min(r / (len(ts) / n) for r, ts in zip(rates, per_worker)), 1)
    return out


def measure(ctx: Context, target: Target, workload: Workload, tag: str,
            paced_rate: float | None = None) -> dict[str, Any]:
    """One run of ``target`` over ``workload`` (a throughput run, or a latency run if paced)."""
    opts, broker = ctx.opts, ctx.broker
    inst = target.instance(broker.bootstrap, tag, ctx.workdir, opts.partitions)
    inst.create_topics()
    try:
        return _measure(ctx, target, workload, inst, paced_rate)
    finally:
        _delete_topics(broker.bootstrap, inst.topics)   # the in-memory broker keeps every topic otherwise


def _measure(ctx: Context, target: Target, workload: Workload, inst: Any,
             paced_rate: float | None) -> dict[str, Any]:
    opts, broker = ctx.opts, ctx.broker
    producer_config = Settings(broker=broker.bootstrap).producer_config()
    n_events, n_records = workload.n_events, len(workload.records)
    if paced_rate is None:
        produce(producer_config, inst.input_topic, workload.records)
    sent: dict[int, int] = {}
    try:
        inst.start(n_records, n_events)
        inst.wait_ready()
        win = CpuWindow(inst.pids)
        bwin = CpuWindow([broker._proc.pid] if broker._proc is not None else [])
        t0 = time.monotonic()
        win.start(t0)
        bwin.start(t0)
        if paced_rate is not None:
            sent = produce_paced(producer_config, inst.input_topic, workload.records, paced_rate)
        _wait_done(inst, n_records, opts.stall_s, [win])
        t1 = time.monotonic()
        win.stop(t1)
        bwin.stop(t1)
        rss = [peak_rss_mb(p) for p in inst.pids]
        extra = inst.extra()
    finally:
        inst.stop()
    out = read_outputs(broker.bootstrap, inst.output_topics, inst.dlq_topic, n_events)
    correct, details = check_outputs(out, workload, ctx.ref(workload), target.windows, target.scored)
    span = out.span_s()
    res: dict[str, Any] = {
        "events": n_events,
        "records": n_records,
        "events_per_s": round(out.n / span, 1) if span > 0 else None,
        "wall_s": round(win.wall_s, 3),
        "wall_events_per_s": round(n_events / win.wall_s, 1) if win.wall_s > 0 else None,
        "startup_idle_s": round((win.t_busy or win.t0) - win.t0, 3),
        "cpu_pct": round(win.cpu_pct, 1) if win.cpu_pct is not None else None,
        "broker_cpu_pct": round(bwin.cpu_pct, 1) if bwin.cpu_pct is not None else None,
        "cpu_ms_per_1k_events": round(1e6 * win.total_cpu_s / n_events, 1) if n_events else None,
        "peak_rss_mb": round(sum(r for r in rss if r is not None), 1),
        "correct": correct,
        **details,
        **extra,
    }
    owners = extra.get("partitions_per_worker")
    if owners and out.ts_ms:
        res.update(worker_rates(out.ts_ms, workload.partitions, owners))
    if paced_rate is not None:
        t_first = min(sent.values()) if sent else 0
        t_last = max(sent.values()) if sent else 0
        # warm-up excluded: the first latency_warmup_s, at most a fifth of the run
        warm = t_first + int(min(opts.latency_warmup_s * 1000, (t_last - t_first) / 5))
        lat = []
        for eid, ts in out.ts_ms.items():
            i = int(eid[1:])
            if i in sent and sent[i] >= warm:
                lat.append(ts - sent[i])
        res.update({
            "offered_events_per_s": round(paced_rate, 1),
            "achieved_offered_events_per_s": (round(len(sent) / ((t_last - t_first) / 1000), 1)
                                              if t_last > t_first else None),
            "latency_events": len(lat),
            "p50_latency_ms": percentile(lat, 50),
            "p99_latency_ms": percentile(lat, 99),
            "max_latency_ms": max(lat) if lat else None,
        })
    return res


def run_target(ctx: Context, target: Target, workload: Workload) -> dict[str, Any]:
    opts, echo = ctx.opts, ctx.echo
    summary: dict[str, Any] = {"description": target.description, "events_per_s": None, "cpu_pct": None,
                               "peak_rss_mb": None, "p50_latency_ms": None, "p99_latency_ms": None,
                               "correct": False, "events": workload.n_events, "reps": []}
    try:
        target.precheck()
        for r in range(opts.repeat):
            rep = measure(ctx, target, workload, f"{target.name}-r{r}")
            summary["reps"].append(rep)
            echo(f"  {target.name} rep {r + 1}/{opts.repeat}: {_num(rep['events_per_s'])} events/s, "
                 f"CPU {_num(rep['cpu_pct'])} %, peak RSS {_num(rep['peak_rss_mb'])} MB, "
                 f"correct {rep['correct']}" + (f"  {rep['problems']}" if rep["problems"] else "")
                 + (f"; while all workers ran: {_num(rep['events_per_s_all_running'])} events/s, "
                    f"worker spans {rep['worker_spans_s']} s" if rep.get("events_per_s_all_running") else ""))
        reps = summary["reps"]
        eps = [r["events_per_s"] for r in reps if r["events_per_s"]]
        summary["events_per_s"] = round(statistics.median(eps), 1) if eps else None
        cpus = [r["cpu_pct"] for r in reps if r["cpu_pct"] is not None]
        summary["cpu_pct"] = round(statistics.median(cpus), 1) if cpus else None
        summary["peak_rss_mb"] = max(r["peak_rss_mb"] for r in reps) if reps else None
        summary["correct"] = bool(reps) and all(r["correct"] for r in reps)
        running = [r["events_per_s_all_running"] for r in reps if r.get("events_per_s_all_running")]
        if running:
            summary["events_per_s_all_running"] = round(statistics.median(running), 1)
        if opts.latency and summary["events_per_s"]:
            rate = summary["events_per_s"] / 2.0
            n = max(1000, int(rate * opts.latency_seconds))
            lat = measure(ctx, target, workload.prefix(n), f"{target.name}-lat", paced_rate=rate)
            summary["latency_run"] = lat
            summary["p50_latency_ms"] = lat["p50_latency_ms"]
            summary["p99_latency_ms"] = lat["p99_latency_ms"]
            summary["correct"] = summary["correct"] and lat["correct"]
            echo(f"  {target.name} latency at {_num(rate)} events/s offered ({lat['events']} events): "
                 f"p50 {_num(lat['p50_latency_ms'])} ms, p99 {_num(lat['p99_latency_ms'])} ms, "
                 f"correct {lat['correct']}" + (f"  {lat['problems']}" if lat["problems"] else ""))
    except RunFailed as exc:
        summary["error"] = str(exc)
        summary["correct"] = False
        echo(f"  {target.name} FAILED: {exc}")
    return summary


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for dist in ("faust-streaming", "confluent-kafka", "orjson", "rocksdict", "river"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _num(v: Any, nd: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{nd}f}"


def make_workloads(opts: Options, n_events: int) -> dict[str, Workload]:
    """The two workloads a target may name (``Target.workload``): events with inline labels, and events."""
    full = make_workload(n_events, partitions=opts.partitions, users=opts.users, seed=opts.seed, labels=True)
    return {"events+labels": full, "events": full.without_labels()}


def run_all(opts: Options, echo: Callable[[str], None] = print) -> tuple[dict[str, Any], int]:
    """Run the selected targets; write the results; return (report, exit code)."""
    started = dt.datetime.now(dt.timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
    echo(f"streamscore benchmarks: {opts.events:,} events, {opts.partitions} partitions, "
         f"{opts.users:,} users, seed {opts.seed}, repeat {opts.repeat}; runs: {', '.join(opts.only)}")
    echo(f"work dir (logs): {workdir}")
    t = time.monotonic()
    workloads = make_workloads(opts, opts.events)
    full_w = workloads["events+labels"]
    echo(f"workload generated in {time.monotonic() - t:.1f}s: {full_w.n_events:,} events, "
         f"{full_w.labels:,} inline labels for the scored runs")
    runs: dict[str, Any] = {}
    with EmbeddedBroker(log_path=str(workdir / "broker.log")) as broker:
        echo(f"broker: Tansu on {broker.bootstrap}")
        ctx = Context(opts, broker, workdir, echo)
        for name in opts.only:
            target = TARGETS[name]
            w = workloads[target.workload]
            if target.subset:
                w = w.prefix(opts.naive_events)
            echo(f"[{name}] {target.description}; {w.n_events:,} events")
            runs[name] = run_target(ctx, target, w)
    extras: dict[str, Any] = {}
    if opts.extras:
        from benchmarks import kernels, torch_infer

        echo("[kernels] native vs reference window kernels, in process")
        extras["kernels"] = kernels.run(n=200_000 if opts.quick else 1_000_000)
        echo(f"  native {_num(extras['kernels'].get('native_events_per_s'))} events/s, reference "
             f"{_num(extras['kernels']['reference_events_per_s'])} events/s, "
             f"ratio {extras['kernels'].get('ratio')}x")
        echo("[torch] Wide & Deep batched inference rows/s (1 torch thread)")
        extras["torch"] = torch_infer.run(seconds=0.2 if opts.quick else 0.5, threads=1)
        for dev in ("cpu", "cuda"):
            if dev in extras["torch"]:
                echo(f"  {dev}: " + ", ".join(f"batch {b}: {_num(v)} rows/s" for b, v in extras["torch"][dev].items()))
    report = {
        "runs": runs,
        **extras,
        "ratios": ratios(runs),
        "machine": machine_info(),
        "date": started.isoformat(timespec="seconds"),
        "command": opts.command,
        "options": {"events": opts.events, "repeat": opts.repeat, "naive_events": opts.naive_events,
                    "partitions": opts.partitions, "users": opts.users, "seed": opts.seed,
                    "latency": opts.latency, "latency_seconds": opts.latency_seconds,
                    "latency_warmup_s": opts.latency_warmup_s, "quick": opts.quick},
        "method": {
            "events_per_s": "outputs / (Kafka timestamp of last output - first output), median of repeats",
            "cpu_pct": "sum over the target's processes of utime+stime delta / wall time, 100 = one core",
            "peak_rss_mb": "VmHWM summed over the target's processes, max over repeats",
            "latency": "output Kafka ts - input Kafka ts per event, paced producer at half the peak",
        },
    }
    echo("")
    echo(format_table(report))
    ok = all(r.get("correct") and not r.get("error") for r in runs.values())
    if opts.results is not None:
        import orjson

        opts.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = opts.results.with_name(opts.results.name + ".tmp")
        tmp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        tmp.replace(opts.results)
        echo(f"results: {opts.results}")
    if opts.markdown is not None:
        append_markdown(opts.markdown, report)
        echo(f"appended to {opts.markdown}")
    if ok and not opts.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        echo(f"logs kept in {workdir}")
    return report, 0 if ok else 1


def ratios(runs: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for base in ("raw", "faust_naive"):
        b = runs.get(base, {}).get("events_per_s")
        if not b:
            continue
        out[f"vs_{base}"] = {name: (round(r["events_per_s"] / b, 3) if r.get("events_per_s") else None)
                             for name, r in runs.items()}
    return out


COLUMNS = ("run", "events/s", "CPU %", "peak RSS MB", "p50 ms", "p99 ms", "correct", "× raw", "× faust_naive")


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    rat = report.get("ratios", {})
    for name, r in report["runs"].items():
        def ratio(base: str) -> str:
            v = rat.get(f"vs_{base}", {}).get(name)
            return "n/a" if v is None else (f"{v:.3f}" if v < 0.1 else f"{v:.2f}")

        correct = "FAILED" if r.get("error") else ("yes" if r.get("correct") else "NO")
        rows.append([name, _num(r.get("events_per_s")), _num(r.get("cpu_pct")), _num(r.get("peak_rss_mb")),
                     _num(r.get("p50_latency_ms"), 1), _num(r.get("p99_latency_ms"), 1), correct,
                     ratio("raw"), ratio("faust_naive")])
    return rows


def format_table(report: dict[str, Any]) -> str:
    rows = [list(COLUMNS), *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, r in report["runs"].items():
        if r.get("error"):
            lines.append(f"{name}: {r['error'].splitlines()[0]}")
        elif not r.get("correct"):
            probs = [p for rep in r.get("reps", []) + [r.get("latency_run") or {}] for p in rep.get("problems", [])]
            lines.append(f"{name}: incorrect: {probs[:3]}")
    return "\n".join(lines)


MARKDOWN_HEADER = """\
# Benchmarks

Row sets appended by `make bench` (`python -m benchmarks`); `python -m
benchmarks --help` says what each run and each column measures.
"""


def append_markdown(path: Path, report: dict[str, Any]) -> None:
    m = report["machine"]
    o = report["options"]
    head = MARKDOWN_HEADER if not path.exists() else ""
    lines = [
        "",
        f"## {report['date'].replace('T', ' ').replace('+00:00', ' UTC')} · `{report['command']}`",
        "",
        f"Machine: {m['nproc']} × {m['cpu_model']}, {m['mem_gb']} GB RAM, Python {m['python']}, "
        f"faust-streaming {m['versions'].get('faust-streaming')}. Workload: {o['events']:,} events "
        f"(faust_naive: first {min(o['naive_events'], o['events']):,}), repeat {o['repeat']}"
        + (", **quick smoke run**" if o["quick"] else "") + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|",
    ]
    for row in table_rows(report):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    offered = [f"{name} {_num(r['latency_run']['offered_events_per_s'])}" for name, r in report["runs"].items()
               if r.get("latency_run")]
    if offered:
        lines.append(f"- Latency runs offered (events/s): {', '.join(offered)}.")
    local = sorted({f"{name}: {w}" for name, r in report["runs"].items() for rep in r.get("reps", [])
                    for w, sem in (rep.get("window_semantics") or {}).items() if sem == "partition-local"})
    if local:
        runs_local = sorted({x.split(":")[0] for x in local})
        wins = sorted({x.split(": ")[1] for x in local})
        lines.append(f"- Windows keyed by a field other than the partitioning key (user) are partition-local "
                     f"in {', '.join(runs_local)} ({', '.join(wins)}): they matched the per-partition "
                     f"reference, not the global one.")
    for name, r in report["runs"].items():
        if r.get("events_per_s_all_running"):
            reps = [rep for rep in r.get("reps", []) if rep.get("events_per_s_all_running")]
            lines.append(f"- `{name}` while all its workers ran (`benchmarks.harness.worker_rates`): median "
                         f"{_num(r['events_per_s_all_running'])} events/s; by repetition "
                         + ", ".join(f"{_num(rep['events_per_s_all_running'])} (spans "
                                     + " and ".join(f"{a}-{b}" for a, b in rep["worker_spans_s"]) + " s)"
                                     for rep in reps) + ".")
    if k := report.get("kernels"):
        lines.append(f"- Window kernels in process ({k['events']:,} events x {k['keys']} keys, batches of "
                     f"{k['batch']:,}, {k['aggregations']} aggregations): native "
                     f"{_num(k.get('native_events_per_s'))} events/s, reference "
                     f"{_num(k['reference_events_per_s'])} events/s, ratio {k.get('ratio')}x.")
    if t := report.get("torch"):
        for dev in ("cpu", "cuda"):
            if dev in t:
                lines.append(f"- Torch Wide & Deep inference on {dev} (rows/s, 1 thread): "
                             + ", ".join(f"batch {b}: {_num(v)}" for b, v in t[dev].items()) + ".")
    for name, r in report["runs"].items():
        if r.get("error"):
            lines.append(f"- `{name}` failed: {r['error'].splitlines()[0]}")
        elif not r.get("correct"):
            probs = [p for rep in r.get("reps", []) + [r.get("latency_run") or {}] for p in rep.get("problems", [])]
            lines.append(f"- `{name}` incorrect: {'; '.join(probs[:3])}")
    with path.open("a") as fh:
        fh.write(head + "\n".join(lines) + "\n")


def main_echo(msg: str) -> None:
    print(msg, flush=True, file=sys.stdout)
