"""``streamscore demo``: a real stream through a real broker and worker, then a report.

Steps: start the embedded broker; create the topics; convert the pipeline's
dataset into a recorded stream (cached under ``.cache/streams``); start one
worker *process*; replay the stream as fast as possible while reading the
predictions and dead letters back, with a progress bar; stop the worker; join
every prediction with its label and print the report.

Prequential metrics are computed from what was published: each label is
matched with the score its event got *before* the label was known, which is
exactly what the worker's own prequential metrics (published to the metrics
topic) count per partition; the report carries both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from models import merge_prequential
from models.evaluate import prequential_for
from streams.broker import EmbeddedBroker, create_topics, free_port
from streams.datasets import convert
from streams.metrics import histogram_quantile, scrape, total
from streams.replay import count_records, open_stream, replay
from streams.settings import Settings
from streams.spec import PipelineSpec, load_spec

CACHE_DIR = Path(".cache/streams")


def dataset_stream(spec: PipelineSpec, cache_dir: Path = CACHE_DIR) -> Path:
    """The recorded stream of ``spec``'s dataset, converted once and cached."""
    path = cache_dir / f"{spec.dataset}.jsonl.gz"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        convert(spec.dataset, tmp)
        tmp.replace(path)
    return path


def all_topics(settings: Settings) -> dict[str, int]:
    return ({settings.topic(t): settings.partitions for t in ("events", "labels", "predictions", "dlq")}
            | {settings.topic("metrics"): 1})


def start_worker(settings: Settings, log_path: Path | None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A worker in its own process, configured through ``STREAMSCORE_*`` variables.

    Its output is appended to ``log_path``, or shares this process's
    stdout/stderr when ``log_path`` is None. ``extra_env``: more variables
    (the fault suite's ``STREAMSCORE_FAILPOINT``).
    """
    from pydantic import SecretStr

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    core = {"broker", "app_id", "topic_prefix", "pipeline", "partitions", "state_dir", "web_port",
            "metrics_port", "metrics_host", "session_timeout_s", "commit_interval_s", "metrics_interval_s",
            "batch_max"}
    for name in sorted(core | settings.model_fields_set):   # every explicitly set field reaches the worker
        value = getattr(settings, name)
        if value is None:
            continue
        env[Settings.env_name(name)] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    env.update(extra_env or {})
    if log_path is None:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env)
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_ready(settings: Settings, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    """Wait until the worker reports assigned partitions on its /metrics endpoint."""
    import urllib.request

    url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
        try:
            body = urllib.request.urlopen(url, timeout=1).read().decode()
        except OSError:
            body = ""
        for line in body.splitlines():
            if line.startswith("streamscore_worker_assigned_partitions ") and float(line.split()[1]) > 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"worker not assigned any partition within {timeout}s; see {log_path}")


def wait_consumed(settings: Settings, n_records: int, timeout: float = 60.0) -> dict[str, Any]:
    """Scrape the worker until it has consumed ``n_records`` (events and labels); the last scrape."""
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if total(samples, "streamscore_worker_events_in_total") >= n_records or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class OutputReader:
    """Reads predictions, dead letters and metrics snapshots back from Kafka."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.predictions: dict[str, dict[str, Any]] = {}
        self.pred_times: list[float] = []       # Kafka timestamp (s) of each first prediction
        self.duplicates = 0
        self.dlq: list[dict[str, Any]] = []
        self.metrics: dict[tuple[str, int], dict[str, Any]] = {}
        self.snapshots: list[dict[str, Any]] = []        # every metrics-topic snapshot, in arrival order
        self._c = Consumer(settings.consumer_config(group=f"{settings.app_id}-demo-reader"))
        meta = self._c.list_topics(timeout=10)
        tps = [TopicPartition(settings.topic(t), p, OFFSET_BEGINNING)
               for t in ("predictions", "dlq", "metrics")
               for p in meta.topics[settings.topic(t)].partitions]
        self._c.assign(tps)
        self._names = {settings.topic(t): t for t in ("predictions", "dlq", "metrics")}

    @property
    def done(self) -> int:
        return len(self.predictions) + len(self.dlq)

    def poll(self, timeout: float = 0.2) -> int:
        n = 0
        for m in self._c.consume(5000, timeout):
            if m.error():
                continue
            kind = self._names[m.topic()]
            doc = orjson.loads(m.value())
            if kind == "predictions":
                if doc["event_id"] in self.predictions:
                    self.duplicates += 1
                    continue
                self.predictions[doc["event_id"]] = doc
                self.pred_times.append(m.timestamp()[1] / 1000.0)
                n += 1
            elif kind == "dlq":
                self.dlq.append(doc)
                n += 1
            else:
                self.metrics[(doc["worker"], doc["partition"])] = doc
                self.snapshots.append(doc)
        return n

    def close(self) -> None:
        self._c.close()


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


def model_names(spec: PipelineSpec) -> list[str]:
    """Every model with prequential figures: the spec's models, then the blend if there is one."""
    return [m.name for m in spec.models] + (["blend"] if spec.blended else [])


def _labels_in_order(stream: Path, spec: PipelineSpec, limit: int | None) -> list[tuple[int, str, float]]:
    """(label time, event id, label) of the replayed stream, in label order.

    With a label timeout and default, an event with no label in the stream gets
    the default at ``ts + timeout`` if that is before the last event time: what
    the worker's timeouts do (there, per partition).
    """
    labels: list[tuple[int, str, float]] = []
    events: dict[str, int] = {}
    with open_stream(stream) as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:  # only what was replayed
                break
            rec = orjson.loads(line)
            v = rec["value"]
            if spec.label in v and not any(f in v for f in spec.numeric):
                labels.append((int(rec.get("ts", 0)), str(v[spec.event_id]), v[spec.label]))
            elif spec.event_id in v:
                events[str(v[spec.event_id])] = int(v.get(spec.timestamp, 0))
    if spec.label_default is not None and spec.label_timeout_ms and events:
        wm = max(events.values())
        have = {eid for _, eid, _ in labels}
        labels += [(ts + spec.label_timeout_ms, eid, spec.label_default) for eid, ts in events.items()
                   if eid not in have and ts + spec.label_timeout_ms < wm]
        labels.sort(key=lambda t: t[0])
    return labels


def prequential_report(stream: Path, spec: PipelineSpec, predictions: dict[str, dict[str, Any]],
                       window: int = 1000, limit: int | None = None) -> tuple[dict[str, dict[str, float]], dict[str, list[float]], int]:
    """Per-model prequential metrics in label order, plus rolling accuracy curves."""
    names = model_names(spec)
    preq = {n: prequential_for(spec.task, spec.threshold) for n in names}
    regression = spec.task == "regression"
    if spec.task == "bandit":     # a bandit's figures need the policies' choices: the worker's metrics have them
        return {}, {}, 0
    rolling: dict[str, list[float]] = {n: [] for n in names}
    hits: dict[str, list[int]] = {n: [] for n in names}
    unmatched = 0
    for _, eid, y in _labels_in_order(stream, spec, limit):
        pred = predictions.get(eid)
        if pred is None:
            unmatched += 1
            continue
        if not regression:
            base = hits.setdefault("majority class (always 0)", [])
            base.append(int(not y))
            if len(base) >= window:
                rolling.setdefault("majority class (always 0)", []).append(sum(base[-window:]) / window)
        for name, score in pred["scores"].items():
            if name not in preq:
                continue
            preq[name].update(y, score)
            h = hits[name]
            h.append(abs(float(y) - score) if regression else int((score > spec.threshold) == bool(y)))
            if len(h) >= window:
                rolling[name].append(sum(h[-window:]) / window)
    return {k: p.get() for k, p in preq.items()}, rolling, unmatched


def snapshot_curve(snapshots: list[dict[str, Any]], model: str) -> tuple[list[int], list[float]]:
    """(labels seen, rolling accuracy) after each metrics snapshot, over all partitions.

    Each partition's newest snapshot so far counts; the partitions' rolling
    accuracies (last 1,000 labels each) are averaged weighted by their label counts.
    """
    latest: dict[int, dict[str, Any]] = {}
    xs: list[int] = []
    ys: list[float] = []
    for snap in sorted(snapshots, key=lambda d: d["ts"]):
        latest[snap["partition"]] = snap
        figs = [s["models"][model] for s in latest.values() if model in s.get("models", {})]
        n = sum(int(f["n"]) for f in figs)
        if n:
            xs.append(n)
            ys.append(sum(f.get("rolling_accuracy", f.get("rolling_mae", 0.0)) * int(f["n"]) for f in figs) / n)
    return xs, ys


def plot_rolling(rolling: dict[str, list[float]], path: Path, title: str, window: int,
                 from_metrics: dict[str, tuple[list[int], list[float]]] | None = None,
                 ylabel: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, ys in rolling.items():
        style = {"linestyle": "--", "color": "grey"} if name.startswith("majority") else {}
        ax.plot(range(window, window + len(ys)), ys, label=name, linewidth=1, **style)
    for name, (xs, ys) in (from_metrics or {}).items():
        ax.plot(xs, ys, "o", markersize=4, label=f"{name}: worker metrics topic (per-partition rolling)")
    ax.set_xlabel("labelled events (in label order)")
    ax.set_ylabel(ylabel or f"accuracy over the last {window}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(pipeline: str = "online_retail", *, report_path: Path = Path("reports/demo.json"),
             plot_path: Path = Path("reports/demo.png"), limit: int | None = None, partitions: int = 4,
             stream: str | None = None, timeout_s: float = 600.0, pace_s: float | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo end to end and return the report (also written to ``report_path``)."""
    from tqdm import tqdm

    spec = load_spec(pipeline)
    t_start = time.monotonic()
    echo(f"streamscore demo: pipeline {spec.name} - {spec.description}")
    stream_path = Path(stream) if stream else dataset_stream(spec)
    n_records = count_records(stream_path)
    n_events = count_records(stream_path, "events") - _inline_labels(stream_path, spec)
    if limit is not None:
        n_records = min(n_records, limit)
        n_events = _events_in_prefix(stream_path, spec, limit)
    speed = _speed_for(stream_path, pace_s, limit) if pace_s else None
    workdir = Path(tempfile.mkdtemp(prefix="streamscore-demo-"))
    with EmbeddedBroker() as broker:
        settings = Settings(broker=broker.bootstrap, app_id=f"demo-{spec.name}", topic_prefix=f"demo-{spec.name}-",
                            pipeline=spec.name, partitions=partitions, state_dir=workdir / "state",
                            web_port=free_port(), metrics_port=free_port(), session_timeout_s=6.0,
                            metrics_interval_s=0.5, batch_max=1000)
        echo(f"broker: Tansu on {broker.bootstrap}; worker log: {workdir / 'worker.log'}")
        create_topics(broker.bootstrap, all_topics(settings))
        worker = start_worker(settings, workdir / "worker.log")
        echo("waiting for the worker to join its consumer group ...")
        wait_ready(settings, worker, workdir / "worker.log")
        reader = OutputReader(settings)
        try:
            replay_error: list[BaseException] = []

            def _replay() -> None:
                try:
                    replay(stream_path, settings, limit=limit, speed=speed)
                except BaseException as exc:  # surfaced below
                    replay_error.append(exc)

            t_replay = time.monotonic()
            th = threading.Thread(target=_replay, name="replay", daemon=True)
            th.start()
            with tqdm(total=n_events, unit="ev", desc="scored", dynamic_ncols=True) as bar:
                deadline = time.monotonic() + timeout_s
                while reader.done < n_events and time.monotonic() < deadline:
                    bar.update(reader.poll())
                    if worker.poll() is not None:
                        raise RuntimeError(f"worker exited with {worker.returncode}; see {workdir / 'worker.log'}")
                    if replay_error:
                        raise replay_error[0]
            th.join()
            t_end = time.monotonic()
            samples = wait_consumed(settings, n_records)    # labels trail the last event
        finally:
            stop_worker(worker)           # its last act publishes a final metrics snapshot
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not reader.metrics:
                reader.poll(0.5)
            reader.poll(0.5)
            reader.close()

    models_published, rolling, unmatched = prequential_report(stream_path, spec, reader.predictions, limit=limit)
    latest: dict[int, dict[str, Any]] = {}
    for snap in reader.metrics.values():           # newest snapshot per partition
        if snap["partition"] not in latest or snap["ts"] > latest[snap["partition"]]["ts"]:
            latest[snap["partition"]] = snap
    models = {n: merge_prequential([s["models"][n] for s in latest.values() if n in s["models"]])
              for n in model_names(spec)}
    busy = (max(reader.pred_times) - min(reader.pred_times)) if len(reader.pred_times) > 1 else 0.0
    dlq_reasons = {labels["reason"]: int(v) for labels, v in samples.get("streamscore_worker_dlq_total", ()) if v}
    n_pred = int(total(samples, "streamscore_worker_predictions_total"))

    def ms(q: float, name: str) -> float | None:
        v = histogram_quantile(q, samples, name)
        return None if v is None else round(v * 1000.0, 3)

    report: dict[str, Any] = {
        "pipeline": spec.name,
        "stream": str(stream_path),
        "replay_speed": speed,                     # None: as fast as possible
        "records_replayed": n_records,
        "events": n_events,
        "predictions": n_pred,
        "dlq": int(total(samples, "streamscore_worker_dlq_total")),
        "dlq_reasons": dlq_reasons,
        "events_per_s": round(n_pred / busy, 1) if busy else None,
        "wall_s": round(t_end - t_replay, 2),
        "latency_p50_ms": ms(0.50, "streamscore_worker_end_to_end_latency_seconds"),
        "latency_p99_ms": ms(0.99, "streamscore_worker_end_to_end_latency_seconds"),
        "processing_p50_ms": ms(0.50, "streamscore_worker_processing_latency_seconds"),
        "processing_p99_ms": ms(0.99, "streamscore_worker_processing_latency_seconds"),
        "models": models,
        "source": "worker /metrics (counts, latency histograms) and metrics topic (prequential, merged over partitions)",
        "read_back": {                             # what was actually published, as a cross-check
            "predictions": len(reader.predictions),
            "duplicate_predictions": reader.duplicates,
            "dlq": len(reader.dlq),
            "labels_without_prediction": unmatched,
            "models": models_published,
        },
        "plot": str(plot_path),
        "total_s": round(time.monotonic() - t_start, 1),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    curves = {n: snapshot_curve(reader.snapshots, n) for n in model_names(spec)[:1] + model_names(spec)[-1:]}
    what = "MAE" if spec.task == "regression" else "accuracy"
    plot_rolling(rolling, plot_path, f"{spec.name}: rolling prequential {what} (last 1,000 labels)", 1000, curves,
                 ylabel=f"{what} over the last 1000")
    echo(format_report(report))
    echo(f"report: {report_path}   plot: {plot_path}")
    return report


def _speed_for(path: Path, pace_s: float, limit: int | None) -> float:
    """The replay speed-up that spreads the stream's event time over ``pace_s`` seconds.

    Why pace: replayed as fast as possible, a worker reads the events topic far
    ahead of the labels topic (two topics, fetched independently), so models
    score events before labels that came earlier in event time have trained
    them. Paced, records reach the worker roughly in their recorded order, as
    they do live.
    """
    first = last = None
    with open_stream(path) as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                break
            ts = orjson.loads(line).get("ts")
            if isinstance(ts, int):
                first = ts if first is None else first
                last = ts
    span_ms = (last - first) if first is not None and last is not None else 0
    return max(1.0, span_ms / 1000.0 / pace_s)


def _inline_labels(path: Path, spec: PipelineSpec) -> int:
    """Label records carried on the events topic (no feature fields)."""
    n = 0
    with open_stream(path) as fh:
        for line in fh:
            if b'"topic":"events"' in line and f'"{spec.label}":'.encode() in line:
                v = orjson.loads(line)["value"]
                n += int(not any(f in v for f in spec.numeric))
    return n


def _events_in_prefix(path: Path, spec: PipelineSpec, limit: int) -> int:
    n = 0
    with open_stream(path) as fh:
        for i, line in enumerate(fh):
            if i >= limit:
                break
            rec = orjson.loads(line)
            if rec["topic"] == "events" and any(f in rec["value"] for f in spec.numeric):
                n += 1
    return n


def format_report(r: dict[str, Any]) -> str:
    def f(v: Any, nd: int = 2) -> str:
        return "n/a" if v is None else (f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}")

    lines = [
        "",
        f"=== streamscore report: {r['pipeline']} ===",
        f"events in           {f(r['events'])}",
        f"predictions out     {f(r['predictions'])}   (read back from the topic: {f(r['read_back']['predictions'])})",
        f"dead letters        {f(r['dlq'])}   {r['dlq_reasons'] or ''}",
        f"throughput          {f(r['events_per_s'], 0)} events/s while scoring",
        f"end-to-end latency  p50 {f(r['latency_p50_ms'])} ms   p99 {f(r['latency_p99_ms'])} ms"
        + ("   (replayed as fast as possible: includes queueing)" if r.get("replay_speed") is None
           else f"   (replayed at {r['replay_speed']:,.0f}x recorded time)"),
        f"processing latency  p50 {f(r['processing_p50_ms'])} ms   p99 {f(r['processing_p99_ms'])} ms",
        "prequential (test-then-train, score made before the label was known; worker metrics, all partitions):",
    ]
    for name, m in r["models"].items():
        if "matched" in m:
            lines.append(f"  {name:<8} n={f(m['n'])}  matched the logged action {f(m['matched'])}  mean reward "
                         f"{f(m['mean_reward'], 4)}  regret vs the best action {f(m['regret'], 1)}")
        elif "mae" in m:
            lines.append(f"  {name:<8} n={f(m['n'])}  MAE {f(m['mae'], 4)} (constant baseline "
                         f"{f(m.get('baseline_mae'), 4)})  RMSE {f(m['rmse'], 4)} (baseline {f(m.get('baseline_rmse'), 4)})")
        else:
            lines.append(f"  {name:<8} n={f(m['n'])}  accuracy {f(m['accuracy'], 4)}  log loss {f(m['log_loss'], 4)}"
                         f" (constant baseline {f(m.get('baseline_log_loss'), 4)})  ROC AUC {f(m['roc_auc'], 4)}")
    lines.append(f"total time          {r['total_s']} s")
    return "\n".join(lines)
